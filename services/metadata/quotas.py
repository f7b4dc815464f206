"""Storage quotas per namespace: what they count, the holds of open uploads, and usage reports.

A namespace is a repository name's first path component (``team`` for ``team/app/api``). Its usage
is the bytes of the unique blobs its repositories link (a layer shared by two of them counts once)
plus their manifests, kept by the write scripts themselves (redis_keys._USAGE), so "how much" is
one read and never a scan. An open upload holds the bytes it has received (and those arriving)
against the quota (``ReserveUpload``), so ten parallel uploads cannot each see room for
themselves and overshoot together; a commit's link gives the hold back in the same step as it
counts the blob, and a hold nobody renews lapses after ``HOLD_TTL_MS`` (an abandoned session).

An append or commit, a mount, or a manifest push that would go over is refused with DENIED,
naming the usage and the limit; reads and deletes always work, and what a delete frees comes back
once the collector unlinks the blobs nothing names any more. A mirror's fills are never refused
(they serve pulls), though they count.
"""

from __future__ import annotations

import re
from typing import Any

import redis.asyncio as aredis

from services.common.errors import DENIED, REQUEST_INVALID, RegistryError
from services.common.governance import Policy, namespace_of
from services.common.names import validate_name
from services.common.redisconn import text
from services.common.yaml_section import human_size
from services.gen.wharf.governance.v1 import governance_pb2 as gpb
from services.metadata import redis_keys as keys
from services.metadata.policy import PolicyStore
from services.metadata.scripts import TimedScript

# An upload id as the blob store makes them (and a gateway's id for a one-request upload).
_UPLOAD_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}\Z")
# How long an upload's hold lasts without being renewed by another append.
HOLD_TTL_MS = 24 * 3_600_000


def validate_upload_id(upload_id: str) -> str:
    if upload_id and not _UPLOAD_ID.match(upload_id):
        raise RegistryError(REQUEST_INVALID, "malformed upload id")
    return upload_id


def limit_for(policy: Policy, name: str, origin: Any = None) -> str:
    """The quota's limit for a write to ``name`` as a script takes it ("" for none; a mirror's
    fill is never refused)."""
    if origin is not None and getattr(origin, "mirror_fill", False):
        return ""
    quota = policy.quota(name)
    return str(quota.size) if quota else ""


def refusal(name: str, answer: list[Any], adding: int, limit: int) -> RegistryError:
    """DENIED for a write the quota has no room for: ``answer`` is the script's {"quota", usage, held}."""
    usage, held = int(answer[1]), int(answer[2])
    namespace = namespace_of(name)
    return RegistryError(DENIED, f"namespace {namespace} is over its storage quota: {human_size(usage)} used"
                                 + (f" and {human_size(held)} held by uploads in progress" if held else "")
                                 + f", limit {human_size(limit)}; this needs {human_size(adding)} more",
                         detail={"namespace": namespace, "usage": usage, "held": held, "limit": limit,
                                 "needed": adding})


class Quotas:
    """Holds for uploads, and usage reports."""

    def __init__(self, client: aredis.Redis, policy: PolicyStore) -> None:
        self._r = client
        self._policy = policy
        self._reserve = TimedScript(client, "reserve_upload", keys.RESERVE_UPLOAD)
        self._release = TimedScript(client, "release_upload", keys.RELEASE_UPLOAD)

    async def reserve(self, name: str, upload_id: str, size: int) -> int:
        """Adds ``size`` bytes to the upload's hold; DENIED when the namespace has no room. Returns
        the limit (0: no quota applies, nothing held)."""
        validate_name(name)
        if not upload_id:
            raise RegistryError(REQUEST_INVALID, "an upload id is required")
        validate_upload_id(upload_id)
        if size < 0:
            raise RegistryError(REQUEST_INVALID, "bytes must not be negative")

        async def run(policy: Policy, version: str) -> tuple[list[Any], int]:
            quota = policy.quota(name)
            if quota is None:
                return [1, 0], 0
            answer = await self._reserve([name, upload_id, size, quota.size, version, HOLD_TTL_MS])
            return list(answer), quota.size

        answer, limit = await self._policy.guarded(run)
        if int(answer[0]) == 0:
            usage, others, mine = int(answer[1]), int(answer[2]), int(answer[3])
            raise refusal(name, ["quota", usage, others + mine], size, limit)
        return limit

    async def release(self, name: str, upload_id: str, keep: int = 0) -> None:
        """Gives the upload's hold back down to ``keep`` bytes (what its session still stores after
        a failed request: those bytes stay counted until the session ends); 0 gives it all back."""
        validate_name(name)
        validate_upload_id(upload_id)
        if keep < 0:
            raise RegistryError(REQUEST_INVALID, "bytes to keep must not be negative")
        if upload_id:
            await self._release([name, upload_id, keep, HOLD_TTL_MS])

    async def usage(self, namespace: str, with_repositories: bool) -> list[gpb.NamespaceUsage]:
        """Usage per namespace: one (empty ``namespace``: every namespace that stores something or
        has a quota), with its repositories' usage when asked."""
        policy, _ = await self._policy.current()
        if namespace:
            validate_name(namespace)
            names = [namespace_of(namespace)]
        else:
            stored = {namespace_of(text(n)) async for n in self._catalog("")}
            names = sorted(stored | {q.namespace for q in policy.quotas})
        # One round trip per batch, not per namespace or repository: an overview of a large
        # registry reads thousands of counters.
        async with self._r.pipeline(transaction=False) as pipe:
            for ns in names:
                pipe.get(keys.namespace_prefix(ns) + "usage")
                pipe.hvals(keys.namespace_prefix(ns) + "uploads")
            counters = await pipe.execute()
        quotas = {q.namespace: q.size for q in policy.quotas}
        answers = []
        for index, ns in enumerate(names):
            usage, holds = counters[2 * index], counters[2 * index + 1]
            held = sum(int(part) for part in (text(v).split(" ")[0] for v in holds) if part.isdigit())
            found = gpb.NamespaceUsage(namespace=ns, bytes=int(text(usage) or 0), reserved=held,
                                       limit=quotas.get(ns, 0))
            if with_repositories:
                repositories = [text(n) async for n in self._catalog(ns)]
                for start in range(0, len(repositories), 1000):
                    part = repositories[start:start + 1000]
                    values = await self._r.mget([keys.usage(r) for r in part])
                    found.repositories.extend(gpb.RepositoryUsage(name=r, bytes=int(text(v) or 0))
                                              for r, v in zip(part, values, strict=True))
            answers.append(found)
        return answers

    async def _catalog(self, namespace: str) -> Any:
        """Catalog names: all, or those of one namespace (the name itself and everything under it)."""
        if not namespace:
            async for name, _ in self._r.zscan_iter(keys.CATALOG, count=1000):
                yield name
            return
        for low, high in ((f"[{namespace}", f"[{namespace}"), (f"[{namespace}/", f"({namespace}0")):
            start = 0
            while True:
                page = await self._r.zrangebylex(keys.CATALOG, low, high, start=start, num=1000)
                for name in page:
                    yield name
                if len(page) < 1000:
                    break
                start += len(page)
