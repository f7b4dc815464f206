"""Leases of shared token buckets: how a gateway worker spends the rate limits' buckets locally.

The buckets live in the metadata service's Redis (services/metadata/ratelimit.py); a worker takes
a lease of several tokens per call and spends it request by request, so a client under its limit
costs about one call per lease. A refusal is remembered until its Retry-After, so a flood over its
limit costs no calls; when the metadata service is slow or down, requests pass (fail open, logged
at most every ``_LOG_EVERY`` seconds). services/api/ratelimit.py says what is limited and why.

A bucket that pays in debt (pushed bytes) is leased only from what it holds: a refill charges the
body's shortfall as debt and, in the same call, takes the lease ``UP_TO`` what is left, so a bucket
a body drove into debt leases nothing. (Leasing the body and the lease together as debt left the
lease in the worker that took it: the client's next body, reaching that worker, was paid from it
while the shared bucket was seconds in debt.)
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any, Protocol

from services.common.errors import RegistryError
from services.gen.wharf.governance.v1 import governance_pb2 as gpb

log = logging.getLogger("wharf.gateway.ratelimit")
TAKE_TIMEOUT = 0.5          # deadline of a TakeTokens call: a request waits on it
OUTAGE_SECONDS = 2.0        # after a failed call, requests pass without calling for this long
MAX_LOCAL_BUCKETS = 10_000  # leases a worker remembers (least recently used go first)
_LOG_EVERY = 60.0


class Throttled:
    """A warning at most once a minute (an outage must not write a line per request)."""

    def __init__(self) -> None:
        self._last = -_LOG_EVERY

    def warn(self, message: str, **fields: Any) -> None:
        now = time.monotonic()
        if now - self._last >= _LOG_EVERY:
            self._last = now
            log.warning(message, extra={"fields": fields})


@dataclasses.dataclass
class _Lease:
    """What a worker holds of one shared bucket."""

    tokens: float = 0.0
    refused_until: float = 0.0  # monotonic: the shared bucket said no until then
    refilling: threading.Event | None = None


@dataclasses.dataclass(frozen=True)
class Want:
    """``cost`` tokens of bucket ``key``; a refill asks for ``lease`` more (DEBT: the shortfall as debt,
    and up to ``lease`` more only from what the bucket holds after it)."""

    key: str
    rate: float
    burst: float
    cost: float
    lease: float
    take: int = gpb.TokenBucket.UP_TO


class TakeTokens(Protocol):
    def __call__(self, buckets: list[gpb.TokenBucket], timeout: float | None = None) -> list[gpb.TokenGrant]: ...


class Leases:
    """The worker's leases of shared buckets, at most ``capacity`` (an attacker's thousands of
    addresses evict each other, and a lease lost that way only costs its client a call)."""

    def __init__(self, take: TakeTokens, capacity: int = MAX_LOCAL_BUCKETS,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._take = take
        self._capacity = capacity
        self._clock = clock
        self._leases: collections.OrderedDict[str, _Lease] = collections.OrderedDict()
        self._open_until = 0.0
        self._failing = Throttled()
        self.calls = 0

    def _lease(self, key: str) -> _Lease:
        lease = self._leases.get(key)
        if lease is None:
            lease = self._leases[key] = _Lease()
            if len(self._leases) > self._capacity:
                self._leases.popitem(last=False)
        else:
            self._leases.move_to_end(key)
        return lease

    def refused(self, key: str) -> float:
        """Seconds until ``key``'s bucket may grant again, as last heard (0: not refused)."""
        lease = self._leases.get(key)
        return max(0.0, lease.refused_until - self._clock()) if lease is not None else 0.0

    def spend_local(self, wants: Sequence[Want]) -> list[_Lease] | None:
        """Spends ``wants`` from the leases alone; None (nothing spent) when that needs a call or a
        refusal. What was spent can be given back with :meth:`refund`."""
        now = self._clock()
        held = []
        for want in wants:
            lease = self._leases.get(want.key)
            if lease is None or lease.tokens < want.cost or lease.refused_until > now:
                return None
            held.append(lease)
        for want, lease in zip(wants, held, strict=True):
            lease.tokens -= want.cost
        return held

    @staticmethod
    def refund(wants: Sequence[Want], leases: Sequence[_Lease]) -> None:
        for want, lease in zip(wants, leases, strict=True):
            lease.tokens += want.cost

    def spend(self, wants: Sequence[Want]) -> float:
        """Spends ``wants`` (all or none), refilling leases with one call when they run short.
        Returns 0 when allowed, else the seconds until the refusing bucket may grant again."""
        waited = 0
        for _ in range(6):  # a refill normally ends it; greenlets racing for one lease retry
            now = self._clock()
            leases = [self._lease(w.key) for w in wants]
            wait = max((lease.refused_until - now for lease in leases), default=0.0)
            if wait > 0:
                return wait
            short = [(w, lease) for w, lease in zip(wants, leases, strict=True) if lease.tokens < w.cost]
            if not short:
                for want, lease in zip(wants, leases, strict=True):
                    lease.tokens -= want.cost
                return 0.0
            if now < self._open_until:
                return 0.0  # the metadata service failed just now: pass (see the module docstring)
            busy = next((lease.refilling for _, lease in short if lease.refilling is not None), None)
            if busy is not None and waited < 2:
                waited += 1  # another request of this worker is refilling it: its lease may do
                busy.wait(TAKE_TIMEOUT)
                continue
            refused = self._refill(short)
            if refused is None:
                return 0.0
            if refused > 0:
                return refused
        return 0.0

    def _refill(self, short: list[tuple[Want, _Lease]]) -> float | None:
        """One call for every short lease: 0 when all were granted, the longest wait when one was
        refused, None when the call failed (then calls pause for OUTAGE_SECONDS)."""
        done = threading.Event()
        buckets = []
        for want, lease in short:
            lease.refilling = done
            if want.take == gpb.TokenBucket.DEBT:
                # The shortfall, as debt when the bucket owes nothing; then the lease, only from what
                # it still holds (nothing once in debt): a lease never lets a body skip a debt.
                buckets.append(gpb.TokenBucket(key=want.key, rate=want.rate, burst=want.burst,
                                               want=want.cost - lease.tokens, take=gpb.TokenBucket.DEBT))
            buckets.append(gpb.TokenBucket(key=want.key, rate=want.rate, burst=want.burst, want=want.lease,
                                           take=gpb.TokenBucket.UP_TO))
        try:
            self.calls += 1
            grants = self._take(buckets, TAKE_TIMEOUT)
        except RegistryError as err:
            self._open_until = self._clock() + OUTAGE_SECONDS
            self._failing.warn("rate limits not enforced: the metadata service did not answer; requests pass",
                               error=err.message[:200])
            return None
        finally:
            for _, lease in short:
                lease.refilling = None
            done.set()
        if len(grants) != len(buckets):
            raise ValueError(f"{len(grants)} grants for {len(buckets)} buckets")
        now = self._clock()
        wait = 0.0
        answers = iter(grants)
        for want, lease in short:
            grant = next(answers)
            if want.take == gpb.TokenBucket.DEBT:
                topped = next(answers)  # its lease: none (not a refusal) when the bucket is in debt
                if grant.granted > 0:
                    lease.tokens += grant.granted + topped.granted
                    continue
            elif grant.granted > 0:
                lease.tokens += grant.granted
                continue
            seconds = max(grant.retry_after_ms, 1) / 1000
            lease.refused_until = now + seconds
            wait = max(wait, seconds)
        return wait

    def charge(self, key: str, rate: float, burst: float, amount: float) -> None:
        """Bytes already received: from the lease, the rest charged to the shared bucket now."""
        lease = self._lease(key)
        lease.tokens -= amount
        if lease.tokens >= 0:
            return
        owed, lease.tokens = -lease.tokens, 0.0
        try:
            self.calls += 1
            self._take([gpb.TokenBucket(key=key, rate=rate, burst=burst, want=owed, take=gpb.TokenBucket.CHARGE)],
                       TAKE_TIMEOUT)
        except RegistryError as err:
            self._failing.warn("pushed bytes not charged: the metadata service did not answer",
                               error=err.message[:200])
