"""Response bodies read with a byte cap; a connection that breaks mid-body becomes a TransportError.

requests reads a non-streamed body whole, and inflates gzip as it goes (it asks for
gzip with ``Accept-Encoding``), so an endless body or a small gzip bomb would grow
the client by gigabytes. The client therefore streams every response and reads the
bodies it needs through here, counting the *decoded* bytes against a limit.
"""

from __future__ import annotations

import contextlib
import http.client
import socket
import threading
from typing import Any

import requests
import urllib3

from wharf_client.errors import FormatError, TransportError
from wharf_client.options import KIB, MIB

MAX_JSON_BODY = 4 * MIB     # a registry's JSON answers: listings, tokens, referrers
MAX_ERROR_BODY = 16 * KIB   # error bodies are read for their message only; a huge HTML page is cut here
_READ_SIZE = 64 * KIB
# A capped body must also arrive in a bounded time. Each socket read has its own timeout, so a
# registry dripping a byte just within it held the client for as long as the cap allows (a 4 MiB
# listing at a byte every few minutes: years); past this, the connection is cut under the read.
BODY_SECONDS = 300.0


def is_connection_error(exc: BaseException) -> bool:
    """Whether reading a body failed because the connection did (worth a retry), not because of its content."""
    return isinstance(exc, (requests.exceptions.ConnectionError, requests.exceptions.ChunkedEncodingError,
                            urllib3.exceptions.ProtocolError, urllib3.exceptions.ReadTimeoutError,
                            http.client.IncompleteRead, ConnectionError, TimeoutError))


def where(response: requests.Response) -> str:
    """``METHOD URL`` of the request a response answers, without the query (it may hold a signature)."""
    method = response.request.method if response.request is not None else ""
    return f"{method} {(response.url or '').split('?', 1)[0]}".strip()


class Deadline:
    """Shuts the connection under a body still being read after ``seconds``, so the blocked read ends.

    Only a body streaming from a real socket is watched (none of a HEAD, or of an empty one).
    The connection is cut, not returned to the pool: the caller closes the response.
    """

    def __init__(self, response: requests.Response, seconds: float) -> None:
        self.expired = False
        self._timer: threading.Timer | None = None
        request = response.request
        if (request is not None and request.method == "HEAD") or response.headers.get("Content-Length") == "0":
            return
        connection = getattr(response.raw, "connection", None)  # urllib3's, while its body streams
        sock = getattr(connection, "sock", None)
        if isinstance(sock, socket.socket):
            self._sock = sock
            self._timer = threading.Timer(seconds, self._cut)
            self._timer.daemon = True

    def _cut(self) -> None:
        self.expired = True
        with contextlib.suppress(OSError):
            self._sock.shutdown(socket.SHUT_RDWR)

    def __enter__(self) -> Deadline:
        if self._timer is not None:
            self._timer.start()
        return self

    def __exit__(self, *_: object) -> None:
        if self._timer is not None:
            self._timer.cancel()


def read_limited(response: requests.Response, limit: int, what: str) -> bytes:
    """The whole (decoded) body; FormatError past ``limit`` bytes, TransportError if the connection breaks
    or the body takes longer than :data:`BODY_SECONDS` to arrive."""
    parts: list[bytes] = []
    total = 0
    with Deadline(response, BODY_SECONDS) as deadline:
        try:
            for chunk in response.iter_content(_READ_SIZE):
                total += len(chunk)
                if total > limit:
                    raise FormatError(f"{where(response)}: {what} is larger than {limit} bytes; refusing it")
                parts.append(chunk)
        except (requests.RequestException, urllib3.exceptions.HTTPError, http.client.HTTPException,
                OSError) as exc:
            if not deadline.expired:
                raise TransportError(f"{where(response)}: the body of the answer broke off: "
                                     f"{type(exc).__name__}: {str(exc)[:200]}") from None
    if deadline.expired:  # cut off, whether the read then failed or ended early
        raise TransportError(f"{where(response)}: {what} took longer than {BODY_SECONDS:g}s to arrive; giving up")
    return b"".join(parts)


def bounded_text(response: requests.Response, limit: int = MAX_ERROR_BODY) -> str:
    """At most ``limit`` bytes of the body as text (an error message); what arrived if the body breaks off
    or is still arriving after :data:`BODY_SECONDS`."""
    raw = b""
    with Deadline(response, BODY_SECONDS):
        try:
            for chunk in response.iter_content(4096):
                raw += chunk
                if len(raw) >= limit:
                    break
        except (requests.RequestException, urllib3.exceptions.HTTPError, http.client.HTTPException, OSError):
            pass
    return raw[:limit].decode(errors="replace")


def preload(response: requests.Response, limit: int, what: str) -> None:
    """Reads a body the caller did not ask to stream, bounded, into the place requests keeps it.

    requests caches a body it read in ``_content``; filling it here means ``.content``,
    ``.text`` and ``.json()`` work as for any non-streamed response, without requests
    ever reading an unbounded body itself.
    """
    content = read_limited(response, limit, what)
    response._content = content
    response._content_consumed = True


def cap_redirect_body(response: requests.Response, *_: Any, **__: Any) -> requests.Response:
    """A ``response`` hook: a redirect's body is read under the error cap before requests reads it whole.

    requests consumes each redirect's body (to reuse the connection) with no limit. The
    connection is closed here, since part of the body may be left unread on it.
    """
    if response.is_redirect and not response._content_consumed:
        response._content = bounded_text(response).encode()
        response.raw.close()
        response._content_consumed = True
    return response
