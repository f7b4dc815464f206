"""Rate-limit token buckets against a real Redis: the metadata service's script
(services/metadata/ratelimit.py) and the gateway's leases over it (services/api/ratelimit.py)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator

import pytest
import redis
import redis.asyncio as aredis

from services.api.leases import OUTAGE_SECONDS, Leases, Want
from services.common.errors import REQUEST_INVALID, UNAVAILABLE, RegistryError
from services.gen.wharf.governance.v1 import governance_pb2 as gpb
from services.metadata import redis_keys as keys
from services.metadata.ratelimit import MAX_DEBT_SECONDS, TokenBuckets

UP_TO, DEBT, CHARGE = gpb.TokenBucket.UP_TO, gpb.TokenBucket.DEBT, gpb.TokenBucket.CHARGE


class Shared:
    """The metadata service's buckets, called synchronously (as the gateway's client would)."""

    def __init__(self, loop: asyncio.AbstractEventLoop, buckets: TokenBuckets) -> None:
        self._loop = loop
        self._buckets = buckets
        self.calls: list[list[gpb.TokenBucket]] = []

    def __call__(self, buckets: list[gpb.TokenBucket], timeout: float | None = None) -> list[gpb.TokenGrant]:
        self.calls.append(list(buckets))
        return self._loop.run_until_complete(self._buckets.take(buckets))


@pytest.fixture()
def shared(redis_client: redis.Redis, redis_url: str) -> Iterator[Shared]:
    loop = asyncio.new_event_loop()
    client = aredis.Redis.from_url(redis_url)
    yield Shared(loop, TokenBuckets(client))
    loop.run_until_complete(client.aclose())
    loop.close()


def bucket(key: str, rate: float, burst: float, want: float, take: int = UP_TO) -> gpb.TokenBucket:
    return gpb.TokenBucket(key=key, rate=rate, burst=burst, want=want, take=take)  # type: ignore[arg-type]


def taken(shared: Shared, *buckets: gpb.TokenBucket) -> list[tuple[float, int]]:
    return [(g.granted, g.retry_after_ms) for g in shared(list(buckets))]


# -- the script ------------------------------------------------------------------------------------

def test_up_to_grants_whole_tokens_then_says_when_one_is_back(shared: Shared) -> None:
    assert taken(shared, bucket("a", 2, 5, 3)) == [(3, 0)]
    assert taken(shared, bucket("a", 2, 5, 3)) == [(2, 0)]  # what is left, not nothing
    [(granted, wait)] = taken(shared, bucket("a", 2, 5, 1))
    assert granted == 0 and 400 <= wait <= 500  # a token every 500 ms


def test_buckets_refill_at_their_rate_up_to_the_burst(shared: Shared) -> None:
    assert taken(shared, bucket("r", 50, 5, 5)) == [(5, 0)]
    time.sleep(0.1)
    [(granted, _)] = taken(shared, bucket("r", 50, 5, 100))
    assert 4 <= granted <= 5  # 5 per 100 ms, never more than the burst


def test_one_call_takes_from_several_buckets_independently(shared: Shared) -> None:
    taken(shared, bucket("empty", 1, 1, 1))
    assert [g for g, _ in taken(shared, bucket("full", 1, 3, 2), bucket("empty", 1, 1, 1))] == [2, 0]


def test_debt_charges_a_body_whole_and_the_next_waits_until_it_is_repaid(shared: Shared, redis_client: redis.Redis
                                                                         ) -> None:
    assert taken(shared, bucket("b", 1000, 1000, 5000, DEBT)) == [(5000, 0)]
    [(granted, wait)] = taken(shared, bucket("b", 1000, 1000, 1, DEBT))
    assert granted == 0 and 3900 <= wait <= 4000  # 4,000 bytes of debt at 1,000 per second
    assert taken(shared, bucket("b", 1000, 1000, 500, CHARGE)) == [(500, 0)]  # received already: always
    ttl = redis_client.pttl(keys.ratelimit_bucket("b"))
    assert 5000 < ttl <= 6600  # full again after 5.5 s of debt and burst, plus a second


def test_debt_is_capped(shared: Shared, redis_client: redis.Redis) -> None:
    taken(shared, bucket("cap", 1, 1, 10**9, DEBT))
    tokens = float(redis_client.hget(keys.ratelimit_bucket("cap"), "tokens") or 0)
    assert tokens == -MAX_DEBT_SECONDS


def test_idle_buckets_expire_when_they_would_be_full(shared: Shared, redis_client: redis.Redis) -> None:
    # One token short of full at 1 token/s: full again in 1 s, so the TTL is that plus 1 s. The
    # TTL read back is less by however long the call and the read took (a loaded CI machine
    # once took over 10 ms between them), which is timed rather than assumed.
    started = time.monotonic()
    taken(shared, bucket("idle", 1, 10, 1))
    ttl = redis_client.pttl(keys.ratelimit_bucket("idle"))
    elapsed_ms = (time.monotonic() - started) * 1000
    assert 2000 - elapsed_ms - 1 <= ttl <= 2000
    taken(shared, bucket("refused", 1, 1, 1))
    taken(shared, bucket("refused", 1, 1, 1))  # refused: nothing written, the TTL stands
    assert redis_client.pttl(keys.ratelimit_bucket("refused")) <= 2000


def test_a_rate_too_slow_to_refill_within_years_still_limits(shared: Shared) -> None:
    """A bucket whose refill takes longer than Redis's expiry can say (a rate of 1e-300 per second,
    which governance accepts) made its expiry overflow: the script failed and the gateways let
    every request through (they fail open when the buckets cannot be reached)."""
    for rate in (1e-300, 1e-13, 1e-6):
        key = f"slow-{rate}"
        assert taken(shared, bucket(key, rate, 5, 5)) == [(5, 0)]
        [(granted, wait)] = taken(shared, bucket(key, rate, 5, 1))
        assert granted == 0 and wait > 0


@pytest.mark.parametrize("bad", [
    bucket("", 1, 1, 1), bucket("a b", 1, 1, 1), bucket("k" * 201, 1, 1, 1), bucket("k", 0, 1, 1),
    bucket("k", float("nan"), 1, 1), bucket("k", 1, 0.5, 1), bucket("k", 1, 1, 0), bucket("k", 1, 1, float("inf")),
    bucket("k", 1, 1, 1, 7),
])
def test_malformed_buckets_are_refused_and_nothing_is_taken(shared: Shared, redis_client: redis.Redis,
                                                            bad: gpb.TokenBucket) -> None:
    with pytest.raises(RegistryError) as caught:
        shared([bucket("ok", 1, 1, 1), bad])
    assert caught.value.error is REQUEST_INVALID
    assert not redis_client.exists(keys.ratelimit_bucket("ok"))


def test_a_call_names_a_bounded_number_of_buckets(shared: Shared) -> None:
    with pytest.raises(RegistryError):
        shared([bucket(f"k{n}", 1, 1, 1) for n in range(65)])


# -- the gateway's leases ----------------------------------------------------------------------------

def want(key: str = "alice", rate: float = 1.0, burst: float = 20.0, lease: float = 5.0) -> Want:
    return Want(key, rate, burst, 1.0, lease)


def test_a_client_under_its_limit_costs_one_call_per_lease(shared: Shared) -> None:
    leases = Leases(shared)
    assert all(leases.spend([want()]) == 0 for _ in range(10))
    assert len(shared.calls) == 2 and shared.calls[0][0].want == 5


def test_at_the_limit_a_refusal_is_remembered_until_its_retry_after(shared: Shared) -> None:
    leases = Leases(shared)
    allowed = sum(leases.spend([want(rate=0.5, burst=4, lease=3)]) == 0 for _ in range(10))
    assert allowed == 4  # the burst, leased 3 then the 1 left
    calls = len(shared.calls)
    wait = leases.spend([want(rate=0.5, burst=4, lease=3)])
    assert 1.0 < wait <= 2.0  # a token every 2 s
    assert len(shared.calls) == calls  # a refused client costs no call until then


def test_workers_share_the_bucket_within_their_leases(shared: Shared) -> None:
    workers = [Leases(shared) for _ in range(3)]
    started = time.monotonic()
    allowed = sum(workers[n % 3].spend([want("shared", rate=2, burst=30, lease=3)]) == 0 for n in range(120))
    elapsed = time.monotonic() - started
    # Every token spent was taken from the shared bucket: never more than it gave, and never
    # fewer than it gave minus what sits in the other workers' leases.
    assert 30 - 2 * 3 <= allowed <= 30 + 2 * elapsed + 1


def test_all_or_nothing_a_refused_account_leaves_the_address_lease_unspent(shared: Shared) -> None:
    leases = Leases(shared)
    address, account = want("addr", lease=2), want("acct", burst=1, lease=1)
    assert leases.spend([address, account]) == 0
    assert leases.spend([address, account]) > 0  # the account's bucket is empty
    assert leases.spend([address]) == 0  # the address's lease still holds its token
    assert len(shared.calls) == 2


def test_a_metadata_outage_lets_requests_pass_without_a_call_each(shared: Shared) -> None:
    calls = []

    def down(buckets: list[gpb.TokenBucket], timeout: float | None = None) -> list[gpb.TokenGrant]:
        calls.append(timeout)
        raise RegistryError(UNAVAILABLE)

    now = [100.0]
    leases = Leases(down, clock=lambda: now[0])
    assert all(leases.spend([want(key=f"k{n}")]) == 0 for n in range(50))
    assert len(calls) == 1 and calls[0] is not None and calls[0] <= 1.0  # a short deadline
    now[0] += OUTAGE_SECONDS + 0.1
    leases.spend([want()])
    assert len(calls) == 2


def test_local_state_is_bounded(shared: Shared) -> None:
    leases = Leases(shared, capacity=50)
    for n in range(200):
        leases.spend([want(key=f"10.0.{n // 256}.{n % 256}", lease=1)])
    assert len(leases._leases) == 50


def test_hot_path_spends_only_what_the_lease_holds_and_gives_back_a_miss(shared: Shared) -> None:
    leases = Leases(shared)
    assert leases.spend_local([want()]) is None  # nothing leased yet: that needs a call
    assert leases.spend([want()]) == 0  # leases 5, spends 1
    spent = leases.spend_local([want()])
    assert spent is not None and spent[0].tokens == 3
    Leases.refund([want()], spent)
    assert spent[0].tokens == 4 and len(shared.calls) == 1


def test_bytes_are_debt_and_a_streamed_body_is_charged_once_received(shared: Shared) -> None:
    leases = Leases(shared)
    body = Want("bytes", 1000, 1000, 3000, 100, DEBT)
    assert leases.spend([body]) == 0  # not in debt: charged whole
    wait = leases.spend([Want("bytes", 1000, 1000, 1, 100, DEBT)])
    assert 1.9 < wait <= 2.0  # 2,000 bytes of debt (and no lease of bytes borrowed with it)
    streamed = Leases(shared)
    streamed.charge("streamed", 1000, 1000, 4000)
    assert streamed.spend([Want("streamed", 1000, 1000, 1, 100, DEBT)]) > 2.5


def test_the_next_body_waits_for_the_debt_on_every_worker_also_the_one_that_charged_it(shared: Shared) -> None:
    charged, other = Leases(shared), Leases(shared)
    small = Want("push", 1000, 1000, 5, 100, DEBT)
    assert charged.spend([Want("push", 1000, 1000, 8000, 100, DEBT)]) == 0  # 7 s of debt
    assert charged._leases["push"].tokens == 0  # nothing leased from a bucket in debt
    for worker in (charged, other):
        assert 6.5 < worker.spend([small]) <= 7.0
    assert shared.calls[0][1].take == UP_TO and shared.calls[0][1].want == 100  # the lease: only what it holds


def test_bytes_under_the_limit_are_leased_one_call_per_lease(shared: Shared) -> None:
    leases = Leases(shared)
    manifest = Want("small", 1000, 1000, 10, 100, DEBT)
    assert all(leases.spend([manifest]) == 0 for _ in range(11))  # 10 + a lease of 100
    assert len(shared.calls) == 1
    assert leases.spend([Want("small", 1000, 1000, 2000, 100, DEBT)]) == 0  # the shortfall, as debt
    assert leases._leases["small"].tokens == 0 and len(shared.calls) == 2
    assert leases.spend([manifest]) > 0  # in debt now: refused, whatever this worker held
