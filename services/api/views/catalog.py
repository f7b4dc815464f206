"""GET /v2/_catalog with n/last pagination."""

from __future__ import annotations

from typing import TYPE_CHECKING

from flask import Response, request

from services.api.access import pullable
from services.api.views.tags import page_args, paged

if TYPE_CHECKING:
    from services.api.app import Context


def list_repositories(ctx: Context) -> Response:
    limit, last, _ = page_args()
    result = ctx.clients.metadata.list_repositories(last, limit)
    names = list(result.names)
    visible = pullable(ctx.settings, ctx.clients.auth, names)
    # The page may shrink after filtering; `last` still moves on from the last name examined.
    return paged(request.path, "repositories", {}, visible, result.more, limit, last_seen=names[-1] if names else "")
