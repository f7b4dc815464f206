"""The blob store's mirror fills against a real upstream (CNCF Distribution): a blob asked for by
many callers at once is fetched from the upstream once and stored when its digest verifies; what
is stored is served with the upstream gone; an upstream manifest is fetched by tag and digest."""

from __future__ import annotations

import contextlib
import hashlib
import json
import pathlib
import threading
import time
from collections.abc import Callable, Iterator
from urllib.parse import urljoin

import grpc
import pytest
import requests

from services.blobstore import layout
from services.blobstore.blobs import BlobService
from services.blobstore.fills import Fills
from services.blobstore.settings import BlobStoreSettings
from services.blobstore.storage import create_driver, filesystem
from services.blobstore.storage.base import FileInfo
from services.blobstore.storage.filesystem import FilesystemDriver
from services.common.internal_auth import authenticated_channel, read_token
from services.common.settings import load
from services.gen.wharf.blobstore.v1 import blobstore_pb2 as bpb
from services.gen.wharf.blobstore.v1 import blobstore_pb2_grpc as bpb_grpc
from services.mirror.config import Mirrors, Upstream
from services.mirror.upstream import BlobStream
from services.stack import records
from tests.support.distribution import running_distribution
from tests.support.pusher import OCI_MANIFEST, push_blob
from tests.support.s3 import S3Server
from tests.support.stack import RunningStack
from tests.support.tools import require_tool
from tests.support.trickle import TrickleServer

LAYER = 3 * 1024 * 1024 + 17


@pytest.fixture()
def upstream(tmp_path: pathlib.Path) -> Iterator[tuple[str, pathlib.Path, bytes, str]]:
    binary = require_tool("docker-registry", "apt-get install docker-registry")
    with running_distribution(tmp_path / "upstream", binary, level="info") as address:
        layer = hashlib.sha256(b"seed").digest() * (LAYER // 32) + b"x" * (LAYER % 32)
        manifest = _push(f"http://{address}", "team/app", "v1", layer)
        yield address, tmp_path / "upstream" / "registry.log", layer, manifest


def _push(url: str, repository: str, tag: str, layer: bytes) -> str:
    """An image into Distribution (whose Location headers are absolute URLs)."""
    def blob(data: bytes) -> str:
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        started = requests.post(f"{url}/v2/{repository}/blobs/uploads/", timeout=30)
        done = requests.put(urljoin(url, started.headers["Location"]), params={"digest": digest}, data=data,
                            timeout=60)
        assert done.status_code == 201, done.text
        return digest
    config = b'{"architecture": "amd64", "os": "linux"}'
    body = json.dumps({"schemaVersion": 2, "mediaType": OCI_MANIFEST,
                       "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": blob(config),
                                  "size": len(config)},
                       "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": blob(layer),
                                   "size": len(layer)}]}).encode()
    put = requests.put(f"{url}/v2/{repository}/manifests/{tag}", data=body, timeout=30,
                       headers={"Content-Type": OCI_MANIFEST})
    assert put.status_code == 201, put.text
    return "sha256:" + hashlib.sha256(body).hexdigest()


def _stub(stack: RunningStack) -> bpb_grpc.BlobStoreStub:
    data_dir = stack.data_dir.resolve()
    address = (records.read(data_dir, records.BLOBSTORE_ADDRESS) or "").split(",")[0]
    return bpb_grpc.BlobStoreStub(authenticated_channel(grpc.insecure_channel(address),
                                                        read_token(str(data_dir / records.INTERNAL_TOKEN))))


def _fill(stub: bpb_grpc.BlobStoreStub, digest: str, prefix: str = "up.example") -> tuple[int, bytes]:
    """(size, bytes): streamed by the fill, or read the usual way when the fill says it is stored."""
    total, parts, stored = -1, [], False
    for chunk in stub.Fill(bpb.FillRequest(upstream=prefix, repository="team/app", digest=digest), timeout=60):
        if total < 0:
            total, stored = chunk.total, chunk.stored
        parts.append(chunk.data)
    if stored:
        assert parts == [b""]
        parts = [c.data for c in stub.Read(bpb.ReadRequest(digest=digest), timeout=60)]
    return total, b"".join(parts)


def _upstream_gets(log: pathlib.Path, digest: str) -> int:
    return sum(1 for line in log.read_text(errors="replace").splitlines()
               if "response completed" in line and f"/blobs/{digest}" in line and "method=GET" in line)


@pytest.fixture(params=["filesystem", "minio"])
def backend_env(request: pytest.FixtureRequest) -> dict[str, str]:
    """The fill's exclusive writer is the storage's: flock on a filesystem, conditional writes on S3."""
    if request.param == "filesystem":
        return {}
    server: S3Server = request.getfixturevalue("minio")
    return {**server.env(), "WHARF_S3_REDIRECT": "false"}


def test_a_blob_is_fetched_once_and_served_when_the_upstream_is_gone(
        start_stack: Callable[..., RunningStack], upstream: tuple[str, pathlib.Path, bytes, str],
        tmp_path: pathlib.Path, backend_env: dict[str, str]) -> None:
    address, log, layer, manifest_digest = upstream
    mirrors = tmp_path / "mirrors.yaml"
    mirrors.write_text(f"upstreams:\n  - prefix: up.example\n    url: http://{address}\n    insecure: true\n")
    stack = start_stack(env={"WHARF_MIRRORS_FILE": str(mirrors), **backend_env})
    stub = _stub(stack)
    digest = "sha256:" + hashlib.sha256(layer).hexdigest()

    # The manifest, by tag and by digest (HEAD: no body).
    fetched = stub.FetchManifest(bpb.FetchManifestRequest(upstream="up.example", repository="team/app",
                                                          reference="v1"), timeout=30)
    assert fetched.digest == manifest_digest and fetched.media_type == OCI_MANIFEST
    assert json.loads(fetched.content)["layers"][0]["digest"] == digest
    head = stub.FetchManifest(bpb.FetchManifestRequest(upstream="up.example", repository="team/app",
                                                       reference=manifest_digest, head=True), timeout=30)
    assert head.digest == manifest_digest and not head.content

    # Twelve callers at once: one upstream GET, twelve whole copies.
    results: list[tuple[int, bytes]] = []
    errors: list[BaseException] = []

    def one() -> None:
        try:
            results.append(_fill(stub, digest))
        except BaseException as exc:  # reported below
            errors.append(exc)
    threads = [threading.Thread(target=one) for _ in range(12)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert not errors, errors[:2]
    assert len(results) == 12 and all(body == layer for _, body in results)
    assert all(total in (LAYER, 0) for total, _ in results) and any(total == LAYER for total, _ in results)
    assert _upstream_gets(log, digest) == 1
    driver = create_driver(load(BlobStoreSettings, {**stack.extra_env, "WHARF_DATA_DIR": str(stack.data_dir)}))
    assert not list(driver.list("fills/sha256"))  # nothing half-done left behind

    # Unknown upstream content is a 404-class error naming the upstream.
    with pytest.raises(grpc.RpcError) as missing:
        _fill(stub, "sha256:" + "0" * 64)
    assert missing.value.code() == grpc.StatusCode.NOT_FOUND and address in (missing.value.details() or "")


def test_an_unreachable_upstream_is_unavailable_but_stored_blobs_still_serve(
        start_stack: Callable[..., RunningStack], upstream: tuple[str, pathlib.Path, bytes, str],
        tmp_path: pathlib.Path) -> None:
    address, _, layer, _ = upstream
    mirrors = tmp_path / "mirrors.yaml"
    mirrors.write_text(f"upstreams:\n  - prefix: up.example\n    url: http://{address}\n    insecure: true\n"
                       "  - prefix: down.example\n    url: http://127.0.0.1:9\n    insecure: true\n")
    stack = start_stack(env={"WHARF_MIRRORS_FILE": str(mirrors)})
    stub = _stub(stack)
    digest = "sha256:" + hashlib.sha256(layer).hexdigest()
    assert _fill(stub, digest)[1] == layer
    # Stored now: served whatever the upstream's state (here one that cannot be reached).
    assert _fill(stub, digest, "down.example") == (len(layer), layer)
    with pytest.raises(grpc.RpcError) as down:
        _fill_from(stub, "down.example", "sha256:" + "1" * 64)
    assert down.value.code() == grpc.StatusCode.UNAVAILABLE and "127.0.0.1:9" in (down.value.details() or "")


def test_a_mirror_links_only_what_its_upstream_delivered(
        start_stack: Callable[..., RunningStack], upstream: tuple[str, pathlib.Path, bytes, str],
        tmp_path: pathlib.Path) -> None:
    """A digest is no proof of access: a blob stored for another reason (a private repository's)
    is linked into a mirrored repository only once its upstream delivered it. Before, any blob
    stored anywhere came back through any mirrored name, and stayed linked there for all."""
    address, log, layer, _ = upstream
    mirrors = tmp_path / "mirrors.yaml"
    mirrors.write_text(f"upstreams:\n  - prefix: up.example\n    url: http://{address}\n    insecure: true\n")
    stack = start_stack(env={"WHARF_MIRRORS_FILE": str(mirrors)})
    private = push_blob([stack.url], "team/secret", b"a private blob the upstream does not have")
    layer_digest = push_blob([stack.url], "team/local", layer)  # stored here before any mirror asks
    for method in ("HEAD", "GET"):
        answer = requests.request(method, f"{stack.url}/v2/up.example/team/app/blobs/{private}", timeout=60)
        assert answer.status_code == 404, answer.text
    through = requests.get(f"{stack.url}/v2/up.example/team/app/blobs/{layer_digest}", timeout=60)
    assert through.status_code == 200 and through.content == layer
    assert _upstream_gets(log, layer_digest) == 1  # stored, yet fetched: the upstream had to show it has it
    # Delivered by this upstream once: another of its repositories links it without asking again.
    again = requests.get(f"{stack.url}/v2/up.example/team/other/blobs/{layer_digest}", timeout=60)
    assert again.status_code == 200 and again.content == layer
    assert _upstream_gets(log, layer_digest) == 1


def test_upstreams_trickling_blobs_leave_the_storage_threads_free(
        start_stack: Callable[..., RunningStack], tmp_path: pathlib.Path) -> None:
    """Fills wait on upstreams in a pool of their own: with two storage threads, four fills from an
    upstream sending a byte at a time (each read within its timeout) stopped every push."""
    trickle = TrickleServer(size=2 * 1024 * 1024, interval=0.5)
    mirrors = tmp_path / "mirrors.yaml"
    mirrors.write_text(f"upstreams:\n  - prefix: slow.example\n    url: {trickle.url}\n    insecure: true\n")
    stack = start_stack(env={"WHARF_MIRRORS_FILE": str(mirrors), "WHARF_BLOBSTORE_WORKERS": "2"})

    def pull(number: int) -> None:
        with contextlib.suppress(requests.RequestException):
            requests.get(f"{stack.url}/v2/slow.example/a/b/blobs/sha256:{number:064x}", timeout=30)
    pullers = [threading.Thread(target=pull, args=(n + 1,), daemon=True) for n in range(4)]
    try:
        for thread in pullers:
            thread.start()
        deadline = time.monotonic() + 20
        while trickle.requests < 4:
            assert time.monotonic() < deadline, "the fills never reached the upstream"
            time.sleep(0.1)
        started = time.monotonic()
        pushed = push_blob([stack.url], "team/busy", b"pushed while four fills trickle")
        assert requests.get(f"{stack.url}/v2/team/busy/blobs/{pushed}", timeout=10).status_code == 200
        assert time.monotonic() - started < 5
    finally:
        trickle.close()
        for thread in pullers:
            thread.join(35)


def _fill_from(stub: bpb_grpc.BlobStoreStub, prefix: str, digest: str) -> bytes:
    return b"".join(c.data for c in stub.Fill(bpb.FillRequest(upstream=prefix, repository="team/app",
                                                              digest=digest), timeout=30))


class _Paused(FilesystemDriver):
    """A filesystem driver whose ``paused`` thread stops at a chosen point until ``resume`` is set
    (a thread preempted on a busy machine): after a look that finds no blob, or after its writer's
    open and before that writer's lock."""

    def __init__(self, root: pathlib.Path, window: str) -> None:
        super().__init__(root)
        self.window = window
        self.paused: threading.Thread | None = None
        self.reached, self.resume = threading.Event(), threading.Event()

    def pause(self, window: str) -> None:
        if window == self.window and threading.current_thread() is self.paused and not self.reached.is_set():
            self.reached.set()
            assert self.resume.wait(30)

    def stat(self, key: str) -> FileInfo | None:
        found = super().stat(key)
        if found is None and key.startswith(layout.BLOBS + "/"):
            self.pause("look")
        return found


@pytest.mark.parametrize("window", ["look", "lock"])
def test_an_asker_that_claims_the_fill_just_after_its_leader_stored_the_blob_serves_it(
        upstream: tuple[str, pathlib.Path, bytes, str], tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch,
        window: str) -> None:
    """The windows of a second asker between its look for the blob and its claim of the fill: the
    leader stores the blob and lets go in between. It must answer "stored" (no second upstream GET)
    and leave the stored blob as it is (a claim taken on the file just moved into place must not
    empty it)."""
    address, _, layer, _ = upstream
    digest = "sha256:" + hashlib.sha256(layer).hexdigest()
    driver = _Paused(tmp_path / "store", window)
    fills = Fills(BlobService(driver, 3600), driver,
                  Mirrors((Upstream("up.example", f"http://{address}", insecure=True),)))
    fetches: list[str] = []
    client = fills._client("up.example")
    get = client.blob

    def counted(repository: str, wanted: str) -> BlobStream:
        fetches.append(wanted)
        return get(repository, wanted)
    monkeypatch.setattr(client, "blob", counted)
    if window == "lock":  # the asker's writer has opened the leader's file and not locked it yet
        real = filesystem.fcntl

        class Flock:
            def __getattr__(self, name: str) -> object:
                return getattr(real, name)

            def flock(self, fd: int, operation: int) -> None:
                driver.pause("lock")
                real.flock(fd, operation)
        monkeypatch.setattr(filesystem, "fcntl", Flock())

    led = fills.fill("up.example", "team/app", digest)
    assert led is not None and led[1] is not None
    chunks = iter(led[1])
    body = next(chunks)  # the leader streams
    asked: list[tuple[int, Iterator[bytes] | None] | None] = []
    driver.paused = threading.Thread(target=lambda: asked.append(fills.fill("up.example", "team/app", digest)))
    driver.paused.start()
    assert driver.reached.wait(30)
    body += b"".join(chunks)  # the leader verifies, stores and lets go
    assert body == layer and driver.get_content(layout.blob_key(digest)) == layer
    driver.resume.set()
    driver.paused.join(30)
    assert driver.get_content(layout.blob_key(digest)) == layer  # not emptied by the asker's claim
    # Stored (served the usual way), or None (asked again, as the blob store's Fill does): never fetched again.
    assert asked in ([(len(layer), None)], [None])
    assert fills.fill("up.example", "team/app", digest) == (len(layer), None)
    assert fetches == [digest]
    assert not list(driver.list("fills/sha256"))
