"""Small response and request helpers the views share."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

from flask import Response, request

from services.common import digests
from services.common.errors import DIGEST_INVALID, SIZE_INVALID, RegistryError

# Bytes per read from a request body and per streamed response chunk.
IO_CHUNK = 1024 * 1024


def empty(status: int, headers: dict[str, str] | None = None) -> Response:
    response = Response(b"", status=status, headers=headers or {})
    response.headers["Content-Length"] = "0"
    if not headers or "Content-Type" not in headers:
        del response.headers["Content-Type"]  # an empty body has no type (not Flask's text/html)
    return response


def json_response(payload: Any, status: int = 200, headers: dict[str, str] | None = None,
                  content_type: str = "application/json") -> Response:
    body = json.dumps(payload).encode()
    return Response(body, status=status, headers=headers or {}, content_type=content_type)


def body_chunks() -> Iterator[bytes]:
    """The request body in bounded pieces; never the whole body in memory.

    A body shorter than its Content-Length (a dropped connection) raises before
    the last piece is handed on, so a single-request upload is never committed.
    """
    stream = request.stream
    declared = request.content_length
    received = 0
    while True:
        data = stream.read(IO_CHUNK)
        if not data:
            break
        received += len(data)
        yield data
    if declared is not None and received != declared:
        raise RegistryError(SIZE_INVALID, f"received {received} bytes, Content-Length said {declared}")


def read_body(limit: int) -> bytes | None:
    """The whole body, or None when it is larger than ``limit``."""
    length = request.content_length
    if length is not None and length > limit:
        return None
    parts: list[bytes] = []
    received = 0
    stream = request.stream
    while received <= limit:
        data = stream.read(min(IO_CHUNK, limit + 1 - received))
        if not data:
            break
        parts.append(data)
        received += len(data)
    return None if received > limit else b"".join(parts)


def digest_arg(name: str = "digest") -> str:
    value = request.args.get(name, "")
    if not value:
        raise RegistryError(DIGEST_INVALID, f"the {name} query parameter is required")
    return digests.validate(value)
