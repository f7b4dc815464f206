"""The webhook sink's timeout bounds the whole exchange, not each socket read (services/events/deadline.py).

A receiver that trickles its answer (a byte well within the per-read timeout, for ever) used to
hold its endpoint's delivery loop indefinitely. These tests use a real receiver on a loopback
socket: the blocking being fixed happens inside the socket reads.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from services.events import deadline
from services.events.config import Endpoint
from services.events.envelope import Event, Source
from services.events.sinks import WebhookSink

TIMEOUT = 1.0
# Well under TIMEOUT: a per-read timeout never fires, only a total deadline can.
TRICKLE_EVERY = 0.25


class _Receiver(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.modes: list[str] = []  # what the next requests get, in order ("ok" once none is left)
        self.stopping = threading.Event()
        self.connections: set[tuple[str, int]] = set()

    def next_mode(self) -> str:
        return self.modes.pop(0) if self.modes else "ok"


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Receiver

    def log_message(self, format: str, *args: object) -> None:
        pass

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        self.server.connections.add(self.client_address)
        mode = self.server.next_mode()
        if mode == "trickle_status":
            self._trickle(b"HTTP/1.1 200 OK\r\nX-Slow: ")
        elif mode == "trickle_body":
            self._trickle(b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n")
        else:
            self.send_response(200)
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"ok")

    def _trickle(self, start: bytes) -> None:
        self.close_connection = True
        try:
            self.wfile.write(start)
            self.wfile.flush()
            while not self.server.stopping.wait(TRICKLE_EVERY):
                self.wfile.write(b"a")
                self.wfile.flush()
        except OSError:
            pass  # the sink cut the connection: what the test wants


@pytest.fixture
def receiver() -> Iterator[_Receiver]:
    server = _Receiver()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.stopping.set()
        server.shutdown()
        server.server_close()
        thread.join(5)


@pytest.fixture
def sink(receiver: _Receiver) -> Iterator[WebhookSink]:
    endpoint = Endpoint(name="slow", url=f"http://127.0.0.1:{receiver.server_address[1]}/hook", timeout=TIMEOUT)
    made = WebhookSink.from_endpoint(endpoint, Source(public_url="https://registry.example", instance="test"))
    try:
        yield made
    finally:
        made.close()


EVENTS = [Event(id="1-0", at_ms=1_700_000_000_000, action="push", repository="library/alpine",
                digest="sha256:" + "a" * 64, media_type="application/vnd.oci.image.manifest.v1+json", size=10)]


def _timed_send(sink: WebhookSink) -> tuple[str, float]:
    started = time.monotonic()
    reason = sink.send(EVENTS)
    return reason, time.monotonic() - started


@pytest.mark.parametrize("mode", ["trickle_status", "trickle_body"])
def test_a_trickled_answer_fails_within_the_timeout(receiver: _Receiver, sink: WebhookSink, mode: str) -> None:
    receiver.modes = [mode]
    reason, took = _timed_send(sink)
    assert reason and "timeout" in reason
    assert TIMEOUT * 0.9 <= took < TIMEOUT + 1.0


def test_a_kept_alive_connection_is_bounded_too(receiver: _Receiver, sink: WebhookSink) -> None:
    """A reused connection never calls connect: it registers itself on each request."""
    receiver.modes = ["ok", "trickle_status"]
    assert sink.send(EVENTS) == ""
    reason, took = _timed_send(sink)
    assert reason and took < TIMEOUT + 1.0
    assert len(receiver.connections) == 1  # the second request did go over the kept-alive connection


def test_the_endpoint_works_again_after_a_cut(receiver: _Receiver, sink: WebhookSink) -> None:
    """A failure is an ordinary one: the next try (the delivery loop's retry) is delivered."""
    receiver.modes = ["trickle_status"]
    assert sink.send(EVENTS)
    reason, took = _timed_send(sink)
    assert reason == ""
    assert took < TIMEOUT


def test_a_prompt_answer_keeps_its_connection(receiver: _Receiver, sink: WebhookSink) -> None:
    for _ in range(3):
        assert sink.send(EVENTS) == ""
    assert len(receiver.connections) == 1


def test_a_deadline_left_in_time_never_fires() -> None:
    with deadline.Deadline(0.05) as limit:
        pass
    time.sleep(0.15)
    assert not limit.expired
