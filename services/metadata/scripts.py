"""Registered Lua scripts, timed, counted and traced by name."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import redis
import redis.asyncio as aredis
from redis.commands.core import AsyncScript

from services.common import metrics, tracing
from services.common.errors import UNAVAILABLE, RegistryError
from services.metadata import redis_keys as keys


class TimedScript:
    """A registered Lua script, timed and counted by name (``wharf_redis_script_*``) and traced.
    A refusal the script itself raises (the registry is read-only for maintenance) is an answer,
    not an error: UNAVAILABLE with a Retry-After, whoever ran the script."""

    def __init__(self, client: aredis.Redis, name: str, source: str) -> None:
        self._script: AsyncScript = client.register_script(source)
        self._name = name
        self._duration = metrics.REDIS_SCRIPT_DURATION.labels(name)
        self._errors = metrics.REDIS_SCRIPT_ERRORS.labels(name)

    async def __call__(self, args: Sequence[str | bytes | int], script_keys: Sequence[str] = ()) -> Any:
        started = time.perf_counter()
        try:
            with tracing.span(f"redis {self._name}", tracing.SpanKind.CLIENT,
                              attributes={"db.system": "redis", "db.operation": "EVALSHA"}):
                return await self._script(keys=script_keys, args=args)
        except redis.ResponseError as exc:
            if str(exc).startswith(keys.READ_ONLY):
                raise RegistryError(UNAVAILABLE, "the registry is read-only for maintenance; retry later",
                                    detail={"retry_after": 30}) from None
            self._errors.inc()
            raise
        except redis.RedisError:
            self._errors.inc()
            raise
        finally:
            self._duration.observe(time.perf_counter() - started)
