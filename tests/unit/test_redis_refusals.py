"""Redis refusing writes: which errors are refusals, the 503 they become across the gRPC hop,
and the login throttle that counts in memory meanwhile (the real thing:
tests/integration/test_redis_refuses_writes.py)."""

from __future__ import annotations

import time
from typing import Any

import grpc
import pytest
import redis
from redis.exceptions import OutOfMemoryError  # type: ignore[attr-defined]  # types-redis predates it

from services.auth.throttle import Bucket, LocalThrottle
from services.common import errors, grpcserver
from services.common.redis_refusals import refusal


def test_refusals_are_recognised_and_other_errors_are_not() -> None:
    assert refusal(redis.exceptions.ReadOnlyError("You can't write against a read only replica.")) == \
        "is a read-only replica"
    assert refusal(OutOfMemoryError("command not allowed when used memory > 'maxmemory'.")) == \
        "is out of memory"
    assert refusal(redis.ResponseError("MISCONF Redis is configured to save RDB snapshots")) == "cannot save to disk"
    assert refusal(redis.ResponseError("NOREPLICAS Not enough good replicas to write.")) == "has too few replicas"
    for other in (redis.ResponseError("WRONGTYPE Operation against a key"), redis.ResponseError("WHARF_READ_ONLY"),
                  redis.ConnectionError("Connection refused"), redis.exceptions.BusyLoadingError("loading"),
                  ValueError("OOM")):
        assert refusal(other) is None


class _Context:
    def __init__(self, status: grpc.StatusCode, message: str, meta: tuple[tuple[str, str], ...]) -> None:
        self._status, self._message, self._meta = status, message, meta

    def code(self) -> grpc.StatusCode:
        return self._status

    def details(self) -> str:
        return self._message

    def trailing_metadata(self) -> tuple[tuple[str, str], ...]:
        return self._meta


def test_a_refusal_reaches_the_client_as_503_with_retry_after(caplog: pytest.LogCaptureFixture) -> None:
    accounting = grpcserver._CallAccounting("metadata", "token", backend_errors=(redis.RedisError,))
    secret = "Command # 1 (HSET wharf-auth:account:alice hash $2b$04$secret) of pipeline caused error"
    with caplog.at_level("WARNING", logger="wharf.rpc"):
        err = accounting._failure(OutOfMemoryError(secret), "/m/PutManifest", time.perf_counter())
    assert err is not None and err.error is errors.UNAVAILABLE
    # Only the accounting's own logger: a gateway app another test built in this process may log
    # from its background threads (its governance refresh) while this runs.
    assert [r.getMessage() for r in caplog.records if r.name == "wharf.rpc"] == ["Redis refuses writes"]
    assert "secret" not in caplog.text  # only the reason is logged, never the refused command
    # What the gateway rebuilds from the status and trailing metadata the interceptor sends.
    seen = errors.from_rpc_error(_Context(err.error.grpc_status, err.message, err.trailing_metadata()))  # type: ignore[arg-type]
    assert (seen.http_status, seen.code, seen.headers) == (503, "UNAVAILABLE", {"Retry-After": "30"})
    assert "out of memory and refuses writes; reads still work" in seen.message


class _Redis:
    """What LocalThrottle reads from Redis: each failures key's count and TTL."""

    def __init__(self, stored: dict[str, tuple[int, int]]) -> None:
        self.stored = stored

    def pipeline(self, transaction: bool = True) -> Any:
        stored, replies = self.stored, []

        class Pipe:
            def __enter__(self) -> Pipe:
                return self

            def __exit__(self, *_: object) -> None:
                return None

            def get(self, key: str) -> None:
                replies.append(stored.get(key, (None, -2))[0])

            def ttl(self, key: str) -> None:
                replies.append(stored.get(key, (None, -2))[1])

            def execute(self) -> list[Any]:
                return list(replies)
        return Pipe()


BUCKETS = [Bucket("failures:a", "checking:a", 3)]


def _attempt(throttle: LocalThrottle, ok: bool) -> str:
    try:
        return "OK" if throttle.check(BUCKETS, lambda: ok, "is a read-only replica") else "UNAUTHORIZED"
    except errors.RegistryError as err:
        return err.code


def test_the_local_throttle_locks_after_the_limit_and_counts_what_redis_holds() -> None:
    throttle = LocalThrottle(_Redis({}), window=300, busy_wait=0.1)  # type: ignore[arg-type]
    assert [_attempt(throttle, False) for _ in range(3)] == ["UNAUTHORIZED"] * 3
    assert _attempt(throttle, True) == "TOOMANYREQUESTS"  # locked, even for the right password

    recorded = LocalThrottle(_Redis({"failures:a": (2, 120)}), window=300, busy_wait=0.1)  # type: ignore[arg-type]
    assert _attempt(recorded, False) == "UNAUTHORIZED"  # Redis held 2 of the 3
    with pytest.raises(errors.RegistryError) as locked:
        recorded.check(BUCKETS, lambda: True, "is a read-only replica")
    assert locked.value.headers["Retry-After"] == "300"  # this process's window, longer than Redis's 120 s


def test_a_right_password_clears_the_local_count() -> None:
    throttle = LocalThrottle(_Redis({}), window=300, busy_wait=0.1)  # type: ignore[arg-type]
    assert [_attempt(throttle, ok) for ok in (False, False, True, False, False)] == \
        ["UNAUTHORIZED", "UNAUTHORIZED", "OK", "UNAUTHORIZED", "UNAUTHORIZED"]


def test_the_local_throttle_refuses_new_buckets_once_full() -> None:
    throttle = LocalThrottle(_Redis({}), window=300, busy_wait=0.1, max_keys=1)  # type: ignore[arg-type]
    assert _attempt(throttle, False) == "UNAUTHORIZED"
    with pytest.raises(errors.RegistryError) as full:
        throttle.check([Bucket("failures:b", "checking:b", 3)], lambda: True, "is a read-only replica")
    assert full.value.http_status == 503
