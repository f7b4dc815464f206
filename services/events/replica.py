"""One delivery replica: which outbox shards it owns, and a delivery loop per endpoint over them.

Several replicas may run. Redis consumer groups would spread events over them but lose the order
per repository, so the outbox is sharded by repository (redis_keys.outbox_shard) and each shard
has one owner at a time: a lease (``wharf:events:lease:<shard>``, a key with a TTL that only its
holder renews or deletes). Every replica heartbeats into ``wharf:events:replicas`` and owns at most
its fair share, ceil(shards / live replicas): a second replica that starts finds no free shard, so
the first gives up shards above its new share (once every delivery loop began a round without
them, so no batch of theirs is in flight) and the second takes them. A replica that dies holds its
shards until their leases lapse (``WHARF_EVENTS_LEASE``); then the others take them and go on from
the cursors it left.

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

from services.common import metrics
from services.events import sinks
from services.events.config import Events
from services.events.delivery import SEND_GRACE, Delivery
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
        source = Source(public_url, self.id)
        self._lock = threading.Lock()
        self._owned: set[int] = set()
        # Shards being handed back -> each delivery loop's round when they stopped being delivered.
        self._releasing: dict[int, list[int]] = {}
        self._deliveries = [
            Delivery(client, self.id, endpoint, sinks.create(endpoint, source),
                     events.pull_share, self.delivering)
            for endpoint in events.active]
        self._renew = client.register_script(keys.RENEW_IF_HELD)
        self._release = client.register_script(keys.RELEASE_IF_HELD)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._forever, daemon=True, name="events-leases")

    @property
    def owned(self) -> list[int]:
        with self._lock:
            return sorted(self._owned)

    def delivering(self) -> list[int]:
        """The shards the delivery loops serve: owned and not being handed back."""
        with self._lock:
            return sorted(self._owned - set(self._releasing))

    def start(self) -> None:
        log.info("delivery replica starting", extra={"fields": {"replica": self.id,
                                                                "endpoints": [e.name for e in self._events.active]}})
        for delivery in self._deliveries:
            delivery.start()
        self._thread.start()

    def stop(self) -> None:
        """Stops the delivery loops (a batch in flight finishes or is abandoned to the next owner)
        and hands the shards back at once, so another replica need not wait for the leases to lapse."""
        self._stop.set()
        self._thread.join(timeout=self._tick_every * 2)
        for delivery in self._deliveries:
            delivery.stop_flag.set()
        wait = max((e.timeout for e in self._events.active), default=0) + SEND_GRACE + 1
        for delivery in self._deliveries:
            delivery.join(timeout=wait)
        if not any(delivery.is_alive() for delivery in self._deliveries):
            for shard in self.owned:
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
        for shard in self.owned:
            if not self._renew(keys=[keys.event_lease(shard)], args=[self.id, self._ttl_ms]):
                log.warning("lost an outbox shard", extra={"fields": {"shard": shard}})
                with self._lock:
                    self._owned.discard(shard)
                    self._releasing.pop(shard, None)
        self._hand_back(share)
        self._take(share)
        for shard in self.delivering():
            self._trim(shard)
        self._report()
        metrics.EVENTS_SHARDS.set(len(self.owned))

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
        with self._lock:
            extra = len(self._owned) - share
            for shard in sorted(self._owned, reverse=True)[:max(0, extra)]:
                if shard not in self._releasing:
                    self._releasing[shard] = [delivery.rounds for delivery in self._deliveries]
            ready = [shard for shard, rounds in self._releasing.items()
                     if all(_without(d, r, shard) for d, r in zip(self._deliveries, rounds, strict=True))]
        for shard in ready:
            self._drop(shard)

    def _take(self, share: int) -> None:
        if len(self.owned) >= share:
            return
        start = int(self.id, 16) % keys.OUTBOX_SHARDS  # replicas start at different shards
        for step in range(keys.OUTBOX_SHARDS):
            shard = (start + step) % keys.OUTBOX_SHARDS
            if len(self.owned) >= share:
                return
            if shard in self.owned:
                continue
            if self._r.set(keys.event_lease(shard), self.id, nx=True, px=self._ttl_ms):
                log.info("took an outbox shard", extra={"fields": {"shard": shard, "replica": self.id}})
                with self._lock:
                    self._owned.add(shard)

    def _drop(self, shard: int) -> None:
        self._release(keys=[keys.event_lease(shard)], args=[self.id])
        with self._lock:
            self._owned.discard(shard)
            self._releasing.pop(shard, None)
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


def _without(delivery: Delivery, marked: int, shard: int) -> bool:
    """Whether ``delivery`` holds no batch of ``shard``, which stopped being delivered in its round
    ``marked``: it began a later round (which left the shard out), it is handling a batch of other
    shards in that round (read before the shard's hand-back, and nothing more is read in it), or
    it is gone. (``handling`` is read first: were that round over by the time ``rounds`` is read,
    ``rounds`` shows it.)"""
    handling = delivery.handling
    rounds = delivery.rounds
    if rounds > marked or not delivery.is_alive():
        return True
    return handling is not None and shard not in handling


def _cursor(raw: Any) -> tuple[str, int]:
    text = raw.decode() if isinstance(raw, bytes) else str(raw)
    cursor, _, seq = text.partition(" ")
    return cursor, int(seq or 0)
