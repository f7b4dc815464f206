"""Interop with skopeo: what wharf pushes skopeo pulls, and the reverse, with equal digests and bytes."""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
from collections.abc import Callable

import pytest

from tests.e2e.client.conftest import Registry, Result
from tests.support.tools import require_tool
from tests.unit.client.builders import docker_save, oci_layout, read_docker_tarball, sha256

pytestmark = pytest.mark.e2e
Cli = Callable[..., Result]


class Skopeo:
    """skopeo with its own policy, auth file and HOME, so no user or system configuration leaks in."""

    def __init__(self, home: pathlib.Path) -> None:
        binary = require_tool("skopeo")
        home.mkdir(parents=True)
        (home / "policy.json").write_text(json.dumps({"default": [{"type": "insecureAcceptAnything"}]}))
        (home / "auth.json").write_text('{"auths": {}}')
        (home / "registries.conf").write_text("")
        (home / "tmp").mkdir()
        self.argv = [binary, "--policy", str(home / "policy.json"), "--tmpdir", str(home / "tmp")]
        self.env = {k: v for k, v in os.environ.items() if k != "DOCKER_CONFIG"}
        self.env.update(HOME=str(home), XDG_RUNTIME_DIR=str(home / "run"), REGISTRY_AUTH_FILE=str(home / "auth.json"),
                        CONTAINERS_REGISTRIES_CONF=str(home / "registries.conf"))

    def __call__(self, *args: str) -> bytes:
        done = subprocess.run([*self.argv, *args], env=self.env, capture_output=True, timeout=300)
        assert done.returncode == 0, f"skopeo {' '.join(args)}:\n{done.stderr.decode(errors='replace')}"
        return done.stdout

    def copy(self, source: str, destination: str, *flags: str) -> None:
        self("copy", "--quiet", "--src-tls-verify=false", "--dest-tls-verify=false", *flags, source, destination)


@pytest.fixture()
def skopeo(tmp_path: pathlib.Path) -> Skopeo:
    return Skopeo(tmp_path / "skopeo-home")


def layout_blobs(path: pathlib.Path) -> dict[str, bytes]:
    return {"sha256:" + p.name: p.read_bytes() for p in (path / "blobs" / "sha256").iterdir()}


def test_wharf_pushes_skopeo_pulls(registry: Registry, wharf_cli: Cli, skopeo: Skopeo, tmp_path: pathlib.Path) -> None:
    built = oci_layout(tmp_path / "src")
    ref = registry.repo() + ":v1"
    wharf_cli("push", str(built.path), ref)
    raw = skopeo("inspect", "--raw", "--tls-verify=false", f"docker://{ref}")
    assert sha256(raw) == built.digest
    skopeo.copy(f"docker://{ref}", f"oci:{tmp_path / 'by-skopeo'}:v1", "--all")
    assert layout_blobs(tmp_path / "by-skopeo") == built.objects
    index = json.loads((tmp_path / "by-skopeo" / "index.json").read_text())
    assert index["manifests"][0]["digest"] == built.digest


def test_skopeo_pushes_wharf_pulls(registry: Registry, wharf_cli: Cli, skopeo: Skopeo, tmp_path: pathlib.Path) -> None:
    built = oci_layout(tmp_path / "src")
    ref = registry.repo() + ":v1"
    digest_file = tmp_path / "digest"
    skopeo.copy(f"oci:{built.path}:v1", f"docker://{ref}", "--all", "--digestfile", str(digest_file))
    assert digest_file.read_text().strip() == built.digest
    pulled = wharf_cli("pull", ref, str(tmp_path / "by-wharf"), "--json").json()
    assert pulled["digest"] == built.digest
    assert layout_blobs(tmp_path / "by-wharf") == built.objects


def test_docker_tarball_interop(registry: Registry, wharf_cli: Cli, skopeo: Skopeo, tmp_path: pathlib.Path) -> None:
    """skopeo reads what wharf pushed from a docker tarball, and wharf writes a tarball skopeo can read."""
    saved = docker_save(tmp_path / "saved.tar")
    ref = registry.repo() + ":v1"
    digest = wharf_cli("push", str(saved.path), ref, "--json").json()["digest"]
    skopeo.copy(f"docker://{ref}", f"docker-archive:{tmp_path / 'by-skopeo.tar'}")
    _, config, layers = read_docker_tarball(tmp_path / "by-skopeo.tar")
    assert config == saved.config and layers == saved.layers
    wharf_cli("pull", ref, str(tmp_path / "by-wharf.tar"))
    skopeo.copy(f"docker-archive:{tmp_path / 'by-wharf.tar'}", f"dir:{tmp_path / 'from-tarball'}")
    manifest = json.loads((tmp_path / "from-tarball" / "manifest.json").read_text())
    config_digest = manifest["config"]["digest"]
    assert config_digest == sha256(saved.config)
    assert (tmp_path / "from-tarball" / config_digest.split(":")[1]).read_bytes() == saved.config
    assert sha256(skopeo("inspect", "--raw", "--tls-verify=false", f"docker://{ref}")) == digest
