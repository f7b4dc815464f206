"""Coherent manifest caches in the gateways: leases, invalidations, acknowledgements.

A manifest GET that needs no gRPC call is about four times cheaper for the gateway, so
gateways cache manifests; this module is what makes that safe. The rule a write follows:
it returns only when no gateway can still answer from what it changed.

- A gateway holds a *lease* while it caches: it pings over ``WatchManifests`` and may serve
  from its cache until ``lease`` seconds after it sent the last ping that was answered. This
  replica answers a ping only while its Redis subscription is up and the watcher has not been
  evicted, and notes the latest expiry it granted each watcher (measured from when the ping
  arrived, which is no earlier than when it was sent, so the gateway's lease ends first).
- A write publishes the changed repositories on a Redis channel and waits for every replica
  subscribed to it to confirm (a message with its id on a second channel, which every replica
  follows on the same subscription: a waiting writer holds no Redis connection, so any number
  of concurrent writes cannot starve the pool the confirmations need). Each
  replica sends the invalidation to its watchers and waits for their acks; a watcher that does
  not ack in ``ack_timeout`` is evicted — its stream closed, its pings unanswered — and the
  replica waits until the lease it granted has run out before it confirms. A watcher whose
  stream ended is treated the same way until its lease has run out.
- A replica that died (or lost Redis) cannot confirm, and its gateways may not have noticed
  yet. So every replica records in Redis, on Redis's clock, until when its leases may run
  (``wharf:lease-grantors``), refreshing it every quarter lease and granting a lease only
  while its last refresh is recent enough to cover it. After the confirmations, the writer
  waits for every replica still listed that did not confirm, until its entry runs out.
- If the subscription breaks, the replica evicts every watcher (their caches are dropped) and
  answers no ping until it has subscribed again.

So a stale manifest can be served only by a gateway whose clock runs slower than this
replica's by more than the slack in the lease — the assumption every lease design makes.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator, Iterable

import redis
import redis.asyncio as aredis

from services.common import metrics
from services.common.redisconn import text
from services.gen.wharf.metadata.v1 import metadata_pb2 as pb
from services.metadata import migrations
from services.metadata import redis_keys as keys

log = logging.getLogger("wharf.metadata.invalidation")



def _retrieved(done: asyncio.Future[None]) -> None:
    """Marks a round's failure as seen: every writer in it may have given up before it ended."""
    if not done.cancelled():
        done.exception()


class _Watcher:
    def __init__(self) -> None:
        self.outbox: asyncio.Queue[pb.WatchEvent | None] = asyncio.Queue()
        self.lease_until = 0.0  # loop time up to which the gateway may hold a lease
        self.acked = 0
        self.acked_changed = asyncio.Event()
        self.evicted = False


class InvalidationHub:
    def __init__(self, client: aredis.Redis, lease: float, ack_timeout: float) -> None:
        self._r = client
        self._lease = lease
        self._ack_timeout = ack_timeout
        self._watchers: set[_Watcher] = set()
        self._departed: set[_Watcher] = set()  # streams that ended while their lease may still run
        self._seq = 0
        self._subscribed = False
        self._may_grant_until = 0.0  # loop time; leases are granted only before it
        self._replica = migrations.replica_id()
        self._refresh = client.register_script(keys.REFRESH_GRANTOR)
        self._live_grantors = client.register_script(keys.LIVE_GRANTORS)
        # Writes waiting for confirmations: message id -> (replicas that confirmed, woken on each).
        self._waiting: dict[str, tuple[set[str], asyncio.Event]] = {}
        # Group commit of invalidations (``publish``): the round in flight, and the repositories
        # of the writes that came during it, with the future they wait on, for the next round.
        self._round: asyncio.Task[None] | None = None
        self._next: tuple[set[str], asyncio.Future[None]] | None = None

    @property
    def watchers(self) -> int:
        """Gateway processes watching this replica now (``wharf_metadata_watchers``)."""
        return len(self._watchers)

    @property
    def confirm_timeout(self) -> float:
        """How long a writer waits: a replica may wait out an ack and a lease, a dead one its entry."""
        return self._ack_timeout + self._lease + 2.0

    # -- the subscription ------------------------------------------------------------------

    async def run(self) -> None:
        """Follows the invalidation channel and keeps this replica's grantor entry fresh."""
        refresher = asyncio.create_task(self._refresh_forever())
        try:
            await self._follow()
        finally:
            refresher.cancel()

    async def _refresh_forever(self) -> None:
        loop = asyncio.get_running_loop()
        # The entry outlives a refresh by a second, so leases granted up to a second after
        # a refresh was sent end before the entry does.
        slack = 1.0
        failing = ""  # the last failure's error, logged once (a Redis refusing writes lasts minutes)
        while True:
            if self._subscribed:
                sent = loop.time()
                try:
                    await self._refresh(keys=[keys.LEASE_GRANTORS],
                                        args=[self._replica, int((self._lease + slack) * 1000)])
                    self._may_grant_until = sent + slack
                    if failing:
                        log.info("renewing the lease grantor entry again; gateways may cache manifests")
                    failing = ""
                except (redis.RedisError, OSError) as exc:
                    error = str(exc)[:200]
                    if error != failing:
                        log.warning("cannot renew the lease grantor entry; gateways read without caching until "
                                    "it is renewed", extra={"fields": {"error": error}})
                    failing = error
            await asyncio.sleep(self._lease / 4)

    async def _follow(self) -> None:
        while True:
            pubsub = self._r.pubsub()
            try:
                await pubsub.subscribe(keys.INVALIDATIONS, keys.INVALIDATION_ACKS)
                self._subscribed = True
                log.info("subscribed to manifest invalidations")
                async for message in pubsub.listen():
                    if message.get("type") != "message":
                        continue
                    if text(message["channel"]) == keys.INVALIDATION_ACKS:
                        self._confirmed(message["data"])
                    else:
                        await self._handle(message["data"])
            except (redis.RedisError, OSError) as exc:
                log.warning("invalidation subscription lost", extra={"fields": {"error": str(exc)[:200]}})
            finally:
                self._subscribed = False
                await self._evict(list(self._watchers))
                with contextlib.suppress(Exception):
                    await pubsub.reset()
            await asyncio.sleep(1.0)

    async def _handle(self, raw: bytes) -> None:
        try:
            message = json.loads(raw)
            repositories = [str(name) for name in message["repositories"]]
            message_id = str(message["id"])
        except (ValueError, KeyError, TypeError):
            log.warning("ignoring a malformed invalidation", extra={"fields": {"message": repr(raw)[:200]}})
            return
        await self._fan_out(repositories)
        await self._r.publish(keys.INVALIDATION_ACKS, json.dumps({"id": message_id, "replica": self._replica}))

    def _confirmed(self, raw: bytes) -> None:
        try:
            message = json.loads(raw)
            waiting = self._waiting.get(str(message["id"]))
            replica = str(message["replica"])
        except (ValueError, KeyError, TypeError):
            return
        if waiting is not None:
            waiting[0].add(replica)
            waiting[1].set()

    async def _fan_out(self, repositories: list[str]) -> None:
        self._seq += 1
        seq = self._seq
        event = pb.WatchEvent(seq=seq, repositories=repositories)
        watchers = list(self._watchers)
        for watcher in watchers:
            watcher.outbox.put_nowait(event)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._ack_timeout
        for watcher in watchers:
            while watcher.acked < seq and not watcher.evicted:
                remaining = deadline - loop.time()
                if remaining <= 0:
                    break
                watcher.acked_changed.clear()
                if watcher.acked >= seq:
                    break
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(watcher.acked_changed.wait(), remaining)
        await self._evict([w for w in watchers if w.acked < seq] + list(self._departed))

    async def _evict(self, watchers: list[_Watcher]) -> None:
        """Closes these watchers' streams and waits until no lease granted to them can still run."""
        for watcher in watchers:
            if not watcher.evicted:
                watcher.evicted = True
                watcher.outbox.put_nowait(None)
        loop = asyncio.get_running_loop()
        until = max((w.lease_until for w in watchers), default=0.0)
        if until > loop.time():
            metrics.LEASE_WAITS.inc()
            log.warning("waiting out leases of unresponsive gateways",
                        extra={"fields": {"watchers": len(watchers), "seconds": round(until - loop.time(), 3)}})
            await asyncio.sleep(until - loop.time())
        self._departed.difference_update(watchers)

    # -- writers ---------------------------------------------------------------------------

    async def publish(self, repositories: Iterable[str]) -> None:
        """Returns once no gateway can serve what these repositories had before (or on timeout).

        Writes share rounds, as a database's commits share a log flush: a write that comes while
        no round is in flight starts one; writes that come during a round join the next, which
        starts when it ends, for all of them at once. A round is a Redis publish, every replica's
        fan-out to its gateways and their acks, and the confirmations, whatever the number of
        repositories in it: eight concurrent manifest pushes made eight rounds, each waking every
        gateway worker. A write never joins a round in flight, whose message may have gone out
        before the write was made; so it waits for at most two rounds. A round that fails
        fails every write in it, as their own publish would have."""
        started = time.monotonic()
        metrics.INVALIDATIONS.inc()
        try:
            await asyncio.shield(self._join(repositories))  # a writer giving up leaves the round to the others
        finally:
            metrics.INVALIDATION_WAIT.observe(time.monotonic() - started)

    def _join(self, repositories: Iterable[str]) -> asyncio.Future[None]:
        if self._next is None:
            done = asyncio.get_running_loop().create_future()
            done.add_done_callback(_retrieved)
            self._next = (set(), done)
        names, done = self._next
        names.update(repositories)
        if self._round is None:
            self._start_round()
        return done

    def _start_round(self) -> None:
        assert self._next is not None
        names, done = self._next
        self._next = None
        self._round = asyncio.create_task(self._run_round(names, done))

    async def _run_round(self, names: set[str], done: asyncio.Future[None]) -> None:
        metrics.INVALIDATION_ROUNDS.inc()
        try:
            await self._publish(names)
        except Exception as exc:  # handed to the writers, who raise it
            done.set_exception(exc)
        else:
            done.set_result(None)
        finally:
            if not done.done():  # cancelled (the server stops): so are its writers
                done.cancel()
            self._round = None
            if self._next is not None:
                self._start_round()

    async def _publish(self, repositories: set[str]) -> None:
        message_id = uuid.uuid4().hex
        payload = json.dumps({"id": message_id, "repositories": sorted(repositories)})
        confirmed: set[str] = set()
        woken = asyncio.Event()
        self._waiting[message_id] = (confirmed, woken)  # before publishing: a confirmation may come at once
        deadline = time.monotonic() + self.confirm_timeout
        try:
            receivers = int(await self._r.publish(keys.INVALIDATIONS, payload))
            # Confirmations arrive on this replica's subscription; without it (lost, reconnecting)
            # none will, and the grantor entries below decide.
            while len(confirmed) < receivers and self._subscribed:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                woken.clear()
                if len(confirmed) >= receivers:
                    break
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(woken.wait(), min(remaining, 0.5))
        finally:
            del self._waiting[message_id]
        while True:
            live = await self._live_grantors(keys=[keys.LEASE_GRANTORS])
            now_ms, entries = int(live[0]), live[1:]
            pending = {text(entries[i]): float(entries[i + 1]) for i in range(0, len(entries), 2)
                       if text(entries[i]) not in confirmed}
            if not pending:
                return
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                metrics.UNCONFIRMED.inc()
                log.warning("replicas did not confirm an invalidation in time",
                            extra={"fields": {"unconfirmed": len(pending), "confirmed": len(confirmed)}})
                return
            await asyncio.sleep(min(remaining, max(0.01, (max(pending.values()) - now_ms) / 1000)))

    async def publish_failed(self) -> None:
        """A write happened but could not be announced: no gateway of this replica keeps its cache."""
        await self._evict(list(self._watchers))

    async def close(self) -> None:
        """Ends every stream (the server is stopping) without waiting for leases."""
        for watcher in list(self._watchers):
            watcher.evicted = True
            watcher.outbox.put_nowait(None)

    # -- one gateway's stream --------------------------------------------------------------

    async def watch(self, requests: AsyncIterator[pb.WatchRequest]) -> AsyncIterator[pb.WatchEvent]:
        now = asyncio.get_running_loop().time()
        self._departed = {w for w in self._departed if w.lease_until > now}
        watcher = _Watcher()
        self._watchers.add(watcher)
        reader = asyncio.create_task(self._read(watcher, requests))
        try:
            while (event := await watcher.outbox.get()) is not None:
                yield event
        finally:
            reader.cancel()
            self._watchers.discard(watcher)
            if watcher.lease_until > asyncio.get_running_loop().time():
                self._departed.add(watcher)

    async def _read(self, watcher: _Watcher, requests: AsyncIterator[pb.WatchRequest]) -> None:
        loop = asyncio.get_running_loop()
        lease_ms = int(self._lease * 1000)
        try:
            async for request in requests:
                if request.ack > watcher.acked:
                    watcher.acked = request.ack
                    watcher.acked_changed.set()
                if request.ping and self._subscribed and loop.time() < self._may_grant_until \
                        and not watcher.evicted:
                    watcher.lease_until = loop.time() + self._lease
                    watcher.outbox.put_nowait(pb.WatchEvent(pong=request.ping, lease_ms=lease_ms))
        finally:
            watcher.outbox.put_nowait(None)  # the gateway went away: end the response stream too

