"""One delivery replica: which outbox shards it owns, and a worker per (owned shard, endpoint).

Several replicas may run. Redis consumer groups would spread events over them but lose the order
per repository, so the outbox is sharded by repository (redis_keys.outbox_shard) and each shard
has one owner at a time: a lease (``wharf:events:lease:<shard>``, a key with a TTL that only its
holder renews or deletes). Every replica heartbeats into ``wharf:events:replicas`` and owns at most
its fair share, ceil(shards / live replicas): a second replica that starts finds no free shard, so
the first gives up shards above its new share (after its workers for them stopped, so no batch is
in flight) and the second takes them. A replica that dies holds its shards until their leases
lapse (``WHARF_EVENTS_LEASE``); then the others take them and go on from the cursors it left.

The shard owner also trims its outbox shard up to the oldest cursor of the configured endpoints:
the outbox holds only what some endpoint has yet to receive.
"""

from __future__ import annotations

import logging
import math
import secrets
import threading
from typing import Any

import redis
import urllib3

from services.common import metrics
from services.events.config import Endpoint, Events
from services.events.delivery import EndpointHealth, Sender, Worker
from services.events.envelope import Source
from services.metadata import redis_keys as keys

log = logging.getLogger("wharf.events")


class Replica:
    def __init__(self, client: redis.Redis, events: Events, public_url: str, lease_ttl: float) -> None:
        self.id = secrets.token_hex(8)
        self._r = client
        self._events = events
        self._ttl_ms = int(lease_ttl * 1000)
        self._tick_every = lease_ttl / 3
        self._source = Source(public_url, self.id)
        self._senders: dict[str, tuple[Sender, EndpointHealth]] = {}
        for endpoint in events.active:
            pool = urllib3.PoolManager(num_pools=4, maxsize=keys.OUTBOX_SHARDS, block=False)
            self._senders[endpoint.name] = (Sender(endpoint, self._source, pool), EndpointHealth(endpoint))
        self._workers: dict[int, list[Worker]] = {}
        self._releasing: set[int] = set()
        self._renew = client.register_script(keys.RENEW_IF_HELD)
        self._release = client.register_script(keys.RELEASE_IF_HELD)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._forever, daemon=True, name="events-leases")

    @property
    def owned(self) -> list[int]:
        return sorted(self._workers)

    def start(self) -> None:
        log.info("delivery replica starting", extra={"fields": {"replica": self.id,
                                                                "endpoints": [e.name for e in self._events.active]}})
        self._thread.start()

    def stop(self) -> None:
        """Stops every worker (a batch in flight finishes or is abandoned to the next owner) and
        hands the shards back at once, so another replica need not wait for the leases to lapse."""
        self._stop.set()
        self._thread.join(timeout=self._tick_every * 2)
        for shard in list(self._workers):
            self._stop_workers(shard)
        for shard in list(self._workers):
            if self._workers_done(shard, wait=max(e.timeout for e in self._events.active) + 1 if self._events.active
                                  else 1):
                self._drop(shard)
        self._r.zrem(keys.EVENT_REPLICAS, self.id)

    # -- the lease loop ---------------------------------------------------------------------------------

    def _forever(self) -> None:
        while not self._stop.is_set():
            try:
                self.tick()
            except redis.RedisError as exc:
                log.warning("lease loop: Redis unreachable", extra={"fields": {"error": str(exc)[:200]}})
            self._stop.wait(self._tick_every)

    def tick(self) -> None:
        share = self._fair_share()
        for shard in list(self._workers):
            if not self._renew(keys=[keys.event_lease(shard)], args=[self.id, self._ttl_ms]):
                log.warning("lost an outbox shard", extra={"fields": {"shard": shard}})
                self._stop_workers(shard)
                self._workers_done(shard, wait=0)
                self._workers.pop(shard, None)
                self._releasing.discard(shard)
        self._hand_back(share)
        self._take(share)
        for shard in self.owned:
            if shard not in self._releasing:
                self._trim(shard)
        self._report()
        metrics.EVENTS_SHARDS.set(len(self._workers))

    def _fair_share(self) -> int:
        now_s, now_us = self._r.time()
        now_ms = now_s * 1000 + now_us // 1000
        with self._r.pipeline(transaction=False) as pipe:
            pipe.zadd(keys.EVENT_REPLICAS, {self.id: now_ms + self._ttl_ms})
            pipe.zremrangebyscore(keys.EVENT_REPLICAS, "-inf", now_ms)
            pipe.zcard(keys.EVENT_REPLICAS)
            live = pipe.execute()[2]
        return math.ceil(keys.OUTBOX_SHARDS / max(1, int(live)))

    def _hand_back(self, share: int) -> None:
        extra = len(self._workers) - share
        for shard in sorted(self._workers, reverse=True)[:max(0, extra)]:
            if shard not in self._releasing:
                self._releasing.add(shard)
                self._stop_workers(shard)
        for shard in list(self._releasing):
            if self._workers_done(shard, wait=0):
                self._drop(shard)

    def _take(self, share: int) -> None:
        if len(self._workers) >= share:
            return
        start = int(self.id, 16) % keys.OUTBOX_SHARDS  # replicas start at different shards
        for step in range(keys.OUTBOX_SHARDS):
            shard = (start + step) % keys.OUTBOX_SHARDS
            if len(self._workers) >= share:
                return
            if shard in self._workers:
                continue
            if self._r.set(keys.event_lease(shard), self.id, nx=True, px=self._ttl_ms):
                log.info("took an outbox shard", extra={"fields": {"shard": shard, "replica": self.id}})
                self._workers[shard] = [self._worker(shard, e) for e in self._events.active]
                for worker in self._workers[shard]:
                    worker.start()

    def _worker(self, shard: int, endpoint: Endpoint) -> Worker:
        sender, health = self._senders[endpoint.name]
        return Worker(self._r, self.id, shard, endpoint, sender, health, self._events.pull_share)

    def _stop_workers(self, shard: int) -> None:
        for worker in self._workers.get(shard, []):
            worker.stop_flag.set()

    def _workers_done(self, shard: int, wait: float) -> bool:
        for worker in self._workers.get(shard, []):
            worker.join(timeout=wait)
        return not any(worker.is_alive() for worker in self._workers.get(shard, []))

    def _drop(self, shard: int) -> None:
        self._release(keys=[keys.event_lease(shard)], args=[self.id])
        self._workers.pop(shard, None)
        self._releasing.discard(shard)
        log.info("handed back an outbox shard", extra={"fields": {"shard": shard, "replica": self.id}})

    # -- trimming and figures ---------------------------------------------------------------------------

    def _cursors(self, shard: int) -> list[tuple[str, int] | None]:
        with self._r.pipeline(transaction=False) as pipe:
            for endpoint in self._events.active:
                pipe.hget(keys.event_cursor(endpoint.name), str(shard))
            found = pipe.execute()
        return [_cursor(raw) if raw is not None else None for raw in found]

    def _trim(self, shard: int) -> None:
        cursors = self._cursors(shard)
        if not cursors or any(c is None for c in cursors):
            return  # an endpoint has no cursor yet: it starts at the oldest event kept
        oldest = min((c for c in cursors if c is not None), key=lambda c: tuple(int(p) for p in c[0].split("-")))
        if oldest[0] != "0-0":
            self._r.xtrim(keys.outbox(shard), minid=oldest[0])

    def _report(self) -> None:
        backlog = dict.fromkeys((e.name for e in self._events.active), 0)
        for shard in self.owned:
            last = int(self._r.get(keys.outbox_seq(shard)) or 0)
            for endpoint, cursor in zip(self._events.active, self._cursors(shard), strict=True):
                backlog[endpoint.name] += max(0, last - cursor[1]) if cursor else 0
        for name, waiting in backlog.items():
            metrics.EVENTS_BACKLOG.labels(name).set(waiting)


def _cursor(raw: Any) -> tuple[str, int]:
    text = raw.decode() if isinstance(raw, bytes) else str(raw)
    cursor, _, seq = text.partition(" ")
    return cursor, int(seq or 0)
