"""Delivering one outbox shard to one endpoint: in order, at least once, never holding the others.

Each (shard, endpoint) pair has its own worker thread and its own cursor (the last stream entry
delivered or dead-lettered), so a dead endpoint holds only its own workers and a busy shard only
its own. A worker reads a batch after its cursor, sends the events its endpoint wants in one
request, and moves the cursor only once the endpoint answered below 400 (redis_keys.ADVANCE_CURSOR,
fenced by the shard's lease: a replica that lost the shard cannot move the cursor). A crash between
the answer and the cursor's move delivers that batch again: at least once, never lost.

Failures: every endpoint's workers share one health record; after ``threshold`` failures in a row
they all wait ``backoff``, doubling up to ``max_backoff``, before the next try (Distribution's
threshold/backoff). A batch that failed ``attempts`` times is dead-lettered. While an endpoint is
down its backlog grows; past ``backlog`` events (or for events older than ``max_age``) the oldest
are dead-lettered without a try, so the outbox stays bounded (the overflow is counted).
"""

from __future__ import annotations

import logging
import threading
import time
import zlib
from typing import Any

import redis
import urllib3

from services.common import metrics
from services.events import envelope
from services.events.config import Endpoint
from services.events.envelope import Event, Source
from services.metadata import redis_keys as keys

log = logging.getLogger("wharf.events")
# How long a worker's read waits for new events before it looks at its stop flag again (ms).
_BLOCK_MS = 500
# The most of a response body read (an error's text for the status); the rest is not wanted.
_RESPONSE_READ = 65536
_LAST_ERROR_MAX = 300


class EndpointHealth:
    """Failures in a row of one endpoint, shared by its workers: when the next try may go.

    Workers of several shards that tried at once and failed together count as one failure (the
    endpoint was down once, not once per shard), so the backoff grows with time, not with the
    number of shards that had something to send."""

    def __init__(self, endpoint: Endpoint) -> None:
        self._endpoint = endpoint
        self._lock = threading.Lock()
        self._failures = 0
        self._next_try = 0.0
        self._last_failure = 0.0

    def wait(self, stop: threading.Event) -> float | None:
        """Waits until a try may go, and returns when (None when stopped meanwhile)."""
        while not stop.is_set():
            with self._lock:
                now = time.monotonic()
                delay = self._next_try - now
            if delay <= 0:
                return now
            stop.wait(min(delay, 1.0))
        return None

    @property
    def backing_off(self) -> bool:
        """Whether the endpoint failed and its next try is not due yet (it is down, as far as we know)."""
        with self._lock:
            return self._failures > 0 and time.monotonic() < self._next_try

    def succeeded(self) -> None:
        with self._lock:
            self._failures = 0
            self._next_try = 0.0

    def failed(self, tried_at: float) -> None:
        e = self._endpoint
        with self._lock:
            if tried_at <= self._last_failure:
                return  # another worker's failure of the same moment counted already
            self._last_failure = time.monotonic()
            self._failures += 1
            over = self._failures - e.threshold
            delay = 0.05 if over < 0 else min(e.max_backoff, e.backoff * 2 ** min(over, 30))
            self._next_try = max(self._next_try, self._last_failure + delay)


class Sender:
    """POSTs batches to one endpoint (a connection pool shared by its workers)."""

    def __init__(self, endpoint: Endpoint, source: Source, pool: urllib3.PoolManager) -> None:
        self._endpoint = endpoint
        self._source = source
        self._pool = pool

    def send(self, events: list[Event]) -> str:
        """"" when the endpoint took the batch, else why not (for the status and the logs)."""
        e = self._endpoint
        payload, content_type = envelope.body(events, self._source, e.format)
        headers = urllib3.HTTPHeaderDict()
        for name, value in e.headers:
            headers.add(name, value)
        headers["Content-Type"] = content_type
        headers["User-Agent"] = "wharf-events/1"
        headers[envelope.DELIVERY_HEADER] = f"{events[0].id} {events[-1].id}"
        if e.secret:
            headers[envelope.SIGNATURE_HEADER] = envelope.signature(e.secret, payload)
        try:
            response = self._pool.request("POST", e.url, body=payload, headers=headers, retries=False, redirect=False,
                                          timeout=urllib3.Timeout(total=e.timeout), preload_content=False)
        except urllib3.exceptions.HTTPError as exc:
            return f"{type(exc).__name__}: {exc}"[:_LAST_ERROR_MAX]
        whole = False
        try:
            text = response.read(_RESPONSE_READ + 1, decode_content=False)
            whole = len(text) <= _RESPONSE_READ  # read to its end: the connection may serve the next one
            if response.status < 400:
                return ""
            return f"HTTP {response.status}: {text[:200].decode('utf-8', 'replace')}"[:_LAST_ERROR_MAX]
        except urllib3.exceptions.HTTPError as exc:
            return f"{type(exc).__name__} reading the answer"
        finally:
            if whole:
                response.release_conn()
            else:
                response.close()


class Worker(threading.Thread):
    """Delivers one shard's outbox to one endpoint while the replica owns the shard."""

    def __init__(self, client: redis.Redis, replica: str, shard: int, endpoint: Endpoint, sender: Sender,
                 health: EndpointHealth, pull_share: float) -> None:
        super().__init__(daemon=True, name=f"events-{endpoint.name}-{shard}")
        self._r = client
        self._replica = replica
        self._shard = shard
        self._e = endpoint
        self._sender = sender
        self._health = health
        self._pull_share = pull_share
        self._outbox = keys.outbox(shard)
        self._advance = client.register_script(keys.ADVANCE_CURSOR)
        self._init = client.register_script(keys.INIT_CURSOR)
        self.stop_flag = threading.Event()
        self.lost = False
        self._delivered = metrics.EVENTS_DELIVERED.labels(endpoint.name)
        self._latency = metrics.EVENTS_LATENCY.labels(endpoint.name)

    # -- the loop ---------------------------------------------------------------------------------

    def run(self) -> None:
        while not self.stop_flag.is_set() and not self.lost:
            try:
                self._serve()
            except redis.RedisError as exc:
                log.warning("outbox unreachable", extra={"fields": {"shard": self._shard, "error": str(exc)[:200]}})
                self.stop_flag.wait(1.0)

    def _serve(self) -> None:
        cursor, seq = self._cursor()
        while not self.stop_flag.is_set() and not self.lost:
            found = self._r.xread({self._outbox: cursor}, count=self._e.batch, block=_BLOCK_MS)
            if not found:
                continue
            entries = [(_text(i), {_text(k): _text(v) for k, v in f.items()}) for i, f in found[0][1]]
            events = [Event.from_entry(self._shard, i, f) for i, f in entries]
            last, last_seq = entries[-1][0], int(entries[-1][1].get("n") or seq)
            if not self._handle(events, f"{last} {last_seq}"):
                return
            cursor, seq = last, last_seq

    def _handle(self, events: list[Event], after: str) -> bool:
        """Delivers (or dead-letters) the batch's wanted events and moves the cursor ``after`` it;
        False when stopped or the shard was lost (the cursor stays: the batch goes again, here or
        at the shard's next owner)."""
        wanted = [e for e in events if self._wants(e)]
        if not wanted:
            return self._move(after, 0, "", 0, [])
        if self._health.backing_off and self._backlog() > self._e.backlog:
            # The endpoint is down and too much waits for it: the oldest go without a try (an
            # endpoint working through a backlog, a replay say, is left to it).
            return self._dead(after, wanted, "backlog", 0)
        oldest_allowed = (time.time() - self._e.max_age) * 1000 if self._e.max_age > 0 else 0
        old = [e for e in wanted if e.at_ms < oldest_allowed]
        if old:
            wanted = [e for e in wanted if e.at_ms >= oldest_allowed]
            if not self._dead(None if wanted else after, old, "age", 0) or not wanted:
                return not self.lost
        attempts = 0
        while (tried_at := self._health.wait(self.stop_flag)) is not None:
            error = self._sender.send(wanted)
            attempts += 1
            if not error:
                metrics.EVENTS_ATTEMPTS.labels(self._e.name, "ok").inc()
                self._health.succeeded()
                now = time.time()
                for e in wanted:
                    self._latency.observe(max(0.0, now - e.at_ms / 1000))
                self._delivered.inc(len(wanted))
                return self._move(after, len(wanted), "", 0, [])
            metrics.EVENTS_ATTEMPTS.labels(self._e.name, "failed").inc()
            self._health.failed(tried_at)
            self._note_error(error)
            if attempts >= self._e.attempts:
                return self._dead(after, wanted, "attempts", attempts)
            if self._backlog() > self._e.backlog:
                return self._dead(after, wanted, "backlog", attempts)
        return False

    # -- what to send -----------------------------------------------------------------------------

    def _wants(self, event: Event) -> bool:
        if event.only and event.only != self._e.name:
            return False
        if not self._e.wants(event.action, event.media_type):
            return False
        if event.action == "pull" and self._pull_share > 0 and self._e.pull_share < self._pull_share:
            # The gateways recorded the largest share any endpoint wants; keep this endpoint's part,
            # decided by the event id so that a redelivery decides the same.
            return zlib.crc32(event.id.encode()) / 2**32 < self._e.pull_share / self._pull_share
        return True

    def _backlog(self) -> int:
        return backlog(self._r, self._e.name)

    # -- cursor, dead letters, status -----------------------------------------------------------------

    def _cursor(self) -> tuple[str, int]:
        """This endpoint's cursor on the shard: an endpoint seen for the first time starts at the
        oldest event the outbox still holds (nothing written since the outbox was on is skipped)."""
        raw = self._r.hget(keys.event_cursor(self._e.name), str(self._shard))
        if raw is None:
            first = self._r.xrange(self._outbox, count=1)
            seq = int(_text(first[0][1][b"n"])) - 1 if first else int(self._r.get(keys.outbox_seq(self._shard)) or 0)
            self._init(keys=[keys.event_lease(self._shard), keys.event_cursor(self._e.name)],
                       args=[self._replica, self._shard, f"0-0 {seq}"])
            raw = self._r.hget(keys.event_cursor(self._e.name), str(self._shard))
            if raw is None:
                self.lost = True
                return "0-0", 0
        cursor, _, seq_text = _text(raw).partition(" ")
        return cursor, int(seq_text or 0)

    def _move(self, cursor: str | None, delivered: int, reason: str, attempts: int, dead: list[Event]) -> bool:
        """Records delivered and dead-lettered events and moves the cursor to ``cursor`` (None: where
        it is), in one step."""
        if cursor is None:
            cursor = _text(self._r.hget(keys.event_cursor(self._e.name), str(self._shard)) or b"0-0 0")
        done = self._advance(keys=[keys.event_lease(self._shard), keys.event_cursor(self._e.name),
                                   keys.event_status(self._e.name), keys.dead_letters(self._e.name)],
                             args=[self._replica, self._shard, cursor, delivered, int(time.time()), reason, attempts,
                                   *(e.dead_letter() for e in dead)])
        if not done:
            self.lost = True
        return bool(done)

    def _dead(self, after: str | None, dead: list[Event], reason: str, attempts: int) -> bool:
        metrics.EVENTS_DEAD.labels(self._e.name, reason).inc(len(dead))
        log.warning("events dead-lettered", extra={"fields": {"endpoint": self._e.name, "shard": self._shard,
                                                              "events": len(dead), "reason": reason}})
        return self._move(after, 0, reason, attempts, dead)

    def _note_error(self, error: str) -> None:
        log.warning("delivery failed", extra={"fields": {"endpoint": self._e.name, "shard": self._shard,
                                                         "error": error}})
        status = keys.event_status(self._e.name)
        with self._r.pipeline(transaction=False) as pipe:
            pipe.hincrby(status, "failed", 1)
            pipe.hset(status, mapping={"last_error": error, "last_error_at": int(time.time())})
            pipe.execute()


def backlog(client: redis.Redis, name: str) -> int:
    """Events the endpoint has yet to receive or dead-letter, over every shard."""
    with client.pipeline(transaction=False) as pipe:
        for shard in range(keys.OUTBOX_SHARDS):
            pipe.get(keys.outbox_seq(shard))
        pipe.hgetall(keys.event_cursor(name))
        *sequences, cursors = pipe.execute()
    waiting = 0
    for shard, last in enumerate(sequences):
        cursor = cursors.get(str(shard).encode())
        if cursor is not None:
            waiting += max(0, int(last or 0) - int(_text(cursor).partition(" ")[2] or 0))
    return waiting


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
