"""Pull-through through the gateway, against a real upstream (CNCF Distribution): a mirrored image
pulls byte-identical (crane, and plain HTTP), a second pull asks the upstream for no blob, pushes to
a mirrored prefix are refused while a private repository beside it takes them, and with the
upstream stopped what was pulled before still pulls (marked stale once the tag's TTL ran out)
while what never was fails with a 503 naming the upstream."""

from __future__ import annotations

import hashlib
import json
import pathlib
import subprocess
import time
from collections.abc import Callable, Iterator

import pytest
import redis
import requests

from services.metadata import redis_keys as keys
from services.stack import records
from tests.integration.test_gc import _gc
from tests.integration.test_mirror_fill import _push, _upstream_gets
from tests.support.distribution import running_distribution
from tests.support.pusher import OCI_MANIFEST, push_image, random_layers
from tests.support.stack import RunningStack
from tests.support.tools import require_tool

pytestmark = pytest.mark.e2e


@pytest.fixture()
def mirrored(start_stack: Callable[..., RunningStack], tmp_path: pathlib.Path) -> Iterator[tuple[RunningStack, dict]]:
    binary = require_tool("docker-registry", "apt-get install docker-registry")
    with running_distribution(tmp_path / "upstream", binary, level="info") as address:
        layer = hashlib.sha256(b"mirror").digest() * 40_000
        manifest = _push(f"http://{address}", "team/app", "v1", layer)
        other = _push(f"http://{address}", "team/other", "v1", b"never pulled through the mirror" * 1000)
        mirrors = tmp_path / "mirrors.yaml"
        mirrors.write_text(f"upstreams:\n  - prefix: up.example\n    url: http://{address}\n    insecure: true\n"
                           "    tag_ttl: 1s\n    default: true\n")
        stack = start_stack(env={"WHARF_MIRRORS_FILE": str(mirrors)})
        yield stack, {"address": address, "log": tmp_path / "upstream" / "registry.log", "layer": layer,
                      "manifest": manifest, "other": other, "dir": tmp_path / "upstream"}


def _pull(url: str, repository: str, reference: str) -> tuple[requests.Response, list[bytes]]:
    got = requests.get(f"{url}/v2/{repository}/manifests/{reference}", headers={"Accept": OCI_MANIFEST}, timeout=60)
    assert got.status_code == 200, got.text
    blobs = []
    for descriptor in [got.json()["config"], *got.json()["layers"]]:
        blob = requests.get(f"{url}/v2/{repository}/blobs/{descriptor['digest']}", timeout=60)
        assert blob.status_code == 200, blob.text
        assert "sha256:" + hashlib.sha256(blob.content).hexdigest() == descriptor["digest"]
        blobs.append(blob.content)
    return got, blobs


def test_pull_through_a_mirror(mirrored: tuple[RunningStack, dict], tmp_path: pathlib.Path) -> None:
    stack, up = mirrored
    got, blobs = _pull(stack.url, "up.example/team/app", "v1")
    assert got.headers["Docker-Content-Digest"] == up["manifest"] and up["layer"] in blobs
    layer_digest = "sha256:" + hashlib.sha256(up["layer"]).hexdigest()
    assert _upstream_gets(up["log"], layer_digest) == 1
    # The streamed first pull linked the blob before its last chunk went out (in the request's
    # context): a client that has read the whole blob finds it linked, and later pulls are
    # ordinary blob reads.
    client = redis.Redis.from_url(records.read(stack.data_dir.resolve(), records.REDIS_URL) or "")
    assert client.hexists(keys.blobs("up.example/team/app"), layer_digest)
    # Again, by digest and by tag: no upstream blob request (and the tag at most revalidated by a HEAD).
    time.sleep(1.1)
    _pull(stack.url, "up.example/team/app", up["manifest"])
    _pull(stack.url, "up.example/team/app", "v1")
    assert _upstream_gets(up["log"], layer_digest) == 1
    # crane pulls it too, byte for byte.
    crane = require_tool("crane")
    out = tmp_path / "pulled"
    pulled = subprocess.run([crane, "pull", "--insecure", "--format", "oci",
                             f"{stack.host}/up.example/team/app:v1", str(out)], capture_output=True, text=True,
                            timeout=120)
    assert pulled.returncode == 0, pulled.stderr
    index = json.loads((out / "index.json").read_text())
    assert index["manifests"][0]["digest"] == up["manifest"]
    assert (out / "blobs" / "sha256" / layer_digest.split(":")[1]).read_bytes() == up["layer"]

    # A collection keeps what a stored mirrored manifest names: pulling again asks no blob upstream.
    report = _gc(stack, "--grace", "0", "--delete-untagged")
    assert report["blobs_deleted"] == 0, report
    _pull(stack.url, "up.example/team/app", up["manifest"])
    assert _upstream_gets(up["log"], layer_digest) == 1

    # Pushes: refused under the mirrored prefix, taken beside it.
    refused = requests.post(f"{stack.url}/v2/up.example/team/app/blobs/uploads/", timeout=30)
    assert refused.status_code == 403 and refused.json()["errors"][0]["code"] == "DENIED"
    put = requests.put(f"{stack.url}/v2/up.example/team/app/manifests/v2", data=got.content, timeout=30,
                       headers={"Content-Type": OCI_MANIFEST})
    assert put.status_code == 403
    private = push_image([stack.url], "team/private", "v1", random_layers(1, 1024))

    # Prefix-less names (Docker's registry-mirrors): what is stored here is served from here, the
    # rest comes from the default upstream, kept under its prefix (no second fetch of the layer).
    local = requests.get(f"{stack.url}/v2/team/private/manifests/v1", headers={"Accept": OCI_MANIFEST}, timeout=30)
    assert local.headers["Docker-Content-Digest"] == private
    via_default, blobs_via_default = _pull(stack.url, "team/app", "v1")
    assert via_default.headers["Docker-Content-Digest"] == up["manifest"] and blobs_via_default == blobs
    assert _upstream_gets(up["log"], layer_digest) == 1

    # The upstream gone: what was pulled still pulls (stale once the TTL ran out), the rest is a 503.
    subprocess.run(["pkill", "-f", str(up["dir"] / "config.yml")], check=False)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            requests.get(f"http://{up['address']}/v2/", timeout=1)
        except requests.ConnectionError:
            break
        time.sleep(0.1)
    time.sleep(1.1)
    stale, blobs_again = _pull(stack.url, "up.example/team/app", "v1")
    assert blobs_again == blobs and stale.headers.get("Warning", "").startswith("110")
    _pull(stack.url, "up.example/team/app", up["manifest"])  # by digest: never asks the upstream
    missing = requests.get(f"{stack.url}/v2/up.example/team/other/manifests/v1", headers={"Accept": OCI_MANIFEST},
                           timeout=60)
    assert missing.status_code == 503 and missing.json()["errors"][0]["code"] == "UNAVAILABLE"
    assert up["address"] in missing.json()["errors"][0]["message"]

    # What it did shows in the metrics (docs/observability.md).
    addresses = json.loads((stack.data_dir / "metrics.json").read_text())
    gateway = requests.get(f"http://{addresses['gateway']}/metrics", timeout=30).text
    blobstore = "".join(requests.get(f"http://{address}/metrics", timeout=30).text
                        for name, address in addresses.items() if name.startswith("blobstore"))
    assert _figure(gateway, 'wharf_mirror_reads_total{answer="fetched",kind="manifest",upstream="up.example"}') >= 1
    assert _figure(gateway, 'wharf_mirror_reads_total{answer="stale",kind="manifest",upstream="up.example"}') >= 1
    assert _figure(blobstore, 'wharf_mirror_fills_total{result="stored",upstream="up.example"}') >= 2
    assert _figure(blobstore, 'wharf_mirror_upstream_bytes_total{upstream="up.example"}') >= len(up["layer"])
    assert _figure(blobstore, 'wharf_mirror_upstream_errors_total{kind="unavailable",upstream="up.example"}') >= 1


def _figure(exposition: str, sample: str) -> float:
    """The sum of a sample's values across the expositions given (several blob store replicas)."""
    return sum(float(line.rsplit(" ", 1)[1]) for line in exposition.splitlines() if line.startswith(sample + " "))


def test_eviction_takes_the_least_recently_pulled_past_the_size_limit(
        start_stack: Callable[..., RunningStack], tmp_path: pathlib.Path) -> None:
    """Three mirrored images over a limit that holds one: the ones pulled longer ago go (and pull
    again from the upstream), the most recent stays; a layer a private repository also links does
    not count against the mirror and keeps its bytes there."""
    binary = require_tool("docker-registry", "apt-get install docker-registry")
    with running_distribution(tmp_path / "upstream", binary, level="info") as address:
        layers = {name: hashlib.sha256(name.encode()).digest() * 8000 for name in ("old", "mid", "new")}
        for name, layer in layers.items():
            _push(f"http://{address}", f"team/{name}", "v1", layer)
        mirrors = tmp_path / "mirrors.yaml"
        mirrors.write_text(f"upstreams:\n  - prefix: up.example\n    url: http://{address}\n    insecure: true\n"
                           "    size_limit: 300000\n")
        stack = start_stack(env={"WHARF_MIRRORS_FILE": str(mirrors)})
        for name in layers:
            _pull(stack.url, f"up.example/team/{name}", "v1")
            time.sleep(1.1)
        old_digest = "sha256:" + hashlib.sha256(layers["old"]).hexdigest()
        mounted = requests.post(f"{stack.url}/v2/team/private/blobs/uploads/", timeout=30,
                                params={"mount": old_digest, "from": "up.example/team/old"})
        assert mounted.status_code == 201
        config = b'{"architecture": "amd64", "os": "linux", "private": true}'
        assert requests.post(f"{stack.url}/v2/team/private/blobs/uploads/", timeout=30, data=config,
                             params={"digest": "sha256:" + hashlib.sha256(config).hexdigest()}).status_code == 201
        private = json.dumps({"schemaVersion": 2, "mediaType": OCI_MANIFEST, "config": {
            "mediaType": "application/vnd.oci.image.config.v1+json", "size": len(config),
            "digest": "sha256:" + hashlib.sha256(config).hexdigest()}, "layers": [{
                "mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": old_digest,
                "size": len(layers["old"])}]}).encode()
        assert requests.put(f"{stack.url}/v2/team/private/manifests/v1", data=private, timeout=30,
                            headers={"Content-Type": OCI_MANIFEST}).status_code == 201
        time.sleep(6)  # the gateways send pull times every 5 s
        report = _gc(stack, "--grace", "0")
        assert report["manifests_evicted"] == 2, report
        assert requests.get(f"{stack.url}/v2/team/private/blobs/{old_digest}", timeout=30).content == layers["old"]
        client = redis.Redis.from_url(records.read(stack.data_dir.resolve(), records.REDIS_URL) or "")
        for name, kept in (("old", False), ("mid", False), ("new", True)):
            assert client.hexists(keys.tags(f"up.example/team/{name}"), "v1") == kept, name
        log = tmp_path / "upstream" / "registry.log"
        mid_digest = "sha256:" + hashlib.sha256(layers["mid"]).hexdigest()
        assert _upstream_gets(log, mid_digest) == 1
        _, blobs = _pull(stack.url, "up.example/team/mid", "v1")  # evicted: it comes back from the upstream
        assert layers["mid"] in blobs and _upstream_gets(log, mid_digest) == 2
