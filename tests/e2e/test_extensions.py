"""The example extension package (examples/wharf-example, installed by `make test`'s setup like any
package a user installs), end to end: the stack finds it, stores blobs through its driver, delivers
events to its sink and enforces its policy; `wharf-admin plugins` lists it."""

from __future__ import annotations

import importlib.util
import json
import os
import pathlib
import subprocess
import sys
import time
import uuid
from collections.abc import Callable

import pytest
import requests

from tests.support.pusher import OCI_MANIFEST, digest, push_image, random_layers
from tests.support.stack import RunningStack
from tests.support.tools import in_ci

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module", autouse=True)
def example_installed() -> None:
    if importlib.util.find_spec("wharf_example") is None:
        reason = "the example extension is not installed (make test installs examples/wharf-example)"
        if in_ci():
            pytest.fail(f"CI=true but {reason}")
        pytest.skip(reason)


def test_the_stack_uses_the_example_driver_sink_and_policy(tmp_path: pathlib.Path,
                                                           start_stack: Callable[..., RunningStack]) -> None:
    blobs = tmp_path / "example-blobs"
    events = tmp_path / "events.jsonl"
    (tmp_path / "storage.yaml").write_text(json.dumps({"root": str(blobs)}))
    (tmp_path / "events.yaml").write_text(json.dumps({"endpoints": [
        {"name": "audit", "sink": "jsonl-file", "options": {"path": str(events)}}]}))
    (tmp_path / "admission.yaml").write_text(json.dumps({"policies": [
        {"name": "no-latest", "repositories": ["prod/**"]}]}))
    stack = start_stack(env={"WHARF_STORAGE": "example-dir",
                             "WHARF_STORAGE_OPTIONS_FILE": str(tmp_path / "storage.yaml"),
                             "WHARF_EVENTS_FILE": str(tmp_path / "events.yaml"),
                             "WHARF_ADMISSION_FILE": str(tmp_path / "admission.yaml")})
    repository = f"prod/app-{uuid.uuid4().hex[:6]}"
    layers = random_layers(2, 4096)
    manifest = push_image([stack.url], repository, "v1", layers)

    # Stored through the driver: the layers' bytes are under its root.
    stored = {path.read_bytes() for path in blobs.rglob("*") if path.is_file()}
    assert set(layers) <= stored
    # Delivered to the sink: the push events, in Distribution's format.
    deadline = time.monotonic() + 30
    while not (events.exists() and any(json.loads(line)["target"].get("tag") == "v1"
                                       for line in events.read_text().splitlines())):
        assert time.monotonic() < deadline, "no event reached the example sink"
        time.sleep(0.1)
    lines = [json.loads(line) for line in events.read_text().splitlines()]
    assert {line["target"]["digest"] for line in lines if line["action"] == "push"} >= {
        digest(layer) for layer in layers} | {manifest}
    # Enforced: the policy refuses the tag latest under prod/.
    body = requests.get(f"{stack.url}/v2/{repository}/manifests/v1", headers={"Accept": OCI_MANIFEST},
                        timeout=10).content
    refused = requests.put(f"{stack.url}/v2/{repository}/manifests/latest", data=body,
                           headers={"Content-Type": OCI_MANIFEST}, timeout=10)
    assert refused.status_code == 403
    error = refused.json()["errors"][0]
    assert (error["code"], error["message"]) == ("DENIED", "no-latest: the tag latest is not accepted here; "
                                                           "push a version")
    listed = subprocess.run([sys.executable, "-m", "services.auth.admin_cli", "plugins", "--json"],
                            env=dict(os.environ), capture_output=True, text=True, timeout=60)
    found = {(p["group"], p["name"], p["package"]) for p in json.loads(listed.stdout)}
    assert {("wharf.storage", "example-dir", "wharf-example"), ("wharf.events", "jsonl-file", "wharf-example"),
            ("wharf.admission", "no-latest", "wharf-example")} <= found


def test_a_broken_option_of_an_extension_stops_the_blob_store_naming_it(tmp_path: pathlib.Path) -> None:
    (tmp_path / "storage.yaml").write_text(json.dumps({"root": "relative/path"}))
    env = {**os.environ, "WHARF_STORAGE": "example-dir", "WHARF_STORAGE_OPTIONS_FILE": str(tmp_path / "storage.yaml"),
           "WHARF_DATA_DIR": str(tmp_path / "data"), "WHARF_INTERNAL_TOKEN_FILE": str(tmp_path / "token")}
    (tmp_path / "token").write_text("x" * 40)
    (tmp_path / "token").chmod(0o600)
    result = subprocess.run([sys.executable, "-m", "services.blobstore"], env=env, capture_output=True, text=True,
                            timeout=60)
    assert result.returncode != 0
    assert "wharf-blobstore: WHARF_STORAGE=example-dir: example-dir needs root: an absolute directory path" \
        in result.stderr
    assert "Traceback" not in result.stderr
