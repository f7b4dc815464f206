"""GET /v2/: says "this is a registry" (after authorization, so clients learn the auth scheme here)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from flask import Response

if TYPE_CHECKING:
    from services.api.context import Context


def ping(ctx: Context) -> Response:
    return Response(b"{}", status=200, content_type="application/json")
