"""Shared token buckets for the gateways' rate limits (issue 19). (Owned by the rate-limit work.)"""

from __future__ import annotations

from collections.abc import Sequence

import redis.asyncio as aredis

from services.common.errors import UNSUPPORTED, RegistryError
from services.gen.wharf.governance.v1 import governance_pb2 as gpb


class TokenBuckets:
    def __init__(self, client: aredis.Redis) -> None:
        self._r = client

    async def take(self, buckets: Sequence[gpb.TokenBucket]) -> list[gpb.TokenGrant]:
        raise RegistryError(UNSUPPORTED, "rate limits are not built yet")
