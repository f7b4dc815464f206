"""Redis that answers reads but refuses writes, and the one error a client gets for it.

Redis refuses writes while it is out of memory under ``maxmemory-policy noeviction`` (``OOM``),
while it is a read-only replica (``READONLY``: a primary demoted by a failover that the
services were not told about), while it cannot persist to disk (``MISCONF``) and while fewer
replicas than ``min-replicas-to-write`` are connected (``NOREPLICAS``). Reads keep working in
all four, so the registry keeps serving pulls and answers writes with 503 and a Retry-After.

A refused command changed nothing: Redis refuses a Lua script at its first write, before it
has written anything, and a MULTI transaction before EXEC. So a refused write needs no
cache invalidation (services/metadata/server.py).
"""

from __future__ import annotations

import redis

from services.common.errors import UNAVAILABLE, RegistryError

# What a client is told to wait: an operator has to act (free memory, repoint the services).
RETRY_AFTER = 30

# redis-py raises it for an ``OOM`` reply; the types-redis stubs predate it.
_OUT_OF_MEMORY: type[Exception] = redis.exceptions.OutOfMemoryError  # type: ignore[attr-defined]
# Refusals redis-py has no exception class for, by the error code that starts the reply.
_BY_CODE = {"MISCONF": "cannot save to disk", "NOREPLICAS": "has too few replicas"}


def refusal(exc: BaseException) -> str | None:
    """Why Redis refused a write, when ``exc`` is such a refusal; None for any other error."""
    if isinstance(exc, _OUT_OF_MEMORY):
        return "is out of memory"
    if isinstance(exc, redis.exceptions.ReadOnlyError):
        return "is a read-only replica"
    if isinstance(exc, redis.exceptions.ResponseError):
        return _BY_CODE.get(str(exc).split(" ", 1)[0])
    return None


def writes_refused(reason: str) -> RegistryError:
    """The 503 a refused write answers (Retry-After travels as ``retry_after``, as errors.py reads it)."""
    return RegistryError(UNAVAILABLE, f"the registry's database {reason} and refuses writes; reads still work; "
                                      f"retry in {RETRY_AFTER} s", detail={"retry_after": RETRY_AFTER},
                         headers={"Retry-After": str(RETRY_AFTER)})
