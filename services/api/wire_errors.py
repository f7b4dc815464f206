"""The registry's JSON error envelope for requests rejected before they reach Flask.

gunicorn answers a request it cannot parse (a non-ASCII request line, a malformed header,
bad chunked framing) itself, with an HTML page. Clients of a registry expect the
``{"errors": [...]}`` form with a code from the spec's list, so the gateway replaces the
function gunicorn writes those answers with. The attacker-supplied part of gunicorn's
message is never echoed back.
"""

from __future__ import annotations

import json
import socket

import gunicorn.util

# By status: what was wrong, in the spec's terms.
_CODES = {400: "UNSUPPORTED", 403: "DENIED", 413: "SIZE_INVALID", 414: "NAME_INVALID", 431: "UNSUPPORTED",
          417: "UNSUPPORTED", 501: "UNSUPPORTED"}


def _write_error(sock: socket.socket, status_int: int, reason: str, mesg: str) -> None:
    code = _CODES.get(status_int, "INTERNAL" if status_int >= 500 else "UNSUPPORTED")
    if status_int == 400 and mesg.startswith("Invalid Request Line") and "/v2/" in mesg:
        code = "NAME_INVALID"  # in practice, a repository name with bytes outside ASCII
    body = json.dumps({"errors": [{"code": code, "message": f"malformed request: {reason.lower()}"}]}).encode()
    head = (f"HTTP/1.1 {status_int} {reason}\r\nConnection: close\r\nContent-Type: application/json\r\n"
            f"Docker-Distribution-API-Version: registry/2.0\r\nContent-Length: {len(body)}\r\n\r\n").encode("latin-1")
    gunicorn.util.write_nonblock(sock, head + body)


def install() -> None:
    """Makes gunicorn's own error answers JSON (checked, not assumed: the hook must exist)."""
    if not callable(getattr(gunicorn.util, "write_error", None)):
        raise RuntimeError("gunicorn.util.write_error is gone: update services/api/wire_errors.py")
    gunicorn.util.write_error = _write_error
