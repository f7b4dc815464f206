"""Events end to end: the stack, skopeo, a real webhook receiver (its own process) and the delivery
service as processes, in Distribution's format and signed; an endpoint down for 30 s while pushes go
on; the delivery service SIGKILLed mid-delivery; two replicas splitting the shards, one killed; and
no event for a write that failed."""

from __future__ import annotations

import json
import os
import pathlib
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import redis
import requests

from services.events import envelope
from services.metadata import redis_keys as keys
from services.stack import records
from tests.e2e.images import write_docker_dir
from tests.e2e.test_skopeo import Skopeo
from tests.support.pusher import push_blob, push_image, random_layers
from tests.support.stack import RunningStack
from tests.support.tools import require_tool
from tests.support.webhook import Receiver

pytestmark = pytest.mark.e2e

SECRET = "a-webhook-secret-for-tests"


def _endpoints_file(directory: pathlib.Path, receiver: Receiver, **extra: Any) -> pathlib.Path:
    endpoint = {"name": "hook", "url": receiver.url, "timeout": "5s", "backoff": "100ms", "max_backoff": "1s",
                "threshold": 1, "attempts": 500, "secret_file": "hook.secret", "headers": {"X-Test": ["yes"]}, **extra}
    (directory / "hook.secret").write_text(SECRET + "\n")
    path = directory / f"events-{uuid.uuid4().hex[:6]}.yaml"
    path.write_text(json.dumps({"endpoints": [endpoint]}))  # JSON is YAML
    return path


def _wait_for(check: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def _pushed(receiver: Receiver, repository: str) -> list[tuple[str, str]]:
    """(tag, digest) of the manifest push events received for the repository, in arrival order."""
    return [(e["target"].get("tag", ""), e["target"]["digest"]) for e in receiver.events()
            if e["action"] == "push" and e["target"]["repository"] == repository
            and e["target"].get("mediaType") != "application/octet-stream"]


@pytest.fixture(scope="module")
def hooked(tmp_path_factory: pytest.TempPathFactory,
           start_stack: Callable[..., RunningStack]) -> Iterator[tuple[RunningStack, Receiver]]:
    """A stack whose delivery service (started by the runner, as under `make run`) sends to a receiver."""
    directory = tmp_path_factory.mktemp("events")
    receiver = Receiver(directory).start()
    stack = start_stack(env={"WHARF_EVENTS_FILE": str(_endpoints_file(directory, receiver))})
    yield stack, receiver
    receiver.stop()


def test_skopeo_push_and_delete_arrive_in_distributions_format_signed(
        hooked: tuple[RunningStack, Receiver], tmp_path: pathlib.Path) -> None:
    stack, receiver = hooked
    skopeo = Skopeo(require_tool("skopeo"), tmp_path / "skopeo-home")
    image = write_docker_dir(tmp_path / "image")
    repository = f"events/skopeo-{uuid.uuid4().hex[:6]}"
    reference = f"docker://{stack.host}/{repository}:v1"
    skopeo.copy(f"dir:{image.path}", reference)
    _wait_for(lambda: len(_pushed(receiver, repository)) == 1, 30, "the manifest push event")
    skopeo.run("delete", "--tls-verify=false", reference)
    _wait_for(lambda: any(e["action"] == "delete" and e["target"]["repository"] == repository
                          for e in receiver.events()), 30, "the delete event")

    mine = [(d, e) for d in receiver.deliveries() for e in json.loads(d["body"])["events"]
            if e["target"]["repository"] == repository]
    for delivery, _ in mine:
        headers = {k.lower(): v for k, v in delivery["headers"].items()}
        assert headers["content-type"] == envelope.DISTRIBUTION_TYPE
        assert envelope.verify(SECRET.encode(), delivery["body"], headers["x-wharf-signature-256"])
        assert not envelope.verify(b"another secret", delivery["body"], headers["x-wharf-signature-256"])
        assert headers["x-test"] == "yes"
    events = [e for _, e in mine]
    blobs = [e for e in events if e["action"] == "push" and e["target"]["mediaType"] == "application/octet-stream"]
    assert {b["target"]["digest"] for b in blobs} >= set(image.objects) - {image.digest}
    [manifest] = [e for e in events if e["action"] == "push" and e["target"].get("tag") == "v1"]
    target = manifest["target"]
    assert target["digest"] == image.digest and target["size"] == target["length"] == len(image.objects[image.digest])
    assert target["url"] == f"{stack.url}/v2/{repository}/manifests/{image.digest}"
    assert manifest["request"]["method"] == "PUT" and manifest["request"]["useragent"]
    assert manifest["request"]["addr"] == "127.0.0.1" and manifest["source"]["instanceID"]
    assert manifest["timestamp"].endswith("Z")
    # The manifest's delete takes its tag with it: both are announced (the layers stay linked).
    deletes = [(e["target"]["digest"], e["target"].get("tag"), e["request"]["method"]) for e in events
               if e["action"] == "delete"]
    assert deletes == [(image.digest, "v1", "DELETE"), (image.digest, None, "DELETE")]
    assert len({e["id"] for e in events}) == len(events)


def test_an_endpoint_down_for_30_s_gets_every_event_after_in_order_none_twice(
        hooked: tuple[RunningStack, Receiver]) -> None:
    stack, receiver = hooked
    repositories = [f"events/outage-{uuid.uuid4().hex[:6]}-{i}" for i in range(3)]
    layers = random_layers(1, 2048)
    push_image([stack.url], repositories[0], "before", layers)
    _wait_for(lambda: len(_pushed(receiver, repositories[0])) == 1, 30, "the event before the outage")
    receiver.stop()  # nothing in flight: everything sent so far was answered
    pushed: dict[str, list[tuple[str, str]]] = {r: [] for r in repositories}
    pushed[repositories[0]].append(("before", _pushed(receiver, repositories[0])[0][1]))
    down_until = time.monotonic() + 30
    n = 0
    while time.monotonic() < down_until:
        for repository in repositories:
            tag = f"t{n}"
            pushed[repository].append((tag, push_image([stack.url], repository, tag, [layers[0] + str(n).encode()])))
        n += 1
        time.sleep(0.5)
    receiver.start()
    _wait_for(lambda: all(len(_pushed(receiver, r)) >= len(pushed[r]) for r in repositories), 60,
              "every push event after the outage")
    time.sleep(1)
    for repository in repositories:
        assert _pushed(receiver, repository) == pushed[repository]
    ids = [e["id"] for e in receiver.events() if e["target"]["repository"] in repositories]
    assert len(ids) == len(set(ids))
    status = stack.maintenance("events", "--json")
    assert status.returncode == 0, status.stderr
    [hook] = json.loads(status.stdout)
    assert hook["failed_attempts"] > 0 and hook["last_error"] and hook["dead_letters"] == 0


def test_failed_writes_are_never_announced(hooked: tuple[RunningStack, Receiver]) -> None:
    stack, receiver = hooked
    refused = f"events/refused-{uuid.uuid4().hex[:6]}"
    layer = b"a layer that exists"
    digest = push_blob([stack.url], refused, layer)
    _wait_for(lambda: any(e["target"].get("digest") == digest for e in receiver.events()), 30, "the blob's event")
    before = {e["id"] for e in receiver.events()}
    # A manifest naming a blob the repository does not have.
    missing = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
               "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": digest,
                          "size": len(layer)},
               "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "size": 3,
                           "digest": "sha256:" + "0" * 64}]}
    answer = requests.put(f"{stack.url}/v2/{refused}/manifests/nope", data=json.dumps(missing),
                          headers={"Content-Type": "application/vnd.oci.image.manifest.v1+json"}, timeout=10)
    assert answer.status_code == 400
    # A blob whose bytes do not match its digest.
    session = requests.post(f"{stack.url}/v2/{refused}/blobs/uploads/", timeout=10).headers["Location"]
    bad = requests.put(f"{stack.url}{session}" if session.startswith("/") else session,
                       params={"digest": "sha256:" + "1" * 64}, data=b"other bytes", timeout=10)
    assert bad.status_code == 400
    # Writes refused while the registry is read-only (an operator's maintenance window).
    client = redis.Redis.from_url(str(records.read(stack.data_dir, records.REDIS_URL)))
    client.set(keys.MAINTENANCE, "test", px=30_000)
    try:
        assert requests.delete(f"{stack.url}/v2/{refused}/blobs/{digest}", timeout=10).status_code == 503
    finally:
        client.delete(keys.MAINTENANCE)
    marker = f"events/marker-{uuid.uuid4().hex[:6]}"
    push_image([stack.url], marker, "done", random_layers(1, 100))
    _wait_for(lambda: bool(_pushed(receiver, marker)), 30, "the marker's event")
    late = [e for e in receiver.events() if e["id"] not in before and e["target"]["repository"] == refused]
    assert late == []


# -- the delivery service as its own processes: killed, and two replicas ---------------------------------


class Delivery:
    """`wharf-events` processes beside a stack that writes the outbox (WHARF_EVENTS_OUTBOX=on)."""

    def __init__(self, stack: RunningStack, events_file: pathlib.Path) -> None:
        self.env = dict(os.environ, WHARF_EVENTS_FILE=str(events_file), WHARF_EVENTS_LEASE="2",
                        WHARF_REDIS_URL=str(records.read(stack.data_dir, records.REDIS_URL)),
                        WHARF_INTERNAL_TOKEN_FILE=str(stack.data_dir / records.INTERNAL_TOKEN),
                        WHARF_PUBLIC_URL=stack.url)
        self.redis = redis.Redis.from_url(self.env["WHARF_REDIS_URL"])
        self.processes: list[subprocess.Popen[bytes]] = []

    def start(self) -> subprocess.Popen[bytes]:
        from services.stack.processes import free_port

        process = subprocess.Popen([sys.executable, "-m", "services.events"], start_new_session=True,
                                   env=dict(self.env, WHARF_EVENTS_LISTEN=f"127.0.0.1:{free_port()}"))
        self.processes.append(process)
        return process

    def owners(self) -> dict[str, int]:
        """Replica id -> shards it holds."""
        found: dict[str, int] = {}
        for shard in range(keys.OUTBOX_SHARDS):
            owner = self.redis.get(keys.event_lease(shard))
            if owner is not None:
                found[owner.decode()] = found.get(owner.decode(), 0) + 1
        return found

    def stop(self) -> None:
        for process in self.processes:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()


@pytest.fixture()
def separate(tmp_path: pathlib.Path, start_stack: Callable[..., RunningStack]) -> Iterator[tuple[RunningStack,
                                                                                                 Receiver, Delivery]]:
    receiver = Receiver(tmp_path, delay=0.2).start()
    stack = start_stack(env={"WHARF_EVENTS_OUTBOX": "on"})
    delivery = Delivery(stack, _endpoints_file(tmp_path, receiver, batch=5))
    yield stack, receiver, delivery
    delivery.stop()
    receiver.stop()
    stack.stop()


def _push_many(stack: RunningStack, prefix: str, count: int) -> dict[str, list[tuple[str, str]]]:
    pushed: dict[str, list[tuple[str, str]]] = {}
    for n in range(count):
        repository = f"{prefix}-{n % 8}"
        tag = f"t{n}"
        pushed.setdefault(repository, []).append(
            (tag, push_image([stack.url], repository, tag, [f"{prefix}-{n}".encode()])))
    return pushed


def _all_arrived(receiver: Receiver, pushed: dict[str, list[tuple[str, str]]]) -> bool:
    return all({*_pushed(receiver, r)} >= set(tags) for r, tags in pushed.items())


def test_a_delivery_service_killed_mid_delivery_loses_nothing(
        separate: tuple[RunningStack, Receiver, Delivery]) -> None:
    stack, receiver, delivery = separate
    first = delivery.start()
    _wait_for(lambda: sum(delivery.owners().values()) == keys.OUTBOX_SHARDS, 30, "the replica's shards")
    prefix = f"events/kill-{uuid.uuid4().hex[:6]}"
    pushed = _push_many(stack, prefix, 24)
    _wait_for(lambda: len(receiver.deliveries()) >= 3, 30, "deliveries under way")
    os.killpg(first.pid, signal.SIGKILL)  # the receiver answers slowly: some delivery is in flight
    first.wait()
    later = _push_many(stack, prefix + "-after", 8)
    delivery.start()
    _wait_for(lambda: _all_arrived(receiver, pushed) and _all_arrived(receiver, later), 90,
              "every event after the restart")
    for repository, tags in {**pushed, **later}.items():
        arrived = _pushed(receiver, repository)
        # At least once: a batch in flight at the kill may come twice, but the first arrivals keep
        # the push order.
        assert list(dict.fromkeys(arrived)) == tags


def test_two_replicas_split_the_shards_and_one_takes_over_when_the_other_dies(
        separate: tuple[RunningStack, Receiver, Delivery]) -> None:
    stack, receiver, delivery = separate
    a = delivery.start()
    delivery.start()
    _wait_for(lambda: sorted(delivery.owners().values()) == [8, 8], 30, "two replicas with 8 shards each")
    prefix = f"events/pair-{uuid.uuid4().hex[:6]}"
    pushed = _push_many(stack, prefix, 16)
    _wait_for(lambda: _all_arrived(receiver, pushed), 60, "every event with both replicas")
    ids = [e["id"] for e in receiver.events()]
    assert len(ids) == len(set(ids)), "a healthy pair delivered an event twice"
    os.killpg(a.pid, signal.SIGKILL)
    a.wait()
    later = _push_many(stack, prefix + "-after", 16)
    _wait_for(lambda: list(delivery.owners().values()) == [keys.OUTBOX_SHARDS], 30,
              "the survivor holding every shard")
    _wait_for(lambda: _all_arrived(receiver, later), 60, "every event after the kill")
    for repository, tags in {**pushed, **later}.items():
        assert list(dict.fromkeys(_pushed(receiver, repository))) == tags


def test_a_dead_endpoint_overflows_into_dead_letters_which_replay_with_their_ids(
        separate: tuple[RunningStack, Receiver, Delivery], tmp_path: pathlib.Path) -> None:
    stack, receiver, delivery = separate
    receiver.stop()
    delivery.env["WHARF_EVENTS_FILE"] = str(_endpoints_file(tmp_path, receiver, attempts=3, backlog=6, batch=2))
    delivery.start()
    prefix = f"events/dead-{uuid.uuid4().hex[:6]}"
    pushed = _push_many(stack, prefix, 16)

    def status() -> dict[str, Any]:
        shown = stack.maintenance("events", "--json")
        assert shown.returncode == 0, shown.stderr
        [hook] = json.loads(shown.stdout)
        return dict(hook)
    # Every event ends as a dead letter: the oldest past the backlog at once, the rest after 3 tries.
    _wait_for(lambda: status()["backlog"] == 0 and status()["dead_letters"] > 0, 60, "the outbox to drain")
    hook = status()
    assert hook["overflow_total"] > 0 and hook["dead_letters"] == hook["dead_lettered_total"]
    listed = stack.maintenance("events", "dead", "hook", "--json", "--limit", "1000")
    dead = json.loads(listed.stdout)
    assert {d["reason"] for d in dead} <= {"backlog", "attempts"} and "backlog" in {d["reason"] for d in dead}
    receiver.start()
    replayed = stack.maintenance("events", "replay", "hook")
    assert replayed.returncode == 0 and f"{len(dead)} dead letter(s)" in replayed.stdout
    _wait_for(lambda: _all_arrived(receiver, pushed), 60, "the replayed events")
    assert {e["id"] for e in receiver.events()} == {d["id"] for d in dead}
    assert status()["dead_letters"] == 0
    unknown = stack.maintenance("events", "replay", "nobody")
    assert unknown.returncode != 0 and "no endpoint 'nobody'" in unknown.stderr
