"""GET /v2/<name>/tags/list with n/last pagination."""

from __future__ import annotations

from typing import TYPE_CHECKING

from flask import Response

from services.api.pagination import page_args, paged

if TYPE_CHECKING:
    from services.api.context import Context


def list_tags(ctx: Context, name: str) -> Response:
    limit, last = page_args()
    names, more = ctx.clients.cache.tags(name, last, limit)
    return paged("tags", {"name": name}, list(names), more, limit)
