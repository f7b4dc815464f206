"""A hostile review of event delivery at scale: dead letters replayed after the endpoint is back.

`wharf-admin events replay` puts an endpoint's dead letters back into the outbox with their
original ids and times. An endpoint down for longer than its ``max_age`` (24 h by default: a
weekend) has dead letters older than that, every one the age rule made among them; the overflow
rules must not take them again untried. Delivery runs as in the service against a real Redis, the
webhook sink against the real receiver process the end-to-end tests use.
"""

from __future__ import annotations

import json
import pathlib
import time
from collections.abc import Iterator

import pytest
import redis

from services.events import admin
from services.events.config import Endpoint
from services.events.delivery import Delivery
from services.events.envelope import Source
from services.events.sinks import WebhookSink
from services.metadata import redis_keys as keys
from tests.support.waiting import eventually
from tests.support.webhook import Receiver

REPLICA = "replica-under-test"
REPOSITORY = "weekend/app"
SHARD = keys.outbox_shard(REPOSITORY)


@pytest.fixture
def receiver(tmp_path: pathlib.Path) -> Iterator[Receiver]:
    found = Receiver(tmp_path)  # not started: the endpoint is down
    yield found
    found.stop()


def test_dead_letters_older_than_max_age_are_delivered_when_replayed(
        redis_client: redis.Redis, receiver: Receiver) -> None:
    """Before: every replayed letter older than ``max_age`` was dead-lettered again at once, by the
    age rule, without a try (a replay after a long outage delivered nothing, and said it had queued
    them all); now a replay is tried like any event (and dead-lettered again only after
    ``attempts`` failures)."""
    tags = [f"v{n}" for n in range(1, 5)]
    for seq, tag in enumerate(tags, 1):
        redis_client.xadd(keys.outbox(SHARD), {"n": seq, "a": "push", "r": REPOSITORY, "d": "sha256:" + "b" * 64,
                                               "m": "application/vnd.oci.image.manifest.v1+json", "s": 10,
                                               "t": tag, "f": "", "o": "{}"})
    redis_client.set(keys.outbox_seq(SHARD), len(tags))
    redis_client.set(keys.event_lease(SHARD), REPLICA)
    endpoint = Endpoint(name="weekend", url=receiver.url, timeout=1.0, attempts=1, threshold=1, backoff=0.05,
                        max_backoff=0.1, max_age=1.0)
    sink = WebhookSink.from_endpoint(endpoint, Source("", REPLICA))
    delivery = Delivery(redis_client, REPLICA, endpoint, sink, 0.0, lambda: [SHARD])
    delivery.start()
    try:
        # The endpoint is down: the batch fails its one attempt and is dead-lettered.
        assert eventually(lambda: redis_client.xlen(keys.dead_letters("weekend")) == len(tags), 15.0)
        first_ids = [json.loads(fields[b"event"])["i"]
                     for _, fields in redis_client.xrange(keys.dead_letters("weekend"))]
        time.sleep(1.2)  # the letters are now older than max_age, as after a weekend with max_age 24h
        receiver.start()
        assert admin.replay(redis_client, "weekend", 100) == len(tags)
        assert eventually(lambda: len(receiver.events()) == len(tags), 15.0), \
            f"replayed letters were not delivered: {redis_client.xlen(keys.dead_letters('weekend'))} dead again"
        got = receiver.events()
        assert [e["target"]["tag"] for e in got] == tags  # in order, once each
        assert [e["id"] for e in got] == first_ids         # with the ids they first had
        assert redis_client.xlen(keys.dead_letters("weekend")) == 0
    finally:
        delivery.stop_flag.set()
        delivery.join(5)
        sink.close()


def test_a_fresh_event_older_than_max_age_is_still_dead_lettered_untried(
        redis_client: redis.Redis, receiver: Receiver) -> None:
    """The age rule itself stands for events that were never replayed."""
    receiver.start()
    stale_ms = int((time.time() - 3600) * 1000)
    redis_client.xadd(keys.outbox(SHARD), {"n": 1, "a": "push", "r": REPOSITORY, "d": "", "m": "", "s": "",
                                           "t": "old", "f": "", "o": "{}", "w": stale_ms})
    redis_client.set(keys.outbox_seq(SHARD), 1)
    redis_client.set(keys.event_lease(SHARD), REPLICA)
    endpoint = Endpoint(name="aged", url=receiver.url, timeout=1.0, max_age=60.0)
    sink = WebhookSink.from_endpoint(endpoint, Source("", REPLICA))
    delivery = Delivery(redis_client, REPLICA, endpoint, sink, 0.0, lambda: [SHARD])
    delivery.start()
    try:
        assert eventually(lambda: redis_client.xlen(keys.dead_letters("aged")) == 1, 15.0)
        [(_, fields)] = redis_client.xrange(keys.dead_letters("aged"))
        assert fields[b"reason"] == b"age"
        assert receiver.events() == []
    finally:
        delivery.stop_flag.set()
        delivery.join(5)
        sink.close()
