"""Evicting a mirror's least recently pulled content past its upstream's ``size_limit``.

A mirror's usage is the bytes of the unique blobs its repositories (those under the upstream's
prefix) link, leaving out blobs a repository outside the prefix also links: those stay whatever
happens here, so a private repository never loses a layer to the mirror's eviction. Manifests
go oldest pull first (``wharf:mirror:<prefix>:pulls``, recorded batched by the gateways; one
never recorded counts as the oldest) through the metadata service's ``DeleteManifest``, like any
client delete, until the usage is under the limit; the collection that follows unlinks what no
manifest names any more and deletes the bytes no repository links.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Iterator

import redis

from services.common.redisconn import text
from services.metadata import redis_keys as keys

log = logging.getLogger("wharf.gc")


@dataclasses.dataclass
class Usage:
    """What a prefix's repositories hold, as eviction needs it."""

    sizes: dict[str, int] = dataclasses.field(default_factory=dict)  # blob -> size (counted blobs only)
    named_by: dict[str, int] = dataclasses.field(default_factory=dict)  # blob -> manifests naming it
    manifests: dict[tuple[str, str], list[str]] = dataclasses.field(default_factory=dict)  # -> its blobs

    @property
    def total(self) -> int:
        return sum(self.sizes.values())

    def remove(self, repository: str, digest: str) -> int:
        """Forgets a manifest; returns the bytes that no longer count."""
        freed = 0
        for blob in self.manifests.pop((repository, digest), []):
            self.named_by[blob] = self.named_by.get(blob, 1) - 1
            if self.named_by[blob] <= 0 and blob in self.sizes:
                freed += self.sizes.pop(blob)
        return freed


def _repositories(client: redis.Redis, prefix: str) -> Iterator[str]:
    for raw, _ in client.zscan_iter(keys.CATALOG, match=f"{prefix}/*", count=500):
        yield text(raw)


def usage(client: redis.Redis, prefix: str) -> Usage:
    found = Usage()
    for name in _repositories(client, prefix):
        for digest_raw, size in client.hgetall(keys.blobs(name)).items():
            blob = text(digest_raw)
            holders = {text(h) for h in client.hkeys(keys.blob_repos(blob))}
            if all(h.startswith(prefix + "/") for h in holders):
                found.sizes[blob] = int(size)
        for digest_raw in client.smembers(keys.manifests(name)):
            digest = text(digest_raw)
            named = text(client.hget(keys.manifest(name, digest), "blobs") or b"").split()
            found.manifests[(name, digest)] = named
            for blob in set(named):
                found.named_by[blob] = found.named_by.get(blob, 0) + 1
    return found


def evict(client: redis.Redis, prefix: str, limit: int, delete_manifest: Callable[[str, str], None],
          dry_run: bool) -> list[tuple[str, str]]:
    """Deletes (dry run: lists) the least recently pulled manifests of the prefix until its usage
    fits the limit; returns them."""
    held = usage(client, prefix)
    total = held.total
    if total <= limit:
        return []
    pulled = {text(member): float(score) for member, score in client.zscan_iter(keys.mirror_pulls(prefix), count=500)}
    order = sorted(held.manifests, key=lambda m: (pulled.get(keys.pull_member(*m), 0.0), m))
    evicted: list[tuple[str, str]] = []
    for repository, digest in order:
        if total <= limit:
            break
        if not dry_run:
            delete_manifest(repository, digest)
            client.zrem(keys.mirror_pulls(prefix), keys.pull_member(repository, digest))
        total -= held.remove(repository, digest)
        evicted.append((repository, digest))
    log.info("mirror eviction", extra={"fields": {"upstream": prefix, "limit": limit, "evicted": len(evicted),
                                                  "usage_after": total, "dry_run": dry_run}})
    return evicted
