"""GET /v2/_catalog with n/last pagination, filtered to what the caller may pull."""

from __future__ import annotations

from typing import TYPE_CHECKING

from flask import Response

from services.api.pagination import page_args, paged

if TYPE_CHECKING:
    from services.api.context import Context

# Names examined per metadata call when filtering; the auth service filters at most 10,000 per call.
_SCAN_BATCH = 1000
_MAX_BATCH = 10000


def list_repositories(ctx: Context) -> Response:
    """A page is built from what the caller may see: names are read in batches and filtered
    until the page is full (plus one, to know whether another page exists) or the catalog
    ends. The cost is bounded by the catalog's size; nothing invisible ever reaches the
    body or the Link cursor."""
    limit, last = page_args()
    if limit == 0:
        return paged("repositories", {}, [], False, limit)
    batch = min(max(limit + 1, _SCAN_BATCH), _MAX_BATCH)
    visible: list[str] = []
    cursor, more = last, True
    while more and len(visible) <= limit:
        found, more = ctx.clients.cache.repositories(cursor, batch)
        names = list(found)
        if not names:
            break
        visible.extend(ctx.authorizer.pullable(names))
        cursor = names[-1]
    return paged("repositories", {}, visible[:limit], len(visible) > limit, limit)
