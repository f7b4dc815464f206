"""Retention on a schedule: every ``WHARF_RETENTION_INTERVAL`` seconds, one replica runs it.

Every metadata replica wakes once per interval; the first to take the lock runs retention,
renews the lock as it goes (a run over a large registry outlasts any fixed lock time), marks
the run done for most of an interval, and releases the lock (only its own: a holder whose lock
expired and was taken over never ends another's). A replica that finds a recent run marked, or
the lock held, sleeps again, so several replicas make about one run per interval, and a replica
that dies mid-run holds nothing for longer than LOCK_TTL_MS. Nothing runs while the policy has
no retention rule. Failures are logged and the next interval tries again.

Keys (beside the policy's own ``wharf:policy:*``):

::

    wharf:retention:lock   STRING a replica's id, with a TTL, while it runs retention
    wharf:retention:ran    STRING set (with a TTL of 0.9 interval) when a scheduled run finished
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time

import redis
import redis.asyncio as aredis

from services.common.errors import RegistryError
from services.gen.wharf.governance.v1 import governance_pb2 as gpb
from services.metadata import redis_keys as keys
from services.metadata.policy import PolicyStore
from services.metadata.retention import SCHEDULE_ACCOUNT, RetentionRunner

LOCK = "wharf:retention:lock"
RAN = "wharf:retention:ran"
LOCK_TTL_MS = 60_000
ACTOR = gpb.Actor(account=SCHEDULE_ACCOUNT, via="metadata")
log = logging.getLogger("wharf.metadata.retention")


class LockLost(Exception):
    """The run outlived its lock (Redis unreachable for a while): another replica may run now."""


class RetentionSchedule:
    def __init__(self, client: aredis.Redis, runner: RetentionRunner, policy: PolicyStore, interval: float) -> None:
        self._r = client
        self._runner = runner
        self._policy = policy
        self._interval = interval
        self._holder = secrets.token_hex(12)
        self._release = client.register_script(keys.RELEASE_IF_HELD)
        self._renew = client.register_script(keys.RENEW_IF_HELD)

    async def forever(self) -> None:
        """Runs until cancelled (the service stopping); with an interval of 0, returns at once."""
        if self._interval <= 0:
            return
        while True:
            await asyncio.sleep(self._interval)
            try:
                await self.once()
            except (redis.RedisError, OSError, RegistryError, LockLost) as exc:
                log.warning("retention: the scheduled run failed: %s", exc)
            except Exception:  # a bug in one run must not end the schedule for the replica's lifetime
                log.exception("retention: the scheduled run failed")

    async def once(self) -> gpb.RetentionReport | None:
        """One scheduled run, when it is this replica's turn; None when it was not."""
        policy, _ = await self._policy.current()
        if not policy.retention or await self._r.exists(RAN):
            return None
        if not await self._r.set(LOCK, self._holder, nx=True, px=LOCK_TTL_MS):
            return None
        started = time.monotonic()
        try:
            if await self._r.exists(RAN):  # another replica finished while this one took the lock
                return None
            report = await self._run_holding_lock()
            await self._r.set(RAN, self._holder, px=max(1, int(self._interval * 900)))
        finally:
            await self._release(keys=[LOCK], args=[self._holder])
        deleted = len(report.deleted) + report.deleted_more
        kept = len(report.kept) + report.kept_more
        log.info("retention: scheduled run over %d repositories in %.1f s: deleted %d (tags and untagged "
                 "manifests), kept %d protected", report.repositories, time.monotonic() - started, deleted, kept)
        return report

    async def _run_holding_lock(self) -> gpb.RetentionReport:
        """The run, with the lock renewed every third of its TTL; stopped should the lock be lost
        (Redis unreachable longer than the TTL: another replica may have started)."""
        run = asyncio.ensure_future(self._runner.run(False, "", ACTOR))
        lost = False

        async def heartbeat() -> None:
            nonlocal lost
            while not run.done():
                await asyncio.sleep(LOCK_TTL_MS / 3000)
                try:
                    held = await self._renew(keys=[LOCK], args=[self._holder, LOCK_TTL_MS])
                except (redis.RedisError, OSError):
                    continue  # Redis away for a moment: the TTL lasts three renewals
                if not held:
                    lost = True
                    run.cancel()
                    return
        beat = asyncio.create_task(heartbeat())
        try:
            return await run
        except asyncio.CancelledError:
            if lost:
                raise LockLost("the retention lock was lost during the run; stopped") from None
            raise
        finally:
            beat.cancel()
            run.cancel()
