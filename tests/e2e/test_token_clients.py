"""Issue 3 with real clients: skopeo (with --creds, after `skopeo login`, and from a docker
config.json) and oras-py log in to Wharf in token mode, push and pull."""

from __future__ import annotations

import base64
import json
import os
import pathlib
import subprocess
import sys
from collections.abc import Callable

import pytest

from tests.e2e.images import write_oci_index_layout
from tests.e2e.test_oras import oras_client_module
from tests.e2e.test_skopeo import Skopeo
from tests.support.stack import RunningStack
from tests.support.tools import require_tool

pytestmark = pytest.mark.e2e

ADMIN = "token-admin-pw1"
USER, PASSWORD = "carol", "carol-secret-1"


@pytest.fixture(scope="module")
def secure(start_stack: Callable[..., RunningStack]) -> RunningStack:
    stack = start_stack(env={"WHARF_AUTH": "token", "WHARF_ADMIN_PASSWORD": ADMIN, "WHARF_BCRYPT_ROUNDS": "4"})
    env = dict(os.environ, WHARF_ADMIN_PASSWORD=ADMIN, WHARF_DATA_DIR=str(stack.data_dir))
    subprocess.run([sys.executable, "-m", "services.auth.admin_cli", "user", "add", USER, "--password-stdin"],
                   input=PASSWORD + "\n", env=env, check=True, capture_output=True, text=True, timeout=60)
    return stack


@pytest.fixture()
def skopeo(tmp_path: pathlib.Path) -> Skopeo:
    return Skopeo(require_tool("skopeo"), tmp_path / "skopeo-home")


def _round_trip(skopeo: Skopeo, secure: RunningStack, tmp_path: pathlib.Path, repository: str,
                *auth: str) -> None:
    image = write_oci_index_layout(tmp_path / "in")
    skopeo.copy(f"oci:{tmp_path / 'in'}:{image.tag}", f"docker://{secure.host}/{repository}:v1", "--all",
                *[flag.replace("--creds", "--dest-creds") for flag in auth])
    skopeo.copy(f"docker://{secure.host}/{repository}:v1", f"oci:{tmp_path / 'out'}:v1", "--all",
                *[flag.replace("--creds", "--src-creds") for flag in auth])
    index = json.loads((tmp_path / "out" / "index.json").read_text())
    assert index["manifests"][0]["digest"] == image.digest


def test_skopeo_with_creds(skopeo: Skopeo, secure: RunningStack, tmp_path: pathlib.Path) -> None:
    _round_trip(skopeo, secure, tmp_path, f"{USER}/creds", f"--creds={USER}:{PASSWORD}")


def test_skopeo_after_login_and_wrong_password(skopeo: Skopeo, secure: RunningStack, tmp_path: pathlib.Path) -> None:
    bad = subprocess.run([*skopeo.argv, "login", "--tls-verify=false", "-u", USER, "-p", "wrong-password",
                          secure.host], env=skopeo.env, capture_output=True, text=True, timeout=60)
    assert bad.returncode != 0 and "invalid username/password" in bad.stderr
    skopeo.run("login", "--tls-verify=false", "-u", USER, "-p", PASSWORD, secure.host)
    _round_trip(skopeo, secure, tmp_path, f"{USER}/login")


def test_skopeo_reads_docker_config_json(skopeo: Skopeo, secure: RunningStack, tmp_path: pathlib.Path) -> None:
    config = tmp_path / "docker" / "config.json"
    config.parent.mkdir()
    token = base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
    config.write_text(json.dumps({"auths": {secure.host: {"auth": token}}}))
    _round_trip(skopeo, secure, tmp_path, f"{USER}/dockercfg", f"--authfile={config}")


def test_pushing_into_someone_elses_namespace_is_denied(skopeo: Skopeo, secure: RunningStack,
                                                        tmp_path: pathlib.Path) -> None:
    write_oci_index_layout(tmp_path / "in", "x")
    result = subprocess.run([*skopeo.argv, "copy", "--all", "--dest-tls-verify=false",
                             f"--dest-creds={USER}:{PASSWORD}", f"oci:{tmp_path / 'in'}:x",
                             f"docker://{secure.host}/someone/else:v1"], env=skopeo.env, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode != 0 and ("denied" in result.stderr.lower() or "403" in result.stderr)


def test_oras_logs_in_and_pushes(secure: RunningStack, tmp_path: pathlib.Path) -> None:
    oras = oras_client_module()
    artifact = tmp_path / "notes.txt"
    artifact.write_text("hello from oras")
    client = oras.OrasClient(hostname=secure.host, insecure=True)
    client.login(username=USER, password=PASSWORD, hostname=secure.host, tls_verify=False,
                 config_path=str(tmp_path / "docker-config.json"))
    target = f"{secure.host}/{USER}/artifact:v1"
    assert client.push(files=[str(artifact)], target=target, disable_path_validation=True).status_code == 201
    pulled = client.pull(target=target, outdir=str(tmp_path / "out"))
    assert pathlib.Path(pulled[0]).read_text() == "hello from oras"
