"""The data model's version, and the migrations that bring a Redis database up to it.

``wharf:schema`` holds the version. Version 1 (no key, data present) is the model before push
times and reference counts; version 2 adds, per repository, the counts garbage collection
re-checks (``refs``, ``children``), link times, manifest arrival times, tag push times and the
``wharf:pushed`` index (redis_keys.py lists them). Version 3 adds the storage counters quotas
read: each repository's usage and each namespace's unique blobs and usage (``RECOUNT_NAMESPACE``).

- A metadata replica migrates at start-up, before it serves: under ``wharf:migration-lock`` (a
  TTL'd key it renews, so a crashed migrator's lock lapses), one repository per atomic script,
  each recorded in ``wharf:migration:<v>:done``; a second replica waits for the first, and a
  migration that was interrupted resumes where it stopped. Every step is idempotent.
- What the backfill cannot know it fills with the best thing known: a manifest's arrival with the
  migration's time, a tag's push time with its manifest's arrival (so with the migration's time for
  manifests stored before version 2), a link's time with the migration's time.
- A replica refuses to start against a newer version than it knows (an older replica's scripts
  would not keep the newer model's counts).
- During a rolling upgrade, replicas of the previous version may still write for a while, without
  keeping the counts. Replicas name their version in their lease-grantor id (``s2-...``); while an
  older one is alive, a new replica marks ``wharf:recount-needed``, and once none is left it
  recounts every repository (the same idempotent backfill) and clears the mark. wharf-gc refuses to
  run while either is the case (``collection_blockers``).
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import secrets
import time

import redis
import redis.asyncio as aredis

from services.common import digests
from services.common.redisconn import text
from services.metadata import redis_keys as keys

log = logging.getLogger("wharf.metadata")

SCHEMA_VERSION = 3
RECOUNT_NEEDED = "wharf:recount-needed"
_LOCK_TTL_MS = 60_000
_REPLICA_ID = re.compile(r"^s(\d+)-[0-9a-f]+\Z")


class SchemaTooNew(RuntimeError):
    """The database was migrated by a newer Wharf than this one."""


def replica_id() -> str:
    """A lease-grantor id that names this replica's schema version."""
    return f"s{SCHEMA_VERSION}-{secrets.token_hex(16)}"


def is_current_replica(grantor: str) -> bool:
    found = _REPLICA_ID.match(grantor)
    return found is not None and int(found.group(1)) >= SCHEMA_VERSION


def references(body: bytes) -> tuple[list[str], list[str]]:
    """(blobs, child manifests) a stored manifest names, as the gateway sends them with PutManifest:
    config, layers and an artifact's blobs; an index's manifests."""
    try:
        manifest = json.loads(body)
    except ValueError:
        return [], []
    if not isinstance(manifest, dict):
        return [], []

    def digests_in(*fields: str) -> list[str]:
        found: list[str] = []
        for field in fields:
            value = manifest.get(field)
            for descriptor in ([value] if isinstance(value, dict) else value if isinstance(value, list) else []):
                if isinstance(descriptor, dict) and isinstance(descriptor.get("digest"), str) \
                        and digests.looks_like_digest(descriptor["digest"]):
                    found.append(descriptor["digest"])
        return found
    return digests_in("config", "layers", "blobs"), digests_in("manifests")


async def version(client: aredis.Redis) -> int:
    raw = await client.get(keys.SCHEMA)
    if raw is not None:
        return int(raw)
    # No version: an empty database starts at the current one, one with data is version 1.
    return 1 if await client.exists(keys.CATALOG) else 0


async def migrate(client: aredis.Redis) -> None:
    """Brings the database to SCHEMA_VERSION (or waits while another replica does). Waits for a
    Redis that cannot be reached yet: the service does not serve before its data is current."""
    delay = 0.2
    while True:
        try:
            return await _migrate(client)
        except (redis.ConnectionError, redis.TimeoutError, redis.BusyLoadingError) as exc:
            log.warning("waiting for Redis to migrate the metadata", extra={"fields": {"error": str(exc)[:200]}})
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)


async def _migrate(client: aredis.Redis) -> None:
    holder = secrets.token_hex(12)
    while True:
        current = await version(client)
        if current > SCHEMA_VERSION:
            raise SchemaTooNew(f"the metadata in Redis is at schema version {current}; this Wharf knows "
                               f"{SCHEMA_VERSION}: upgrade this service (never downgrade against migrated data)")
        if current == 0:
            await client.set(keys.SCHEMA, SCHEMA_VERSION, nx=True)
            continue
        if current == SCHEMA_VERSION:
            return
        if await client.set(keys.MIGRATION_LOCK, holder, nx=True, px=_LOCK_TTL_MS):
            try:
                log.info("migrating metadata", extra={"fields": {"from": current, "to": SCHEMA_VERSION}})
                started = time.monotonic()
                count = await backfill(client, holder)
                await client.set(keys.SCHEMA, SCHEMA_VERSION)
                await client.delete(keys.migration_done(SCHEMA_VERSION))
                log.info("metadata migrated", extra={"fields": {
                    "version": SCHEMA_VERSION, "repositories": count, "seconds": round(time.monotonic() - started, 2)}})
            finally:
                await client.eval(keys.RELEASE_IF_HELD, 1, keys.MIGRATION_LOCK, holder)
            return
        await asyncio.sleep(0.5)  # another replica migrates: wait for it (or for its lock to lapse)


async def backfill(client: aredis.Redis, holder: str) -> int:
    """The backfill of every repository not yet done (schema 2's counts), then every namespace's
    usage (schema 3's); returns how many repositories it did."""
    script = client.register_script(keys.MIGRATE_REPOSITORY)
    done_key = keys.migration_done(SCHEMA_VERSION)
    count = 0
    async for raw in client.zscan_iter(keys.CATALOG, count=500):
        name = text(raw[0])
        if await client.sismember(done_key, name):
            continue
        if not await client.eval(keys.RENEW_IF_HELD, 1, keys.MIGRATION_LOCK, holder, _LOCK_TTL_MS):
            raise RuntimeError("lost the migration lock (another replica took over after it lapsed)")
        await _backfill_repository(client, script, name, done_key)
        count += 1
    await recount_namespaces(client, holder)
    return count


async def recount_namespaces(client: aredis.Redis, holder: str) -> None:
    """Recounts every namespace's usage from its repositories, one namespace per atomic script."""
    recount = client.register_script(keys.RECOUNT_NAMESPACE)
    namespaces: dict[str, list[str]] = {}
    async for raw in client.zscan_iter(keys.CATALOG, count=500):
        name = text(raw[0])
        namespaces.setdefault(name.split("/", 1)[0], []).append(name)
    for namespace, names in sorted(namespaces.items()):
        if not await client.eval(keys.RENEW_IF_HELD, 1, keys.MIGRATION_LOCK, holder, _LOCK_TTL_MS):
            raise RuntimeError("lost the migration lock (another replica took over after it lapsed)")
        await recount(args=[namespace, *sorted(names)])


async def _backfill_repository(client: aredis.Redis, script: object, name: str, done_key: str) -> None:
    for _ in range(100):
        digest_list = sorted(text(d) for d in await client.smembers(keys.manifests(name)))
        args: list[str | int | bytes] = [keys.repo_prefix(name), done_key, name, int(time.time() * 1000)]
        for digest in digest_list:
            blobs, kids = references(await client.hget(keys.manifest(name, digest), "body") or b"")
            args += [digest, len(blobs), *blobs, len(kids), *kids]
        args += ["end", len(digest_list)]
        if text(await script(args=args)) == "ok":  # type: ignore[operator]
            return
        await asyncio.sleep(0.05)  # a write came in between: read the repository again
    raise RuntimeError(f"repository {name} kept changing during its migration")


async def recount_when_upgraded(client: aredis.Redis, every: float = 10.0) -> None:
    """Marks a recount while older replicas run beside this one, and does it once they are gone."""
    holder = secrets.token_hex(12)
    while True:
        try:
            if await older_replicas(client):
                await client.set(RECOUNT_NEEDED, "1")
            elif await client.exists(RECOUNT_NEEDED) and \
                    await client.set(keys.MIGRATION_LOCK, holder, nx=True, px=_LOCK_TTL_MS):
                try:
                    await client.delete(keys.migration_done(SCHEMA_VERSION))
                    count = await backfill(client, holder)
                    await client.delete(RECOUNT_NEEDED, keys.migration_done(SCHEMA_VERSION))
                    log.info("recounted after the upgrade", extra={"fields": {"repositories": count}})
                finally:
                    await client.eval(keys.RELEASE_IF_HELD, 1, keys.MIGRATION_LOCK, holder)
        except asyncio.CancelledError:
            raise
        except Exception:  # Redis away, say: try again next round
            log.warning("upgrade recount check failed", exc_info=True)
        await asyncio.sleep(every)


async def older_replicas(client: aredis.Redis) -> list[str]:
    """Live metadata replicas of an older schema version (their lease-grantor ids say so)."""
    live = await client.eval(keys.LIVE_GRANTORS, 1, keys.LEASE_GRANTORS)
    ids = [text(v) for v in live[1::2]]
    return [i for i in ids if not is_current_replica(i)]


async def collection_blockers(client: aredis.Redis) -> str:
    """Why garbage collection must not run now ("" when it may)."""
    if await version(client) < SCHEMA_VERSION:
        return "the metadata is not migrated yet"
    older = await older_replicas(client)
    if older:
        return f"{len(older)} metadata replica(s) of an older version still run: finish the upgrade first"
    if await client.exists(RECOUNT_NEEDED):
        return "the metadata service is recounting references after an upgrade; retry in a minute"
    return ""
