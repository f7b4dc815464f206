"""The web UI's repositories list (services/ui/listing.py), over a fake catalog (no sockets): pages,
cursors and searches; only what the caller may pull, in pages, cursors and as a whole; a page costs
the same whatever the catalog's size; pushes are merged at once, everything else by a rebuild."""

from __future__ import annotations

import dataclasses
import threading
from typing import Any

import pytest

from services.ui import listing
from services.ui.listing import Catalog, Snapshot


@dataclasses.dataclass
class _Answer:
    names: list[str]
    more: bool
    pushed_at_ms: list[int]


class _Metadata:
    """ListRepositories as the metadata service answers it: lexical with ``last``, or by push."""

    def __init__(self, names: list[str], times: dict[str, int]) -> None:
        self.names, self.times = set(names), dict(times)
        self.calls: list[tuple[str, int, str]] = []

    def push(self, name: str, at: int) -> None:
        self.names.add(name)
        self.times[name] = at

    def list_repositories(self, last: str, limit: int, order: str = "") -> _Answer:
        self.calls.append((last, limit, order))
        if order == "pushed":
            ranked = sorted(self.times, key=lambda n: (-self.times[n], n))
            start = ranked.index(last) + 1 if last else 0
            page = ranked[start:start + limit]
            return _Answer(page, start + limit < len(ranked), [self.times[n] for n in page])
        ordered = sorted(self.names)
        page = [n for n in ordered if n > last][:limit]
        return _Answer(page, len([n for n in ordered if n > last]) > limit, [])


class _Authorizer:
    def __init__(self, allowed: set[str] | None) -> None:
        self.allowed = allowed
        self.judged = 0

    def pullable(self, names: list[str]) -> list[str]:
        self.judged += len(names)
        return [n for n in names if self.allowed is None or n in self.allowed]


@dataclasses.dataclass
class _Clients:
    metadata: _Metadata


@dataclasses.dataclass
class _Context:
    clients: _Clients
    authorizer: _Authorizer


def _context(count: int, allowed: set[str] | None = None) -> tuple[Any, _Metadata]:
    names = [f"team{i % 10}/app-{i:05d}" for i in range(count)]
    metadata = _Metadata(names, {n: 1000 + i for i, n in enumerate(names)})
    return _Context(_Clients(metadata), _Authorizer(allowed)), metadata


def _all_pages(ctx: Any, catalog: Catalog, query: str = "", order: str = "name") -> list[str]:
    seen: list[str] = []
    after = ""
    for _ in range(1000):
        page = listing.repositories(ctx, catalog, query, order, after, size=7)
        seen.extend(e.name for e in page.entries)
        if not page.next_after:
            return seen
        after = page.next_after
    raise AssertionError("the pages never ended")


def test_pages_by_name_and_by_push_cover_everything_once_in_order() -> None:
    ctx, metadata = _context(60)
    catalog = Catalog()
    assert _all_pages(ctx, catalog) == sorted(metadata.names)
    by_push = _all_pages(ctx, catalog, order="pushed")
    assert by_push == sorted(metadata.names, key=lambda n: -metadata.times[n])
    first = listing.repositories(ctx, catalog, "", "pushed", "", size=3)
    assert [e.pushed_at_ms for e in first.entries] == [1059, 1058, 1057]


def test_a_search_is_a_case_insensitive_substring_and_pages_too() -> None:
    ctx, metadata = _context(60)
    catalog = Catalog()
    assert _all_pages(ctx, catalog, "TEAM3/") == sorted(n for n in metadata.names if n.startswith("team3/"))
    assert listing.repositories(ctx, catalog, "no-such", "name", "").entries == []


def test_only_what_the_caller_may_pull_is_listed_paged_or_named_in_a_cursor() -> None:
    ctx, metadata = _context(300)
    allowed = {n for n in metadata.names if n.startswith("team4/")}
    ctx.authorizer.allowed = allowed
    catalog = Catalog()
    for order in listing.ORDERS:
        after = ""
        seen: list[str] = []
        while True:
            page = listing.repositories(ctx, catalog, "", order, after, size=7)
            assert {e.name for e in page.entries} <= allowed
            assert page.next_after == "" or page.next_after in allowed
            seen.extend(e.name for e in page.entries)
            if not page.next_after:
                break
            after = page.next_after
        assert sorted(seen) == sorted(allowed) and len(seen) == len(allowed)
    # A cursor naming something the caller may not see shows only what follows it that they may.
    page = listing.repositories(ctx, catalog, "", "name", "team3/app-00003", size=500)
    assert {e.name for e in page.entries} == {n for n in allowed if n > "team3/app-00003"}


def test_a_page_costs_the_same_whatever_the_catalogs_size() -> None:
    for count in (1_000, 30_000):
        ctx, metadata = _context(count)
        catalog = Catalog()
        listing.repositories(ctx, catalog, "", "name", "")  # the first page builds the snapshot
        metadata.calls.clear()
        ctx.authorizer.judged = 0
        for order in listing.ORDERS:
            listing.repositories(ctx, catalog, "", order, "")
        # One small call each (any pushes since?), and visibility judged for about a page.
        assert metadata.calls == [("", 50, "pushed"), ("", 50, "pushed")]
        assert ctx.authorizer.judged <= 2 * 200


def test_a_push_is_listed_on_the_next_page_and_moves_to_the_front() -> None:
    ctx, metadata = _context(100)
    catalog = Catalog()
    listing.repositories(ctx, catalog, "", "name", "")
    metadata.push("aaa/new", 5000)
    metadata.push("team1/app-00001", 5001)  # pushed again
    first = listing.repositories(ctx, catalog, "", "pushed", "", size=3)
    assert [e.name for e in first.entries] == ["team1/app-00001", "aaa/new", "team9/app-00099"]
    assert listing.repositories(ctx, catalog, "", "name", "", size=1).entries[0].name == "aaa/new"
    assert _all_pages(ctx, catalog, order="pushed").count("team1/app-00001") == 1


def test_many_pushes_since_the_snapshot_read_the_catalog_again() -> None:
    ctx, metadata = _context(100)
    catalog = Catalog()
    listing.repositories(ctx, catalog, "", "name", "")
    for i in range(2000):
        metadata.push(f"burst/r{i:04d}", 10_000 + i)
    assert len(_all_pages(ctx, catalog, "burst/")) == 2000


def test_what_left_the_catalog_goes_at_the_next_rebuild_which_runs_in_the_background() -> None:
    ctx, metadata = _context(20)
    catalog = Catalog(rebuild_after=3600)
    listing.repositories(ctx, catalog, "", "name", "")
    metadata.names.discard("team0/app-00000")
    del metadata.times["team0/app-00000"]
    assert "team0/app-00000" in _all_pages(ctx, catalog)  # until a rebuild
    catalog.forget()
    listing.repositories(ctx, catalog, "", "name", "")  # starts the rebuild
    for thread in threading.enumerate():
        if thread.name == "wharf-ui-catalog":
            thread.join(10)
    assert "team0/app-00000" not in _all_pages(ctx, catalog)


def test_a_snapshot_merges_pushes_without_disturbing_the_rest() -> None:
    snapshot = Snapshot.of(["b", "d"], {"b": 1, "d": 2}, 0.0)
    assert snapshot.by_push == ["d", "b"] and snapshot.horizon == 2
    merged = snapshot.with_pushes({"c": 3, "b": 4})
    assert merged.names == ["b", "c", "d"] and merged.by_push == ["b", "c", "d"] and merged.horizon == 4
    assert snapshot.names == ["b", "d"]  # the old one is untouched (pages being cut from it)


@pytest.mark.parametrize("after", ["zzz/none", "team0/app-00000"])
def test_a_cursor_by_push_that_is_gone_or_last_ends_cleanly(after: str) -> None:
    ctx, _ = _context(5)
    page = listing.repositories(ctx, Catalog(), "", "pushed", after)
    assert page.next_after == ""


def test_a_cursor_by_push_the_caller_may_not_pull_reads_as_gone() -> None:
    """Else where a hidden repository sits in the push order (and that it exists) showed in the
    page that came back: the page after it, instead of the first."""
    ctx, metadata = _context(60)
    allowed = {n for n in metadata.names if n.startswith("team1/")}
    ctx.authorizer.allowed = allowed
    hidden = next(n for n in sorted(metadata.names) if n not in allowed)
    first = listing.repositories(ctx, Catalog(), "", "pushed", "", size=500)
    assert listing.repositories(ctx, Catalog(), "", "pushed", hidden, size=500) == first
    assert listing.repositories(ctx, Catalog(), "", "pushed", "zzz/none", size=500) == first
