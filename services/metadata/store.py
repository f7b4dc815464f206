"""Repository metadata operations over Redis (asyncio), each a single atomic step."""

from __future__ import annotations

import asyncio
import bisect
import dataclasses
import json
import re
import secrets
import time
from collections.abc import Sequence
from typing import Any

import redis
import redis.asyncio as aredis

from services.common import digests, tracing
from services.common.errors import (
    BLOB_UNKNOWN,
    BLOB_UPLOAD_INVALID,
    BLOB_UPLOAD_UNKNOWN,
    DENIED,
    MANIFEST_BLOB_UNKNOWN,
    MANIFEST_INVALID,
    MANIFEST_UNKNOWN,
    MISSING_LISTED,
    NAME_UNKNOWN,
    UNAVAILABLE,
    RegistryError,
)
from services.common.governance import Policy
from services.common.names import validate_name, validate_tag
from services.common.redisconn import text
from services.metadata import quotas
from services.metadata import redis_keys as keys
from services.metadata.outbox import Outbox, origin_json
from services.metadata.policy import PolicyStore, raise_if_stale
from services.metadata.scripts import TimedScript

# Upper bound on a single listing page, whatever the client asks for.
MAX_PAGE = 10000
# Upper bound on a page of referrers, in bytes of descriptors: well inside a gRPC message.
REFERRERS_PAGE_BYTES = 4 * 1024 * 1024
# What one read of a subject's referrers takes at most, in descriptors and in their bytes (one
# descriptor even when larger).
REFERRERS_READ_COUNT = 256
REFERRERS_READ_BYTES = 1024 * 1024
# How long an upload's pin holds a blob against the collector, from before its commit (whose
# request may still be streaming the body from a slow client) to its link: far above any single
# upload request; a dead gateway's pin only delays the collection of that one blob.
PIN_TTL_MS = 24 * 3_600_000
# How long a pin waits for the collector's delete of the same blob (one storage delete).
PIN_WAIT = 10.0
_PIN_ID = re.compile(r"^[0-9a-f]{24}\Z")


def _with_sizes(refs: list[str], sizes: list[int] | None) -> list[str]:
    """digest, size, digest, size... for the put script; "" where no size is to be checked."""
    if sizes is not None and len(sizes) != len(refs):
        raise RegistryError(MANIFEST_INVALID, "reference sizes do not match the references")
    checked = [str(s) for s in sizes] if sizes else [""] * len(refs)
    return [item for pair in zip(refs, checked, strict=True) for item in pair]


@dataclasses.dataclass(frozen=True)
class BlobLinked:
    """What LINK_BLOB answered: whether it linked, and what an upload's gateway needs to link its
    next one without a pin (services/metadata/README.md, "Uploads without a pin")."""

    linked: bool
    collections_started: int
    collecting: bool
    collection_moved: bool = False
    new_repository: bool = False  # the link put the repository in the catalog

    def __bool__(self) -> bool:
        return self.linked


@dataclasses.dataclass(frozen=True)
class StoredManifest:
    digest: str
    media_type: str
    content: bytes
    subject: str


@dataclasses.dataclass(frozen=True)
class Descriptor:
    media_type: str
    digest: str
    size: int
    artifact_type: str = ""
    annotations: dict[str, str] = dataclasses.field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps({"mediaType": self.media_type, "digest": self.digest, "size": self.size,
                           "artifactType": self.artifact_type, "annotations": self.annotations})

    @classmethod
    def from_json(cls, raw: bytes | str) -> Descriptor:
        data = json.loads(raw)
        return cls(data["mediaType"], data["digest"], int(data["size"]), data.get("artifactType", ""),
                   dict(data.get("annotations") or {}))


def immutable_refusal(name: str, tag: str, policy: Policy, consequence: str) -> RegistryError:
    """DENIED naming the rule that makes ``tag`` immutable."""
    rule = policy.immutable_rule(name, tag)
    which = f" (rule: repositories {rule.repositories!r}, tags {rule.tags!r})" if rule else ""
    return RegistryError(DENIED, f"tag {tag} of {name} is immutable{which} {consequence}")


def _command(name: str) -> Any:
    """The span of one Redis command (a no-op unless tracing is on)."""
    return tracing.span(f"redis {name}", tracing.SpanKind.CLIENT, attributes={"db.system": "redis"})


class MetadataStore:
    """The writes consult the governance rules (``policy``; the stored ones when not given): immutable
    tags and quotas are enforced inside the write scripts, guarded by the rules' version."""

    def __init__(self, client: aredis.Redis, outbox: Outbox | None = None, policy: PolicyStore | None = None) -> None:
        self.policy = policy or PolicyStore(client)
        self._r = client
        self._outbox = outbox or Outbox(enabled=False)
        self._put_manifest = TimedScript(client, "put_manifest", keys.PUT_MANIFEST)
        self._get_manifest = TimedScript(client, "get_manifest", keys.GET_MANIFEST)
        self._delete_manifest = TimedScript(client, "delete_manifest", keys.DELETE_MANIFEST)
        self._delete_tag = TimedScript(client, "delete_tag", keys.DELETE_TAG)
        self._unlink_blob = TimedScript(client, "unlink_blob", keys.UNLINK_BLOB)
        self._unlink_unnamed_blob = TimedScript(client, "unlink_unnamed_blob", keys.UNLINK_UNNAMED_BLOB)
        self._link_blob = TimedScript(client, "link_blob", keys.LINK_BLOB)
        self._pin_blob = TimedScript(client, "pin_blob", keys.PIN_BLOB)
        self._unpin_blob = TimedScript(client, "unpin_blob", keys.UNPIN_BLOB)

    async def _write(self, script: TimedScript, args: Sequence[str | bytes | int], name: str, origin: Any) -> Any:
        """Runs a write script of repository ``name`` with its event outbox and the write's origin
        (the last argument); while an operator holds the registry read-only, a 503 (TimedScript)."""
        try:
            return await script([*args, origin_json(origin)], self._outbox.keys_for(name, origin))
        except redis.ResponseError as exc:
            raise_if_stale(exc)
            raise

    # -- blob links --------------------------------------------------------

    async def link_blob(self, name: str, digest: str, size: int, pin: str = "", source: str = "",
                        origin: Any = None, upload_id: str = "", unpinned_after: int | None = None) -> BlobLinked:
        """Links the blob. With ``pin`` (an upload's, from pin_blob) the link is made only if the pin
        still stands (BLOB_UPLOAD_UNKNOWN otherwise: the collector may have taken the bytes); with
        ``source`` (a mount: a repository, or "*" for any) only if the source links the blob
        (not linked otherwise: the client uploads instead); with ``unpinned_after`` (an upload
        without a pin: the collections its gateway saw started) only if no collection runs or
        started since (not linked otherwise, ``collection_moved``: the gateway pins and links
        again). Bytes new to the namespace must fit its quota (DENIED otherwise; ``upload_id``'s
        hold is given back either way, but for a moved collection's refusal)."""
        validate_name(name)
        digests.validate(digest)
        if source and source != "*":
            validate_name(source)
        if pin and not _PIN_ID.match(pin):
            raise RegistryError(BLOB_UPLOAD_INVALID, "malformed pin")
        quotas.validate_upload_id(upload_id)

        async def run(policy: Policy, version: str) -> tuple[Any, str]:
            limit = quotas.limit_for(policy, name, origin)
            return await self._write(self._link_blob, [
                keys.repo_prefix(name), keys.CATALOG, name, digest, size, keys.blob_repos(digest), pin,
                keys.repo_prefix(source) if source and source != "*" else source, keys.blob_pins(digest),
                "" if source == "*" else source, limit, version, upload_id,
                "" if unpinned_after is None else unpinned_after], name, origin), limit

        answer, limit = await self.policy.guarded(run)
        if isinstance(answer[0], (bytes, str)):  # {"quota", usage, held}
            raise quotas.refusal(name, answer, size, int(limit))
        result, started, collecting, *added = (int(value) for value in answer)
        if result == -1:
            raise RegistryError(BLOB_UPLOAD_UNKNOWN, "the upload took longer than its pin on the blob lasts "
                                                     f"({PIN_TTL_MS // 3_600_000} h); upload the blob again")
        return BlobLinked(result == 1, started, collecting == 1, collection_moved=result == -2,
                          new_repository=added == [1])

    async def pin_blob(self, digest: str) -> str:
        """Holds the blob's bytes against the collector from before an upload's commit until its
        link (the metadata service's README, "Online garbage collection"). While the collector is
        deleting the blob this waits, a storage delete at most: then the commit finds it gone."""
        digests.validate(digest)
        pin = secrets.token_hex(12)
        deadline = time.monotonic() + PIN_WAIT
        while not await self._pin_blob([keys.blob_pins(digest), keys.blob_deleting(digest), pin, PIN_TTL_MS]):
            if time.monotonic() >= deadline:
                raise RegistryError(UNAVAILABLE, "garbage collection is deleting this blob; retry",
                                    detail={"retry_after": 1})
            await asyncio.sleep(0.02)
        return pin

    async def blob_size(self, name: str, digest: str) -> int:
        validate_name(name)
        digests.validate(digest)
        with _command("HGET"):
            size = await self._r.hget(keys.blobs(name), digest)
        if size is None:
            raise RegistryError(BLOB_UNKNOWN, f"blob {digest} unknown to repository {name}")
        return int(size)

    async def unpin_blob(self, digest: str, pin: str) -> None:
        """Gives back the pin of an upload that failed (else it would hold the blob for a day)."""
        digests.validate(digest)
        if not _PIN_ID.match(pin):
            raise RegistryError(BLOB_UPLOAD_INVALID, "malformed pin")
        await self._unpin_blob([keys.blob_pins(digest), pin])

    async def unlink_blob(self, name: str, digest: str, origin: Any = None, unnamed_only: bool = False,
                          guard_immutable: bool = False) -> bool:
        """Unlinks the blob (BLOB_UNKNOWN when the repository does not link it). ``unnamed_only``: only
        while no manifest of the repository names it; False when one does (and nothing changed).
        ``guard_immutable`` (the registry API's DELETE): DENIED while an immutable-tag rule covers
        the repository and one of its manifests names the blob, judged inside the script: a DELETE
        of a layer of an immutably tagged image left the tag serving a manifest whose parts were gone."""
        validate_name(name)
        digests.validate(digest)
        args = [keys.repo_prefix(name), keys.CATALOG, name, digest, keys.blob_repos(digest)]
        if unnamed_only:
            done = await self._write(self._unlink_unnamed_blob, args, name, origin)
        elif not guard_immutable:
            done = await self._write(self._unlink_blob, [*args, "", "0"], name, origin)
        else:
            async def run(policy: Policy, version: str) -> Any:
                held = policy.immutable_repository(name)
                done = await self._write(self._unlink_blob, [*args, version, "1" if held else "0"], name, origin)
                if int(done) == -1 and held is not None:
                    raise RegistryError(DENIED, f"{name} has immutable tags (rule {held.key}): blob {digest} is named "
                                                "by a manifest of it and cannot be deleted on its own")
                return done
            done = await self.policy.guarded(run)
        if not done:
            raise RegistryError(BLOB_UNKNOWN, f"blob {digest} unknown to repository {name}")
        return int(done) > 0

    async def blob_repositories(self, digest: str, limit: int) -> tuple[list[str], int]:
        """Up to ``limit`` repositories linking the blob, and its size (0 when none)."""
        digests.validate(digest)
        found: list[str] = []
        size = 0
        async for name, value in self._r.hscan_iter(keys.blob_repos(digest), count=max(limit, 10)):
            found.append(text(name))
            size = int(value)
            if len(found) >= limit:
                break
        return found, size

    # -- manifests and tags ------------------------------------------------

    async def put_manifest(self, name: str, digest: str, media_type: str, content: bytes, tags: list[str],
                     blob_refs: list[str], manifest_refs: list[str], subject: str,
                     descriptor: Descriptor | None, blob_sizes: list[int] | None = None,
                     manifest_sizes: list[int] | None = None, count_only: bool = False, origin: Any = None) -> None:
        """Stores a manifest whose references are present (and, where sizes are given, of the
        declared sizes) in one atomic script; nothing is written otherwise."""
        validate_name(name)
        digests.validate(digest)
        for tag in tags:
            validate_tag(tag, for_manifest_put=True)
        for ref in [*blob_refs, *manifest_refs, *([subject] if subject else [])]:
            digests.validate(ref)
        base: list[str | bytes | int] = [keys.repo_prefix(name), keys.CATALOG, name, digest, media_type, content,
                                         subject, descriptor.to_json() if descriptor else ""]
        base += [len(blob_refs), *_with_sizes(blob_refs, blob_sizes), len(manifest_refs),
                 *_with_sizes(manifest_refs, manifest_sizes), len(tags), *tags, "1" if count_only else "0"]

        async def run(policy: Policy, version: str) -> tuple[list[str], str]:
            # A mirror's fill follows its upstream: its tags move when the upstream's do.
            immutable = [] if count_only else [t for t in tags if policy.immutable_rule(name, t)]
            limit = "" if count_only else quotas.limit_for(policy, name, origin)
            args = [*base, version, len(immutable), *immutable, limit]
            answer = await self._write(self._put_manifest, args, name, origin)
            return [v.decode() if isinstance(v, bytes) else str(v) for v in answer], limit

        result, limit = await self.policy.guarded(run)
        if result[0] == "size":
            raise RegistryError(MANIFEST_INVALID, f"a descriptor gives {result[1]} a size of {result[2]} bytes; "
                                                  f"the registry holds {result[3]} bytes",
                                detail={"digest": result[1], "declared": int(result[2]), "stored": int(result[3])})
        if result[0] == "missing":
            missing = result[1:]
            more = f" and {len(missing) - MISSING_LISTED} more" if len(missing) > MISSING_LISTED else ""
            raise RegistryError(MANIFEST_BLOB_UNKNOWN, f"manifest references unknown content {missing[0]}{more}",
                                detail={"missing": missing[:MISSING_LISTED]})
        if result[0] == "immutable":
            policy, _ = await self.policy.current()
            raise immutable_refusal(name, result[1], policy, f"cannot move to {digest}")
        if result[0] == "quota":
            raise quotas.refusal(name, [result[0], result[1], result[2]], len(content), int(limit))

    async def get_manifest(self, name: str, reference: str) -> StoredManifest:
        validate_name(name)
        is_digest = digests.looks_like_digest(reference)
        if is_digest:
            digests.validate(reference)
        else:
            validate_tag(reference)
        found = await self._get_manifest([keys.repo_prefix(name), reference, "0" if is_digest else "1"])
        if not found:
            raise RegistryError(MANIFEST_UNKNOWN, f"manifest {reference} unknown to repository {name}")
        digest, media_type, body, subject = found
        return StoredManifest(text(digest), text(media_type), bytes(body), text(subject or b""))

    async def delete_manifest(self, name: str, digest: str, origin: Any = None) -> None:
        """Deletes the manifest and the tags pointing at it, unless one of them is immutable (DENIED)."""
        validate_name(name)
        digests.validate(digest)

        async def run(policy: Policy, version: str) -> None:
            for _ in range(20):
                tags = sorted(text(t) for t in await self._r.smembers(keys.tags_of(name, digest)))
                for tag in tags:
                    if policy.immutable_rule(name, tag):
                        raise immutable_refusal(name, tag, policy, f"so manifest {digest} cannot be deleted")
                held = policy.immutable_repository(name)
                done = await self._write(self._delete_manifest, [keys.repo_prefix(name), keys.CATALOG, name, digest,
                                                                 version, len(tags), *tags, "1" if held else "0"],
                                         name, origin)
                if int(done) == 0:
                    raise RegistryError(MANIFEST_UNKNOWN, f"manifest {digest} unknown to repository {name}")
                if int(done) == -2:
                    rule = held.key if held else ""
                    raise RegistryError(DENIED, f"{name} has immutable tags (rule {rule}): manifest {digest} is named "
                                                "by an index of it and cannot be deleted on its own")
                if int(done) == 1:
                    return
                # -1: its tags changed since they were read; judge them again
            raise RegistryError(UNAVAILABLE, f"the tags of {digest} kept changing; retry", detail={"retry_after": 1})

        await self.policy.guarded(run)

    async def delete_tag(self, name: str, tag: str, origin: Any = None, pushed_at: int | None = None,
                         only_dangling: bool = False) -> None:
        """Deletes the tag (MANIFEST_UNKNOWN when there is none); with ``pushed_at``, only the push
        made then (a tag pushed again since is left, also as MANIFEST_UNKNOWN); with
        ``only_dangling``, only while the manifest it names is not stored (judged in the script,
        so a push between a repair's look and its delete is never undone)."""
        validate_name(name)
        validate_tag(tag)

        async def run(policy: Policy, version: str) -> Any:
            if policy.immutable_rule(name, tag):
                raise immutable_refusal(name, tag, policy, "and cannot be deleted")
            return await self._write(self._delete_tag, [keys.repo_prefix(name), tag, name, version,
                                                        "" if pushed_at is None else str(pushed_at),
                                                        "1" if only_dangling else ""], name, origin)

        if not await self.policy.guarded(run):
            raise RegistryError(MANIFEST_UNKNOWN, f"tag {tag} unknown to repository {name}")

    # -- listings ----------------------------------------------------------

    @staticmethod
    def _page_args(last: str, limit: int) -> tuple[int, str]:
        return (MAX_PAGE if limit < 0 else min(limit, MAX_PAGE)), (f"({last}" if last else "-")

    async def _page(self, key: str, last: str, limit: int) -> tuple[list[str], bool]:
        limit, start = self._page_args(last, limit)
        if limit == 0:
            return [], False
        with _command("ZRANGEBYLEX"):
            found = await self._r.zrangebylex(key, start, "+", start=0, num=limit + 1)
        return self._cut(found, limit)

    @staticmethod
    def _cut(found: list[Any], limit: int) -> tuple[list[str], bool]:
        names = [text(v) for v in found]
        return names[:limit], len(names) > limit

    async def list_tags(self, name: str, last: str, limit: int) -> tuple[list[str], bool]:
        validate_name(name)
        limit, start = self._page_args(last, limit)
        # One round trip: whether the repository exists, and the page.
        async with self._r.pipeline(transaction=False) as pipe:
            pipe.zscore(keys.CATALOG, name)
            pipe.exists(keys.taglist(name))
            pipe.zrangebylex(keys.taglist(name), start, "+", start=0, num=max(limit, 1) + 1)
            in_catalog, has_tags, found = await pipe.execute()
        if in_catalog is None and not has_tags:
            raise RegistryError(NAME_UNKNOWN, f"repository {name} not known to registry")
        return ([], False) if limit == 0 else self._cut(found, limit)

    async def list_repositories(self, last: str, limit: int) -> tuple[list[str], bool]:
        return await self._page(keys.CATALOG, last, limit)

    async def tag_details(self, name: str, tags: list[str]) -> tuple[list[str], list[int]]:
        """The digests and push times (ms; 0 unknown) of these tags of the repository."""
        if not tags:
            return [], []
        async with self._r.pipeline(transaction=False) as pipe:
            pipe.hmget(keys.tags(name), tags)
            pipe.hmget(keys.tag_times(name), tags)
            found, times = await pipe.execute()
        return [text(d or b"") for d in found], [int(t or 0) for t in times]

    async def repositories_by_push(self, last: str, limit: int) -> tuple[list[str], list[int], bool]:
        """A page of the repositories, most recently pushed first, after repository ``last`` (its
        place now: a repository pushed between two pages moves to the front and is not repeated)."""
        limit = MAX_PAGE if limit < 0 else min(limit, MAX_PAGE)
        if limit == 0:
            return [], [], False
        first = 0
        if last:
            validate_name(last)
            rank = await self._r.zrevrank(keys.PUSHED, last)
            if rank is None:
                return [], [], False
            first = rank + 1
        found = await self._r.zrevrange(keys.PUSHED, first, first + limit, withscores=True)
        page = [(text(n), int(sc)) for n, sc in found]
        return [n for n, _ in page[:limit]], [t for _, t in page[:limit]], len(page) > limit

    async def list_referrers(self, name: str, subject: str, artifact_type: str, after: str = "",
                             max_bytes: int = REFERRERS_PAGE_BYTES) -> tuple[list[Descriptor], bool]:
        """A page of ``subject``'s referrers in digest order, after ``after``: descriptors up to
        ``max_bytes`` of their stored JSON (at least one), and whether more remain. Unbounded, a
        subject with many referrers, or a few with large annotations, made an answer larger than
        a gRPC message may be, and the list could not be read at all.

        Only the digests are read whole; the descriptors are read in pieces of at most
        REFERRERS_READ_BYTES (their lengths asked first), from the cursor on, until the page is
        full. Reading the whole hash for every page took every descriptor of the subject into
        this process per request: 24 pulls of a subject with 72 MB of referrers (an empty answer,
        or one page of 3 MB) held the metadata service at 900 MB."""
        validate_name(name)
        digests.validate(subject)
        if after:
            digests.validate(after)
        max_bytes = min(max_bytes, REFERRERS_PAGE_BYTES) if max_bytes > 0 else REFERRERS_PAGE_BYTES
        key = keys.referrers(name, subject)
        with _command("HKEYS"):
            listed = sorted(text(k) for k in await self._r.hkeys(key))
        start = bisect.bisect_right(listed, after) if after else 0
        found: list[Descriptor] = []
        taken = 0
        while start < len(listed):
            batch = await self._referrers_batch(key, listed[start:start + REFERRERS_READ_COUNT])
            start += len(batch)
            with _command("HMGET"):
                values = await self._r.hmget(key, batch)
            for value in values:
                if value is None:  # deleted since the digests were read
                    continue
                descriptor = Descriptor.from_json(value)
                if artifact_type and descriptor.artifact_type != artifact_type:
                    continue
                if found and taken + len(value) > max_bytes:
                    return found, True
                found.append(descriptor)
                taken += len(value)
        return found, False

    async def _referrers_batch(self, key: str, candidates: list[str]) -> list[str]:
        """The first of ``candidates`` whose descriptors add up to at most REFERRERS_READ_BYTES (at
        least one), by their stored lengths."""
        async with self._r.pipeline(transaction=False) as pipe:
            for digest in candidates:
                pipe.hstrlen(key, digest)
            lengths = await pipe.execute()
        total = 0
        for count, length in enumerate(lengths):
            total += int(length)
            if count and total > REFERRERS_READ_BYTES:
                return candidates[:count]
        return candidates
