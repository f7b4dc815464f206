"""The gateway's read cache rules, without a metadata service (the lease is set by hand).

tests/integration/test_manifest_cache.py runs the real thing across processes.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable

from services.api.read_cache import ReadCache
from services.gen.wharf.metadata.v1 import metadata_pb2 as mpb


def _cache(fetch: Callable[[str, str], mpb.Manifest], max_bytes: int = 1 << 20) -> ReadCache:
    cache = ReadCache(lambda method, requests, timeout: None, max_bytes, fetch, lambda repository, digest: 7, _no_tags,
                      _no_repositories)
    cache._pid = os.getpid()  # no watch thread: the tests play the metadata service
    return cache


def _lease(cache: ReadCache, seconds: float = 60.0) -> None:
    cache._lease_until = time.monotonic() + seconds


def _no_tags(repository: str, last: str, limit: int) -> mpb.ListResponse:
    return mpb.ListResponse(names=[f"{repository}-{last}-{limit}"], more=True)


def _no_repositories(last: str, limit: int) -> mpb.ListResponse:
    return mpb.ListResponse(names=[f"{last}-{limit}"], more=True)


class Fetcher:
    def __init__(self, size: int = 10) -> None:
        self.calls: list[tuple[str, str]] = []
        self.size = size
        self.during: Callable[[], None] | None = None

    def __call__(self, repository: str, reference: str) -> mpb.Manifest:
        self.calls.append((repository, reference))
        if self.during is not None:
            self.during()
        return mpb.Manifest(digest=f"sha256:{len(self.calls):064x}", media_type="m", content=b"x" * self.size)


def test_served_from_memory_only_under_a_lease() -> None:
    fetch = Fetcher()
    cache = _cache(fetch)
    cache.get("r", "t")
    cache.get("r", "t")
    assert len(fetch.calls) == 2  # no lease: every read asks the service
    _lease(cache)
    first = cache.get("r", "t")
    assert cache.get("r", "t") is first
    assert len(fetch.calls) == 3
    cache._lease_until = time.monotonic() - 0.001  # the lease ran out
    assert cache.get("r", "t") is not first


def test_an_invalidation_drops_only_its_repositories() -> None:
    fetch = Fetcher()
    cache = _cache(fetch)
    _lease(cache)
    cache.get("a", "t")
    cache.get("b", "t")
    cache._invalidate(["a"])
    cache.get("a", "t")
    cache.get("b", "t")
    assert fetch.calls == [("a", "t"), ("b", "t"), ("a", "t")]


def test_a_fetch_that_raced_an_invalidation_is_not_stored() -> None:
    fetch = Fetcher()
    cache = _cache(fetch)
    _lease(cache)
    fetch.during = lambda: cache._invalidate(["a"])
    cache.get("a", "t")
    fetch.during = None
    cache.get("a", "t")
    assert len(fetch.calls) == 2
    cache.get("a", "t")
    assert len(fetch.calls) == 2


def test_a_lost_stream_empties_the_cache_and_ends_the_lease() -> None:
    fetch = Fetcher()
    cache = _cache(fetch)
    _lease(cache)
    cache.get("a", "t")
    cache._invalidate(None)
    assert cache._lease_until == 0.0 and not cache._entries and cache._bytes == 0


def test_memory_is_bounded_least_recently_used_first() -> None:
    fetch = Fetcher(size=100)
    cache = _cache(fetch, max_bytes=1000)
    _lease(cache)
    for tag in range(10):
        cache.get("r", str(tag))
    cache.get("r", "0")  # touch the oldest
    cache.get("r", "new")
    assert cache._bytes <= 1000
    assert ("r", "manifest", "0") in cache._entries and ("r", "manifest", "1") not in cache._entries
    big = _cache(Fetcher(size=300), max_bytes=1000)  # larger than a quarter of the budget: not kept
    _lease(big)
    big.get("r", "t")
    assert not big._entries


def test_off_when_the_budget_is_zero() -> None:
    fetch = Fetcher()
    cache = ReadCache(lambda method, requests, timeout: None, 0, fetch, lambda repository, digest: 7, _no_tags,
                      _no_repositories)
    cache.get("r", "t")
    cache.get("r", "t")
    assert len(fetch.calls) == 2 and cache._pid == -1  # never started watching


def test_blob_links_share_the_lease_and_the_invalidations() -> None:
    links: list[tuple[str, str]] = []

    def fetch_link(repository: str, digest: str) -> int:
        links.append((repository, digest))
        return 0 if digest == "empty" else 42

    cache = ReadCache(lambda method, requests, timeout: None, 1 << 20, Fetcher(), fetch_link, _no_tags,
                      _no_repositories)
    cache._pid = os.getpid()
    assert cache.blob_size("a", "d") == 42 and cache.cached("a", "blob", "d") is None  # no lease: not kept
    _lease(cache)
    cache.blob_size("a", "d")
    cache.blob_size("a", "empty")
    assert cache.blob_size("a", "d") == 42 and cache.blob_size("a", "empty") == 0  # a size of 0 is a hit too
    assert len(links) == 3
    assert cache.cached("a", "blob", "d") == 42 and cache.cached("a", "manifest", "d") is None
    cache._invalidate(["a"])  # an unlink in "a" (or any change to it) drops its links
    assert cache.cached("a", "blob", "d") is None
    cache.blob_size("a", "d")
    assert len(links) == 4


def test_tag_pages_are_cached_per_cursor_and_dropped_with_their_repository() -> None:
    calls: list[tuple[str, str, int]] = []

    def fetch_tags(repository: str, last: str, limit: int) -> mpb.ListResponse:
        calls.append((repository, last, limit))
        return mpb.ListResponse(names=[f"t{len(calls)}"], more=limit == 1)

    cache = ReadCache(lambda method, requests, timeout: None, 1 << 20, Fetcher(), lambda r, d: 1, fetch_tags,
                      _no_repositories)
    cache._pid = os.getpid()
    _lease(cache)
    assert cache.tags("r", "", 1) == (("t1",), True)
    assert cache.tags("r", "", 1) == (("t1",), True)
    assert cache.tags("r", "t1", 1) == (("t2",), True)  # another cursor: another page
    assert cache.tags("r", "", 100) == (("t3",), False)  # another page size too
    assert len(calls) == 3
    cache._invalidate(["r"])  # a tag write in "r"
    assert cache.tags("r", "", 1) == (("t4",), True)
