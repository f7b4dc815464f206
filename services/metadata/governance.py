"""gRPC face of governance (protos/wharf/governance/v1): the rules, quotas and usage, retention,
rate-limit buckets, the audit log and whole-repository deletes, served by the metadata service
beside its Metadata API, on the same Redis."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
import redis.asyncio as aredis

from services.common import governance
from services.common.errors import UNSUPPORTED, RegistryError
from services.gen.wharf.governance.v1 import governance_pb2 as gpb
from services.gen.wharf.governance.v1 import governance_pb2_grpc as gpb_grpc
from services.metadata.audit import AuditLog
from services.metadata.policy import PolicyStore
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


class GovernanceServicer(gpb_grpc.GovernanceServicer):
    def __init__(self, client: aredis.Redis, store: MetadataStore, policy: PolicyStore, change: Change,
                 audit: AuditLog) -> None:
        self._r = client
        self._store = store
        self._policy = policy
        self._change = change
        self._audit = audit
        self._buckets = TokenBuckets(client)
        self._retention = RetentionRunner(client, store, policy, change, audit)

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
        raise RegistryError(UNSUPPORTED, "quotas are not built yet")

    async def ReserveUpload(self, request: gpb.ReserveUploadRequest,
                            context: grpc.aio.ServicerContext) -> gpb.ReserveUploadResponse:
        raise RegistryError(UNSUPPORTED, "quotas are not built yet")

    async def ReleaseUpload(self, request: gpb.ReleaseUploadRequest,
                            context: grpc.aio.ServicerContext) -> gpb.ReserveUploadResponse:
        raise RegistryError(UNSUPPORTED, "quotas are not built yet")

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
        raise RegistryError(UNSUPPORTED, "not built yet")
