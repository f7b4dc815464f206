"""Login throttling that concurrent attempts cannot race.

Reading a failure counter, checking a password (bcrypt, a quarter of a second) and then
counting the failure let 24 simultaneous guesses all read "0 failures" and all be checked
against a limit of 5. Here one Lua script decides and reserves atomically: a password is
checked only while *failures so far + checks in flight* is below the limit, and the check
is registered as in flight in the same step. When it ends, a second script removes it and
either counts a failure or, on success, clears the failures.

A request that finds the limit taken only by checks still in flight (not by failures) waits
a moment for them instead of being refused: the same robot logging in from ten CI jobs at
once must not be told to come back in five minutes. It is refused when those checks turn
out to be failures, or after ``busy_wait`` seconds.

In-flight entries carry their start time and are dropped after ``stale_after`` seconds, so
a replica that dies mid-check does not hold a slot for ever.
"""

from __future__ import annotations

import dataclasses
import random
import secrets
import time
from collections.abc import Callable, Sequence

import redis

from services.common import metrics
from services.common.errors import TOOMANYREQUESTS, RegistryError

# KEYS: failures_1, checking_1, failures_2, checking_2, ...
# ARGV: token, window (s), stale_after (ms), limit_1, limit_2, ...
# Returns {1, 0} (reserved), {0, 0} (limit taken by checks in flight) or {-1, ttl} (locked).
_RESERVE = """
redis.replicate_commands()
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000)
local window = tonumber(ARGV[2])
local stale = tonumber(ARGV[3])
local locked, retry, busy = false, 0, false
for i = 1, #KEYS, 2 do
  local limit = tonumber(ARGV[3 + (i + 1) / 2])
  redis.call('ZREMRANGEBYSCORE', KEYS[i + 1], '-inf', string.format('%d', now - stale))
  local failed = tonumber(redis.call('GET', KEYS[i]) or '0')
  if failed >= limit then
    locked = true
    local ttl = redis.call('TTL', KEYS[i])
    if ttl < 1 then ttl = window end
    if ttl > retry then retry = ttl end
  elseif failed + redis.call('ZCARD', KEYS[i + 1]) >= limit then
    busy = true
  end
end
if locked then return {-1, retry} end
if busy then return {0, 0} end
for i = 1, #KEYS, 2 do
  redis.call('ZADD', KEYS[i + 1], string.format('%d', now), ARGV[1])
  redis.call('PEXPIRE', KEYS[i + 1], stale)
end
return {1, 0}
"""

# KEYS as above; ARGV: token, outcome ("fail", "ok" or "abort"), window (s).
_FINISH = """
for i = 1, #KEYS, 2 do
  redis.call('ZREM', KEYS[i + 1], ARGV[1])
  if ARGV[2] == 'fail' then
    redis.call('INCR', KEYS[i])
    redis.call('EXPIRE', KEYS[i], ARGV[3])
  elseif ARGV[2] == 'ok' then
    redis.call('DEL', KEYS[i])
  end
end
return 1
"""


@dataclasses.dataclass(frozen=True)
class Bucket:
    """One thing failures are counted per (an account from an address, say) and its limit."""

    failures_key: str
    checking_key: str
    limit: int


class LoginThrottle:
    def __init__(self, client: redis.Redis, window: int, busy_wait: float = 3.0,
                 stale_after: float = 30.0) -> None:
        self._window = window
        self._busy_wait = busy_wait
        self._stale_ms = int(stale_after * 1000)
        self._reserve = client.register_script(_RESERVE)
        self._finish = client.register_script(_FINISH)

    def check(self, buckets: Sequence[Bucket], verify: Callable[[], bool]) -> bool:
        """Runs ``verify`` (the password check) when every bucket allows one more attempt and
        returns its answer, counting False as a failure in every bucket and True as a reset.
        Raises TOOMANYREQUESTS, with a retry_after, when a bucket is locked."""
        keys = [key for bucket in buckets for key in (bucket.failures_key, bucket.checking_key)]
        token = secrets.token_hex(8)
        self._wait_for_slot(keys, token, [bucket.limit for bucket in buckets])
        outcome = "abort"  # an exception in verify() is not the caller's failed guess
        try:
            ok = verify()
            outcome = "ok" if ok else "fail"
            return ok
        finally:
            self._finish(keys=keys, args=[token, outcome, self._window])

    def _wait_for_slot(self, keys: list[str], token: str, limits: list[int]) -> None:
        deadline = time.monotonic() + self._busy_wait
        while True:
            state, retry = self._reserve(keys=keys, args=[token, self._window, self._stale_ms, *limits])
            if state == 1:
                return
            if state == -1 or time.monotonic() >= deadline:
                if state == -1:
                    metrics.LOCKOUTS.inc()
                retry = max(int(retry), 1)
                message = "too many failed logins" if state == -1 else "too many logins at once"
                raise RegistryError(TOOMANYREQUESTS, f"{message}; retry in {retry} s",
                                    detail={"retry_after": retry}, headers={"Retry-After": str(retry)})
            time.sleep(random.uniform(0.02, 0.06))
