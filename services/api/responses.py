"""Building the gateway's answers: empty and JSON responses, request ids, access-log records."""

from __future__ import annotations

import json
import random
import re
import time
from typing import Any

from flask import Response

from services.api.request_input import not_modified

_REQUEST_ID_RE = re.compile(r"[A-Za-z0-9._-]{1,128}")


def request_id(incoming: str) -> str:
    """The client's X-Request-Id when it is safe to echo and log, else a new one."""
    # An identifier, not a secret: 128 random bits without a getrandom(2) call per request
    # (the random module reseeds in every forked worker).
    return incoming if _REQUEST_ID_RE.fullmatch(incoming) else f"{random.getrandbits(128):032x}"


def access_record(rid: str, method: str, path: str, status: int, started: float, remote: str) -> dict[str, object]:
    """The fields of one access-log line (services/common/logs.py writes it)."""
    return {"request_id": rid, "method": method, "path": path, "status": status,
            "ms": round((time.perf_counter() - started) * 1000, 2), "remote": remote}


def empty(status: int, headers: dict[str, str] | None = None) -> Response:
    response = Response(b"", status=status, headers=headers or {})
    response.headers["Content-Length"] = "0"
    if not headers or "Content-Type" not in headers:
        del response.headers["Content-Type"]  # an empty body has no type (not Flask's text/html)
    return response


def unchanged(headers: dict[str, str]) -> Response | None:
    """304 when the client holds this content already (its If-None-Match names the ETag of
    ``headers``, the quoted digest), with their validators and caching headers; no body, and no
    length (a 304's length would have to be the content's)."""
    if not not_modified(headers["ETag"]):
        return None
    response = Response(b"", status=304, headers={key: value for key, value in headers.items()
                                                   if key in ("Docker-Content-Digest", "ETag", "Cache-Control")})
    del response.headers["Content-Type"]
    return response


def json_response(payload: Any, status: int = 200, headers: dict[str, str] | None = None,
                  content_type: str = "application/json") -> Response:
    body = json.dumps(payload).encode()
    return Response(body, status=status, headers=headers or {}, content_type=content_type)
