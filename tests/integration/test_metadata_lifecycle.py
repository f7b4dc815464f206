"""The storage-lifecycle model against a real Redis, and last the service as a process: the counts
garbage collection re-checks, pins and fences, what a collection keeps (index children, referrers
of a stored subject, tagged manifests) and removes, push times, and the schema migration
(backfill, resumption, a newer schema refused)."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable, Iterator
from typing import Any

import grpc
import pytest
import redis
import redis.asyncio as aredis
import requests

from services.common import digests
from services.common.errors import BLOB_UPLOAD_UNKNOWN, UNAVAILABLE, RegistryError
from services.common.internal_auth import authenticated_channel, read_token
from services.gen.wharf.metadata.v1 import metadata_pb2 as mpb
from services.gen.wharf.metadata.v1 import metadata_pb2_grpc as mpb_grpc
from services.metadata import migrations
from services.metadata import redis_keys as keys
from services.metadata.lifecycle import Lifecycle
from services.metadata.store import Descriptor, MetadataStore
from services.stack import records
from tests.support.pusher import OCI_MANIFEST, push_image, random_layers
from tests.support.stack import RunningStack

IMAGE = "application/vnd.oci.image.manifest.v1+json"
INDEX = "application/vnd.oci.image.index.v1+json"


class Sync:
    """Runs an asyncio object's coroutines to completion, so the tests read as plain calls."""

    def __init__(self, loop: asyncio.AbstractEventLoop, target: object) -> None:
        self._loop = loop
        self._target = target

    def __getattr__(self, name: str) -> Callable[..., Any]:
        method = getattr(self._target, name)
        return lambda *args, **kwargs: self._loop.run_until_complete(method(*args, **kwargs))


@pytest.fixture()
def parts(redis_client: redis.Redis, redis_url: str) -> Iterator[tuple[Sync, Sync, asyncio.AbstractEventLoop,
                                                                        aredis.Redis]]:
    loop = asyncio.new_event_loop()
    client = aredis.Redis.from_url(redis_url)
    yield Sync(loop, MetadataStore(client)), Sync(loop, Lifecycle(client)), loop, client
    loop.run_until_complete(client.aclose())
    loop.close()


def _image(store: Sync, name: str, tags: list[str], layers: list[bytes], subject: str = "") -> str:
    config = json.dumps({"n": len(layers), "layers": [digests.of(x) for x in layers], "s": subject}).encode()
    for blob in [config, *layers]:
        store.link_blob(name, digests.of(blob), len(blob))
    body = json.dumps({"schemaVersion": 2, "mediaType": IMAGE,
                       "config": {"mediaType": "application/x", "digest": digests.of(config), "size": len(config)},
                       "layers": [{"mediaType": "application/x", "digest": digests.of(x), "size": len(x)}
                                  for x in layers],
                       **({"subject": {"mediaType": IMAGE, "digest": subject, "size": 1}} if subject else {})}).encode()
    digest = digests.of(body)
    descriptor = Descriptor(IMAGE, digest, len(body), "application/x.sig") if subject else None
    store.put_manifest(name, digest, IMAGE, body, tags, [digests.of(config), *[digests.of(x) for x in layers]], [],
                       subject, descriptor)
    return digest


def _index(store: Sync, name: str, tags: list[str], children: list[str]) -> str:
    body = json.dumps({"schemaVersion": 2, "mediaType": INDEX, "manifests": [
        {"mediaType": IMAGE, "digest": c, "size": 1} for c in children]}).encode()
    store.put_manifest(name, digests.of(body), INDEX, body, tags, [], children, "", None)
    return digests.of(body)


def test_counts_follow_puts_and_deletes(parts: Any, redis_client: redis.Redis) -> None:
    store, _, _, _ = parts
    shared = b"shared layer"
    first = _image(store, "r", ["a"], [shared, b"one"])
    second = _image(store, "r", ["b"], [shared, b"two"])
    _image(store, "r", ["a2"], [shared, b"one"])  # the same bytes again, under another tag: counted once
    refs = {k.decode(): int(v) for k, v in redis_client.hgetall(keys.refs("r")).items()}
    assert refs[digests.of(shared)] == 2 and refs[digests.of(b"two")] == 1
    store.delete_manifest("r", second)
    refs = {k.decode(): int(v) for k, v in redis_client.hgetall(keys.refs("r")).items()}
    assert refs[digests.of(shared)] == 1 and digests.of(b"two") not in refs
    store.delete_manifest("r", first)
    assert redis_client.hlen(keys.refs("r")) == 0  # every count taken back, no zero entries left


def test_collection_keeps_what_is_needed(parts: Any, redis_client: redis.Redis) -> None:
    store, life, _, _ = parts
    child = _image(store, "r", [], [b"child layer"])
    index = _index(store, "r", ["multi"], [child])
    tagged = _image(store, "r", ["v1"], [b"tagged"])
    signature = _image(store, "r", [], [b"sig"], subject=tagged)
    orphan = _image(store, "r", [], [b"orphan"])
    store.link_blob("r", digests.of(b"stray"), 5)

    dry = life.collect_repository("r", 0, True, True)
    assert dry.removed_manifests == [orphan] and digests.of(b"stray") in dry.unlinked
    assert redis_client.sismember(keys.manifests("r"), orphan)  # a dry run removes nothing

    done = life.collect_repository("r", 0, True, False)
    assert done.removed_manifests == [orphan]
    # The stray blob, and the orphan's layer and config.
    assert {digests.of(b"stray"), digests.of(b"orphan")} <= set(done.unlinked) and len(done.unlinked) == 3
    stored = {d.decode() for d in redis_client.smembers(keys.manifests("r"))}
    assert stored == {child, index, tagged, signature}  # the index's child and the signature of a stored subject

    # Without --delete-untagged only referrers whose subject is gone go.
    store.delete_manifest("r", tagged)
    assert life.collect_repository("r", 0, False, False).removed_manifests == [signature]
    # An index deleted: its child is free to go on the next (untagged) collection.
    store.delete_manifest("r", index)
    assert life.collect_repository("r", 0, False, False).removed_manifests == []
    assert life.collect_repository("r", 0, True, False).removed_manifests == [child]
    assert not redis_client.exists(keys.blobs("r")) and not redis_client.zscore(keys.CATALOG, "r")


def test_grace_keeps_young_links_and_manifests(parts: Any) -> None:
    store, life, _, _ = parts
    _image(store, "r", [], [b"young"])
    store.link_blob("r", digests.of(b"young stray"), 11)
    done = life.collect_repository("r", 3_600_000, True, False)
    assert done.removed_manifests == [] and done.unlinked == []


def test_pins_and_fences_exclude_each_other(parts: Any, redis_client: redis.Redis) -> None:
    store, life, _, _ = parts
    digest = digests.of(b"contested")
    pin = store.pin_blob(digest)
    assert life.begin_blob_delete(digest) == ("", "pinned")  # an upload between commit and link
    assert store.link_blob("r", digest, 9, pin=pin)
    assert life.begin_blob_delete(digest) == ("", "linked")
    store.unlink_blob("r", digest)
    fence, refused = life.begin_blob_delete(digest)
    assert fence and not refused
    assert life.begin_blob_delete(digest) == ("", "busy")
    # While the fence stands: a mount cannot link (nobody links it), a pin waits; a pin that
    # lapsed (or was never taken) cannot link either.
    assert not store.link_blob("s", digest, 9, source="*")
    assert not store.link_blob("s", digest, 9, source="r")
    with pytest.raises(RegistryError) as lost:
        store.link_blob("s", digest, 9, pin="0" * 24)
    assert lost.value.error is BLOB_UPLOAD_UNKNOWN
    life.end_blob_delete(digest, "not the fence")
    assert redis_client.exists(keys.blob_deleting(digest))  # only the holder ends a fence
    life.end_blob_delete(digest, fence)
    assert store.pin_blob(digest)  # and now a pin is granted at once


def test_a_pin_waits_out_a_fence(parts: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    store, life, loop, client = parts
    digest = digests.of(b"waiting")
    fence, _ = life.begin_blob_delete(digest)

    async def pin_while_fenced() -> tuple[str, float]:
        started = loop.time()
        task = asyncio.ensure_future(MetadataStore(client).pin_blob(digest))
        await asyncio.sleep(0.3)
        assert not task.done()
        await Lifecycle(client).end_blob_delete(digest, fence)
        return await task, loop.time() - started
    pin, waited = loop.run_until_complete(pin_while_fenced())
    assert pin and 0.3 <= waited < 2
    monkeypatch.setattr("services.metadata.store.PIN_WAIT", 0.2)
    life.begin_blob_delete(digests.of(b"stuck"))
    with pytest.raises(RegistryError) as stuck:
        store.pin_blob(digests.of(b"stuck"))
    assert stuck.value.error is UNAVAILABLE


def test_push_times_and_the_catalog_by_push(parts: Any, redis_client: redis.Redis) -> None:
    store, _, _, _ = parts
    for name in ("old", "middle", "new"):
        _image(store, name, ["v1"], [name.encode()])
        time.sleep(0.002)  # push times are milliseconds: pushes in one millisecond would tie
    names, times, more = store.repositories_by_push("", 2)
    assert names == ["new", "middle"] and more and times[0] >= times[1] > 0
    names, _, more = store.repositories_by_push("middle", 2)
    assert names == ["old"] and not more
    _image(store, "old", ["v2"], [b"again"])
    assert store.repositories_by_push("", 1)[0] == ["old"]
    found, pushed = store.tag_details("old", ["v1", "v2", "missing"])
    assert found[:2] == [d.decode() for d in redis_client.hmget(keys.tags("old"), ["v1", "v2"])] and found[2] == ""
    assert pushed[1] >= pushed[0] > 0 and pushed[2] == 0
    created = int(redis_client.hget(keys.manifest("old", found[0]), "created") or 0)
    assert created == pushed[0]


def _as_schema_1(client: redis.Redis) -> None:
    """Strips what schemas 2 and 3 added, leaving the data as a version-1 Wharf wrote it."""
    client.delete(keys.SCHEMA, keys.PUSHED)
    for raw in client.scan_iter("wharf:ns:*"):
        client.delete(raw)
    for raw in client.scan_iter("wharf:repo:*"):
        key = raw.decode()
        if key.endswith((":refs", ":children", ":linked", ":tagtimes", ":usage")):
            client.delete(key)
        elif ":manifest:" in key:
            client.hdel(key, "created", "blobs", "children")


def test_the_migration_backfills_and_resumes(parts: Any, redis_client: redis.Redis) -> None:
    store, life, loop, client = parts
    child = _image(store, "app", [], [b"c"])
    _index(store, "app", ["multi"], [child])
    _image(store, "app", ["v1"], [b"x", b"y"])
    _image(store, "other", ["v1"], [b"x"])
    before = {k: redis_client.dump(k) for k in redis_client.scan_iter("wharf:repo:*")}
    counts = {n: redis_client.hgetall(keys.refs(n)) for n in ("app", "other")}
    usage = {k: redis_client.get(k) for k in (keys.usage("app"), keys.usage("other"), "wharf:ns:app:usage",
                                              "wharf:ns:other:usage")}
    assert all(int(v or 0) > 0 for v in usage.values())
    _as_schema_1(redis_client)
    redis_client.delete(keys.blob_repos(digests.of(b"x")))  # a link older than the reverse index
    assert loop.run_until_complete(migrations.version(client)) == 1
    # A migration that stopped after one repository resumes with the rest.
    redis_client.sadd(keys.migration_done(migrations.SCHEMA_VERSION), "other")
    redis_client.hset(keys.refs("other"), mapping={**counts["other"], b"left-by-the-first-run": 1})
    redis_client.zadd(keys.PUSHED, {"other": 1})
    loop.run_until_complete(migrations.migrate(client))
    assert loop.run_until_complete(migrations.version(client)) == migrations.SCHEMA_VERSION
    assert redis_client.hget(keys.refs("other"), "left-by-the-first-run")  # done before: not redone
    # Schema 3: the storage counters quotas read, recounted from the links and manifests.
    assert {k: redis_client.get(k) for k in usage} == usage
    redis_client.hdel(keys.refs("other"), "left-by-the-first-run")
    assert {n: redis_client.hgetall(keys.refs(n)) for n in ("app", "other")} == counts
    assert redis_client.hget(keys.children("app"), child) == b"1"
    assert redis_client.hexists(keys.blob_repos(digests.of(b"x")), "app")  # ("other" was done before)
    assert not redis_client.exists(keys.migration_done(migrations.SCHEMA_VERSION))
    _, pushed = store.tag_details("app", ["multi", "v1"])
    assert all(pushed)
    assert set(redis_client.zrange(keys.PUSHED, 0, -1)) == {b"app", b"other"}
    # Idempotent: once more changes nothing that was there before.
    redis_client.delete(keys.SCHEMA)
    redis_client.set(keys.SCHEMA, 1)
    loop.run_until_complete(migrations.migrate(client))
    assert {n: redis_client.hgetall(keys.refs(n)) for n in ("app", "other")} == counts
    assert set(before) <= set(redis_client.scan_iter("wharf:repo:*"))
    # And the counts serve garbage collection: the index keeps its child.
    assert life.collect_repository("app", 0, True, False).removed_manifests == []


def test_a_newer_schema_is_refused_and_an_empty_database_starts_current(parts: Any, redis_client: redis.Redis) -> None:
    _, _, loop, client = parts
    loop.run_until_complete(migrations.migrate(client))
    assert redis_client.get(keys.SCHEMA) == str(migrations.SCHEMA_VERSION).encode()
    redis_client.set(keys.SCHEMA, migrations.SCHEMA_VERSION + 1)
    with pytest.raises(migrations.SchemaTooNew, match=f"schema version {migrations.SCHEMA_VERSION + 1}"):
        loop.run_until_complete(migrations.migrate(client))


def test_collection_waits_for_older_replicas(parts: Any, redis_client: redis.Redis) -> None:
    _, _, loop, client = parts
    loop.run_until_complete(migrations.migrate(client))
    assert loop.run_until_complete(migrations.collection_blockers(client)) == ""
    redis_client.zadd(keys.LEASE_GRANTORS, {"0" * 32: 10**13})  # a replica of the previous release
    assert "older version" in loop.run_until_complete(migrations.collection_blockers(client))
    redis_client.zadd(keys.LEASE_GRANTORS, {"0" * 32: 1})  # gone
    redis_client.set(migrations.RECOUNT_NEEDED, "1")
    assert "recounting" in loop.run_until_complete(migrations.collection_blockers(client))


def test_push_times_through_the_metadata_api(start_stack: Callable[..., RunningStack]) -> None:
    """The service as a process: tags with their digests and push times, the catalog by last push."""
    stack = start_stack()
    for name in ("times/first", "times/second"):
        push_image([stack.url], name, "v1", random_layers(1, 512))
    data_dir = stack.data_dir.resolve()
    channel = authenticated_channel(grpc.insecure_channel(records.read(data_dir, records.METADATA_ADDRESS) or ""),
                                    read_token(str(data_dir / records.INTERNAL_TOKEN)))
    metadata = mpb_grpc.MetadataStub(channel)
    by_push = metadata.ListRepositories(mpb.ListRequest(order="pushed", limit=10), timeout=10)
    assert list(by_push.names) == ["times/second", "times/first"] and by_push.pushed_at_ms[0] > 0
    lexical = metadata.ListRepositories(mpb.ListRequest(limit=10), timeout=10)
    assert list(lexical.names) == ["times/first", "times/second"] and not lexical.pushed_at_ms
    tags = metadata.ListTags(mpb.ListRequest(repository="times/first", limit=10, with_details=True), timeout=10)
    got = requests.get(f"{stack.url}/v2/times/first/manifests/v1", headers={"Accept": OCI_MANIFEST}, timeout=30)
    assert list(tags.names) == ["v1"] and list(tags.digests) == [got.headers["Docker-Content-Digest"]]
    assert abs(tags.pushed_at_ms[0] / 1000 - time.time()) < 120
    with pytest.raises(grpc.RpcError) as unknown:
        metadata.ListRepositories(mpb.ListRequest(order="size"), timeout=10)
    assert unknown.value.code() == grpc.StatusCode.INVALID_ARGUMENT or "order" in (unknown.value.details() or "")


def test_a_failed_upload_gives_its_pin_back(start_stack: Callable[..., RunningStack]) -> None:
    """A commit refused (here: the bytes do not match the digest) leaves no pin holding that digest
    against the collector (a client could otherwise pile up pins for a day)."""
    stack = start_stack()
    claimed = digests.of(b"what the client claims")
    refused = requests.post(f"{stack.url}/v2/pins/app/blobs/uploads/", params={"digest": claimed},
                            data=b"other bytes", timeout=30)
    assert refused.status_code == 400 and refused.json()["errors"][0]["code"] == "DIGEST_INVALID"
    started = requests.post(f"{stack.url}/v2/pins/app/blobs/uploads/", timeout=30)
    finished = requests.put(stack.url + started.headers["Location"], params={"digest": claimed},
                            data=b"other bytes", timeout=30)
    assert finished.status_code == 400
    client = redis.Redis.from_url(records.read(stack.data_dir.resolve(), records.REDIS_URL) or "")
    assert client.zcard(keys.blob_pins(claimed)) == 0
    good = requests.post(f"{stack.url}/v2/pins/app/blobs/uploads/", params={"digest": digests.of(b"ok")},
                         data=b"ok", timeout=30)
    assert good.status_code == 201 and client.zcard(keys.blob_pins(digests.of(b"ok"))) == 0  # consumed by the link
