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

While Redis refuses writes (a read-only replica, services/common/redis_refusals.py), logins
keep working rather than answering 503, so that pulls of private repositories keep working:
each process counts failures and checks in flight in its own memory (:class:`LocalThrottle`),
on top of the failures Redis recorded before it stopped taking writes, with the same limits.
An attacker then gets the limit once per auth replica instead of once in all. (Out of memory,
Redis still runs these scripts: each first removes stale entries, and a script that has
written once may go on writing.)
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import math
import random
import secrets
import threading
import time
from collections.abc import Callable, Sequence

import redis

from services.common import metrics, redis_refusals
from services.common.errors import TOOMANYREQUESTS, RegistryError

log = logging.getLogger("wharf.auth.throttle")

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


def _refused(locked: bool, retry: float) -> RegistryError:
    """TOOMANYREQUESTS for a locked bucket (``locked``) or one busy with checks in flight."""
    if locked:
        metrics.LOCKOUTS.inc()
    seconds = max(math.ceil(retry), 1)
    message = "too many failed logins" if locked else "too many logins at once"
    return RegistryError(TOOMANYREQUESTS, f"{message}; retry in {seconds} s", detail={"retry_after": seconds},
                         headers={"Retry-After": str(seconds)})


class LoginThrottle:
    def __init__(self, client: redis.Redis, window: int, busy_wait: float = 3.0,
                 stale_after: float = 30.0) -> None:
        self._window = window
        self._busy_wait = busy_wait
        self._stale_ms = int(stale_after * 1000)
        self._reserve = client.register_script(_RESERVE)
        self._finish = client.register_script(_FINISH)
        self._local = LocalThrottle(client, window, busy_wait)
        self._degraded = False  # logged once when Redis starts and stops refusing the throttle's writes

    def check(self, buckets: Sequence[Bucket], verify: Callable[[], bool]) -> bool:
        """Runs ``verify`` (the password check) when every bucket allows one more attempt and
        returns its answer, counting False as a failure in every bucket and True as a reset.
        Raises TOOMANYREQUESTS, with a retry_after, when a bucket is locked."""
        keys = [key for bucket in buckets for key in (bucket.failures_key, bucket.checking_key)]
        token = secrets.token_hex(8)
        try:
            self._wait_for_slot(keys, token, [bucket.limit for bucket in buckets])
        except redis.RedisError as exc:
            reason = redis_refusals.refusal(exc)
            if reason is None:
                raise
            self._note(reason)
            return self._local.check(buckets, verify, reason)
        if self._degraded:
            self._degraded = False
            log.info("the login throttle counts in Redis again")
        outcome = "abort"  # an exception in verify() is not the caller's failed guess
        try:
            ok = verify()
            outcome = "ok" if ok else "fail"
            return ok
        finally:
            try:
                self._finish(keys=keys, args=[token, outcome, self._window])
            except redis.RedisError as exc:
                # Refused since the reservation: the Redis entry goes stale; this process counts the outcome.
                reason = redis_refusals.refusal(exc)
                if reason is None:
                    raise
                self._note(reason)
                self._local.settle(buckets, outcome, reserved=False)

    def admit_verified(self, buckets: Sequence[Bucket]) -> None:
        """A right password known without a check (services/auth/verified.py): TOOMANYREQUESTS
        when failures lock a bucket (those in Redis, and those this process counted while Redis
        refused writes), so a locked account stays locked; else the buckets' failures are cleared,
        as a checked right password clears them. Nothing is reserved, and nothing is written
        unless there are failures to clear (a storm of remembered logins reads only)."""
        self._local.admit_verified(buckets)

    def _note(self, reason: str) -> None:
        if not self._degraded:
            self._degraded = True
            log.warning("Redis refuses writes: the login throttle counts failed logins in this process",
                        extra={"fields": {"reason": f"Redis {reason}"}})

    def _wait_for_slot(self, keys: list[str], token: str, limits: list[int]) -> None:
        deadline = time.monotonic() + self._busy_wait
        while True:
            state, retry = self._reserve(keys=keys, args=[token, self._window, self._stale_ms, *limits])
            if state == 1:
                return
            if state == -1 or time.monotonic() >= deadline:
                raise _refused(state == -1, int(retry))
            time.sleep(random.uniform(0.02, 0.06))


class LocalThrottle:
    """The throttle while Redis refuses writes: failures and checks in flight counted in this
    process, added to the failures Redis holds (which it still reads). A right password clears
    the failures counted here; those in Redis run out with their window. Failures are counted
    in at most about ``max_keys`` buckets; a login in another bucket then answers 503."""

    def __init__(self, client: redis.Redis, window: int, busy_wait: float, max_keys: int = 10_000) -> None:
        self._r = client
        self._window = window
        self._busy_wait = busy_wait
        self._max_keys = max_keys
        self._lock = threading.Lock()
        self._failures: dict[str, tuple[int, float]] = {}  # failures key -> (count, monotonic end of window)
        self._checking: collections.Counter[str] = collections.Counter()  # failures key -> checks in flight

    def check(self, buckets: Sequence[Bucket], verify: Callable[[], bool], reason: str) -> bool:
        """LoginThrottle.check while Redis refuses writes for ``reason`` (redis_refusals.refusal())."""
        stored = self._stored(buckets)
        deadline = time.monotonic() + self._busy_wait
        while not self._reserve(buckets, stored, time.monotonic() >= deadline, reason):
            time.sleep(random.uniform(0.02, 0.06))
        outcome = "abort"
        try:
            ok = verify()
            outcome = "ok" if ok else "fail"
            return ok
        finally:
            self.settle(buckets, outcome, reserved=True)

    def admit_verified(self, buckets: Sequence[Bucket]) -> None:
        """LoginThrottle.admit_verified: the failures in Redis plus those counted here."""
        stored = self._stored(buckets)
        now = time.monotonic()
        with self._lock:
            for bucket in buckets:
                count, ends = self._failures.get(bucket.failures_key, (0, now))
                redis_count, redis_ttl = stored[bucket.failures_key]
                if redis_count + (count if ends > now else 0) >= bucket.limit:
                    left = max(ends - now, float(redis_ttl) if redis_count else 0.0)
                    raise _refused(True, left if left > 0 else self._window)
            for bucket in buckets:
                self._failures.pop(bucket.failures_key, None)
        counted = [key for key, (count, _) in stored.items() if count]
        if counted:
            try:
                self._r.delete(*counted)
            except redis.RedisError as exc:
                if redis_refusals.refusal(exc) is None:
                    raise  # refused writes: those failures run out with their window, as in settle()

    def _stored(self, buckets: Sequence[Bucket]) -> dict[str, tuple[int, int]]:
        """Each bucket's failures in Redis and the seconds their window has left (reads only)."""
        with self._r.pipeline(transaction=False) as pipe:
            for bucket in buckets:
                pipe.get(bucket.failures_key)
                pipe.ttl(bucket.failures_key)
            replies = pipe.execute()
        return {bucket.failures_key: (int(replies[2 * i] or 0), int(replies[2 * i + 1]))
                for i, bucket in enumerate(buckets)}

    def _reserve(self, buckets: Sequence[Bucket], stored: dict[str, tuple[int, int]], give_up: bool,
                 reason: str) -> bool:
        """True once a check is registered in flight in every bucket; False: wait and ask again.
        Raises TOOMANYREQUESTS when a bucket is locked, or still busy when ``give_up``."""
        now = time.monotonic()
        with self._lock:
            if len(self._failures) >= self._max_keys:
                self._failures = {k: v for k, v in self._failures.items() if v[1] > now}
            if len(self._failures) >= self._max_keys and any(b.failures_key not in self._failures for b in buckets):
                raise redis_refusals.writes_refused(reason)
            locked, busy, retry = False, False, 0.0
            for bucket in buckets:
                key = bucket.failures_key
                count, ends = self._failures.get(key, (0, now))
                redis_count, redis_ttl = stored[key]
                failed = redis_count + (count if ends > now else 0)
                if failed >= bucket.limit:
                    locked = True
                    left = max(ends - now, float(redis_ttl) if redis_count else 0.0)
                    retry = max(retry, left if left > 0 else self._window)
                elif failed + self._checking[key] >= bucket.limit:
                    busy = True
            if locked or (busy and give_up):
                raise _refused(locked, retry)
            if busy:
                return False
            for bucket in buckets:
                self._checking[bucket.failures_key] += 1
            return True

    def settle(self, buckets: Sequence[Bucket], outcome: str, reserved: bool) -> None:
        """Ends a check: ``fail`` counts a failure, ``ok`` clears this process's count."""
        now = time.monotonic()
        with self._lock:
            for bucket in buckets:
                key = bucket.failures_key
                if reserved:
                    self._checking[key] -= 1
                    if self._checking[key] <= 0:
                        del self._checking[key]
                if outcome == "ok":
                    self._failures.pop(key, None)
                elif outcome == "fail":
                    count, ends = self._failures.get(key, (0, now))
                    self._failures[key] = ((count if ends > now else 0) + 1, now + self._window)
