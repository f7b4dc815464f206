"""Retention: deleting tags and untagged manifests by rule (issue 19). (Owned by the retention work.)"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import redis.asyncio as aredis

from services.common.errors import UNSUPPORTED, RegistryError
from services.gen.wharf.governance.v1 import governance_pb2 as gpb
from services.metadata.audit import AuditLog
from services.metadata.policy import PolicyStore
from services.metadata.store import MetadataStore

# Runs a write that changes a repository, then invalidates the gateways' caches (MetadataServicer._change).
Change = Callable[[str, Awaitable[Any]], Awaitable[None]]


class RetentionRunner:
    def __init__(self, client: aredis.Redis, store: MetadataStore, policy: PolicyStore, change: Change,
                 audit: AuditLog) -> None:
        self._r = client
        self._store = store
        self._policy = policy
        self._change = change
        self._audit = audit

    async def run(self, dry_run: bool, pattern: str, actor: gpb.Actor) -> gpb.RetentionReport:
        raise RegistryError(UNSUPPORTED, "retention is not built yet")
