"""GET /v2/: says "this is a registry" (after authorization, so clients learn the auth scheme here)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from flask import Response

if TYPE_CHECKING:
    from services.api.context import Context


# The body of the API version check (also answered on the hot-read path: hot_reads.py).
PING = b"{}"


def ping(ctx: Context) -> Response:
    return Response(PING, status=200, content_type="application/json")
