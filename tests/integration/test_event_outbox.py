"""The event outbox against a real Redis: each write script records exactly the events of the change
it made, in the same step, and a write that changed nothing (refused, failed, read-only) records none.
Also the delivery side's scripts: the cursor moves only under the shard's lease, dead letters are
replayed once."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from typing import Any

import pytest
import redis
import redis.asyncio as aredis

from services.common import digests
from services.common.errors import MANIFEST_BLOB_UNKNOWN, MANIFEST_INVALID, UNAVAILABLE, RegistryError
from services.events import admin
from services.events.envelope import Event
from services.gen.wharf.metadata.v1 import metadata_pb2 as mpb
from services.metadata import redis_keys as keys
from services.metadata.lifecycle import Lifecycle
from services.metadata.outbox import Outbox, PullEvents
from services.metadata.store import MetadataStore
from tests.integration.test_metadata_lifecycle import Sync

IMAGE = "application/vnd.oci.image.manifest.v1+json"


@pytest.fixture()
def parts(redis_client: redis.Redis, redis_url: str) -> Iterator[tuple[Sync, Sync, Sync]]:
    loop = asyncio.new_event_loop()
    client = aredis.Redis.from_url(redis_url)
    outbox = Outbox(enabled=True)
    yield (Sync(loop, MetadataStore(client, outbox)), Sync(loop, Lifecycle(client, outbox)),
           Sync(loop, PullEvents(client, outbox)))
    loop.run_until_complete(client.aclose())
    loop.close()


def events_of(r: redis.Redis, name: str) -> list[Event]:
    shard = keys.outbox_shard(name)
    return [Event.from_entry(shard, i.decode(), {k.decode(): v.decode() for k, v in f.items()})
            for i, f in r.xrange(keys.outbox(shard))]


def origin(**fields: Any) -> mpb.Origin:
    return mpb.Origin(**{"account": "alice", "address": "10.1.2.3", "user_agent": "skopeo/1.13",
                         "request_id": "r1", "host": "reg.example", "method": "PUT", **fields})


def _blob(store: Sync, name: str, data: bytes, **kw: Any) -> str:
    digest = digests.of(data)
    store.link_blob(name, digest, len(data), **kw)
    return digest


def _manifest(blobs: list[str]) -> bytes:
    return json.dumps({"schemaVersion": 2, "layers": blobs}).encode()


def test_a_push_records_its_blobs_then_its_manifest_with_each_tag_and_who(parts: Any,
                                                                         redis_client: redis.Redis) -> None:
    store, _, _ = parts
    layer = _blob(store, "team/app", b"layer", origin=origin(method="PUT"))
    body = _manifest([layer])
    store.put_manifest("team/app", digests.of(body), IMAGE, body, ["v1", "latest"], [layer], [], "", None,
                       origin=origin())
    found = events_of(redis_client, "team/app")
    assert [(e.action, e.digest, e.tag) for e in found] == [
        ("push", layer, ""), ("push", digests.of(body), "v1"), ("push", digests.of(body), "latest")]
    assert found[0].media_type == "application/octet-stream" and found[0].size == 5
    assert found[1].media_type == IMAGE and found[1].size == len(body)
    assert found[1].origin == {"account": "alice", "address": "10.1.2.3", "user_agent": "skopeo/1.13",
                               "request_id": "r1", "host": "reg.example", "method": "PUT"}
    assert len({e.id for e in found}) == 3


def test_refused_writes_record_nothing(parts: Any, redis_client: redis.Redis) -> None:
    store, _, _ = parts
    layer = _blob(store, "team/app", b"layer")
    before = len(events_of(redis_client, "team/app"))
    body = _manifest([layer, digests.of(b"missing")])
    with pytest.raises(RegistryError) as missing:
        store.put_manifest("team/app", digests.of(body), IMAGE, body, ["v1"], [layer, digests.of(b"missing")], [],
                           "", None, origin=origin())
    assert missing.value.error is MANIFEST_BLOB_UNKNOWN
    with pytest.raises(RegistryError) as wrong_size:
        store.put_manifest("team/app", digests.of(body), IMAGE, body, ["v1"], [layer], [], "", None,
                           blob_sizes=[999], origin=origin())
    assert wrong_size.value.error is MANIFEST_INVALID
    for delete in (lambda: store.delete_manifest("team/app", digests.of(b"nothing")),
                   lambda: store.delete_tag("team/app", "nope"),
                   lambda: store.unlink_blob("team/app", digests.of(b"nothing"))):
        with pytest.raises(RegistryError):
            delete()
    redis_client.set(keys.MAINTENANCE, "1", px=60_000)
    with pytest.raises(RegistryError) as read_only:
        store.link_blob("team/app", digests.of(b"x"), 1, origin=origin())
    assert read_only.value.error is UNAVAILABLE
    redis_client.delete(keys.MAINTENANCE)
    assert len(events_of(redis_client, "team/app")) == before


def test_deletes_record_the_tags_the_manifest_and_the_repository_leaving(parts: Any, redis_client: redis.Redis) -> None:
    store, _, _ = parts
    layer = _blob(store, "gone/app", b"l")
    body = _manifest([layer])
    digest = digests.of(body)
    store.put_manifest("gone/app", digest, IMAGE, body, ["a", "b"], [layer], [], "", None)
    store.delete_tag("gone/app", "a", origin=origin(method="DELETE"))
    store.delete_manifest("gone/app", digest, origin=origin(method="DELETE"))
    store.unlink_blob("gone/app", layer, origin=origin(method="DELETE"))
    found = [(e.action, e.digest, e.tag) for e in events_of(redis_client, "gone/app")][3:]
    assert found == [("delete", digest, "a"), ("delete", digest, "b"), ("delete", digest, ""),
                     ("delete", layer, ""), ("delete", "", "")]  # the last: the repository is gone


def test_a_mount_names_its_source_and_a_mirror_fill_records_nothing(parts: Any, redis_client: redis.Redis) -> None:
    store, _, _ = parts
    layer = _blob(store, "src/app", b"shared")
    assert store.link_blob("dst/app", layer, 6, source="src/app", origin=origin())
    mount = events_of(redis_client, "dst/app")
    assert [(e.action, e.source) for e in mount] == [("mount", "src/app")]
    _blob(store, "hub/library/alpine", b"filled", origin=origin(mirror_fill=True))
    assert events_of(redis_client, "hub/library/alpine") == []


def test_collection_is_announced_as_deletes_by_the_collector(parts: Any, redis_client: redis.Redis) -> None:
    store, lifecycle, _ = parts
    layer = _blob(store, "gc/app", b"unused")
    lifecycle.collect_repository("gc/app", 0, True, False)
    last = events_of(redis_client, "gc/app")[-2:]
    assert [(e.action, e.digest) for e in last] == [("delete", layer), ("delete", "")]
    assert last[0].origin == {"account": "wharf-gc"}


def test_hostile_origins_are_bounded_and_printable(parts: Any, redis_client: redis.Redis) -> None:
    store, _, _ = parts
    _blob(store, "team/x", b"z", origin=origin(user_agent="evil\r\nX-Injected: 1\x00" + "A" * 5000,
                                                 host="h\u2028ost", account="a\x1b[31m"))
    event = events_of(redis_client, "team/x")[0]
    assert event.origin["user_agent"].startswith("evil??X-Injected: 1?") and len(event.origin["user_agent"]) == 256
    assert event.origin["host"] == "h?ost" and event.origin["account"] == "a?[31m"


def test_pull_events_keep_when_the_pull_was_answered(parts: Any, redis_client: redis.Redis) -> None:
    _, _, pulls = parts
    digest = digests.of(b"m")
    pulls.record([mpb.PullEvent(repository="team/p", digest=digest, media_type=IMAGE, size=9, tag="v1",
                                origin=origin(method="GET"), at_ms=1_700_000_000_123)])
    [event] = events_of(redis_client, "team/p")
    assert (event.action, event.tag, event.at_ms, event.size) == ("pull", "v1", 1_700_000_000_123, 9)
    with pytest.raises(RegistryError):
        pulls.record([mpb.PullEvent(repository="Bad Name", digest=digest)])


def test_the_cursor_moves_only_under_the_lease_and_a_replay_keeps_the_event_id(
        parts: Any, redis_client: redis.Redis) -> None:
    store, _, _ = parts
    _blob(store, "team/r", b"r")
    shard = keys.outbox_shard("team/r")
    [event] = events_of(redis_client, "team/r")
    advance = redis_client.register_script(keys.ADVANCE_CURSORS)
    script_keys = [keys.event_cursor("hook"), keys.event_status("hook"), keys.dead_letters("hook"),
                   keys.event_lease(shard)]
    args = [1, 0, "attempts", 10, 1, shard, "1-0 1", event.dead_letter()]
    redis_client.set(keys.event_lease(shard), "other", px=10_000)
    assert advance(keys=script_keys, args=["mine", *args]) == 0  # not the owner: nothing moves
    assert redis_client.xlen(keys.dead_letters("hook")) == 0
    redis_client.set(keys.event_lease(shard), "mine", px=10_000)
    assert advance(keys=script_keys, args=["mine", *args]) == 1
    assert redis_client.hget(keys.event_cursor("hook"), str(shard)) == b"1-0 1"
    assert admin.dead_letters(redis_client, "hook", 10)[0]["id"] == event.id
    assert admin.replay(redis_client, "hook", 10) == 1
    assert admin.replay(redis_client, "hook", 10) == 0
    replayed = events_of(redis_client, "team/r")[-1]
    assert (replayed.id, replayed.only, replayed.action, replayed.digest) == (event.id, "hook", "push", event.digest)
