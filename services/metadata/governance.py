"""gRPC face of governance (protos/wharf/governance/v1): the rules, quotas and usage, retention,
rate-limit buckets, the audit log and whole-repository deletes, served by the metadata service
beside its Metadata API, on the same Redis."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import grpc
import redis.asyncio as aredis

from services.common import governance
from services.common.errors import BLOB_UNKNOWN, DENIED, MANIFEST_UNKNOWN, NAME_UNKNOWN, RegistryError
from services.common.names import validate_name
from services.common.redisconn import text
from services.gen.wharf.governance.v1 import governance_pb2 as gpb
from services.gen.wharf.governance.v1 import governance_pb2_grpc as gpb_grpc
from services.gen.wharf.metadata.v1 import metadata_pb2 as mpb
from services.metadata import redis_keys as keys
from services.metadata.audit import AuditLog
from services.metadata.outbox import Outbox
from services.metadata.policy import PolicyStore
from services.metadata.quotas import Quotas
from services.metadata.ratelimit import TokenBuckets
from services.metadata.retention import RetentionRunner
from services.metadata.store import MetadataStore

Change = Callable[[str, Awaitable[Any]], Awaitable[None]]


def admin_record(actor: gpb.Actor, action: str, detail: str, result: str = "ok",
                 repository: str = "") -> gpb.AuditRecord:
    """An audit record of an administrative change made through this API."""
    return gpb.AuditRecord(account=actor.account or "operator", account_kind="operator" if not actor.account
                           else "user", address=actor.address, action=action, repository=repository,
                           result=result, detail=detail[:1000], via=actor.via or "wharf-admin")



@contextlib.contextmanager
def _gone_meanwhile() -> Iterator[None]:
    """A delete of something another request removed first is as good as done; any other
    refusal stops the repository's deletion."""
    try:
        yield
    except RegistryError as err:
        if err.error not in (MANIFEST_UNKNOWN, BLOB_UNKNOWN, NAME_UNKNOWN):
            raise

class GovernanceServicer(gpb_grpc.GovernanceServicer):
    def __init__(self, client: aredis.Redis, store: MetadataStore, policy: PolicyStore, change: Change,
                 audit: AuditLog, outbox: Outbox | None = None) -> None:
        self._r = client
        self._store = store
        self._policy = policy
        self._change = change
        self._audit = audit
        self._buckets = TokenBuckets(client)
        self._quotas = Quotas(client, policy)
        self._retention = RetentionRunner(client, store, policy, change, audit, outbox)

    async def _policy_pb(self) -> gpb.Policy:
        effective, version = await self._policy.current(fresh=True)
        return gpb.Policy(document=effective.to_json(), version=int(version), file_document=self._policy.file.to_json())

    async def GetPolicy(self, request: gpb.GetPolicyRequest, context: grpc.aio.ServicerContext) -> gpb.Policy:
        return await self._policy_pb()

    async def SetRule(self, request: gpb.SetRuleRequest, context: grpc.aio.ServicerContext) -> gpb.Policy:
        try:
            rule = await self._policy.set_rule(request.kind, request.rule)
        except RegistryError as err:
            await self._audit.record([admin_record(request.actor, f"{request.kind[:40]} set", request.rule,
                                                   err.error.code)])
            raise
        await self._audit.record([admin_record(request.actor, f"{request.kind} set",
                                               json.dumps(governance.rule_json(rule), sort_keys=True))])
        return await self._policy_pb()

    async def RemoveRule(self, request: gpb.RemoveRuleRequest, context: grpc.aio.ServicerContext) -> gpb.Policy:
        try:
            await self._policy.remove_rule(request.kind, request.key)
        except RegistryError as err:
            await self._audit.record([admin_record(request.actor, f"{request.kind[:40]} remove", request.key,
                                                   err.error.code)])
            raise
        await self._audit.record([admin_record(request.actor, f"{request.kind} remove", request.key)])
        return await self._policy_pb()

    async def Usage(self, request: gpb.UsageRequest, context: grpc.aio.ServicerContext) -> gpb.UsageResponse:
        return gpb.UsageResponse(namespaces=await self._quotas.usage(request.namespace, request.repositories))

    async def ReserveUpload(self, request: gpb.ReserveUploadRequest,
                            context: grpc.aio.ServicerContext) -> gpb.ReserveUploadResponse:
        limit = await self._quotas.reserve(request.repository, request.upload_id, request.bytes)
        return gpb.ReserveUploadResponse(limit=limit)

    async def ReleaseUpload(self, request: gpb.ReleaseUploadRequest,
                            context: grpc.aio.ServicerContext) -> gpb.ReserveUploadResponse:
        await self._quotas.release(request.repository, request.upload_id, request.keep)
        return gpb.ReserveUploadResponse()

    async def RunRetention(self, request: gpb.RetentionRequest,
                           context: grpc.aio.ServicerContext) -> gpb.RetentionReport:
        return await self._retention.run(request.dry_run, request.repositories, request.actor)

    async def TakeTokens(self, request: gpb.TakeTokensRequest,
                         context: grpc.aio.ServicerContext) -> gpb.TakeTokensResponse:
        return gpb.TakeTokensResponse(grants=await self._buckets.take(list(request.buckets)))

    async def RecordAudit(self, request: gpb.RecordAuditRequest,
                          context: grpc.aio.ServicerContext) -> gpb.RecordAuditResponse:
        await self._audit.record(list(request.records))
        return gpb.RecordAuditResponse()

    async def QueryAudit(self, request: gpb.QueryAuditRequest,
                         context: grpc.aio.ServicerContext) -> gpb.QueryAuditResponse:
        return await self._audit.query(request)

    async def DeleteRepository(self, request: gpb.DeleteRepositoryRequest,
                               context: grpc.aio.ServicerContext) -> gpb.DeleteRepositoryResponse:
        """Every manifest (with its tags) and blob link of the repository, each through the store's
        own delete (so events, caches and quotas follow); refused up front while a tag is immutable
        (and each manifest delete checks again, so a tag made immutable meanwhile still holds)."""
        name = validate_name(request.repository)
        origin = mpb.Origin(account=request.actor.account or "operator", address=request.actor.address)
        policy, _ = await self._policy.current(fresh=True)
        tags = sorted(text(t) for t in await self._r.hkeys(keys.tags(name)))
        held = [t for t in tags if policy.immutable_rule(name, t)]
        if held:
            await self._audit.record([admin_record(request.actor, "repository delete", f"immutable tag {held[0]}",
                                                   DENIED.code, name)])
            raise RegistryError(DENIED, f"{name} has immutable tags ({', '.join(held[:5])}); it cannot be deleted")
        done = gpb.DeleteRepositoryResponse(tags=len(tags))

        async def delete_all() -> None:
            for digest in sorted(text(d) for d in await self._r.smembers(keys.manifests(name))):
                with _gone_meanwhile():
                    await self._store.delete_manifest(name, digest, origin)
                    done.manifests += 1
            for digest in sorted(text(d) for d in await self._r.hkeys(keys.blobs(name))):
                # Only the blobs no manifest names: a manifest pushed while the repository was being
                # deleted (after the list above) kept its manifest and lost its blob links before.
                with _gone_meanwhile():
                    if await self._store.unlink_blob(name, digest, origin, unnamed_only=True):
                        done.blobs += 1

        try:
            await self._change(name, delete_all())
        except RegistryError as err:
            # Read-only for maintenance, a tag made immutable meanwhile, tags that kept changing:
            # the operator is told, and so is the audit log, with what went before it stopped.
            await self._audit.record([admin_record(
                request.actor, "repository delete",
                f"stopped after {done.manifests} manifests, {done.blobs} blob links: {err.message}"[:500],
                err.error.code, name)])
            raise
        await self._audit.record([admin_record(request.actor, "repository delete",
                                               f"{done.manifests} manifests, {done.blobs} blob links", "ok", name)])
        return done
