"""Wharf with token authentication: login (OAuth2 password grant, refresh token kept), copy, wrong password."""

from __future__ import annotations

import base64
import json
import os
import pathlib
import subprocess
import sys
from collections.abc import Callable

import pytest

from tests.e2e.client.conftest import Registry, Result
from tests.support.stack import RunningStack
from tests.unit.client.builders import oci_layout

pytestmark = pytest.mark.e2e
Cli = Callable[..., Result]
ADMIN_PASSWORD = "client-admin-secret"
ALICE_PASSWORD = "alice-client-secret"


@pytest.fixture(scope="module")
def secure(start_stack: Callable[..., RunningStack]) -> Registry:
    stack = start_stack(env={"WHARF_AUTH": "token", "WHARF_ADMIN_PASSWORD": ADMIN_PASSWORD,
                             "WHARF_BCRYPT_ROUNDS": "4"})
    env = dict(os.environ, WHARF_ADMIN_PASSWORD=ADMIN_PASSWORD, WHARF_DATA_DIR=str(stack.data_dir))
    done = subprocess.run([sys.executable, "-m", "services.auth.admin_cli", "user", "add", "alice",
                           "--password-stdin"], input=ALICE_PASSWORD + "\n", env=env, capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return Registry("wharf-token", stack.host)


def test_login_copy_and_logout(secure: Registry, wharf: Registry, wharf_cli: Cli, tmp_path: pathlib.Path) -> None:
    built = oci_layout(tmp_path / "src")
    origin = wharf.repo() + ":v1"
    wharf_cli("push", str(built.path), origin)
    denied = wharf_cli("copy", origin, f"{secure.host}/alice/app:v1", expect=3)
    assert "DENIED" in denied.err and f"wharf login {secure.host}" in denied.err

    login = wharf_cli("login", secure.host, "-u", "alice", "--password-stdin", "--json",
                      stdin=ALICE_PASSWORD.encode() + b"\n").json()
    assert login["refreshToken"] is True
    stored = json.loads((tmp_path / "docker-config" / "config.json").read_text())["auths"][secure.host]
    assert base64.b64decode(stored["auth"]) == b"alice:" and stored["identitytoken"]  # no password on disk

    copied = wharf_cli("copy", origin, f"{secure.host}/alice/app:v1", "--json").json()
    assert copied["digest"] == built.digest
    mounted = wharf_cli("copy", f"{secure.host}/alice/app:v1", f"{secure.host}/alice/mirror", "--json").json()
    assert mounted["blobs"] == {"mounted": built.blob_count}
    assert wharf_cli("tags", f"{secure.host}/alice/app").text.split() == ["v1"]
    wharf_cli("pull", f"{secure.host}/alice/mirror:v1", str(tmp_path / "back"))

    assert "Removing login credentials" in wharf_cli("logout", secure.host).text
    after = wharf_cli("tags", f"{secure.host}/alice/app", expect=3)
    assert "alice/app" in after.err


def test_wrong_password_is_a_clear_error(secure: Registry, wharf_cli: Cli, tmp_path: pathlib.Path) -> None:
    result = wharf_cli("login", secure.host, "-u", "alice", "--password-stdin", stdin=b"not-the-password\n",
                       expect=3)
    assert result.err.startswith(f"wharf: error: login to {secure.host} as alice failed")
    assert "UNAUTHORIZED: invalid username or password" in result.err
    assert len(result.err.strip().splitlines()) == 1
    assert not (tmp_path / "docker-config" / "config.json").exists()


def test_password_in_the_docker_config_works_too(secure: Registry, wharf_cli: Cli, tmp_path: pathlib.Path) -> None:
    """A config written by another tool with user:password (no refresh token): the GET token flow."""
    config = tmp_path / "docker-config"
    config.mkdir(parents=True)
    auth = base64.b64encode(f"alice:{ALICE_PASSWORD}".encode()).decode()
    (config / "config.json").write_text(json.dumps({"auths": {secure.host: {"auth": auth}}}))
    built = oci_layout(tmp_path / "src", platforms=("linux/amd64",))
    pushed = wharf_cli("push", str(built.path), f"{secure.host}/alice/basic:v1", "--json").json()
    assert pushed["digest"] == built.digest
