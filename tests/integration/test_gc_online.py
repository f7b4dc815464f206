"""Garbage collection while the registry takes pushes: no read-only window, nothing acknowledged lost.

Twenty pushers share a small pool of layers across a few repositories and, as real clients do,
skip the upload of a layer a HEAD says is there; some mount layers from other repositories, move
tags, push multi-platform indexes and delete manifests, while wharf-gc runs over and over with
the grace period at zero (and --delete-untagged), on the filesystem and on S3. Afterwards:

- every tag's last acknowledged push pulls byte-identical (an index with every child);
- no writer ever got a 503 (refusals the protocol allows are a 400 MANIFEST_BLOB_UNKNOWN for a
  layer a HEAD saw just before a collection unlinked it, and a 202 instead of a 201 for a mount
  whose source lost the blob: the client then uploads it);
- a last collection leaves exactly what the remaining manifests need: every stored blob is linked
  and named by a manifest, every link is named by a manifest of its repository.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import random
import threading
from collections.abc import Callable

import pytest
import redis
import requests

from services.blobstore.settings import BlobStoreSettings
from services.blobstore.storage import create_driver
from services.common.redisconn import text
from services.common.settings import load
from services.metadata import redis_keys as keys
from tests.integration.test_gc import _gc, _redis_url
from tests.support.prometheus import scrape, value
from tests.support.pusher import OCI_MANIFEST
from tests.support.s3 import S3Server
from tests.support.stack import RunningStack

OCI_INDEX = "application/vnd.oci.image.index.v1+json"
PUSHERS = 20
REPOSITORIES = ["online/a", "online/b", "online/c", "online/d"]
# Steps per pusher and seconds of pushing, whichever ends first (but every pusher pushes at least
# three times, however slow the machine): they bound the registry a collection walks, so the
# test's time (CI-sized; raise them to hunt a race for longer).
STEPS = int(os.environ.get("WHARF_GC_ONLINE_STEPS", "25"))
SECONDS = float(os.environ.get("WHARF_GC_ONLINE_SECONDS", "15"))


def _digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


class WriterRefused(AssertionError):
    """A write failed in a way the protocol does not allow (a 503, a 500, ...)."""


class Pusher:
    def __init__(self, url: str, number: int, shared: list[bytes]) -> None:
        self.url = url
        self.number = number
        self.shared = shared
        self.session = requests.Session()
        self.rng = random.Random(number)
        self.acknowledged: dict[tuple[str, str], tuple[str, bytes, str]] = {}  # (repo, tag) -> (digest, body, type)
        self.refusals: list[str] = []
        self.allowed_failures = 0
        self.pushes = 0

    def _check(self, response: requests.Response, ok: tuple[int, ...], what: str) -> bool:
        if response.status_code in ok:
            return True
        code = ""
        with contextlib.suppress(ValueError, KeyError, IndexError):
            code = response.json()["errors"][0]["code"]
        if response.status_code == 400 and code in ("MANIFEST_BLOB_UNKNOWN", "BLOB_UNKNOWN"):
            self.allowed_failures += 1
            return False
        self.refusals.append(f"{what}: {response.status_code} {response.text[:200]}")
        return False

    def _blob(self, repository: str, data: bytes) -> bool:
        digest = _digest(data)
        if self.session.head(f"{self.url}/v2/{repository}/blobs/{digest}", timeout=60).status_code == 200:
            return True  # as docker and skopeo do: a layer the registry has is not sent again
        if self.rng.random() < 0.3:
            source = self.rng.choice(REPOSITORIES)
            mounted = self.session.post(f"{self.url}/v2/{repository}/blobs/uploads/",
                                        params={"mount": digest, "from": source}, timeout=60)
            if mounted.status_code == 201:
                return True
            if not self._check(mounted, (202,), "mount"):
                return False
            location = mounted.headers["Location"]
            done = self.session.put(self.url + location, params={"digest": digest}, data=data, timeout=60)
            return self._check(done, (201,), "upload after mount")
        done = self.session.post(f"{self.url}/v2/{repository}/blobs/uploads/", params={"digest": digest},
                                 data=data, timeout=60)
        return self._check(done, (201,), "monolithic upload")

    def _manifest(self, repository: str, reference: str, body: bytes, media_type: str) -> bool:
        response = self.session.put(f"{self.url}/v2/{repository}/manifests/{reference}", data=body, timeout=60,
                                    headers={"Content-Type": media_type})
        return self._check(response, (201,), "manifest")

    def _image(self, repository: str, reference: str | None, layers: list[bytes]) -> tuple[str, bytes] | None:
        """Pushes an image under ``reference`` (a tag; None: by its digest); (digest, body) once acknowledged."""
        config = json.dumps({"architecture": "amd64", "os": "linux", "n": self.rng.random()}).encode()
        for blob in [*layers, config]:
            if not self._blob(repository, blob):
                return None
        body = json.dumps({"schemaVersion": 2, "mediaType": OCI_MANIFEST,
                           "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                                      "digest": _digest(config), "size": len(config)},
                           "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": _digest(layer),
                                       "size": len(layer)} for layer in layers]}).encode()
        acknowledged = self._manifest(repository, reference or _digest(body), body, OCI_MANIFEST)
        return (_digest(body), body) if acknowledged else None

    def step(self) -> None:
        repository = self.rng.choice(REPOSITORIES)
        tag = f"p{self.number}-{self.rng.randrange(3)}"  # each pusher owns its tags: a known last push
        roll = self.rng.random()
        if roll < 0.15 and self.acknowledged:
            (repo, _old_tag), (digest, _, _) = self.rng.choice(sorted(self.acknowledged.items()))
            response = self.session.delete(f"{self.url}/v2/{repo}/manifests/{digest}", timeout=60)
            if response.status_code == 202 or response.status_code == 404:
                # 404: another of this pusher's tags pointed at it too and it went with that delete.
                for key in [k for k, v in self.acknowledged.items() if k[0] == repo and v[0] == digest]:
                    del self.acknowledged[key]
            else:
                self._check(response, (202,), "delete")
            return
        self.pushes += 1
        if roll < 0.3:
            children = []
            for _ in range(2):
                child = self._image(repository, None, [self.rng.choice(self.shared), os.urandom(256)])
                if child is None:
                    return
                children.append(child)
            body = json.dumps({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [
                {"mediaType": OCI_MANIFEST, "digest": d, "size": len(b),
                 "platform": {"architecture": arch, "os": "linux"}}
                for (d, b), arch in zip(children, ["amd64", "arm64"], strict=True)]}).encode()
            if self._manifest(repository, tag, body, OCI_INDEX):
                self._forget_moved(repository, tag)
                self.acknowledged[(repository, tag)] = (_digest(body), body, OCI_INDEX)
            return
        pushed = self._image(repository, tag, [*self.rng.sample(self.shared, 2), os.urandom(512)])
        if pushed is not None:
            self._forget_moved(repository, tag)
            self.acknowledged[(repository, tag)] = (pushed[0], pushed[1], OCI_MANIFEST)

    def _forget_moved(self, repository: str, tag: str) -> None:
        """A tag moved: the manifest it left may be collected (--delete-untagged)."""
        self.acknowledged.pop((repository, tag), None)


def _verify(url: str, repository: str, reference: str, body: bytes, media_type: str) -> None:
    got = requests.get(f"{url}/v2/{repository}/manifests/{reference}", timeout=60,
                       headers={"Accept": f"{OCI_MANIFEST}, {OCI_INDEX}"})
    assert got.status_code == 200, (repository, reference, got.status_code, got.text[:300])
    assert got.content == body, (repository, reference)
    manifest = json.loads(body)
    if media_type == OCI_INDEX:
        for child in manifest["manifests"]:
            fetched = requests.get(f"{url}/v2/{repository}/manifests/{child['digest']}", timeout=60,
                                   headers={"Accept": OCI_MANIFEST})
            assert fetched.status_code == 200 and _digest(fetched.content) == child["digest"], (repository, child)
            _verify(url, repository, child["digest"], fetched.content, OCI_MANIFEST)
        return
    for descriptor in [manifest["config"], *manifest["layers"]]:
        blob = requests.get(f"{url}/v2/{repository}/blobs/{descriptor['digest']}", timeout=60)
        assert blob.status_code == 200, (repository, descriptor, blob.status_code)
        assert _digest(blob.content) == descriptor["digest"]


def _collect(stack: RunningStack) -> dict[str, object]:
    return _gc(stack, "--grace", "0", "--delete-untagged")


@pytest.fixture(params=["filesystem", "minio"])
def backend_env(request: pytest.FixtureRequest) -> dict[str, str]:
    if request.param == "filesystem":
        return {}
    server: S3Server = request.getfixturevalue("minio")
    return {**server.env(), "WHARF_S3_REDIRECT": "false"}


def test_collections_during_pushes_lose_nothing_acknowledged(start_stack: Callable[..., RunningStack],
                                                              backend_env: dict[str, str]) -> None:
    stack = start_stack(env=backend_env)
    shared = [os.urandom(2048) for _ in range(6)]
    pushers = [Pusher(stack.url, n, shared) for n in range(PUSHERS)]
    stop = threading.Event()
    errors: list[BaseException] = []

    def work(pusher: Pusher) -> None:
        try:
            for _ in range(STEPS):
                if stop.is_set() and pusher.pushes >= 3:  # time is up, and this pusher did its share
                    return
                pusher.step()
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(p,), daemon=True) for p in pushers]
    for thread in threads:
        thread.start()
    runs = []
    stopper = threading.Timer(SECONDS, stop.set)
    stopper.start()
    try:
        while any(thread.is_alive() for thread in threads) or len(runs) < 3:
            runs.append(_collect(stack))
    finally:
        stop.set()
        stopper.cancel()
    for thread in threads:
        thread.join(120)
    print(f"{len(runs)} collections, {sum(int(r['blobs_deleted']) for r in runs)} blobs deleted, "
          f"{sum(int(r['blobs_kept_busy']) for r in runs)} kept busy, {sum(p.pushes for p in pushers)} pushes, "
          f"{sum(p.allowed_failures for p in pushers)} refused as the protocol allows")
    assert not errors, errors[:3]
    refusals = [r for p in pushers for r in p.refusals]
    assert not refusals, refusals[:5]
    assert len(runs) >= 3 and sum(int(r["blobs_deleted"]) for r in runs) > 0, runs  # it did collect meanwhile
    assert sum(p.pushes for p in pushers) > 2 * PUSHERS

    for pusher in pushers:
        for (repository, tag), (_, body, media_type) in pusher.acknowledged.items():
            _verify(stack.url, repository, tag, body, media_type)

    _collect(stack)
    _assert_nothing_unreferenced_is_left(stack)
    for pusher in pushers:  # and the last collection took nothing still needed
        for (repository, tag), (_, body, media_type) in pusher.acknowledged.items():
            _verify(stack.url, repository, tag, body, media_type)


def _assert_nothing_unreferenced_is_left(stack: RunningStack) -> None:
    client = redis.Redis.from_url(_redis_url(stack))
    needed: set[str] = set()
    for raw in client.zrange(keys.CATALOG, 0, -1):
        name = text(raw)
        named: set[str] = set()
        for digest in (text(d) for d in client.smembers(keys.manifests(name))):
            manifest = json.loads(client.hget(keys.manifest(name, digest), "body") or b"{}")
            named |= {d["digest"] for d in [manifest.get("config") or {}, *manifest.get("layers", [])] if d}
        links = {text(d) for d in client.hkeys(keys.blobs(name))}
        assert links == named, (name, links - named, named - links)
        needed |= named
    driver = create_driver(load(BlobStoreSettings, {**stack.extra_env, "WHARF_DATA_DIR": str(stack.data_dir)}))
    stored = {f"sha256:{encoded}" for shard in driver.list("blobs/sha256")
              for encoded in driver.list(f"blobs/sha256/{shard}")}
    assert stored == needed, (sorted(stored - needed)[:5], sorted(needed - stored)[:5])


def test_uploads_skip_their_pin_only_while_no_collection_moves(start_stack: Callable[..., RunningStack]) -> None:
    """services/metadata/README.md, "Uploads without a pin": a gateway process that saw no collection
    running at its last link commits without a pin, and its link checks that none started since.
    A collection that started (even one that ended again) or runs makes the link refuse; the push
    then pins, makes sure the bytes are stored (a whole blob's are stored again: the collector may
    have taken what the first commit found) and links with the pin: the client sees one 201, and
    the blob is there. A whole blob in a PUT, a PATCH then a PUT without a body, and a PATCH then
    a PUT with the last chunk."""
    stack = start_stack()
    client = redis.Redis.from_url(_redis_url(stack))

    def pins() -> float:
        figures, _ = scrape(stack)
        return value(figures["metadata"], "wharf_grpc_server_calls_total", grpc_method="PinBlob")

    def push(count: int) -> None:
        for number in range(count):
            data = os.urandom(64)
            location = requests.post(f"{stack.url}/v2/unpinned/a/blobs/uploads/", timeout=10).headers["Location"]
            body = data
            if number % 3:  # as docker and skopeo push: the bytes in a PATCH, then a PUT without a body;
                # or the first half in a PATCH and the rest in the PUT (the spec's closing chunk: a
                # refused link once stored that chunk as if it were the blob, and lost the upload)
                sent = data if number % 3 == 1 else data[:32]
                patched = requests.patch(stack.url + location, data=sent, timeout=10)
                assert patched.status_code == 202, patched.text
                location, body = patched.headers["Location"], data[len(sent):]
            done = requests.put(stack.url + location, params={"digest": _digest(data)}, data=body, timeout=10)
            assert done.status_code == 201, done.text
            assert requests.get(f"{stack.url}/v2/unpinned/a/blobs/{_digest(data)}", timeout=10).content == data

    def settled() -> float:
        """Pushes until a dozen in a row pinned nothing: every gateway worker has linked since
        (its first upload pins: it knows nothing yet), whichever worker the kernel hands each to."""
        for _ in range(20):
            before = pins()
            push(12)
            if pins() == before:
                return before
        raise AssertionError("uploads kept taking pins with no collection running")

    before = settled()
    client.incr(keys.GC_STARTED)  # a collection started (and ended) since the workers last linked
    push(12)
    moved = pins()
    assert before < moved <= before + 12  # a worker's next upload was refused once, then pinned

    client.set(keys.GC_LOCK, "a collection runs", px=60_000)
    push(6)
    assert pins() == moved + 6  # while one runs, every upload pins
    client.delete(keys.GC_LOCK)
    settled()  # once a worker's link says none runs any more, its uploads skip the pin again
