"""The repositories page's list: search by substring, order by name or last push, pages by cursor.

A page is built from the whole catalog's names and push times, read in pages of the metadata
service's largest size (10,000 names a call, so two calls on a registry of 10,000), filtered by
the search, sorted, and then judged for visibility in order from the cursor, a batch at a time,
until the page is full: the caller sees, and counts, only what ``Authorizer.pullable`` lets
through, and the auth service is asked about a few batches, not the whole catalog.
"""

from __future__ import annotations

import bisect
import dataclasses
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from services.api.context import Context

PAGE_SIZE = 50
_READ_BATCH = 10000
# Catalog pages read at most per listing: 1,000,000 repositories.
_MAX_READS = 100
_VISIBILITY_BATCH = 500
ORDERS = ("name", "pushed")


@dataclasses.dataclass(frozen=True)
class Entry:
    name: str
    pushed_at_ms: int  # 0 unknown


@dataclasses.dataclass(frozen=True)
class Page:
    entries: list[Entry]
    next_after: str  # the cursor of the next page, "" when this is the last


def _names(ctx: Context) -> list[str]:
    found: list[str] = []
    cursor = ""
    for _ in range(_MAX_READS):
        result = ctx.clients.metadata.list_repositories(cursor, _READ_BATCH)
        found.extend(result.names)
        if not result.more or not result.names:
            break
        cursor = result.names[-1]
    return found


def _push_times(ctx: Context) -> dict[str, int]:
    times: dict[str, int] = {}
    cursor = ""
    for _ in range(_MAX_READS):
        result = ctx.clients.metadata.list_repositories(cursor, _READ_BATCH, order="pushed")
        times.update(zip(result.names, result.pushed_at_ms, strict=False))
        if not result.more or not result.names:
            break
        cursor = result.names[-1]
    return times


def repositories(ctx: Context, query: str, order: str, after: str, size: int = PAGE_SIZE) -> Page:
    """A page of the repositories the caller may pull whose names contain ``query`` (case-insensitive)."""
    names = _names(ctx)  # lexical order, as the catalog keeps it
    times = _push_times(ctx)
    needle = query.strip().lower()
    if needle:
        names = [n for n in names if needle in n.lower()]
    if order == "pushed":
        # Most recent first; names break ties, so the order (and the cursor) is stable.
        names.sort(key=lambda n: (-times.get(n, 0), n))
        start = names.index(after) + 1 if after in set(names) else 0
    else:
        start = bisect.bisect_right(names, after) if after else 0
    visible: list[str] = []
    position = start
    while position < len(names) and len(visible) <= size:
        batch = names[position:position + _VISIBILITY_BATCH]
        visible.extend(ctx.authorizer.pullable(batch))
        position += len(batch)
    page = visible[:size]
    more = len(visible) > size
    return Page([Entry(n, times.get(n, 0)) for n in page], page[-1] if more and page else "")
