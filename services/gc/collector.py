"""Garbage collection: give back what nothing refers to any more, while the registry takes pushes.

Deleting a manifest or a tag only changes metadata; the layers stay linked to the repository and
their bytes stay in the blob store. A collection run, with no read-only window:

1. takes ``wharf:gc-lock`` (one run at a time; a TTL it renews, so a dead run's lock lapses) and
   counts the run started (``wharf:gc:started``), both before its first fence;
2. evicts the least recently pulled content of each mirrored upstream past its ``size_limit``
   (eviction.py: through the metadata service's DeleteManifest, like any client delete);
3. asks the metadata service, repository by repository, to remove what nothing keeps
   (``CollectRepository``): referrers whose subject is gone, untagged manifests no index names
   (with ``--delete-untagged``), then blob links no manifest names. Each candidate is re-checked
   in the script that removes it, and the gateways' caches are invalidated like for any delete;
4. walks the blob store's storage and, for each blob stored longer than the grace and linked by no
   repository, asks the metadata service for a delete fence (``BeginBlobDelete``: granted only while
   no repository links it and no upload holds a pin on it), deletes it through the blob store's
   ``Delete`` call, and ends the fence.

Why a push, a mount or a tag move that runs meanwhile can never lose what it was acknowledged
for: services/metadata/README.md, "Online garbage collection".
"""

from __future__ import annotations

import dataclasses
import json
import logging
import re
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Protocol

import redis

from services.blobstore import layout
from services.blobstore.storage.base import FileInfo, StorageDriver
from services.common import digests
from services.common.errors import RegistryError
from services.common.redisconn import text
from services.gc import eviction, record
from services.metadata import redis_keys as keys

log = logging.getLogger("wharf.gc")
_SHARD = re.compile(r"^[0-9a-f]{2}\Z")


@dataclasses.dataclass
class Report:
    repositories: int = 0
    manifests_removed: int = 0
    links_removed: int = 0
    blobs_seen: int = 0
    blobs_deleted: int = 0
    bytes_freed: int = 0
    blobs_kept_busy: int = 0  # unlinked, but an upload pinned (or relinked) them meanwhile
    manifests_evicted: int = 0  # mirrored manifests evicted past their upstream's size_limit
    dry_run: bool = False

    def to_json(self) -> dict[str, object]:
        return dataclasses.asdict(self)


class CollectionBusy(RuntimeError):
    """Another collection holds the lock."""


class ReadOnly(RuntimeError):
    """An operator holds the registry read-only for maintenance: nothing may be deleted."""


class LockLost(RuntimeError):
    """The lock expired or changed hands mid-run: another run may be going on; stop."""


class MetadataCalls(Protocol):
    """What the collector asks of the metadata service (wharf-gc's main passes gRPC calls)."""

    def collect(self, repository: str, grace_ms: int, delete_untagged: bool, dry_run: bool) -> tuple[list[str],
                                                                                                      list[str]]: ...

    def begin_delete(self, digest: str) -> tuple[str, str]: ...

    def end_delete(self, digest: str, fence: str) -> None: ...

    def delete_manifest(self, repository: str, digest: str) -> None: ...


class Collector:
    def __init__(self, client: redis.Redis, driver: StorageDriver, metadata: MetadataCalls,
                 delete_blob: Callable[[str], object], grace: float, dry_run: bool = False,
                 delete_untagged: bool = False, lock_ttl: float = 600.0,
                 size_limits: dict[str, int] | None = None) -> None:
        self._r = client  # reads only (the catalog, who links a blob), plus the lock and the record
        self._driver = driver  # reads only (list, stat): deletes go through the blob store
        self._metadata = metadata
        self._delete_blob = delete_blob
        self._grace = grace
        self._dry_run = dry_run
        self._delete_untagged = delete_untagged
        self._ttl = lock_ttl
        self._size_limits = size_limits or {}  # mirrored prefix -> bytes (eviction.py)
        self._release = client.register_script(keys.RELEASE_IF_HELD)
        self._renew = client.register_script(keys.RENEW_IF_HELD)
        self._held = ""
        self._renewed = 0.0

    def run(self) -> Report:
        if not self._dry_run and self._r.exists(keys.MAINTENANCE):
            # Every delete script refuses too (a mark set mid-run stops the run there).
            raise ReadOnly("the registry is read-only for maintenance (wharf:maintenance is set); a --dry-run "
                           "still reports what a collection would remove")
        self._held = json.dumps({"gc": uuid.uuid4().hex, "since": int(time.time())})
        if not self._r.set(keys.GC_LOCK, self._held, nx=True, px=int(self._ttl * 1000)):
            raise CollectionBusy("another garbage collection is running")
        self._renewed = time.monotonic()
        try:
            # Before the first fence: an upload linked without a pin since then is refused (its
            # gateway pins and links again: services/metadata/README.md, "Uploads without a pin").
            # A dry run removes nothing and takes no fence: uploads need not notice it.
            if not self._dry_run:
                self._r.incr(keys.GC_STARTED)
            report = self._collect()
        except BaseException:
            if not self._dry_run:
                try:
                    record.add_run(self._r, ok=False)
                except redis.RedisError:
                    log.warning("could not record the failed run")
            raise
        else:
            if not self._dry_run:
                record.add_run(self._r, ok=True, blobs_removed=report.blobs_deleted, bytes_removed=report.bytes_freed,
                               links_removed=report.links_removed, manifests_removed=report.manifests_removed,
                               blobs_kept_busy=report.blobs_kept_busy, manifests_evicted=report.manifests_evicted)
            return report
        finally:
            # Only our own lock (compared and deleted in one step).
            self._release(keys=[keys.GC_LOCK], args=[self._held])

    def _hold_lock(self) -> None:
        """Renews the lock every third of its TTL; stops the run if it is no longer ours."""
        if time.monotonic() - self._renewed < self._ttl / 3:
            return
        if not self._renew(keys=[keys.GC_LOCK], args=[self._held, int(self._ttl * 1000)]):
            raise LockLost("the collection lock expired or was taken during the run; stopping")
        self._renewed = time.monotonic()

    def _collect(self) -> Report:
        report = Report(dry_run=self._dry_run)
        grace_ms = int(self._grace * 1000)
        for prefix, limit in sorted(self._size_limits.items()):
            self._hold_lock()
            report.manifests_evicted += len(eviction.evict(self._r, prefix, limit, self._metadata.delete_manifest,
                                                           self._dry_run))
        would_unlink: dict[str, set[str]] = {}  # dry run: digest -> repositories that would drop it
        for raw, _ in self._r.zscan_iter(keys.CATALOG, count=500):
            self._hold_lock()
            report.repositories += 1
            name = text(raw)
            unlinked, removed = self._metadata.collect(name, grace_ms, self._delete_untagged, self._dry_run)
            report.links_removed += len(unlinked)
            report.manifests_removed += len(removed)
            if self._dry_run:
                for digest in unlinked:
                    would_unlink.setdefault(digest, set()).add(name)
        for digest in self._stored_blobs():
            self._hold_lock()
            report.blobs_seen += 1
            holders = {text(n) for n in self._r.hkeys(keys.blob_repos(digest))}
            if holders - would_unlink.get(digest, set()):
                continue  # linked: not a candidate (the fence would refuse anyway)
            info = self._driver.stat(layout.blob_key(digest))
            if info is None or not self._old_enough(info):
                continue
            if self._dry_run:
                report.blobs_deleted += 1
                report.bytes_freed += info.size
                continue
            fence, refused = self._metadata.begin_delete(digest)
            if not fence:
                report.blobs_kept_busy += 1
                log.info("blob kept", extra={"fields": {"digest": digest, "because": refused}})
                continue
            try:
                self._delete_blob(digest)
            finally:
                self._metadata.end_delete(digest, fence)
            report.blobs_deleted += 1
            report.bytes_freed += info.size
        log.info("garbage collection done", extra={"fields": report.to_json()})
        return report

    def _old_enough(self, info: FileInfo) -> bool:
        return time.time() - info.modified_at >= self._grace

    def _stored_blobs(self) -> Iterator[str]:
        """Every committed blob's digest, from the blob store's key layout."""
        for algorithm in self._driver.list(layout.BLOBS):
            if algorithm not in digests.ALGORITHMS:
                continue
            for shard in self._driver.list(f"{layout.BLOBS}/{algorithm}"):
                if not _SHARD.match(shard):
                    continue
                for encoded in self._driver.list(f"{layout.BLOBS}/{algorithm}/{shard}"):
                    digest = f"{algorithm}:{encoded}"
                    try:
                        digests.parse(digest)
                    except RegistryError:
                        continue  # a stray name in the tree: not a blob of ours
                    yield digest
