"""Garbage collection's side of the metadata service: what wharf-gc removes, it removes here.

The collector decides from a look at the whole registry, but that look is out of date by the time
it acts; so every removal is a script that re-checks its candidate in the same atomic step
(redis_keys.GC_UNLINK_BLOB, GC_DELETE_MANIFEST, BEGIN_BLOB_DELETE), against the counts the write
scripts keep (refs, children, tag sets, link and arrival times, upload pins). The safety argument,
case by case, is in this service's README ("Online garbage collection").
"""

from __future__ import annotations

import dataclasses
import secrets

import redis.asyncio as aredis

from services.common import digests
from services.common.errors import NAME_INVALID, UNSUPPORTED, RegistryError
from services.common.names import validate_name
from services.common.redisconn import text
from services.metadata import redis_keys as keys
from services.metadata.outbox import GC_ORIGIN, Outbox
from services.metadata.scripts import TimedScript

# A fence outlives any single storage delete by far (the collector's Delete call has a 60 s
# deadline); should the collector die holding one, writers of that blob wait at most this long.
FENCE_TTL_MS = 120_000
# Pulls recorded per call (a gateway's batch).
MAX_PULLS = 5000
# Passes over a repository's manifests: deleting an index frees its children, deleting a subject
# its referrers, one level per pass.
_MAX_PASSES = 16


@dataclasses.dataclass
class Collected:
    unlinked: list[str] = dataclasses.field(default_factory=list)
    removed_manifests: list[str] = dataclasses.field(default_factory=list)

    @property
    def changed(self) -> bool:
        return bool(self.unlinked or self.removed_manifests)


class Lifecycle:
    def __init__(self, client: aredis.Redis, outbox: Outbox | None = None) -> None:
        self._r = client
        self._outbox = outbox or Outbox(enabled=False)
        self._unlink = TimedScript(client, "gc_unlink_blob", keys.GC_UNLINK_BLOB)
        self._delete_manifest = TimedScript(client, "gc_delete_manifest", keys.GC_DELETE_MANIFEST)
        self._begin_delete = TimedScript(client, "begin_blob_delete", keys.BEGIN_BLOB_DELETE)
        self._release = TimedScript(client, "end_blob_delete", keys.RELEASE_IF_HELD_ARGV)
        self._record_pulls = TimedScript(client, "record_pulls", keys.RECORD_PULLS)

    async def collect_repository(self, name: str, grace_ms: int, delete_untagged: bool, dry_run: bool) -> Collected:
        """Removes the repository's manifests nothing keeps (untagged ones only when asked;
        referrers whose subject is gone always), then the blob links no manifest names."""
        validate_name(name)
        grace = max(0, grace_ms)
        done = Collected()
        prefix = keys.repo_prefix(name)
        untagged = "1" if delete_untagged else "0"
        dry = "1" if dry_run else "0"
        removed: set[str] = set()
        outbox = self._outbox.keys_for(name)  # what the collector removes is announced like any delete
        for _ in range(_MAX_PASSES):
            progress = False
            for digest in sorted(text(d) for d in await self._r.smembers(keys.manifests(name))):
                if digest in removed:
                    continue  # dry run: it stays stored, but counts as gone for what it kept
                if await self._delete_manifest([prefix, keys.CATALOG, name, digest, grace, untagged, dry, GC_ORIGIN],
                                             outbox):
                    removed.add(digest)
                    done.removed_manifests.append(digest)
                    progress = True
            if not progress or dry_run:
                break
        for digest in sorted(text(d) for d in await self._r.hkeys(keys.blobs(name))):
            if await self._unlink([prefix, keys.CATALOG, name, digest, keys.blob_repos(digest), grace, dry, GC_ORIGIN],
                                  outbox):
                done.unlinked.append(digest)
        return done

    async def record_pulls(self, pulls: list[tuple[str, str, str, int]]) -> None:
        """(upstream prefix, repository, manifest digest, when in ms) of mirrored pulls."""
        args: list[str | int] = []
        if len(pulls) > MAX_PULLS:
            raise RegistryError(UNSUPPORTED, f"at most {MAX_PULLS} pulls per call")
        for prefix, repository, digest, at in pulls:
            validate_name(repository)
            digests.validate(digest)
            if not repository.startswith(prefix + "/"):
                raise RegistryError(NAME_INVALID, f"{repository} is not under {prefix[:100]}")
            args += [keys.mirror_pulls(prefix), keys.pull_member(repository, digest), int(at)]
        if args:
            await self._record_pulls(args)

    async def begin_blob_delete(self, digest: str) -> tuple[str, str]:
        """(fence, "") when the collector may delete the blob's bytes now, else ("", why)."""
        digests.validate(digest)
        fence = secrets.token_hex(12)
        answer = text(await self._begin_delete([keys.blob_repos(digest), keys.blob_pins(digest),
                                                keys.blob_deleting(digest), fence, FENCE_TTL_MS]))
        return (fence, "") if answer == "ok" else ("", answer)

    async def end_blob_delete(self, digest: str, fence: str) -> None:
        digests.validate(digest)
        await self._release([keys.blob_deleting(digest), fence])
