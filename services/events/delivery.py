"""Delivering the outbox to one endpoint: in order per repository, at least once, never holding the others.

Each endpoint has its own delivery loop and its own cursor per shard (the last stream entry
delivered or dead-lettered), so a dead endpoint holds only its own loop. A loop reads a batch after
its cursors in every shard this replica owns, sends the events its endpoint wants in one request,
and moves the cursors only once the endpoint took it (a 2xx answer; redis_keys.ADVANCE_CURSORS,
fenced by the shards' leases: a replica that lost a shard cannot move its cursor). A crash between
the answer and the cursors' move delivers that batch again: at least once, never lost.

Failures: after ``threshold`` failures in a row the loop waits ``backoff``, doubling up to
``max_backoff`` (Distribution's threshold/backoff). A batch that failed ``attempts`` times is
dead-lettered. While an endpoint is down its backlog grows; past ``backlog`` events (or for events
older than ``max_age``) the oldest are dead-lettered without a try, so the outbox stays bounded
(the overflow is counted).
"""

from __future__ import annotations

import logging
import re
import threading
import time
import zlib
from collections.abc import Callable
from typing import Any

import redis

from services.common import metrics
from services.events.config import Endpoint
from services.events.envelope import Event
from services.events.sinks import EventSink
from services.metadata import redis_keys as keys

log = logging.getLogger("wharf.events")
# How long a worker's read waits for new events before it looks at its stop flag again (ms).
_BLOCK_MS = 500
# How long a read that found less than a batch waits for more before sending (seconds).
_LINGER = 0.02
# A delivery failure's reason, as kept in the endpoint's status and shown by `wharf-admin events`:
# at most this long, printable ASCII only (it quotes a receiver's answer or a third party's sink).
_REASON_MAX = 300
# How long past its endpoint's timeout a sink's send may take before the try counts as failed (the
# webhook sink ends its own exchange at the timeout; this bounds a third party's that does not).
SEND_GRACE = 1.0
_UNPRINTABLE = re.compile(r"[^\x20-\x7e]")


def printable_reason(reason: str) -> str:
    """A failure's reason made safe for a terminal, a log line and Redis: cut to ``_REASON_MAX``
    characters, every character outside printable ASCII (CR, LF, ESC, BEL, ...) replaced by "?"."""
    return _UNPRINTABLE.sub("?", reason[:_REASON_MAX])


class _SinkCall:
    """One ``sink.send`` in a daemon thread of its own: a sink that never returns holds that thread,
    not the endpoint's loop (nor the process's exit)."""

    def __init__(self, sink: EventSink, events: list[Event], endpoint: str) -> None:
        self.started = time.monotonic()
        self.done = threading.Event()
        self.answer: object = None
        self.error: Exception | None = None
        threading.Thread(target=self._run, args=(sink, events), daemon=True, name=f"events-{endpoint}-send").start()

    def _run(self, sink: EventSink, events: list[Event]) -> None:
        try:
            self.answer = sink.send(events)
        except Exception as exc:  # a third party's sink may fail in any way: a failed try, not a dead loop
            self.error = exc
        finally:
            self.done.set()


class EndpointHealth:
    """Failures in a row of one endpoint's delivery loop: when the next try may go. (One loop per
    endpoint sends for every shard, so a failure is counted once however many shards it held.)"""

    def __init__(self, endpoint: Endpoint) -> None:
        self._endpoint = endpoint
        self._lock = threading.Lock()
        self._failures = 0
        self._next_try = 0.0

    def wait(self, stop: threading.Event) -> bool:
        """Waits until a try may go; False when stopped meanwhile."""
        while not stop.is_set():
            with self._lock:
                delay = self._next_try - time.monotonic()
            if delay <= 0:
                return True
            stop.wait(min(delay, 1.0))
        return False

    @property
    def backing_off(self) -> bool:
        """Whether the endpoint failed and its next try is not due yet (it is down, as far as we know)."""
        with self._lock:
            return self._failures > 0 and time.monotonic() < self._next_try

    def succeeded(self) -> None:
        with self._lock:
            self._failures = 0
            self._next_try = 0.0

    def failed(self) -> None:
        e = self._endpoint
        with self._lock:
            self._failures += 1
            over = self._failures - e.threshold
            delay = 0.05 if over < 0 else min(e.max_backoff, e.backoff * 2 ** min(over, 30))
            self._next_try = time.monotonic() + delay


class Delivery(threading.Thread):
    """Delivers the shards this replica owns to one endpoint, in order per shard.

    One loop per endpoint reads every owned shard at once (one XREAD), so a request carries the
    events of all of them and one script moves all their cursors: at a few events per shard per
    second, a loop per shard would send one event per request. A read that found fewer events
    than a batch waits ``_LINGER`` for more before sending (a bounded delay for fewer requests).
    Another endpoint's loop never waits for this one."""

    def __init__(self, client: redis.Redis, replica: str, endpoint: Endpoint, sink: EventSink,
                 pull_share: float, shards: Callable[[], list[int]]) -> None:
        super().__init__(daemon=True, name=f"events-{endpoint.name}")
        self._r = client
        self._replica = replica
        self._e = endpoint
        self._sink = sink
        self._health = EndpointHealth(endpoint)
        self._pull_share = pull_share
        self._shards = shards
        self._cursors: dict[int, tuple[str, int]] = {}
        self._advance = client.register_script(keys.ADVANCE_CURSORS)
        self._init = client.register_script(keys.INIT_CURSOR)
        self._busy: _SinkCall | None = None  # a send that did not return in time (none called until it does)
        self.stop_flag = threading.Event()
        # Bumped at the start of each round: the replica hands a shard back only once every loop
        # began a round after it stopped delivering it (no batch of it is in flight then), or is
        # handling a batch of other shards (``handling``: this round reads nothing more, and the
        # next one leaves the shard out). Without the latter, a loop retrying a batch for minutes
        # (an endpoint down, backing off) held the shards being handed back, delivered by no one.
        self.rounds = 0
        self.handling: frozenset[int] | None = None  # the shards of the batch being delivered
        self._delivered = metrics.EVENTS_DELIVERED.labels(endpoint.name)
        self._latency = metrics.EVENTS_LATENCY.labels(endpoint.name)

    # -- the loop ---------------------------------------------------------------------------------

    def run(self) -> None:
        while not self.stop_flag.is_set():
            try:
                self._round()
            except redis.RedisError as exc:
                log.warning("outbox unreachable", extra={"fields": {"endpoint": self._e.name, "error": str(exc)[:200]}})
                self._cursors.clear()  # read again: a script may have moved them before the error
                self.stop_flag.wait(1.0)
            except Exception:  # a defect must not end this endpoint's deliveries for good, unseen
                log.exception("delivery round failed", extra={"fields": {"endpoint": self._e.name}})
                self._cursors.clear()
                self.stop_flag.wait(1.0)

    def _round(self) -> None:
        self.rounds += 1
        owned = self._shards()
        for shard in [s for s in self._cursors if s not in owned]:
            del self._cursors[shard]
        for shard in owned:
            if shard not in self._cursors and not self._load_cursor(shard):
                return
        if not owned:
            self.stop_flag.wait(_BLOCK_MS / 1000)
            return
        found = self._read(block=True)
        if found and len(found) < self._e.batch:
            self.stop_flag.wait(_LINGER)
            found = self._read(block=False)
        if found:
            self._handle(found[:self._e.batch])

    def _read(self, block: bool) -> list[tuple[int, str, int, Event]]:
        """(shard, stream id, sequence, event) after each cursor, oldest first across shards (each
        shard's in its order, so any prefix of the list is a prefix of each shard's part)."""
        streams = {keys.outbox(shard): cursor for shard, (cursor, _) in self._cursors.items()}
        answer = self._r.xread(streams, count=self._e.batch, block=_BLOCK_MS if block else None)
        found = []
        for stream, entries in answer or []:
            shard = int(_text(stream).rsplit(":", 1)[1])
            for entry_id, raw in entries:
                fields = {_text(k): _text(v) for k, v in raw.items()}
                entry = _text(entry_id)
                found.append((shard, entry, int(fields.get("n") or 0), Event.from_entry(shard, entry, fields)))
        found.sort(key=lambda item: (*(int(part) for part in item[1].split("-")), item[0]))
        return found

    def _handle(self, batch: list[tuple[int, str, int, Event]]) -> None:
        """Delivers (or dead-letters) the batch's wanted events, then moves the cursors past it.
        When stopped meanwhile, or a shard was lost, the cursors stay: the batch goes again, here or
        at the shards' next owner."""
        after = dict(self._cursors)
        for shard, entry, seq, _ in batch:
            after[shard] = (entry, seq)
        moved = {shard: cursor for shard, cursor in after.items() if cursor != self._cursors.get(shard)}
        self.handling = frozenset(moved)
        try:
            self._deliver(batch, moved)
        finally:
            self.handling = None

    def _deliver(self, batch: list[tuple[int, str, int, Event]], moved: dict[int, tuple[str, int]]) -> None:
        """``_handle``'s work: ``moved`` holds the cursors past the batch, by shard."""
        wanted = [event for _, _, _, event in batch if self._wants(event)]
        # Overflow never takes a replayed event (``only`` names this endpoint): an operator asked for
        # it again, and it keeps the time it was first written, so the age rule dead-lettered every
        # replay of a letter older than ``max_age`` (all those it had made itself) at once, untried.
        overflowing = [e for e in wanted if not e.only]
        if overflowing and self._health.backing_off and backlog(self._r, self._e.name) > self._e.backlog:
            # The endpoint is down and too much waits for it: the oldest go without a try (an
            # endpoint working through a backlog is left to it).
            dropped, reason = overflowing, "backlog"
        else:
            oldest_allowed = (time.time() - self._e.max_age) * 1000 if self._e.max_age > 0 else 0
            dropped, reason = [e for e in overflowing if e.at_ms < oldest_allowed], "age"
        if dropped:
            gone = {e.id for e in dropped}
            wanted = [e for e in wanted if e.id not in gone]
            # With events left to send, the cursors stay (checked, not moved) until they are sent.
            hold = {shard: self._cursors[shard] for shard in moved}
            if not self._finish(hold if wanted else moved, dead=dropped, reason=reason) or not wanted:
                return
        if not wanted:
            self._finish(moved)
            return
        attempts = 0
        while self._health.wait(self.stop_flag):
            error = self._send(wanted)
            attempts += 1
            if not error:
                metrics.EVENTS_ATTEMPTS.labels(self._e.name, "ok").inc()
                self._health.succeeded()
                now = time.time()
                for e in wanted:
                    self._latency.observe(max(0.0, now - e.at_ms / 1000))
                self._delivered.inc(len(wanted))
                self._finish(moved, delivered=len(wanted))
                return
            metrics.EVENTS_ATTEMPTS.labels(self._e.name, "failed").inc()
            self._health.failed()
            self._note_error(error)
            if attempts >= self._e.attempts:
                self._finish(moved, dead=wanted, reason="attempts", attempts=attempts)
                return
            if backlog(self._r, self._e.name) > self._e.backlog:
                self._finish(moved, dead=wanted, reason="backlog", attempts=attempts)
                return
            if any(shard not in self._shards() for shard in moved):
                self._cursors.clear()  # a shard was lost or is handed back: read afresh next round
                return

    def _send(self, events: list[Event]) -> str:
        """"" when the sink took the batch, else why not. The sink may be a third party's extension:
        one that raises, or answers anything but text, has not delivered (fail closed: a sink that
        returns None or False for "not taken" must not have its events counted as delivered and
        dropped); one that does not return within the endpoint's ``timeout`` (and ``SEND_GRACE``)
        has failed this try and is not called again until it returns. Either way this loop goes on,
        retrying and dead-lettering as for any failure, and keeps starting rounds, so the replica can
        still hand shards back (a loop stuck in a send once held them, undelivered, for every endpoint)."""
        sink, wait = self._e.sink, self._e.timeout + SEND_GRACE
        if self._busy is not None:
            if not self._busy.done.wait(wait):
                return (f"the {sink} sink has not returned from a send of "
                        f"{time.monotonic() - self._busy.started:.0f}s ago; it is not called again until it does")
            self._busy = None
        call = _SinkCall(self._sink, events, self._e.name)
        if not call.done.wait(wait):
            self._busy = call
            return f"the {sink} sink did not return within the endpoint's timeout ({self._e.timeout:g}s)"
        if call.error is not None:
            log.warning("the sink raised", exc_info=call.error, extra={"fields": {"endpoint": self._e.name}})
            return f"the {sink} sink raised {type(call.error).__name__}: {call.error}"
        if not isinstance(call.answer, str):
            return (f"the {sink} sink's send answered {type(call.answer).__name__}, not text "
                    "(\"\" when the batch was taken, else why not)")
        return call.answer

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

    # -- cursors, dead letters, status --------------------------------------------------------------

    def _load_cursor(self, shard: int) -> bool:
        """This endpoint's cursor on the shard: an endpoint seen for the first time starts at the
        oldest event the outbox still holds (nothing written since the outbox was on is skipped).
        False when the shard is no longer ours."""
        name = keys.event_cursor(self._e.name)
        raw = self._r.hget(name, str(shard))
        if raw is None:
            first = self._r.xrange(keys.outbox(shard), count=1)
            seq = int(_text(first[0][1][b"n"])) - 1 if first else int(self._r.get(keys.outbox_seq(shard)) or 0)
            self._init(keys=[keys.event_lease(shard), name], args=[self._replica, shard, f"0-0 {seq}"])
            raw = self._r.hget(name, str(shard))
            if raw is None:
                return False
        cursor, _, seq_text = _text(raw).partition(" ")
        self._cursors[shard] = (cursor, int(seq_text or 0))
        return True

    def _finish(self, moved: dict[int, tuple[str, int]], delivered: int = 0, dead: list[Event] | None = None,
                reason: str = "", attempts: int = 0) -> bool:
        """Moves the cursors, records what was delivered and dead-lettered, in one step; False (and
        the cursors read afresh) when a shard is no longer ours."""
        if dead:
            metrics.EVENTS_DEAD.labels(self._e.name, reason).inc(len(dead))
            log.warning("events dead-lettered", extra={"fields": {"endpoint": self._e.name, "events": len(dead),
                                                                  "reason": reason}})
        shards = sorted(moved)
        done = self._advance(
            keys=[keys.event_cursor(self._e.name), keys.event_status(self._e.name), keys.dead_letters(self._e.name),
                  *(keys.event_lease(shard) for shard in shards)],
            args=[self._replica, int(time.time()), delivered, reason, attempts, len(shards),
                  *(item for shard in shards for item in (shard, f"{moved[shard][0]} {moved[shard][1]}")),
                  *(e.dead_letter() for e in dead or [])])
        if not done:
            self._cursors.clear()
            return False
        self._cursors.update(moved)
        return True

    def _note_error(self, error: str) -> None:
        error = printable_reason(error)
        log.warning("delivery failed", extra={"fields": {"endpoint": self._e.name, "error": error}})
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
