"""The retention schedule's lock on a real Redis: one replica runs per interval, the lock is
renewed during a run and released only by its holder (services/metadata/retention_schedule.py)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
import redis
import redis.asyncio as aredis

from services.common.governance import Policy, Retention
from services.gen.wharf.governance.v1 import governance_pb2 as gpb
from services.metadata import retention_schedule
from services.metadata.policy import PolicyStore
from services.metadata.retention_schedule import LOCK, RAN, RetentionSchedule


class SlowRunner:
    """Stands in for RetentionRunner: counts runs, takes a while, reports progress."""

    def __init__(self, delay: float = 0.2, during: Callable[[], Awaitable[Any]] | None = None) -> None:
        self.runs = 0
        self.delay = delay
        self.during = during

    async def run(self, dry_run: bool, pattern: str, actor: gpb.Actor) -> gpb.RetentionReport:
        assert not dry_run and actor.account == "wharf-retention"
        self.runs += 1
        if self.during is not None:
            await self.during()
        await asyncio.sleep(self.delay)
        return gpb.RetentionReport(repositories=1)


RULES = Policy(retention=(Retention("ci/**", keep_last=1),))


def test_one_of_several_replicas_runs_per_interval(redis_client: redis.Redis, redis_url: str) -> None:
    async def scenario() -> None:
        client = aredis.Redis.from_url(redis_url)
        runner = SlowRunner()
        replicas = [RetentionSchedule(client, runner, PolicyStore(client, RULES), 60.0)  # type: ignore[arg-type]
                    for _ in range(3)]
        answers = await asyncio.gather(*(r.once() for r in replicas))
        assert runner.runs == 1 and sum(a is not None for a in answers) == 1
        assert await client.get(LOCK) is None           # released after the run
        assert 50_000 < await client.pttl(RAN) <= 54_000  # marked for 0.9 interval
        assert all(a is None for a in await asyncio.gather(*(r.once() for r in replicas)))
        await client.delete(RAN)
        assert await replicas[2].once() is not None and runner.runs == 2
        await client.aclose()
    asyncio.run(scenario())


def test_the_lock_is_renewed_and_released_only_by_its_holder(redis_client: redis.Redis, redis_url: str,
                                                             monkeypatch: Any) -> None:
    monkeypatch.setattr(retention_schedule, "LOCK_TTL_MS", 300)

    async def scenario() -> None:
        client = aredis.Redis.from_url(redis_url)
        runner = SlowRunner(delay=0.4)  # longer than the lock's TTL: survives only by renewal
        mine = RetentionSchedule(client, runner, PolicyStore(client, RULES), 60.0)  # type: ignore[arg-type]
        assert await mine.once() is not None
        # A lock someone else holds is left alone, and stops this replica's run.
        await client.delete(RAN)
        await client.set(LOCK, "someone-else", px=10_000)
        assert await mine.once() is None and runner.runs == 1
        assert await client.get(LOCK) == b"someone-else"
        # A lock taken over during a run (this replica's expired) stops the run, and stays the other's.
        await client.delete(LOCK, RAN)
        runner.during = lambda: client.set(LOCK, "thief", px=10_000)
        with pytest.raises(retention_schedule.LockLost):
            await mine.once()
        assert await client.get(LOCK) == b"thief" and not await client.exists(RAN)
        await client.aclose()
    asyncio.run(scenario())


def test_nothing_runs_without_retention_rules(redis_client: redis.Redis, redis_url: str) -> None:
    async def scenario() -> None:
        client = aredis.Redis.from_url(redis_url)
        runner = SlowRunner()
        schedule = RetentionSchedule(client, runner, PolicyStore(client, Policy()), 60.0)  # type: ignore[arg-type]
        assert await schedule.once() is None and runner.runs == 0
        assert await client.get(LOCK) is None
        await client.aclose()
    asyncio.run(scenario())
