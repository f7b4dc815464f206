"""Shared token buckets for the gateways' rate limits (issue 19).

Every gateway worker of every replica leases tokens from these buckets (services/api/ratelimit.py),
so one client's limit holds wherever its requests land. A bucket is a Redis HASH
``wharf:ratelimit:<key>`` (redis_keys.ratelimit_bucket) holding ``tokens`` and ``at`` (ms): the
tokens it had at that time. It refills lazily, at ``rate`` per second up to ``burst``, computed
when it is next touched, so an idle bucket costs nothing and is never written by a timer.

Why one Lua script for every bucket of a call: it reads, refills and takes in one step, so two
gateways taking from the same bucket at once can never both spend its last token; and a call
names a request's account and address buckets together, so it costs one round trip. The clock is
Redis's ``TIME``, the same for every caller, so the gateways' clocks do not matter. Each write
sets the key's TTL to the time the bucket needs to be full again (plus a second): a full bucket
and a missing one are the same, so idle buckets vanish by themselves and an attacker's thousands of
addresses leave nothing behind once they stop.

How a bucket pays (``TokenBucket.take``):

- ``UP_TO``: as many whole tokens as it holds, up to ``want`` (a gateway's lease of a request
  tokens); nothing when under one token, with the milliseconds until one is there.
- ``DEBT``: all of ``want`` whenever the bucket is not in debt (tokens >= 0), going below zero: a
  push body's bytes are charged whole, and the next push waits until the debt is repaid. Debt is
  capped at ``MAX_DEBT_SECONDS`` of the rate, so one absurd Content-Length cannot lock a client
  out for a year (the gateway refuses bodies over WHARF_MAX_BODY_BYTES anyway).
- ``CHARGE``: all of ``want``, always: bytes a streamed body already delivered.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence

import redis.asyncio as aredis

from services.common.errors import REQUEST_INVALID, RegistryError
from services.gen.wharf.governance.v1 import governance_pb2 as gpb
from services.metadata import redis_keys as keys

# What a call may name: a request's buckets are two or four, a batch of a few more.
MAX_BUCKETS = 64
KEY_RE = re.compile(r"[A-Za-z0-9._:@-]{1,200}")
MAX_RATE = 1e15  # tokens (bytes) per second
MAX_DEBT_SECONDS = 86400
_TAKES = {gpb.TokenBucket.UP_TO: "up_to", gpb.TokenBucket.DEBT: "debt", gpb.TokenBucket.CHARGE: "charge"}

# KEYS: the buckets. ARGV: (rate per s, burst, want, take) per bucket, then MAX_DEBT_SECONDS.
# Returns per bucket {granted (text: Lua numbers returned to Redis lose their fraction), wait ms}.
TAKE = """
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000)
local max_debt_s = tonumber(ARGV[#ARGV])
local out = {}
for i = 1, #KEYS do
  local rate = tonumber(ARGV[i * 4 - 3])
  local burst = tonumber(ARGV[i * 4 - 2])
  local want = tonumber(ARGV[i * 4 - 1])
  local take = ARGV[i * 4]
  local state = redis.call('HMGET', KEYS[i], 'tokens', 'at')
  local tokens = burst
  if state[1] and state[2] then
    local elapsed = math.max(0, now - tonumber(state[2]))
    tokens = math.min(burst, tonumber(state[1]) + elapsed * rate / 1000)
  end
  local granted, wait = 0, 0
  if take == 'up_to' then
    local whole = math.floor(tokens)
    if whole >= 1 then granted = math.min(want, whole) else wait = math.ceil((1 - tokens) * 1000 / rate) end
  elseif take == 'debt' then
    if tokens >= 0 then granted = want else wait = math.ceil(-tokens * 1000 / rate) end
  else
    granted = want
  end
  if granted > 0 then
    tokens = math.max(tokens - granted, -rate * max_debt_s)
    redis.call('HSET', KEYS[i], 'tokens', tostring(tokens), 'at', now)
    -- Until it would be full again, at most ~31 years (a slower refill overflowed PEXPIRE and the
    -- script failed, so the gateways let requests through); as an integer, not Lua's 1e+17.
    local ttl = math.min(math.ceil((burst - tokens) * 1000 / rate) + 1000, 1e12)
    redis.call('PEXPIRE', KEYS[i], string.format('%d', ttl))
  end
  out[i] = {tostring(granted), math.min(wait, 1e12)}  -- a slow refill's wait, bounded as its expiry
end
return out
"""


def _problem(bucket: gpb.TokenBucket) -> str | None:
    if not KEY_RE.fullmatch(bucket.key):
        return "a bucket key has 1 to 200 of letters, digits and ._:@-"
    finite = all(math.isfinite(v) for v in (bucket.rate, bucket.burst, bucket.want))
    if not finite or not 0 < bucket.rate <= MAX_RATE or not 1 <= bucket.burst <= MAX_RATE * MAX_DEBT_SECONDS:
        return "a bucket has a rate above 0 and a burst of at least 1"
    if not 0 < bucket.want <= MAX_RATE * MAX_DEBT_SECONDS or bucket.take not in _TAKES:
        return "a bucket asks for more than 0 tokens, in a known way"
    return None


class TokenBuckets:
    def __init__(self, client: aredis.Redis) -> None:
        self._script = client.register_script(TAKE)

    async def take(self, buckets: Sequence[gpb.TokenBucket]) -> list[gpb.TokenGrant]:
        """One grant per bucket, in order (REQUEST_INVALID for a malformed call: nothing is taken)."""
        if len(buckets) > MAX_BUCKETS:
            raise RegistryError(REQUEST_INVALID, f"at most {MAX_BUCKETS} buckets per call")
        for bucket in buckets:
            problem = _problem(bucket)
            if problem:
                raise RegistryError(REQUEST_INVALID, problem)
        if not buckets:
            return []
        args: list[str | float] = []
        for bucket in buckets:
            args += [repr(bucket.rate), repr(bucket.burst), repr(bucket.want), _TAKES[bucket.take]]
        answers = await self._script(keys=[keys.ratelimit_bucket(b.key) for b in buckets],
                                     args=[*args, MAX_DEBT_SECONDS])
        return [gpb.TokenGrant(granted=float(granted), retry_after_ms=int(wait)) for granted, wait in answers]
