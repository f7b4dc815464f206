"""podman (Debian package) pulls from and pushes to Wharf, through S3 redirects too, and logs in
when token auth is on. Storage is vfs under tmp_path, so no daemon or privileges are needed."""

from __future__ import annotations

import json
import os
import pathlib
import shutil
import subprocess
import tempfile
from collections.abc import Iterator

import pytest

from tests.e2e.images import write_oci_index_layout
from tests.e2e.test_skopeo import Skopeo
from tests.e2e.test_token_clients import PASSWORD, USER, secure  # noqa: F401 - the token-mode stack fixture
from tests.support.stack import RunningStack
from tests.support.tools import require_tool

pytestmark = pytest.mark.e2e


class Podman:
    def __init__(self, binary: str, home: pathlib.Path) -> None:
        home.mkdir(parents=True, exist_ok=True)
        (home / "registries.conf").write_text('unqualified-search-registries = []\n')
        (home / "policy.json").write_text(json.dumps({"default": [{"type": "insecureAcceptAnything"}]}))
        (home / "containers.conf").write_text("")
        (home / "auth.json").write_text(json.dumps({"auths": {}}))
        # podman refuses a runroot path longer than 50 characters, which tmp_path usually is.
        self.runroot = tempfile.mkdtemp(prefix="wharf-podman-", dir="/tmp")
        self.argv = [binary, "--storage-driver", "vfs", "--root", str(home / "graph"), "--runroot", self.runroot]
        self.env = {k: v for k, v in os.environ.items() if not k.startswith(("CONTAINERS_", "REGISTRY_AUTH"))}
        self.env.update(HOME=str(home), XDG_RUNTIME_DIR=str(home / "xdg"), XDG_CONFIG_HOME=str(home / "config"),
                        CONTAINERS_REGISTRIES_CONF=str(home / "registries.conf"),
                        CONTAINERS_CONF=str(home / "containers.conf"), REGISTRY_AUTH_FILE=str(home / "auth.json"))
        self.policy = str(home / "policy.json")

    def run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        result = subprocess.run([*self.argv, *args], env=self.env, capture_output=True, text=True, timeout=300)
        if check:
            assert result.returncode == 0, f"podman {' '.join(args)} failed:\n{result.stderr}"
        return result


@pytest.fixture()
def podman(tmp_path: pathlib.Path) -> Iterator[Podman]:
    client = Podman(require_tool("podman", "apt-get install podman"), tmp_path / "podman-home")
    yield client
    shutil.rmtree(client.runroot, ignore_errors=True)


@pytest.fixture()
def skopeo(tmp_path: pathlib.Path) -> Skopeo:
    return Skopeo(require_tool("skopeo"), tmp_path / "skopeo-home")


def _seed(skopeo: Skopeo, host: str, repository: str, tmp_path: pathlib.Path, *flags: str) -> str:
    image = write_oci_index_layout(tmp_path / "seed", "t1")
    skopeo.copy(f"oci:{tmp_path / 'seed'}:t1", f"docker://{host}/{repository}:t1", "--all", *flags)
    return image.digest


def test_podman_pull_and_push(podman: Podman, skopeo: Skopeo, stack: RunningStack, tmp_path: pathlib.Path) -> None:
    _seed(skopeo, stack.host, "podman/src", tmp_path)
    podman.run("pull", "--tls-verify=false", f"{stack.host}/podman/src:t1")
    podman.run("push", "--tls-verify=false", f"{stack.host}/podman/src:t1", f"{stack.host}/podman/dst:t2")
    pushed = json.loads(skopeo.raw(f"docker://{stack.host}/podman/dst:t2"))
    pulled = json.loads(skopeo.raw(f"docker://{stack.host}/podman/src:t1"))
    # podman pulled the host's platform out of the index and pushed that image again, same layers.
    children = {m["digest"] for m in pulled["manifests"]}
    assert [layer["digest"] for layer in pushed["layers"]] == [
        layer["digest"] for layer in json.loads(_child(skopeo, stack.host, children, pushed))["layers"]]


def _child(skopeo: Skopeo, host: str, children: set[str], pushed: dict[str, object]) -> bytes:
    for digest in children:
        manifest = skopeo.raw(f"docker://{host}/podman/src@{digest}")
        if json.loads(manifest)["config"]["digest"] == pushed["config"]["digest"]:  # type: ignore[index]
            return manifest
    raise AssertionError("podman pushed an image that is not one of the index's platforms")


def test_podman_login_push_pull_with_tokens(podman: Podman, skopeo: Skopeo, secure: RunningStack,  # noqa: F811
                                            tmp_path: pathlib.Path) -> None:
    _seed(skopeo, secure.host, f"{USER}/src", tmp_path, f"--dest-creds={USER}:{PASSWORD}")
    bad = podman.run("login", "--tls-verify=false", "-u", USER, "-p", "not-the-password", secure.host, check=False)
    assert bad.returncode != 0
    podman.run("login", "--tls-verify=false", "-u", USER, "-p", PASSWORD, secure.host)
    podman.run("pull", "--tls-verify=false", f"{secure.host}/{USER}/src:t1")
    podman.run("push", "--tls-verify=false", f"{secure.host}/{USER}/src:t1", f"{secure.host}/{USER}/again:t1")
    denied = podman.run("push", "--tls-verify=false", f"{secure.host}/{USER}/src:t1", f"{secure.host}/other/x:t1",
                        check=False)
    assert denied.returncode != 0
