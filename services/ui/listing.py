"""The repositories page's list: search by substring, order by name or last push, pages by cursor.

A page costs the same on 100 or 100,000 repositories: it is cut from a per-worker snapshot of the
catalog's names and push times (``Catalog``), not from the whole catalog read again. The snapshot
is built once (the whole catalog, in pages of 10,000), then kept current cheaply:

- pushes: before each page, one small call asks the metadata service for its most recently pushed
  repositories (``ListRepositories`` with ``order="pushed"``); those pushed since the snapshot's
  newest push time (rarely more than a few) are merged in, so a push is listed on the very next
  page, whichever worker or gateway took it;
- everything else (a repository that left the catalog, a repository holding only blobs): the
  snapshot is rebuilt in the background, at most every ``REBUILD_AFTER`` seconds while pages are
  asked for (and soon after this worker deletes something), the old one serving meanwhile.

So a name may still be listed up to that long after its repository was deleted (its page then
says it is unknown); a push is never missed. Visibility is never taken from the snapshot: the
page's names are judged in order from the cursor, a batch at a time, by ``Authorizer.pullable``,
until the page is full, so the caller sees only (and pages only through) what they may pull.
"""

from __future__ import annotations

import bisect
import dataclasses
import logging
import threading
import time
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from services.api.context import Context

log = logging.getLogger("wharf.ui")
PAGE_SIZE = 50
ORDERS = ("name", "pushed")
REBUILD_AFTER = 30.0
_READ_BATCH = 10000
# Catalog pages read at most per build: 1,000,000 repositories.
_MAX_READS = 100
# The pushes asked for before each page, and pages of them read at most: past that many pushes
# since the snapshot (1,000), it is rebuilt instead.
_PROBE = 50
_CATCH_UP_READS = 20
# Names judged for visibility per call at first; doubled per call (the auth service takes 10,000).
_VISIBILITY_BATCH = 200
_VISIBILITY_MAX = 10000


@dataclasses.dataclass(frozen=True)
class Entry:
    name: str
    pushed_at_ms: int  # 0 unknown


@dataclasses.dataclass(frozen=True)
class Page:
    entries: list[Entry]
    next_after: str  # the cursor of the next page, "" when this is the last


def _push_order(names: Iterable[str], times: Mapping[str, int]) -> list[str]:
    """Most recent first; names break ties, so the order (and a cursor in it) is stable."""
    return sorted(names, key=lambda n: (-times.get(n, 0), n))


@dataclasses.dataclass(frozen=True)
class Snapshot:
    names: list[str]           # lexical, as the catalog keeps them
    times: dict[str, int]      # push time (ms) of those that have one
    by_push: list[str]         # most recently pushed first
    horizon: int               # the newest push time seen
    built: float               # time.monotonic() of the build

    @classmethod
    def of(cls, names: Iterable[str], times: dict[str, int], built: float) -> Snapshot:
        every = sorted(set(names) | set(times))
        return cls(every, times, _push_order(every, times), max(times.values(), default=0), built)

    def with_pushes(self, pushed: dict[str, int]) -> Snapshot:
        """This snapshot with the repositories pushed since: each moves to the front of the push order."""
        names = list(self.names)
        for name in pushed:
            at = bisect.bisect_left(names, name)
            if at == len(names) or names[at] != name:
                names.insert(at, name)
        times = {**self.times, **pushed}
        by_push = _push_order(pushed, times) + [n for n in self.by_push if n not in pushed]
        return Snapshot(names, times, by_push, max(self.horizon, *pushed.values()), self.built)


def _read_all(ctx: Context) -> Snapshot:
    started = time.monotonic()
    names: list[str] = []
    times: dict[str, int] = {}
    for order in ("", "pushed"):
        cursor = ""
        for _ in range(_MAX_READS):
            result = ctx.clients.metadata.list_repositories(cursor, _READ_BATCH, order=order)
            if order:
                times.update(zip(result.names, result.pushed_at_ms, strict=False))
            else:
                names.extend(result.names)
            if not result.more or not result.names:
                break
            cursor = result.names[-1]
    return Snapshot.of(names, times, started)


class Catalog:
    """One worker's snapshot of the catalog (see the module's description); thread- and greenlet-safe."""

    def __init__(self, rebuild_after: float = REBUILD_AFTER) -> None:
        self._rebuild_after = rebuild_after
        self._lock = threading.Lock()
        self._snapshot: Snapshot | None = None
        self._rebuilding = False
        self._stale = False

    def current(self, ctx: Context) -> Snapshot:
        snapshot = self._snapshot
        if snapshot is None:
            with self._lock:  # the first page waits for the build, once
                if self._snapshot is None:
                    self._snapshot = _read_all(ctx)
                return self._snapshot
        if self._stale or time.monotonic() - snapshot.built > self._rebuild_after:
            self._rebuild_in_background(ctx)
        return self._catch_up(ctx, snapshot)

    def forget(self) -> None:
        """Something was deleted here: rebuild soon (a push needs no call: the next page sees it)."""
        self._stale = True

    def _catch_up(self, ctx: Context, snapshot: Snapshot) -> Snapshot:
        pushed: dict[str, int] = {}
        cursor = ""
        for _ in range(_CATCH_UP_READS):
            result = ctx.clients.metadata.list_repositories(cursor, _PROBE, order="pushed")
            older = False
            for name, at in zip(result.names, result.pushed_at_ms, strict=False):
                older = at < snapshot.horizon
                if older:
                    break
                if snapshot.times.get(name) != at:
                    pushed[name] = at
            if older or not result.more or not result.names:
                break
            cursor = result.names[-1]
        else:
            # More pushes since the snapshot than is worth merging: read everything again.
            with self._lock:
                self._snapshot = _read_all(ctx)
                return self._snapshot
        if not pushed:
            return snapshot
        with self._lock:  # merged into whatever is current (a rebuild may have replaced it meanwhile)
            latest = self._snapshot or snapshot
            self._snapshot = latest.with_pushes(pushed)
            return self._snapshot

    def _rebuild_in_background(self, ctx: Context) -> None:
        with self._lock:
            if self._rebuilding:
                return
            self._rebuilding, self._stale = True, False

        def rebuild() -> None:
            try:
                fresh = _read_all(ctx)
                with self._lock:
                    # Pushes merged while it was read are in the new snapshot or after its horizon.
                    self._snapshot = fresh
            except Exception:
                log.warning("the web UI's catalog snapshot could not be rebuilt; the old one serves", exc_info=True)
            finally:
                self._rebuilding = False

        threading.Thread(target=rebuild, name="wharf-ui-catalog", daemon=True).start()


def _visible(ctx: Context, names: list[str], start: int, size: int) -> list[str]:
    """Up to ``size + 1`` names from ``names[start:]`` that the caller may pull, in order."""
    visible: list[str] = []
    position, batch = start, _VISIBILITY_BATCH
    while position < len(names) and len(visible) <= size:
        chunk = names[position:position + batch]
        visible.extend(ctx.authorizer.pullable(chunk))
        position += len(chunk)
        batch = min(batch * 2, _VISIBILITY_MAX)
    return visible[:size + 1]


def repositories(ctx: Context, catalog: Catalog, query: str, order: str, after: str,
                 size: int = PAGE_SIZE) -> Page:
    """A page of the repositories the caller may pull whose names contain ``query`` (case-insensitive)."""
    snapshot = catalog.current(ctx)
    needle = query.strip().lower()
    names = snapshot.by_push if order == "pushed" else snapshot.names
    if needle:
        names = [n for n in names if needle in n.lower()]
    if not after:
        start = 0
    elif order == "pushed":
        # A cursor the caller may not pull counts as gone: where a hidden repository sits in the
        # push order (or that it exists at all) must not show in which page comes back.
        try:
            start = names.index(after) + 1 if ctx.authorizer.pullable([after]) else 0
        except ValueError:  # the cursor's repository has gone: from the start
            start = 0
    else:
        start = bisect.bisect_right(names, after)
    visible = _visible(ctx, names, start, size)
    page = visible[:size]
    more = len(visible) > size
    return Page([Entry(n, snapshot.times.get(n, 0)) for n in page], page[-1] if more and page else "")
