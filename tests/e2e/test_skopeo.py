"""skopeo (containers/image, the library behind podman and buildah) against the real stack.

Every image goes in and comes back out, and the test compares bytes: a registry
that rewrites a manifest, even only its whitespace, changes its digest and
breaks every signature and pinned reference to it.
"""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import urllib.error
import urllib.request
import uuid

import pytest

from tests.e2e.images import (
    DOCKER_MANIFEST,
    DOCKER_MANIFEST_LIST,
    OCI_INDEX,
    OCI_MANIFEST,
    assert_same_objects,
    sha256,
    write_docker_dir,
    write_oci_index_layout,
)
from tests.support.stack import RunningStack
from tests.support.tools import require_tool

pytestmark = pytest.mark.e2e

ALL_MANIFEST_TYPES = ", ".join([OCI_INDEX, OCI_MANIFEST, DOCKER_MANIFEST_LIST, DOCKER_MANIFEST])


class Skopeo:
    """Runs skopeo with its own policy, auth file, registries config and HOME, so neither the
    user's nor the system's container configuration changes what a test does."""

    def __init__(self, binary: str, home: pathlib.Path) -> None:
        home.mkdir(parents=True, exist_ok=True)
        (home / "policy.json").write_text(json.dumps({"default": [{"type": "insecureAcceptAnything"}]}))
        (home / "auth.json").write_text(json.dumps({"auths": {}}))
        (home / "registries.conf").write_text("")
        (home / "registries.d").mkdir(exist_ok=True)
        (home / "tmp").mkdir(exist_ok=True)
        self.argv = [binary, "--policy", str(home / "policy.json"), "--registries.d", str(home / "registries.d"),
                     "--tmpdir", str(home / "tmp")]
        self.env = {key: value for key, value in os.environ.items() if key != "DOCKER_CONFIG"}
        self.env.update(HOME=str(home), XDG_CONFIG_HOME=str(home / "config"), XDG_RUNTIME_DIR=str(home / "run"),
                        XDG_DATA_HOME=str(home / "data"), REGISTRY_AUTH_FILE=str(home / "auth.json"),
                        CONTAINERS_REGISTRIES_CONF=str(home / "registries.conf"))

    def run(self, *args: str) -> bytes:
        result = subprocess.run([*self.argv, *args], env=self.env, capture_output=True, timeout=300)
        assert result.returncode == 0, f"skopeo {' '.join(args)} failed:\n{result.stderr.decode(errors='replace')}"
        return result.stdout

    def copy(self, source: str, destination: str, *flags: str, digest_file: pathlib.Path | None = None) -> None:
        extra = ["--digestfile", str(digest_file)] if digest_file else []
        self.run("copy", "--quiet", "--src-tls-verify=false", "--dest-tls-verify=false", *flags, *extra,
                 source, destination)

    def raw(self, reference: str) -> bytes:
        return self.run("inspect", "--raw", "--tls-verify=false", reference)


@pytest.fixture()
def skopeo(tmp_path: pathlib.Path) -> Skopeo:
    return Skopeo(require_tool("skopeo"), tmp_path / "skopeo-home")


def fresh_repository(kind: str) -> str:
    """A repository name no other test (or earlier run on a shared stack) has touched."""
    return f"e2e/skopeo/{kind}-{uuid.uuid4().hex[:8]}"


def oci_layout_objects(layout: pathlib.Path) -> dict[str, bytes]:
    return {f"sha256:{path.name}": path.read_bytes() for path in (layout / "blobs" / "sha256").iterdir()}


def dir_objects(directory: pathlib.Path) -> dict[str, bytes]:
    """Everything in a skopeo ``dir:`` copy, keyed by digest (manifest.json by its own hash)."""
    objects = {}
    for path in directory.iterdir():
        if path.name == "version":
            continue
        data = path.read_bytes()
        key = sha256(data) if path.name == "manifest.json" else "sha256:" + path.name.removesuffix(".manifest.json")
        objects[key] = data
    return objects


def http_status(url: str) -> int:
    request = urllib.request.Request(url, headers={"Accept": ALL_MANIFEST_TYPES})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return int(response.status)
    except urllib.error.HTTPError as err:
        return err.code


def layer_digests(manifest: bytes) -> list[str]:
    return [layer["digest"] for layer in json.loads(manifest)["layers"]]


def test_oci_index_round_trip_inspect_list_and_delete(skopeo: Skopeo, stack: RunningStack,
                                                      tmp_path: pathlib.Path) -> None:
    image = write_oci_index_layout(tmp_path / "source", tag="multi")
    name = fresh_repository("oci")
    repository = f"docker://{stack.host}/{name}"
    reference = f"{repository}:{image.tag}"
    skopeo.copy(f"oci:{image.path}:{image.tag}", reference, "--all", digest_file=tmp_path / "pushed")
    assert (tmp_path / "pushed").read_text() == image.digest

    [entry] = json.loads((image.path / "index.json").read_bytes())["manifests"]
    raw = skopeo.raw(reference)
    assert (sha256(raw), len(raw)) == (entry["digest"], entry["size"])
    assert raw == image.root
    for digest in image.manifests.values():
        assert skopeo.raw(f"{repository}@{digest}") == image.objects[digest]

    skopeo.copy(reference, f"oci:{tmp_path / 'copy'}:{image.tag}", "--all")
    [copied] = json.loads((tmp_path / "copy" / "index.json").read_bytes())["manifests"]
    assert (copied["digest"], copied["size"]) == (entry["digest"], entry["size"])
    assert_same_objects(oci_layout_objects(tmp_path / "copy"), image.objects)

    arm64 = json.loads(skopeo.run("--override-os", "linux", "--override-arch", "arm64",
                                  "inspect", "--tls-verify=false", reference))
    assert (arm64["Os"], arm64["Architecture"]) == ("linux", "arm64")
    assert arm64["Layers"] == layer_digests(image.objects[image.manifests["linux/arm64"]])
    assert json.loads(skopeo.run("list-tags", "--tls-verify=false", repository))["Tags"] == [image.tag]

    skopeo.run("delete", "--tls-verify=false", reference)
    assert http_status(f"{stack.url}/v2/{name}/manifests/{image.digest}") == 404
    assert http_status(f"{stack.url}/v2/{name}/manifests/{image.tag}") == 404


def test_docker_schema2_round_trip(skopeo: Skopeo, stack: RunningStack, tmp_path: pathlib.Path) -> None:
    image = write_docker_dir(tmp_path / "source")
    reference = f"docker://{stack.host}/{fresh_repository('schema2')}:{image.tag}"
    skopeo.copy(f"dir:{image.path}", reference, "--format", "v2s2", digest_file=tmp_path / "pushed")
    assert (tmp_path / "pushed").read_text() == image.digest

    raw = skopeo.raw(reference)
    assert json.loads(raw)["mediaType"] == DOCKER_MANIFEST
    assert raw == image.root

    skopeo.copy(reference, f"dir:{tmp_path / 'copy'}")
    assert_same_objects(dir_objects(tmp_path / "copy"), image.objects)


def test_docker_manifest_list_round_trip(skopeo: Skopeo, stack: RunningStack, tmp_path: pathlib.Path) -> None:
    """skopeo converts the OCI index to a Docker list on the way in; what it pushed must come back."""
    image = write_oci_index_layout(tmp_path / "source", tag="list")
    repository = f"docker://{stack.host}/{fresh_repository('list')}"
    reference = f"{repository}:{image.tag}"
    skopeo.copy(f"oci:{image.path}:{image.tag}", reference, "--all", "--format", "v2s2",
                digest_file=tmp_path / "pushed")

    raw = skopeo.raw(reference)
    assert sha256(raw) == (tmp_path / "pushed").read_text()
    manifest_list = json.loads(raw)
    assert manifest_list["mediaType"] == DOCKER_MANIFEST_LIST
    expected = {sha256(raw): raw, **image.blobs}
    for entry in manifest_list["manifests"]:
        child = skopeo.raw(f"{repository}@{entry['digest']}")
        assert (sha256(child), len(child)) == (entry["digest"], entry["size"])
        assert json.loads(child)["mediaType"] == DOCKER_MANIFEST
        platform = f"{entry['platform']['os']}/{entry['platform']['architecture']}"
        original = image.objects[image.manifests[platform]]
        assert layer_digests(child) == layer_digests(original)
        assert json.loads(child)["config"]["digest"] == json.loads(original)["config"]["digest"]
        expected[entry["digest"]] = child
    assert len(expected) == len(image.blobs) + 3

    skopeo.copy(reference, f"dir:{tmp_path / 'copy'}", "--all")
    assert_same_objects(dir_objects(tmp_path / "copy"), expected)
