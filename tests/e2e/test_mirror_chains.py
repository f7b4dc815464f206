"""Mirrors under stress, through the gateway, with real processes:

- a proxy between Wharf and the upstream flips a byte of a blob, then cuts the connection
  part-way: the client gets an error each time, nothing wrong is stored, and once the proxy
  behaves the pull succeeds byte-identical;
- 20 concurrent first pulls of one uncached 64 MiB layer: one upstream fetch, 20 correct downloads;
- a chain: Wharf mirrors a second Wharf in token mode (configured credentials) that mirrors a
  Distribution upstream, every cache cold: the pull succeeds through both.
"""

from __future__ import annotations

import hashlib
import json
import pathlib
import subprocess
import threading
import time
from collections.abc import Callable, Iterator

import pytest
import requests

from tests.e2e.images import assert_same_objects, write_oci_index_layout
from tests.e2e.test_skopeo import Skopeo, oci_layout_objects
from tests.integration.test_gc import _blob_files
from tests.integration.test_mirror_fill import _push, _upstream_gets
from tests.support.distribution import running_distribution
from tests.support.pusher import OCI_MANIFEST, push_image, random_layers
from tests.support.stack import RunningStack
from tests.support.tamper_proxy import CUT, FLIP, PASS, TamperProxy
from tests.support.tools import require_tool

pytestmark = pytest.mark.e2e

ADMIN_PASSWORD = "chain-admin-secret-1"
BIG = 64 * 1024 * 1024 + 123


def _layer(seed: bytes, size: int) -> bytes:
    block = hashlib.sha256(seed).digest() * 2048  # 64 KiB
    return (block * (size // len(block) + 1))[:size]


@pytest.fixture()
def upstream(tmp_path: pathlib.Path) -> Iterator[dict]:
    binary = require_tool("docker-registry", "apt-get install docker-registry")
    with running_distribution(tmp_path / "upstream", binary, level="info") as address:
        small, big = _layer(b"small", 200_000), _layer(b"big", BIG)
        yield {"address": address, "log": tmp_path / "upstream" / "registry.log", "small": small, "big": big,
               "small_manifest": _push(f"http://{address}", "team/small", "v1", small),
               "big_manifest": _push(f"http://{address}", "team/big", "v1", big)}


def _mirror_file(tmp_path: pathlib.Path, name: str, body: str) -> str:
    path = tmp_path / name
    path.write_text(body)
    return str(path)


def _blob(url: str, repository: str, digest: str) -> bytes:
    answer = requests.get(f"{url}/v2/{repository}/blobs/{digest}", timeout=120)
    assert answer.status_code == 200, answer.text[:300]
    return answer.content


def test_damaged_upstream_answers_are_never_stored(start_stack: Callable[..., RunningStack], upstream: dict,
                                                   tmp_path: pathlib.Path) -> None:
    proxy = TamperProxy(f"http://{upstream['address']}")
    try:
        mirrors = _mirror_file(tmp_path, "m.yaml", f"upstreams:\n  - prefix: up.example\n    url: http://{proxy.address}"
                                                   "\n    insecure: true\n")
        stack = start_stack(env={"WHARF_MIRRORS_FILE": mirrors})
        digest = "sha256:" + hashlib.sha256(upstream["small"]).hexdigest()
        for mode in (FLIP, CUT):
            proxy.mode = mode
            # A damaged answer never arrives whole: an error status naming the upstream, or (for a
            # blob bigger than one chunk) a body cut short.
            try:
                got = requests.get(f"{stack.url}/v2/up.example/team/small/blobs/{digest}", timeout=60)
            except requests.RequestException:
                pass
            else:
                assert got.status_code in (502, 503), (mode, got.status_code)
                assert proxy.address in got.json()["errors"][0]["message"]
            assert digest not in _blob_files(stack)  # nothing stored
        proxy.mode = PASS
        assert _blob(stack.url, "up.example/team/small", digest) == upstream["small"]
        assert digest in _blob_files(stack)
    finally:
        proxy.close()


def test_twenty_first_pulls_fetch_once(start_stack: Callable[..., RunningStack], upstream: dict,
                                       tmp_path: pathlib.Path) -> None:
    mirrors = _mirror_file(tmp_path, "m.yaml", f"upstreams:\n  - prefix: up.example\n    url: "
                                               f"http://{upstream['address']}\n    insecure: true\n")
    stack = start_stack(env={"WHARF_MIRRORS_FILE": mirrors})
    digest = "sha256:" + hashlib.sha256(upstream["big"]).hexdigest()
    bodies: list[bytes] = []
    errors: list[BaseException] = []

    def pull() -> None:
        try:
            bodies.append(_blob(stack.url, "up.example/team/big", digest))
        except BaseException as exc:  # reported below
            errors.append(exc)
    threads = [threading.Thread(target=pull) for _ in range(20)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(300)
    assert not errors, errors[:2]
    assert len(bodies) == 20 and all(body == upstream["big"] for body in bodies)
    assert _upstream_gets(upstream["log"], digest) == 1


def test_a_chain_of_mirrors_with_cold_caches(start_stack: Callable[..., RunningStack], upstream: dict,
                                             tmp_path: pathlib.Path) -> None:
    # The middle Wharf: token mode, mirrors Distribution; an account the first Wharf signs in with.
    middle_mirrors = _mirror_file(tmp_path, "middle.yaml", f"upstreams:\n  - prefix: up.example\n    url: "
                                                           f"http://{upstream['address']}\n    insecure: true\n")
    middle = start_stack(env={"WHARF_AUTH": "token", "WHARF_ADMIN_PASSWORD": ADMIN_PASSWORD,
                              "WHARF_BCRYPT_ROUNDS": "4", "WHARF_MIRRORS_FILE": middle_mirrors})
    robot = json.loads(middle.admin(ADMIN_PASSWORD, "robot", "add", "edge", "--json"))
    middle.admin(ADMIN_PASSWORD, "grant", "edge", "up.example/**", "pull")
    (tmp_path / "edge-password").write_text(robot["password"] + "\n")
    edge_mirrors = _mirror_file(tmp_path, "edge.yaml", f"upstreams:\n  - prefix: middle.example\n    url: "
                                                       f"{middle.url}\n    insecure: true\n    username: edge\n"
                                                       "    password_file: edge-password\n")
    edge = start_stack(env={"WHARF_MIRRORS_FILE": edge_mirrors})
    name = "middle.example/up.example/team/small"
    got = requests.get(f"{edge.url}/v2/{name}/manifests/v1", headers={"Accept": OCI_MANIFEST}, timeout=60)
    assert got.status_code == 200, got.text
    assert got.headers["Docker-Content-Digest"] == upstream["small_manifest"]
    for descriptor in [got.json()["config"], *got.json()["layers"]]:
        body = _blob(edge.url, name, descriptor["digest"])
        assert "sha256:" + hashlib.sha256(body).hexdigest() == descriptor["digest"]
    assert _blob(edge.url, name, "sha256:" + hashlib.sha256(upstream["small"]).hexdigest()) == upstream["small"]


def test_who_may_pull_a_mirror_in_token_mode(start_stack: Callable[..., RunningStack], upstream: dict,
                                             tmp_path: pathlib.Path) -> None:
    """Any signed-in account pulls mirrored repositories; anonymous callers only from an upstream
    entry marked `anonymous: true`; nobody pushes there."""
    mirrors = _mirror_file(tmp_path, "m.yaml", f"upstreams:\n  - prefix: up.example\n    url: http://"
                                               f"{upstream['address']}\n    insecure: true\n"
                                               f"  - prefix: open.example\n    url: http://{upstream['address']}\n"
                                               "    insecure: true\n    anonymous: true\n")
    stack = start_stack(env={"WHARF_AUTH": "token", "WHARF_ADMIN_PASSWORD": ADMIN_PASSWORD,
                             "WHARF_BCRYPT_ROUNDS": "4", "WHARF_MIRRORS_FILE": mirrors})
    stack.admin(ADMIN_PASSWORD, "user", "add", "carol", "--password-stdin", stdin="carol-secret-1\n")

    def token(repository: str, actions: str, auth: tuple[str, str] | None) -> dict:
        answer = requests.get(f"{stack.url}/token", params={"service": "wharf",
                                                             "scope": f"repository:{repository}:{actions}"},
                              auth=auth, timeout=30)
        assert answer.status_code == 200, answer.text
        return dict(answer.json())

    def manifest(repository: str, bearer: str) -> int:
        return requests.get(f"{stack.url}/v2/{repository}/manifests/v1", timeout=60,
                            headers={"Accept": OCI_MANIFEST, "Authorization": f"Bearer {bearer}"}).status_code

    carol = token("up.example/team/small", "pull,push", ("carol", "carol-secret-1"))
    assert manifest("up.example/team/small", carol["token"]) == 200
    anonymous = token("up.example/team/small", "pull", None)
    assert manifest("up.example/team/small", anonymous["token"]) in (401, 403)
    assert manifest("open.example/team/small", token("open.example/team/small", "pull", None)["token"]) == 200
    pushed = requests.post(f"{stack.url}/v2/up.example/team/small/blobs/uploads/", timeout=30,
                           headers={"Authorization": f"Bearer {carol['token']}"})
    assert pushed.status_code in (401, 403)


def test_referrers_of_a_mirrored_image_come_from_the_upstream(start_stack: Callable[..., RunningStack],
                                                              tmp_path: pathlib.Path) -> None:
    """The upstream here is another Wharf (it has the OCI 1.1 referrers API); a signature-like
    artifact pushed there is listed and pulled through the mirror."""
    origin = start_stack()
    subject = push_image([origin.url], "team/signed", "v1", random_layers(1, 2048))
    subject_size = len(requests.get(f"{origin.url}/v2/team/signed/manifests/v1", headers={"Accept": OCI_MANIFEST},
                                    timeout=30).content)
    empty = b"{}"
    config = requests.post(f"{origin.url}/v2/team/signed/blobs/uploads/", timeout=30,
                           params={"digest": "sha256:" + hashlib.sha256(empty).hexdigest()}, data=empty)
    assert config.status_code == 201
    artifact = json.dumps({"schemaVersion": 2, "mediaType": OCI_MANIFEST, "artifactType": "application/x.sig",
                           "config": {"mediaType": "application/vnd.oci.empty.v1+json", "size": 2,
                                      "digest": "sha256:" + hashlib.sha256(empty).hexdigest()},
                           "layers": [], "subject": {"mediaType": OCI_MANIFEST, "digest": subject,
                                                     "size": subject_size}}).encode()
    signature = "sha256:" + hashlib.sha256(artifact).hexdigest()
    assert requests.put(f"{origin.url}/v2/team/signed/manifests/{signature}", data=artifact, timeout=30,
                        headers={"Content-Type": OCI_MANIFEST}).status_code == 201
    mirrors = _mirror_file(tmp_path, "m.yaml", f"upstreams:\n  - prefix: origin.example\n    url: {origin.url}\n"
                                               "    insecure: true\n")
    mirror = start_stack(env={"WHARF_MIRRORS_FILE": mirrors})
    listed = requests.get(f"{mirror.url}/v2/origin.example/team/signed/referrers/{subject}", timeout=60)
    assert listed.status_code == 200, listed.text
    assert [(m["digest"], m.get("artifactType")) for m in listed.json()["manifests"]] == [
        (signature, "application/x.sig")]
    filtered = requests.get(f"{mirror.url}/v2/origin.example/team/signed/referrers/{subject}",
                            params={"artifactType": "application/x.other"}, timeout=60)
    assert filtered.json()["manifests"] == []
    got = requests.get(f"{mirror.url}/v2/origin.example/team/signed/manifests/{signature}",
                       headers={"Accept": OCI_MANIFEST}, timeout=60)
    assert got.status_code == 200 and got.content == artifact


def test_a_multi_arch_image_through_the_mirror_and_an_upstream_that_comes_back(
        start_stack: Callable[..., RunningStack], tmp_path: pathlib.Path) -> None:
    """skopeo (--all) and crane pull a multi-platform image through the mirror byte-identical to
    what the upstream holds; a second pull asks the upstream for no blob. The upstream stops and
    comes back with the tag moved: the mirror serves the stored tag meanwhile and picks up the
    new one once the tag's TTL ran out."""
    binary = require_tool("docker-registry", "apt-get install docker-registry")
    skopeo = Skopeo(require_tool("skopeo"), tmp_path / "skopeo-home")
    image = write_oci_index_layout(tmp_path / "source", tag="v1")
    workdir = tmp_path / "upstream"
    with running_distribution(workdir, binary, level="info") as address:
        skopeo.copy(f"oci:{image.path}:v1", f"docker://{address}/team/multi:v1", "--all")
        mirrors = _mirror_file(tmp_path, "m.yaml", f"upstreams:\n  - prefix: up.example\n    url: http://{address}\n"
                                                   "    insecure: true\n    tag_ttl: 1s\n")
        stack = start_stack(env={"WHARF_MIRRORS_FILE": mirrors})
        pulled = tmp_path / "pulled"
        skopeo.copy(f"docker://{stack.host}/up.example/team/multi:v1", f"oci:{pulled}:v1", "--all")
        assert_same_objects(oci_layout_objects(pulled), image.objects)
        log = workdir / "registry.log"
        blob_gets = sum(_upstream_gets(log, digest) for digest in image.blobs)
        crane = require_tool("crane")
        by_crane = tmp_path / "crane"
        result = subprocess.run([crane, "pull", "--insecure", "--format", "oci", "--platform", "all",
                                 f"{stack.host}/up.example/team/multi:v1", str(by_crane)], capture_output=True,
                                text=True, timeout=120)
        assert result.returncode == 0, result.stderr
        assert sum(_upstream_gets(log, digest) for digest in image.blobs) == blob_gets  # none again
        assert set(image.blobs) <= set(oci_layout_objects(by_crane))
    # The upstream is gone: the stored tag is served (stale) ...
    time.sleep(1.1)
    stale = requests.get(f"{stack.url}/v2/up.example/team/multi/manifests/v1", timeout=60,
                         headers={"Accept": "application/vnd.oci.image.index.v1+json"})
    assert stale.status_code == 200 and stale.headers.get("Warning", "").startswith("110")
    assert stale.headers["Docker-Content-Digest"] == image.digest
    # ... and once it is back with v1 moved, the next pull after the TTL gets the new digest.
    with running_distribution(workdir, binary, level="info", port=int(address.rsplit(":", 1)[1])) as again:
        moved = _push(f"http://{again}", "team/multi", "v1", b"a new v1" * 1000)
        time.sleep(1.1)
        fresh = requests.get(f"{stack.url}/v2/up.example/team/multi/manifests/v1", timeout=60,
                             headers={"Accept": OCI_MANIFEST})
        assert fresh.status_code == 200 and fresh.headers["Docker-Content-Digest"] == moved
        assert "Warning" not in fresh.headers
