"""GET /openapi.yaml: the HTTP API as OpenAPI 3.1 (services/api/openapi.yaml, written by
scripts/gen_openapi.py). Public in every auth mode: it describes the API, not what the registry
holds, and a client reads it before it has a token."""

from __future__ import annotations

import functools
import hashlib
from importlib import resources
from typing import TYPE_CHECKING

from flask import Response, request

if TYPE_CHECKING:
    from services.api.context import Context

MEDIA_TYPE = "application/yaml"  # RFC 9512


@functools.cache
def _document() -> tuple[bytes, str]:
    """The document shipped in the package, and its ETag; read once per process."""
    content = resources.files("services.api").joinpath("openapi.yaml").read_bytes()
    return content, hashlib.sha256(content).hexdigest()[:32]


def document(ctx: Context) -> Response:
    content, etag = _document()
    response = Response(content, status=200, content_type=MEDIA_TYPE,
                        headers={"Cache-Control": "public, max-age=3600"})
    response.set_etag(etag)
    # 304 for a matching If-None-Match; a HEAD keeps the full Content-Length (Flask drops the body).
    response.make_conditional(request)  # changes the response in place
    return response
