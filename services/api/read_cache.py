"""Manifests, blob links, tag-list and catalog pages cached in each gateway process, kept coherent
by the metadata service.

A manifest GET, a blob HEAD or a page of tags served from here costs the gateway a dictionary
lookup instead of a gRPC call, which is most of such a request's cost. Only what exists is
cached (a manifest, the size a repository's link to a blob records, a page of an existing
repository's tags), so only changes that remove or replace something need announcing: every
manifest and tag write (which is what changes a tag list), every blob unlink (the metadata
service's ``UnlinkBlob`` and the garbage collector's unlinks alike), and the first link that adds
a repository to the catalog; any announcement drops every cached catalog page. Entries are served only while this
process holds a lease from the metadata service (services/metadata/invalidation.py says
what a lease promises): a background thread keeps a ``WatchManifests`` stream open, pings
to renew the lease, and drops a repository's entries — then acknowledges — when the
service announces a change to it. Without a live lease every lookup misses.

A fetch that raced with an invalidation must not store what it fetched: every change
(an invalidation, a new stream, a lost stream) bumps ``generation``, and a fetched manifest
is stored only if the generation it started under is still current.
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import os
import queue
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import grpc

from services.common import metrics
from services.gen.wharf.metadata.v1 import metadata_pb2 as mpb

log = logging.getLogger("wharf.gateway.read_cache")

# An entry older than this is fetched again even with a live lease: a bound on staleness
# should Redis be changed behind the metadata service's back (a restored backup, say).
MAX_AGE = 60.0
# How long one watch stream may live (every gRPC call carries a deadline); a new one follows.
STREAM_DEADLINE = 600.0
_RETRY_MIN, _RETRY_MAX = 0.2, 5.0


# What a blob-link entry is charged against the byte budget: its key and the dictionary slot.
_LINK_COST = 192
_MANIFEST, _BLOB, _TAGS, _CATALOG = "manifest", "blob", "tags", "catalog"


@dataclasses.dataclass(frozen=True, slots=True)
class Manifest:
    """A manifest as the gateway serves it: its content one bytes object that every answer
    shares. A protobuf message copies a bytes field on each access, so each answer of a cached
    manifest made a copy of its own, which a slow reader held until its answer was sent (150
    slow readers of a 4 MB manifest: ~200 MB more per worker)."""

    digest: str
    media_type: str
    content: bytes
    subject: str = ""

    @classmethod
    def of(cls, message: mpb.Manifest) -> Manifest:
        return cls(message.digest, message.media_type, message.content, message.subject)
_HITS = {kind: (kind, "hit") for kind in (_MANIFEST, _BLOB, _TAGS, _CATALOG)}
_MISSES = {kind: (kind, "miss") for kind in (_MANIFEST, _BLOB, _TAGS, _CATALOG)}
# Catalog pages are filed under no repository (no name is empty); any announcement drops them.
_EVERY_REPOSITORY = ""
_Key = tuple[str, str, str]  # (repository, kind, reference): invalidations go by repository
T = TypeVar("T")


def page_key(limit: int, last: str) -> str:
    """The cache's reference for a page of tags or of the catalog (the hot-read path looks whole
    tag lists up by it)."""
    return f"{limit}:{last}"


class ReadCache:
    def __init__(self, open_stream: Callable[[str, Iterator[Any], float], Any], max_bytes: int,
                 fetch: Callable[[str, str], mpb.Manifest], fetch_link: Callable[[str, str], int],
                 fetch_tags: Callable[[str, str, int], mpb.ListResponse],
                 fetch_repositories: Callable[[str, int], mpb.ListResponse]) -> None:
        self._open_stream = open_stream
        self._max_bytes = max_bytes
        self._fetch = fetch
        self._fetch_link = fetch_link
        self._fetch_tags = fetch_tags
        self._fetch_repositories = fetch_repositories
        self._lock = threading.Lock()
        # key -> (value, what it costs against max_bytes, when it was stored)
        self._entries: collections.OrderedDict[_Key, tuple[Any, int, float]] = collections.OrderedDict()
        self._bytes = 0
        self._generation = 0
        self._lease_until = 0.0
        self._pid = -1
        metrics.CACHE_LEASE.set_function(lambda: 1 if time.monotonic() < self._lease_until else 0)
        metrics.CACHE_BYTES.set_function(lambda: self._bytes)

    @property
    def enabled(self) -> bool:
        return self._max_bytes > 0

    def get(self, repository: str, reference: str) -> Manifest:
        """The manifest, from the cache while the lease holds, else from the metadata service."""
        return self._read((repository, _MANIFEST, reference), lambda: Manifest.of(self._fetch(repository, reference)),
                          lambda manifest: len(manifest.content))

    def blob_size(self, repository: str, digest: str) -> int:
        """The size recorded by this repository's link to the blob (BLOB_UNKNOWN when it has none)."""
        return int(self._read((repository, _BLOB, digest), lambda: self._fetch_link(repository, digest),
                              lambda _: _LINK_COST))

    def tags(self, repository: str, last: str, limit: int) -> tuple[tuple[str, ...], bool]:
        """A page of the tag list: (names, more). Every tag change announces its repository."""
        return self._page((repository, _TAGS, page_key(limit, last)),
                          lambda: self._fetch_tags(repository, last, limit))

    def repositories(self, last: str, limit: int) -> tuple[tuple[str, ...], bool]:
        """A page of the catalog, unfiltered: (names, more). The metadata service announces a
        repository when its first link or manifest adds it to the catalog, and with every change
        that may remove it; any announcement drops every cached page."""
        return self._page((_EVERY_REPOSITORY, _CATALOG, page_key(limit, last)),
                          lambda: self._fetch_repositories(last, limit))

    def _page(self, key: _Key, fetch: Callable[[], mpb.ListResponse]) -> tuple[tuple[str, ...], bool]:
        def names() -> tuple[tuple[str, ...], bool]:
            page = fetch()
            return tuple(page.names), bool(page.more)
        return self._read(key, names, lambda page: _LINK_COST + sum(len(name) + 56 for name in page[0]))

    def cached(self, repository: str, kind: str, reference: str) -> Any | None:
        """What is served without a call, or None (the caller then goes the usual way)."""
        if not self.enabled:
            return None
        self._ensure_watching()
        now = time.monotonic()
        with self._lock:
            if now >= self._lease_until:
                return None
            entry = self._entries.get((repository, kind, reference))
            if entry is None or now - entry[2] >= MAX_AGE:
                return None
            self._entries.move_to_end((repository, kind, reference))
        # A miss is counted where it is fetched (_read), not by every caller that looks.
        metrics.CACHE_LOOKUPS.inc(_HITS[kind])
        return entry[0]

    def _read(self, key: _Key, fetch: Callable[[], T], cost: Callable[[T], int]) -> T:
        if not self.enabled:
            return fetch()
        hit = self.cached(*key)
        if hit is not None:
            return hit  # type: ignore[no-any-return]
        metrics.CACHE_LOOKUPS.inc(_MISSES[key[1]])
        with self._lock:
            generation = self._generation
        value = fetch()
        size = cost(value)
        with self._lock:
            # A quarter of the budget: with the default budget (16 MiB) the largest manifest the
            # gateway accepts (4 MiB) is kept, so its readers share one copy of it. Above an eighth,
            # each answer fetched its own and a slow reader held it (2.8 MB each for a 3 MB one).
            if generation == self._generation and time.monotonic() < self._lease_until \
                    and size <= self._max_bytes // 4:
                self._forget(key)
                self._entries[key] = (value, size, time.monotonic())
                self._bytes += size
                while self._bytes > self._max_bytes:
                    self._forget(next(iter(self._entries)))
        return value

    def _forget(self, key: _Key) -> None:
        entry = self._entries.pop(key, None)
        if entry is not None:
            self._bytes -= entry[1]

    def _invalidate(self, repositories: list[str] | None) -> None:
        """Drops these repositories' entries (every entry for None) and bumps the generation."""
        if repositories is None:
            metrics.CACHE_INVALIDATIONS.labels("all").inc()
        else:
            metrics.CACHE_INVALIDATIONS.labels("repository").inc(len(repositories))
        with self._lock:
            self._generation += 1
            if repositories is None:
                self._entries.clear()
                self._bytes = 0
                self._lease_until = 0.0
                return
            doomed = {*repositories, _EVERY_REPOSITORY}
            for key in [k for k in self._entries if k[0] in doomed]:
                self._forget(key)

    # -- the watch stream ------------------------------------------------------------------

    def _ensure_watching(self) -> None:
        # One watcher per process: gunicorn forks workers after the app is built.
        if self._pid == os.getpid():
            return
        with self._lock:
            if self._pid == os.getpid():
                return
            self._pid = os.getpid()
            self._entries.clear()
            self._bytes = 0
            self._lease_until = 0.0
        threading.Thread(target=self._watch_forever, daemon=True, name="read-cache-watch").start()

    def _watch_forever(self) -> None:
        delay = _RETRY_MIN
        while True:
            started = time.monotonic()
            try:
                self._watch_once()
            except grpc.RpcError as err:
                if err.code() not in (grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.CANCELLED):
                    log.info("read cache watch ended", extra={"fields": {"status": str(err.code())}})
            except Exception:
                log.exception("read cache watch failed")
            finally:
                self._invalidate(None)
            delay = _RETRY_MIN if time.monotonic() - started > 10 else min(delay * 2, _RETRY_MAX)
            time.sleep(delay)

    def _watch_once(self) -> None:
        outbox: queue.Queue[mpb.WatchRequest | None] = queue.Queue()
        sent: dict[int, float] = {}
        # Until the first answer the service does not know this stream's lease: the interval
        # is a guess, corrected by the lease it grants.
        interval = [0.25]

        def requests() -> Iterator[mpb.WatchRequest]:
            number = 0
            while True:
                number += 1
                sent[number] = time.monotonic()
                yield mpb.WatchRequest(ping=number)
                next_ping = time.monotonic() + interval[0]
                while (remaining := next_ping - time.monotonic()) > 0:
                    try:
                        item = outbox.get(timeout=remaining)
                    except queue.Empty:
                        break
                    if item is None:
                        return
                    yield item

        call = self._open_stream("WatchManifests", requests(), STREAM_DEADLINE)
        first = True
        try:
            for event in call:
                if event.seq:
                    self._invalidate(list(event.repositories))
                    outbox.put(mpb.WatchRequest(ack=event.seq))
                if event.pong:
                    sent_at = sent.pop(event.pong, None)
                    for stale in [n for n in list(sent) if n < event.pong]:
                        sent.pop(stale, None)
                    if sent_at is None or not event.lease_ms:
                        continue
                    lease = event.lease_ms / 1000
                    interval[0] = lease / 4
                    with self._lock:
                        if first:
                            # Fetches that began before the service knew this stream may have
                            # missed an invalidation: none of them may be stored.
                            self._generation += 1
                            first = False
                        self._lease_until = max(self._lease_until, sent_at + lease)
        finally:
            outbox.put(None)
            call.cancel()
