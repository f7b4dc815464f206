"""Retention: deleting tags and untagged manifests by rule (issue 19).

A run walks the catalog in pages; for each repository that the first matching retention rule
covers (and the request's pattern, when given, matches) it reads the tags with their push times
and asks services/metadata/retention_plan.py what goes (the rules' exact meaning is written
there), then, unless it is a dry run, deletes:

- tags through ``MetadataStore.delete_tag``, as a client's DELETE would, with the origin
  ``{"account": "wharf-retention"}`` (so the event outbox names it), inside the servicer's
  ``change`` (so the gateways' manifest caches are invalidated before the run goes on). Each
  tag's push time is read again just before its delete: a tag pushed again meanwhile is new,
  and stays. A delete the store refuses (DENIED: an immutable rule) is reported as kept.
- untagged manifests through the garbage collector's script (redis_keys.GC_DELETE_MANIFEST,
  with ``untagged_older_than`` as its grace), which re-checks each one atomically: one tagged,
  named by an index or given a subject meanwhile stays (reported as kept).

Blobs are not retention's business: wharf-gc unlinks and deletes what nothing references any
more. Every deletion is recorded in the audit log (action "retention", the actor who ran it).
The report lists at most MAX_REPORT_ITEMS deletions and as many kept items, and counts the rest:
a run over a large registry must not build a huge gRPC answer.
"""

from __future__ import annotations

import collections
import dataclasses
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import redis.asyncio as aredis

from services.common import patterns
from services.common.errors import DENIED, MANIFEST_UNKNOWN, NAME_UNKNOWN, UNAVAILABLE, RegistryError
from services.common.governance import Policy, Retention
from services.common.redisconn import text
from services.gen.wharf.governance.v1 import governance_pb2 as gpb
from services.gen.wharf.metadata.v1 import metadata_pb2 as mpb
from services.metadata import migrations
from services.metadata import redis_keys as keys
from services.metadata.audit import AuditLog
from services.metadata.outbox import Outbox, origin_json
from services.metadata.policy import PolicyStore
from services.metadata.retention_plan import Manifest, Tag, Verdict, tags_to_delete, untagged_to_delete
from services.metadata.scripts import TimedScript
from services.metadata.store import MetadataStore

# Runs a write that changes a repository, then invalidates the gateways' caches (MetadataServicer._change).
Change = Callable[[str, Awaitable[Any]], Awaitable[None]]

# Items per list in a report (about 200 bytes each); the rest are only counted.
MAX_REPORT_ITEMS = 1000
# Repositories per catalog page, tags per listing page, manifests per pipelined read.
CATALOG_PAGE = 500
TAG_PAGE = 1000
MANIFEST_BATCH = 500
# Deletions per `change` call: the gateways' caches are invalidated after each batch.
DELETE_BATCH = 100
# What the event outbox names as the author of retention's deletions.
ORIGIN = mpb.Origin(account="wharf-retention")
# The account the scheduled runs act as in the audit log (services/metadata/retention_schedule.py).
SCHEDULE_ACCOUNT = "wharf-retention"
log = logging.getLogger("wharf.metadata.retention")


class _Report:
    """The answer, cut at MAX_REPORT_ITEMS per list, with counts of the deletions by kind."""

    def __init__(self, limit: int = MAX_REPORT_ITEMS) -> None:
        self.pb = gpb.RetentionReport()
        self._limit = limit
        self.tags = 0
        self.manifests = 0

    @staticmethod
    def _item(repository: str, verdict: Verdict) -> gpb.RetentionItem:
        return gpb.RetentionItem(repository=repository, tag=verdict.tag, digest=verdict.digest,
                                 reason=verdict.reason[:500], at_ms=verdict.at_ms)

    def deleted(self, repository: str, verdicts: list[Verdict]) -> None:
        for verdict in verdicts:
            if verdict.tag:
                self.tags += 1
            else:
                self.manifests += 1
            if len(self.pb.deleted) < self._limit:
                self.pb.deleted.append(self._item(repository, verdict))
            else:
                self.pb.deleted_more += 1

    def kept(self, repository: str, verdicts: list[Verdict]) -> None:
        for verdict in verdicts:
            if len(self.pb.kept) < self._limit:
                self.pb.kept.append(self._item(repository, verdict))
            else:
                self.pb.kept_more += 1


class RetentionRunner:
    def __init__(self, client: aredis.Redis, store: MetadataStore, policy: PolicyStore, change: Change,
                 audit: AuditLog, outbox: Outbox | None = None) -> None:
        self._r = client
        self._store = store
        self._policy = policy
        self._change = change
        self._audit = audit
        self._outbox = outbox or Outbox(enabled=False)
        self._delete_untagged = TimedScript(client, "retention_delete_manifest", keys.GC_DELETE_MANIFEST)

    async def run(self, dry_run: bool, pattern: str, actor: gpb.Actor) -> gpb.RetentionReport:
        """Applies the retention rules (with ``dry_run``: only reports what they would delete)."""
        if pattern:
            patterns.validate_pattern(pattern)
        policy, _ = await self._policy.current(fresh=True)
        report = _Report()
        if not policy.retention:
            return report.pb
        if not dry_run:
            await self._check_writable(policy)
        last = ""
        while True:
            names, more = await self._store.list_repositories(last, CATALOG_PAGE)
            for name in names:
                rule = policy.retention_rule(name)
                if rule is None or (pattern and not patterns.matches(pattern, name)):
                    continue
                report.pb.repositories += 1
                await self._repository(name, rule, policy, dry_run, actor, report)
            if not more or not names:
                break
            last = names[-1]
        report.pb.repositories = min(report.pb.repositories, 2**31 - 1)
        return report.pb

    async def _check_writable(self, policy: Policy) -> None:
        if await self._r.exists(keys.MAINTENANCE):
            raise RegistryError(UNAVAILABLE, "the registry is read-only for maintenance; retention cannot delete now",
                                detail={"retry_after": 30})
        if any(rule.untagged_older_than is not None for rule in policy.retention):
            blocked = await migrations.collection_blockers(self._r)
            if blocked:
                raise RegistryError(UNAVAILABLE, f"retention cannot remove untagged manifests now: {blocked}")

    async def _now_ms(self) -> int:
        seconds, micros = await self._r.time()  # Redis's clock: the one push times are written on
        return int(seconds) * 1000 + int(micros) // 1000

    async def _repository(self, name: str, rule: Retention, policy: Policy, dry_run: bool, actor: gpb.Actor,
                          report: _Report) -> None:
        now = await self._now_ms()
        try:
            tags = await self._read_tags(name)
        except RegistryError as err:
            if err.error is NAME_UNKNOWN:
                return  # deleted since the catalog page was read
            raise
        deleted, kept = tags_to_delete(rule, name, tags, now, policy)
        if not dry_run and deleted:
            deleted, refused = await self._delete_tags(name, deleted, actor)
            kept += refused
        report.deleted(name, deleted)
        report.kept(name, kept)
        if rule.untagged_older_than is None:
            return
        # A dry run's tags are still stored: count them as gone. A real run's are gone already.
        untagging = collections.Counter(v.digest for v in deleted) if dry_run else collections.Counter[str]()
        untagged = untagged_to_delete(rule, await self._read_manifests(name), untagging, now)
        if not dry_run and untagged:
            untagged, refused = await self._delete_manifests(name, untagged, rule, actor)
            report.kept(name, refused)
        report.deleted(name, untagged)
        if not dry_run and (deleted or untagged):
            log.info("retention: %s: deleted %d tag(s) and %d untagged manifest(s)", name, len(deleted),
                     len(untagged))

    # -- reading ----------------------------------------------------------------------------------

    async def _read_tags(self, name: str) -> list[Tag]:
        found: list[Tag] = []
        last = ""
        while True:
            names, more = await self._store.list_tags(name, last, TAG_PAGE)
            found_digests, times = await self._store.tag_details(name, names)
            found += [Tag(tag, digest, at) for tag, digest, at in zip(names, found_digests, times, strict=True)
                      if digest]
            if not more or not names:
                return found
            last = names[-1]

    async def _read_manifests(self, name: str) -> list[Manifest]:
        digests = sorted([text(d) async for d in self._r.sscan_iter(keys.manifests(name), count=MANIFEST_BATCH)])
        found: list[Manifest] = []
        for start in range(0, len(digests), MANIFEST_BATCH):
            batch = digests[start:start + MANIFEST_BATCH]
            async with self._r.pipeline(transaction=False) as pipe:
                for digest in batch:
                    pipe.hmget(keys.manifest(name, digest), "created", "subject", "children", "pushed")
                    pipe.scard(keys.tags_of(name, digest))
                answers = await pipe.execute()
            for i, digest in enumerate(batch):
                (created, subject, children, pushed), tag_count = answers[2 * i], answers[2 * i + 1]
                if created is None and subject is None:
                    continue  # deleted since the listing
                found.append(Manifest(digest, int(created or 0), text(subject or b""),
                                      tuple(text(children or b"").split()), int(tag_count), int(pushed or 0)))
        return found

    # -- deleting ---------------------------------------------------------------------------------

    async def _delete_tags(self, name: str, verdicts: list[Verdict],
                           actor: gpb.Actor) -> tuple[list[Verdict], list[Verdict]]:
        """(deleted, refused); each batch inside ``change``, so caches follow as the run goes."""
        done: list[Verdict] = []
        refused: list[Verdict] = []
        for start in range(0, len(verdicts), DELETE_BATCH):
            batch = verdicts[start:start + DELETE_BATCH]
            before = len(done)
            await self._change(name, self._delete_tag_batch(name, batch, done, refused))
            await self._audit.record([_record(actor, name, v) for v in done[before:]])
        return done, refused

    async def _delete_tag_batch(self, name: str, batch: list[Verdict], done: list[Verdict],
                                refused: list[Verdict]) -> None:
        for verdict in batch:
            digests, times = await self._store.tag_details(name, [verdict.tag])
            if digests[0] != verdict.digest or times[0] != verdict.at_ms:
                continue  # pushed again (or deleted) since it was judged: not what the rule judged
            try:
                # Atomic with the push time judged: a push that lands after the read above is kept.
                await self._store.delete_tag(name, verdict.tag, ORIGIN, verdict.at_ms or None)
            except RegistryError as err:
                if err.error is DENIED:  # the store's own immutable-tag check
                    refused.append(dataclasses.replace(verdict, reason=f"refused: {err.message}"))
                    continue
                if err.error is MANIFEST_UNKNOWN:
                    continue  # deleted meanwhile by someone else
                raise
            done.append(verdict)

    async def _delete_manifests(self, name: str, verdicts: list[Verdict], rule: Retention,
                                actor: gpb.Actor) -> tuple[list[Verdict], list[Verdict]]:
        done: list[Verdict] = []
        refused: list[Verdict] = []
        grace_ms = int((rule.untagged_older_than or 0) * 1000)

        async def delete(batch: list[Verdict]) -> None:
            for verdict in batch:
                if await self._delete_untagged(
                        [keys.repo_prefix(name), keys.CATALOG, name, verdict.digest, grace_ms, "1", "0",
                         origin_json(ORIGIN)], self._outbox.keys_for(name)):
                    done.append(verdict)
                else:
                    refused.append(dataclasses.replace(
                        verdict, reason="no longer removable when its turn came (tagged again, named by an "
                                        "index, or gone)"))
        for start in range(0, len(verdicts), DELETE_BATCH):
            before = len(done)
            await self._change(name, delete(verdicts[start:start + DELETE_BATCH]))
            await self._audit.record([_record(actor, name, v) for v in done[before:]])
        return done, refused


def _record(actor: gpb.Actor, repository: str, verdict: Verdict) -> gpb.AuditRecord:
    """The audit record of one deletion: who ran retention (the schedule: wharf-retention)."""
    kind = "service" if actor.account == SCHEDULE_ACCOUNT else "user" if actor.account else "operator"
    return gpb.AuditRecord(account=actor.account or "operator", account_kind=kind, address=actor.address,
                           action="retention", repository=repository, reference=verdict.tag or verdict.digest,
                           result="ok", detail=(f"{verdict.digest}: " if verdict.tag else "") + verdict.reason[:900],
                           via=actor.via or "metadata")
