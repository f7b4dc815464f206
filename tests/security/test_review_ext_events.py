"""A hostile review of event delivery: a third party's sink that raises or answers the wrong type,
a receiver that redirects or answers with terminal control sequences, and a client's Host header
in the events every consumer receives.

Delivery runs as in the service (services/events/delivery.py) against a real Redis, and the
webhook sink against a real receiver on a loopback socket.
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
import redis

from services.events import admin
from services.events.config import Endpoint, Events
from services.events.delivery import Delivery
from services.events.envelope import Event, Source
from services.events.sinks import EventSink, WebhookSink
from services.gen.wharf.metadata.v1 import metadata_pb2 as mpb
from services.metadata import redis_keys as keys
from services.metadata.outbox import origin_json
from tests.support.waiting import eventually

REPLICA = "replica-under-test"
REPOSITORY = "demo/app"
SHARD = keys.outbox_shard(REPOSITORY)
DIGEST = "sha256:" + "a" * 64


def _outbox(client: redis.Redis, count: int) -> None:
    """``count`` push events of REPOSITORY in its shard, which this replica holds."""
    for seq in range(1, count + 1):
        client.xadd(keys.outbox(SHARD), {"n": seq, "a": "push", "r": REPOSITORY, "d": DIGEST,
                                         "m": "application/vnd.oci.image.manifest.v1+json", "s": 10,
                                         "t": f"v{seq}", "f": "", "o": "{}"})
    client.set(keys.outbox_seq(SHARD), count)
    client.set(keys.event_lease(SHARD), REPLICA)


@pytest.fixture
def deliver(redis_client: redis.Redis) -> Iterator[Callable[[Endpoint, EventSink], Delivery]]:
    started: list[Delivery] = []

    def start(endpoint: Endpoint, sink: EventSink) -> Delivery:
        delivery = Delivery(redis_client, REPLICA, endpoint, sink, 0.0, lambda: [SHARD])
        delivery.start()
        started.append(delivery)
        return delivery

    yield start
    for delivery in started:
        delivery.stop_flag.set()
        delivery.join(5)


class _Sink(EventSink):
    """A third party's sink whose ``send`` is the test's."""

    wharf_interface = 1

    def __init__(self, send: Callable[[list[Event]], Any]) -> None:
        self._send = send
        self.calls = 0

    @classmethod
    def from_endpoint(cls, endpoint: Endpoint, source: Source) -> _Sink:
        raise NotImplementedError

    def send(self, events: list[Event]) -> Any:
        self.calls += 1
        return self._send(events)


def _status(client: redis.Redis, name: str) -> dict[str, str]:
    return {k.decode(): v.decode() for k, v in client.hgetall(keys.event_status(name)).items()}


def test_a_sink_that_raises_is_a_failed_try_and_its_endpoint_goes_on(
        redis_client: redis.Redis, deliver: Callable[[Endpoint, EventSink], Delivery]) -> None:
    """Before: the exception ended the endpoint's delivery thread; its events waited for ever,
    neither retried nor dead-lettered, with nothing in `wharf-admin events`."""
    _outbox(redis_client, 3)

    def boom(events: list[Event]) -> str:
        raise RuntimeError("the queue client is not connected")

    sink = _Sink(boom)
    endpoint = Endpoint(name="raising", sink="raising", attempts=2)
    delivery = deliver(endpoint, sink)
    assert eventually(lambda: redis_client.xlen(keys.dead_letters("raising")) == 3), \
        "the batch that made the sink raise was never dead-lettered"
    assert delivery.is_alive()
    assert sink.calls == 2  # tried `attempts` times, as for any failure
    status = _status(redis_client, "raising")
    assert status["failed"] == "2"
    assert "RuntimeError: the queue client is not connected" in status["last_error"]
    assert "delivered" not in status or status["delivered"] == "0"
    # And the loop still delivers what comes next.
    _outbox_more = [("v9", 4)]
    for tag, seq in _outbox_more:
        redis_client.xadd(keys.outbox(SHARD), {"n": seq, "a": "push", "r": REPOSITORY, "d": DIGEST, "m": "x",
                                               "s": 1, "t": tag, "f": "", "o": "{}"})
    assert eventually(lambda: sink.calls >= 3)


@pytest.mark.parametrize("answer", [None, False, 0, b""], ids=["None", "False", "0", "bytes"])
def test_a_sink_answering_anything_but_text_has_not_delivered(
        redis_client: redis.Redis, deliver: Callable[[Endpoint, EventSink], Delivery], answer: Any) -> None:
    """Before: any falsy answer (a sink returning None, or False for "not taken") counted as a
    delivery: the cursor moved past the batch and its events were gone."""
    _outbox(redis_client, 2)
    sink = _Sink(lambda events: answer)
    deliver(Endpoint(name="typed", sink="typed", attempts=2), sink)
    assert eventually(lambda: redis_client.xlen(keys.dead_letters("typed")) == 2), \
        f"a batch the sink answered {answer!r} for was counted as delivered"
    status = _status(redis_client, "typed")
    assert status.get("delivered", "0") == "0"
    assert f"answered {type(answer).__name__}, not text" in status["last_error"]


class _Receiver(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.mode = "ok"
        self.paths: list[str] = []

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Receiver

    def log_message(self, format: str, *args: object) -> None:
        pass

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        self.server.paths.append(self.path)
        if self.path == "/hook" and self.server.mode == "redirect":
            self.send_response(307)
            self.send_header("Location", self.server.url + "/elsewhere")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        if self.path == "/hook" and self.server.mode == "ansi":
            body = b"\x1b[2J\x1b[1;32mall good\x1b[0m\nfake  last success 2026-01-01T00:00:00Z\r\x07"
            self.send_response(500)
        else:
            body = b"ok"
            self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


@pytest.fixture
def receiver() -> Iterator[_Receiver]:
    server = _Receiver()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


def _event() -> Event:
    return Event(id="7-1-0", at_ms=int(time.time() * 1000), action="push", repository=REPOSITORY, digest=DIGEST,
                 media_type="application/vnd.oci.image.manifest.v1+json", size=10, tag="v1")


def test_a_receiver_that_redirects_has_not_received_the_events(receiver: _Receiver) -> None:
    """Before: a 307 (not followed) counted as a delivery: an endpoint that moved lost every event."""
    receiver.mode = "redirect"
    endpoint = Endpoint(name="moved", url=receiver.url + "/hook", timeout=2.0)
    sink = WebhookSink.from_endpoint(endpoint, Source("", "test"))
    try:
        reason = sink.send([_event()])
    finally:
        sink.close()
    assert reason.startswith("HTTP 307: redirected to ")
    assert "not followed" in reason
    assert receiver.paths == ["/hook"]  # and the redirect's target got nothing


def test_a_receivers_answer_cannot_write_control_characters_into_the_status(
        redis_client: redis.Redis, deliver: Callable[[Endpoint, EventSink], Delivery], receiver: _Receiver) -> None:
    """Before: the answer's text went raw into the endpoint's status, and `wharf-admin events`
    printed it: ESC sequences reached the operator's terminal, CR and LF forged lines."""
    receiver.mode = "ansi"
    _outbox(redis_client, 1)
    endpoint = Endpoint(name="ansi", url=receiver.url + "/hook", timeout=2.0, attempts=1)
    deliver(endpoint, WebhookSink.from_endpoint(endpoint, Source("", "test")))
    assert eventually(lambda: redis_client.xlen(keys.dead_letters("ansi")) == 1)
    kept = _status(redis_client, "ansi")["last_error"]
    assert kept.startswith("HTTP 500: ")
    assert "all good" in kept
    assert kept.isprintable() and kept.isascii(), kept
    # What an older delivery service kept raw is cleaned when shown.
    redis_client.hset(keys.event_status("ansi"), "last_error", "HTTP 500: \x1b[2Jok\nforged line\r")
    shown = admin.summary(redis_client, Events((endpoint,)))[0]["last_error"]
    assert shown == "HTTP 500: ?[2Jok?forged line?"


@pytest.mark.parametrize(("host", "kept"), [
    ("registry.example.com", "registry.example.com"),
    ("registry.example.com:5000", "registry.example.com:5000"),
    ("[::1]:5000", "[::1]:5000"),
    ("evil.example/steal?x=", ""),
    ("evil.example#", ""),
    ("a?b", ""),
    ("user@evil.example", ""),
])
def test_an_events_url_is_built_from_a_host_or_not_at_all(host: str, kept: str) -> None:
    """Before: without WHARF_PUBLIC_URL, `Host: evil.example/steal?x=` on a push (or on an anonymous
    pull of a public repository) made every consumer's event say
    target.url = http://evil.example/steal?x=/v2/<repository>/manifests/<digest>."""
    import json

    from services.events.envelope import cloud_event, distribution_event

    origin = json.loads(origin_json(mpb.Origin(account="a", address="10.0.0.1", host=host, method="PUT")))
    event = dataclasses.replace(_event(), origin=origin)
    distribution = distribution_event(event, Source("", "test"))
    url = distribution["target"].get("url", "")
    assert url == (f"http://{kept}/v2/{REPOSITORY}/manifests/{DIGEST}" if kept else "")
    assert distribution["source"]["addr"] == kept
    assert cloud_event(event, Source("", "test"))["source"] == (f"http://{kept}" if kept else "/wharf")
    # With WHARF_PUBLIC_URL, the Host never mattered.
    assert distribution_event(event, Source("https://reg.example", "t"))["target"]["url"].startswith(
        "https://reg.example/v2/")


class _Stuck:
    """A sink's send that never returns (a client library waiting without a timeout), until released."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self.entered = threading.Event()

    def __call__(self, events: list[Event]) -> str:
        self.entered.set()
        self.release.wait()
        return ""


@pytest.fixture
def stuck() -> Iterator[_Stuck]:
    hang = _Stuck()
    yield hang
    hang.release.set()


def test_a_sink_that_never_returns_fails_its_tries_and_is_not_called_again_meanwhile(
        redis_client: redis.Redis, deliver: Callable[[Endpoint, EventSink], Delivery], stuck: _Stuck) -> None:
    """Before: the endpoint's loop waited in the send for ever: no failure, no dead letter, no round."""
    _outbox(redis_client, 2)
    sink = _Sink(stuck)
    delivery = deliver(Endpoint(name="stuck", sink="stuck", timeout=0.3, attempts=2), sink)
    assert eventually(lambda: redis_client.xlen(keys.dead_letters("stuck")) == 2), "the stuck batch stayed in flight"
    assert sink.calls == 1  # never called again while its first send has not returned
    assert "did not return within the endpoint's timeout (0.3s)" in _status(redis_client, "stuck")["last_error"] \
        or "has not returned from a send" in _status(redis_client, "stuck")["last_error"]
    rounds = delivery.rounds
    assert eventually(lambda: delivery.rounds > rounds)


@pytest.mark.parametrize("failing", ["stuck", "down"])
def test_a_failing_endpoint_does_not_keep_its_replica_from_handing_shards_over(
        redis_client: redis.Redis, monkeypatch: pytest.MonkeyPatch, stuck: _Stuck, failing: str) -> None:
    """Before: a replica handed a shard over only once every endpoint's loop began a round without
    it. A loop stuck in a send never did; one retrying a batch for an endpoint that is down did only
    once the batch was dead-lettered (10 tries, backing off up to a minute). Meanwhile, when a second
    replica started (a rolling update), half the shards were taken from delivery for every endpoint,
    the healthy ones too, and given to nobody."""
    from services.events import replica as replica_module

    def down(events: list[Event]) -> str:
        stuck.entered.set()
        return "HTTP 503: down for maintenance"

    good = _Sink(lambda events: "")
    by_name = {"good": good, "failing": _Sink(stuck if failing == "stuck" else down)}
    monkeypatch.setattr(replica_module.sinks, "create", lambda endpoint, source: by_name[endpoint.name])
    events = Events((Endpoint(name="good", sink="good", timeout=0.3),
                     Endpoint(name="failing", sink="failing", timeout=0.3, threshold=1, backoff=5.0)))
    replica = replica_module.Replica(redis_client, events, "", lease_ttl=1.5)
    replica.start()
    try:
        assert eventually(lambda: len(replica.owned) == keys.OUTBOX_SHARDS)
        _outbox(redis_client, 1)
        redis_client.set(keys.event_lease(SHARD), replica.id)  # _outbox took it for REPLICA
        assert stuck.entered.wait(10)
        now_s, _ = redis_client.time()
        redis_client.zadd(keys.EVENT_REPLICAS, {"another-replica": (now_s + 600) * 1000})
        assert eventually(lambda: len(replica.owned) == keys.OUTBOX_SHARDS // 2, timeout=15), \
            f"still owns {len(replica.owned)} shards"
    finally:
        stuck.release.set()
        replica.stop()


def test_a_sink_refusing_its_options_stops_the_service_in_one_line(tmp_path: pathlib.Path) -> None:
    """Before: wharf-events loaded the sink's class only; its from_endpoint's ValueError came later,
    as a traceback from inside the server's start (docs/extending.md promises one line)."""
    package = tmp_path / "site"
    info = package / "wharf_picky-0.1.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: wharf-picky\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[wharf.events]\npicky = wharf_picky:Picky\n")
    (package / "wharf_picky.py").write_text(
        "from services.events.sinks import EventSink\n\n"
        "class Picky(EventSink):\n"
        "    wharf_interface = 1\n\n"
        "    @classmethod\n"
        "    def from_endpoint(cls, endpoint, source):\n"
        "        raise ValueError('picky needs path: an absolute file name')\n\n"
        "    def send(self, events):\n"
        "        return ''\n")
    (tmp_path / "events.yaml").write_text("endpoints:\n  - name: audit\n    sink: picky\n")
    (tmp_path / "token").write_text("t" * 40)
    root = pathlib.Path(__file__).resolve().parents[2]
    env = {**os.environ, "PYTHONPATH": f"{package}{os.pathsep}{root}",
           "WHARF_EVENTS_FILE": str(tmp_path / "events.yaml"), "WHARF_INTERNAL_TOKEN_FILE": str(tmp_path / "token"),
           "WHARF_REDIS_URL": "redis://127.0.0.1:1/0", "WHARF_EVENTS_LISTEN": "127.0.0.1:0"}
    done = subprocess.run([sys.executable, "-m", "services.events"], env=env, cwd=root, capture_output=True,
                          text=True, timeout=60)
    assert done.returncode != 0
    assert "Traceback" not in done.stderr
    assert done.stderr.strip() == ("wharf-events: wharf.events 'picky' (endpoint audit): "
                                   "picky needs path: an absolute file name")
    # make run's settings check builds the sink too, so it says so before anything starts.
    checked = subprocess.run([sys.executable, "-m", "services.stack", "--check"], env=env, cwd=root,
                             capture_output=True, text=True, timeout=60)
    assert checked.returncode != 0
    assert "picky needs path: an absolute file name" in checked.stdout + checked.stderr
