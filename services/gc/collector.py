"""Garbage collection: give back the storage of blobs nothing refers to any more.

Deleting a manifest or a tag only changes metadata; the layers stay linked to the repository
and their bytes stay in the blob store. A collection run:

1. puts the registry in read-only maintenance (``wharf:maintenance``, with a TTL so that a
   crashed run cannot leave it read-only): from then on every metadata write script refuses
   to run, atomically, and the gateway answers writes with 503 and Retry-After. Reads go on;
2. marks, per repository, the blobs its stored manifests refer to (config, layers);
3. unlinks from each repository the blobs none of its manifests refers to;
4. deletes from the blob store every blob no repository links and no manifest refers to;
5. leaves maintenance.

Only blobs whose stored bytes are older than ``grace`` are unlinked or deleted: layers pushed
just before the run, for a manifest that is still on its way, survive it. Just before deleting
a blob the run looks at its age again, because an upload that finds the blob already stored
renews it (filesystem driver). A push that was in flight during the run may still fail and need
a retry, as with any registry's garbage collection.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import re
import time
import uuid
from collections.abc import Callable, Iterator

import redis

from services.blobstore import layout
from services.blobstore.storage.base import FileInfo, StorageDriver
from services.common import digests
from services.common.errors import RegistryError
from services.common.redisconn import text
from services.gc import record
from services.metadata import redis_keys as keys

log = logging.getLogger("wharf.gc")
_SHARD = re.compile(r"^[0-9a-f]{2}\Z")


@dataclasses.dataclass
class Report:
    repositories: int = 0
    manifests: int = 0
    links_removed: int = 0
    blobs_seen: int = 0
    blobs_deleted: int = 0
    bytes_freed: int = 0
    dry_run: bool = False

    def to_json(self) -> dict[str, object]:
        return dataclasses.asdict(self)


class MaintenanceBusy(RuntimeError):
    """Another collection holds the registry in maintenance."""


class MaintenanceLost(RuntimeError):
    """The maintenance key vanished or changed hands mid-run: deleting on would not be safe."""


def referenced_blobs(body: bytes) -> set[str]:
    """The blob digests a stored manifest names: config and layers (and an artifact's blobs)."""
    try:
        manifest = json.loads(body)
    except ValueError:
        return set()
    if not isinstance(manifest, dict):
        return set()
    found: set[str] = set()
    candidates = [manifest.get("config")]
    for field in ("layers", "blobs"):
        value = manifest.get(field)
        if isinstance(value, list):
            candidates.extend(value)
    for descriptor in candidates:
        if isinstance(descriptor, dict) and isinstance(descriptor.get("digest"), str) \
                and digests.looks_like_digest(descriptor["digest"]):
            found.add(descriptor["digest"])
    return found


class Collector:
    def __init__(self, client: redis.Redis, driver: StorageDriver, grace: float, dry_run: bool = False,
                 maintenance_ttl: float = 3600.0, announce: Callable[[set[str]], None] | None = None,
                 delete_blob: Callable[[str], object] | None = None) -> None:
        self._r = client
        # Blob deletes go through the blob store (wharf-gc's main passes its Delete call), where a
        # commit of the same digest can be ordered against them; the driver is only for reading.
        self._delete_blob = delete_blob or (lambda digest: driver.delete(layout.blob_key(digest).rsplit("/", 1)[0]))
        # Tells the gateways' read caches which repositories lost blob links.
        self._announce = announce or (lambda repositories: None)
        self._driver = driver
        self._grace = grace
        self._dry_run = dry_run
        self._ttl = maintenance_ttl
        self._unlink = client.register_script(keys.GC_UNLINK_BLOB)
        self._release = client.register_script(keys.RELEASE_IF_HELD)
        self._renew = client.register_script(keys.RENEW_IF_HELD)
        self._held = ""
        self._renewed = 0.0

    def run(self) -> Report:
        self._held = json.dumps({"gc": uuid.uuid4().hex, "since": int(time.time())})
        if not self._r.set(keys.MAINTENANCE, self._held, nx=True, px=int(self._ttl * 1000)):
            raise MaintenanceBusy("the registry is already in maintenance (another garbage collection?)")
        self._renewed = time.monotonic()
        log.info("maintenance on: the registry is read-only")
        try:
            report = self._collect()
        except BaseException:
            if not self._dry_run:
                with contextlib.suppress(redis.RedisError):
                    record.add_run(self._r, ok=False)
            raise
        else:
            if not self._dry_run:
                record.add_run(self._r, ok=True, blobs_removed=report.blobs_deleted, bytes_removed=report.bytes_freed)
            return report
        finally:
            # Only our own key (compared and deleted in one step): a run that outlived its TTL
            # must not end someone else's.
            self._release(keys=[keys.MAINTENANCE], args=[self._held])
            log.info("maintenance off")

    def _hold_maintenance(self) -> None:
        """Renews the key every third of its TTL; stops the run if it is no longer ours."""
        if time.monotonic() - self._renewed < self._ttl / 3:
            return
        if not self._renew(keys=[keys.MAINTENANCE], args=[self._held, int(self._ttl * 1000)]):
            raise MaintenanceLost("the maintenance key expired or was removed during the run; stopping")
        self._renewed = time.monotonic()

    def _collect(self) -> Report:
        report = Report(dry_run=self._dry_run)
        referenced_anywhere: set[str] = set()
        linked_anywhere: set[str] = set()
        unlinked: dict[str, set[str]] = {}  # digest -> repositories it was (or, dry, would be) unlinked from
        try:
            for name in (text(n) for n in self._r.zrange(keys.CATALOG, 0, -1)):
                self._hold_maintenance()
                report.repositories += 1
                referenced: set[str] = set()
                for digest in (text(d) for d in self._r.smembers(keys.manifests(name))):
                    report.manifests += 1
                    referenced |= referenced_blobs(self._r.hget(keys.manifest(name, digest), "body") or b"")
                referenced_anywhere |= referenced
                for digest in (text(d) for d in self._r.hkeys(keys.blobs(name))):
                    if digest in referenced or not self._old_enough(self._driver.stat(layout.blob_key(digest))):
                        linked_anywhere.add(digest)
                        continue
                    report.links_removed += 1
                    unlinked.setdefault(digest, set()).add(name)
                    if self._dry_run:
                        continue
                    self._unlink(args=[keys.repo_prefix(name), keys.CATALOG, name, digest, keys.blob_repos(digest)])
        finally:
            if not self._dry_run:
                # Before any blob is deleted (and even if this phase failed): no gateway may still
                # answer a HEAD or a mount from a link that is gone.
                self._announce({name for names in unlinked.values() for name in names})
        for digest in self._stored_blobs():
            self._hold_maintenance()
            report.blobs_seen += 1
            if digest in referenced_anywhere or digest in linked_anywhere:
                continue
            if {text(n) for n in self._r.hkeys(keys.blob_repos(digest))} - unlinked.get(digest, set()):
                continue  # linked by a repository the catalog did not list
            info = self._driver.stat(layout.blob_key(digest))
            if info is None or not self._old_enough(info):
                continue
            report.blobs_deleted += 1
            report.bytes_freed += info.size
            if not self._dry_run:
                self._delete_blob(digest)
        log.info("garbage collection done", extra={"fields": report.to_json()})
        return report

    def _old_enough(self, info: FileInfo | None) -> bool:
        """Stored longer than the grace period (a link to a blob that is not stored at all counts)."""
        return info is None or time.time() - info.modified_at >= self._grace

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
