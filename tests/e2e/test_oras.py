"""oras-py (the ORAS Python client) pushing and pulling an OCI artifact over plain HTTP.

Artifacts are what Helm charts, SBOMs and signatures travel as: custom media
types, a config whose media type is the artifact type, annotations. The registry
must store all of it untouched; plain HTTP then checks the stored bytes and the
digest headers a client relies on, independently of oras' own checks.
"""

from __future__ import annotations

import hashlib
import json
import os
import pathlib
import urllib.request
import uuid
from http.client import HTTPMessage
from types import ModuleType

import pytest

from tests.support.stack import RunningStack
from tests.support.tools import in_ci

pytestmark = pytest.mark.e2e

ARTIFACT_TYPE = "application/vnd.wharf.e2e.bundle.v1+json"
ANNOTATIONS = {"org.opencontainers.image.description": "wharf e2e artifact",
               "com.example.wharf.run": uuid.uuid4().hex}


def artifact_files() -> dict[str, tuple[str, bytes]]:
    """name -> (media type, content); fresh random bytes so no upload is skipped as already present."""
    return {"notes.txt": ("text/plain", b"two files, one artifact\n"),
            "payload.bin": ("application/vnd.wharf.e2e.payload", os.urandom(300 * 1024))}


def oras_client_module() -> ModuleType:
    """oras.client; like require_tool: skipped locally when missing, a failure when CI=true."""
    try:
        import oras.client
    except ImportError:
        reason = "the oras PyPI package (oras-py) is not installed; `make test` installs the dev extras"
        if in_ci():
            pytest.fail(f"CI=true but {reason}")
        pytest.skip(reason)
    return oras.client


def fetch(url: str, accept: str = "*/*", method: str = "GET") -> tuple[bytes, HTTPMessage]:
    request = urllib.request.Request(url, headers={"Accept": accept}, method=method)
    with urllib.request.urlopen(request, timeout=30) as response:
        return response.read(), response.headers


@pytest.mark.parametrize("chunked", [False, True], ids=["post-put", "chunked-patch"])
def test_artifact_push_pull_round_trip(stack: RunningStack, tmp_path: pathlib.Path,
                                       monkeypatch: pytest.MonkeyPatch, chunked: bool) -> None:
    oras_client = oras_client_module()
    monkeypatch.setenv("HOME", str(tmp_path))  # oras-py reads ~/.docker/config.json; keep the user's out
    source, pulled, files = tmp_path / "source", tmp_path / "pulled", artifact_files()
    source.mkdir()
    for name, (_, data) in files.items():
        (source / name).write_bytes(data)
    (source / "config.json").write_bytes(json.dumps({"kind": "bundle"}).encode())
    repository = f"e2e/oras/bundle-{uuid.uuid4().hex[:8]}"
    target = f"{stack.host}/{repository}:v1"

    client = oras_client.OrasClient(hostname=stack.host, insecure=True)  # insecure = plain http
    # oras-py has no artifactType argument: the config's media type carries the artifact type
    # (the OCI 1.0 convention, and what the 1.1 spec falls back to when artifactType is absent).
    pushed = client.push(target=target, files=[f"{source / name}:{media}" for name, (media, _) in files.items()],
                         manifest_config=f"{source / 'config.json'}:{ARTIFACT_TYPE}",
                         manifest_annotations=ANNOTATIONS, disable_path_validation=True,
                         do_chunked=chunked, chunk_size=64 * 1024, quiet=True)
    assert pushed.status_code == 201
    manifest_digest = pushed.headers["Docker-Content-Digest"]

    paths = client.pull(target=target, outdir=str(pulled))
    assert sorted(pathlib.Path(p).name for p in paths) == sorted(files)
    for name, (_, data) in files.items():
        assert (pulled / name).read_bytes() == data

    body, headers = fetch(f"{stack.url}/v2/{repository}/manifests/v1", "application/vnd.oci.image.manifest.v1+json")
    assert "sha256:" + hashlib.sha256(body).hexdigest() == manifest_digest == headers["Docker-Content-Digest"]
    manifest = json.loads(body)
    assert manifest["config"]["mediaType"] == ARTIFACT_TYPE
    assert ANNOTATIONS.items() <= manifest["annotations"].items()
    assert [layer["mediaType"] for layer in manifest["layers"]] == [media for media, _ in files.values()]
    for descriptor in [manifest["config"], *manifest["layers"]]:
        blob, _ = fetch(f"{stack.url}/v2/{repository}/blobs/{descriptor['digest']}")
        assert "sha256:" + hashlib.sha256(blob).hexdigest() == descriptor["digest"]
        # HEAD is answered by the registry itself (a GET may be redirected to object storage).
        _, blob_headers = fetch(f"{stack.url}/v2/{repository}/blobs/{descriptor['digest']}", method="HEAD")
        assert blob_headers["Docker-Content-Digest"] == descriptor["digest"]
        assert int(blob_headers["Content-Length"]) == descriptor["size"] == len(blob)
