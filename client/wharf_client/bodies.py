"""Response bodies read with a byte cap; a connection that breaks mid-body becomes a TransportError.

requests reads a non-streamed body whole, and inflates gzip as it goes (it asks for
gzip with ``Accept-Encoding``), so an endless body or a small gzip bomb would grow
the client by gigabytes. The client therefore streams every response and reads the
bodies it needs through here, counting the *decoded* bytes against a limit.
"""

from __future__ import annotations

import http.client
from typing import Any

import requests
import urllib3

from wharf_client.errors import FormatError, TransportError
from wharf_client.options import KIB, MIB

MAX_JSON_BODY = 4 * MIB     # a registry's JSON answers: listings, tokens, referrers
MAX_ERROR_BODY = 16 * KIB   # error bodies are read for their message only; a huge HTML page is cut here
_READ_SIZE = 64 * KIB


def is_connection_error(exc: BaseException) -> bool:
    """Whether reading a body failed because the connection did (worth a retry), not because of its content."""
    return isinstance(exc, (requests.exceptions.ConnectionError, requests.exceptions.ChunkedEncodingError,
                            urllib3.exceptions.ProtocolError, urllib3.exceptions.ReadTimeoutError,
                            http.client.IncompleteRead, ConnectionError, TimeoutError))


def where(response: requests.Response) -> str:
    """``METHOD URL`` of the request a response answers, without the query (it may hold a signature)."""
    method = response.request.method if response.request is not None else ""
    return f"{method} {(response.url or '').split('?', 1)[0]}".strip()


def read_limited(response: requests.Response, limit: int, what: str) -> bytes:
    """The whole (decoded) body; FormatError past ``limit`` bytes, TransportError if the connection breaks."""
    parts: list[bytes] = []
    total = 0
    try:
        for chunk in response.iter_content(_READ_SIZE):
            total += len(chunk)
            if total > limit:
                raise FormatError(f"{where(response)}: {what} is larger than {limit} bytes; refusing it")
            parts.append(chunk)
    except (requests.RequestException, urllib3.exceptions.HTTPError, http.client.HTTPException, OSError) as exc:
        raise TransportError(f"{where(response)}: the body of the answer broke off: "
                             f"{type(exc).__name__}: {str(exc)[:200]}") from None
    return b"".join(parts)


def bounded_text(response: requests.Response, limit: int = MAX_ERROR_BODY) -> str:
    """At most ``limit`` bytes of the body as text (an error message); what arrived if the body breaks off."""
    raw = b""
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
