"""crane (go-containerregistry): copy, digest, ls, catalog, manifest, pull --platform, delete."""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import tarfile

import pytest

from tests.e2e.images import write_oci_index_layout
from tests.e2e.test_skopeo import Skopeo
from tests.support.stack import RunningStack
from tests.support.tools import require_tool

pytestmark = pytest.mark.e2e


@pytest.fixture()
def crane(tmp_path: pathlib.Path) -> list[str]:
    return [require_tool("crane", "go install github.com/google/go-containerregistry/cmd/crane@v0.22.1")]


def run(crane: list[str], home: pathlib.Path, *args: str) -> str:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DOCKER_")}
    env.update(HOME=str(home), DOCKER_CONFIG=str(home / "docker"))
    result = subprocess.run([*crane, *args, "--insecure"], env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, f"crane {' '.join(args)} failed:\n{result.stderr}"
    return result.stdout.strip()


def test_crane_round_trip(crane: list[str], stack: RunningStack, tmp_path: pathlib.Path) -> None:
    image = write_oci_index_layout(tmp_path / "seed", "t1")
    Skopeo(require_tool("skopeo"), tmp_path / "skopeo-home").copy(
        f"oci:{tmp_path / 'seed'}:t1", f"docker://{stack.host}/crane/src:t1", "--all")
    home = tmp_path / "home"
    assert run(crane, home, "digest", f"{stack.host}/crane/src:t1") == image.digest
    run(crane, home, "copy", f"{stack.host}/crane/src:t1", f"{stack.host}/crane/dst:t2")
    assert run(crane, home, "digest", f"{stack.host}/crane/dst:t2") == image.digest
    assert run(crane, home, "ls", f"{stack.host}/crane/dst") == "t2"
    assert {"crane/src", "crane/dst"} <= set(run(crane, home, "catalog", stack.host).split())
    index = json.loads(run(crane, home, "manifest", f"{stack.host}/crane/dst:t2"))
    assert len(index["manifests"]) == 2
    run(crane, home, "pull", "--platform", "linux/arm64", f"{stack.host}/crane/dst:t2", str(tmp_path / "arm64.tar"))
    with tarfile.open(tmp_path / "arm64.tar") as tar:
        assert "manifest.json" in tar.getnames()
    run(crane, home, "delete", f"{stack.host}/crane/dst@{image.digest}")
    result = subprocess.run([*crane, "digest", f"{stack.host}/crane/dst:t2", "--insecure"], capture_output=True,
                            text=True, timeout=60)
    assert result.returncode != 0 and "MANIFEST_UNKNOWN" in result.stderr
