"""regctl (regclient, Go): artifacts with referrers, image copy with referrers, tag and manifest
deletion, export, blob reads, and login in token mode."""

from __future__ import annotations

import json
import pathlib
import subprocess
import tarfile

import pytest

from tests.e2e.test_token_clients import PASSWORD, USER, secure  # noqa: F401 - the token-mode stack fixture
from tests.support.stack import RunningStack
from tests.support.tools import isolated_env, require_tool

pytestmark = pytest.mark.e2e

REGCTL_MODULE = "github.com/regclient/regclient/cmd/regctl@v0.11.7"


class Regctl:
    def __init__(self, binary: str, home: pathlib.Path) -> None:
        self.binary = binary
        self.env = isolated_env(home)

    def run(self, *args: str, cwd: pathlib.Path, check: bool = True, stdin: str | None = None) -> str:
        result = subprocess.run([self.binary, *args], cwd=cwd, env=self.env, capture_output=True, text=True,
                                timeout=120, input=stdin)
        if check:
            assert result.returncode == 0, f"regctl {' '.join(args)} failed:\n{result.stdout}\n{result.stderr}"
        return result.stdout + (result.stderr if not check else "")

    def plain_http(self, host: str, cwd: pathlib.Path) -> None:
        self.run("registry", "set", host, "--tls", "disabled", cwd=cwd)


@pytest.fixture()
def regctl(tmp_path: pathlib.Path) -> Regctl:
    return Regctl(require_tool("regctl", f"go install {REGCTL_MODULE}"), tmp_path / "regctl-home")


def test_artifacts_referrers_copy_and_deletes(regctl: Regctl, stack: RunningStack, tmp_path: pathlib.Path) -> None:
    regctl.plain_http(stack.host, tmp_path)
    repo = f"{stack.host}/regctl/app"
    (tmp_path / "payload.txt").write_text("the artifact")
    (tmp_path / "sig.txt").write_text("a signature")
    regctl.run("artifact", "put", "--artifact-type", "application/vnd.example.payload", "-f", "payload.txt",
               f"{repo}:v1", cwd=tmp_path)
    assert regctl.run("artifact", "get", f"{repo}:v1", cwd=tmp_path) == "the artifact"
    digest = regctl.run("image", "digest", f"{repo}:v1", cwd=tmp_path).strip()
    regctl.run("artifact", "put", "--subject", f"{repo}:v1", "--artifact-type", "application/vnd.example.sig",
               "-f", "sig.txt", "--annotation", "org.example.kind=sig", f"{repo}:sig", cwd=tmp_path)
    listed = json.loads(regctl.run("artifact", "list", f"{repo}:v1", "--format", "{{json .}}", cwd=tmp_path))
    assert [d["artifactType"] for d in listed["descriptors"]] == ["application/vnd.example.sig"]

    # Copy with referrers to another repository: same digests, referrers found there too.
    copy = f"{stack.host}/regctl/copy"
    regctl.run("image", "copy", "--referrers", f"{repo}:v1", f"{copy}:v1", cwd=tmp_path)
    assert regctl.run("image", "digest", f"{copy}:v1", cwd=tmp_path).strip() == digest
    copied = json.loads(regctl.run("artifact", "list", f"{copy}:v1", "--format", "{{json .}}", cwd=tmp_path))
    assert [d["digest"] for d in copied["descriptors"]] == [d["digest"] for d in listed["descriptors"]]
    layer = json.loads(regctl.run("manifest", "get", f"{copy}:v1", "--format", "raw-body", cwd=tmp_path))["layers"][0]
    assert regctl.run("blob", "get", copy, layer["digest"], cwd=tmp_path) == "the artifact"
    regctl.run("image", "export", f"{copy}:v1", "image.tar", cwd=tmp_path)
    with tarfile.open(tmp_path / "image.tar") as archive:
        assert "index.json" in archive.getnames()

    # Tag deletion keeps the manifest; manifest deletion takes the rest.
    regctl.run("tag", "delete", f"{copy}:v1", cwd=tmp_path)
    assert "v1" not in regctl.run("tag", "ls", copy, cwd=tmp_path).split()
    assert regctl.run("image", "digest", f"{copy}@{digest}", cwd=tmp_path).strip() == digest
    regctl.run("manifest", "delete", f"{repo}@{digest}", cwd=tmp_path)
    gone = regctl.run("manifest", "head", f"{repo}:v1", cwd=tmp_path, check=False)
    assert "not found" in gone.lower() or "404" in gone


def test_login_with_tokens(regctl: Regctl, secure: RunningStack, tmp_path: pathlib.Path) -> None:  # noqa: F811
    regctl.plain_http(secure.host, tmp_path)
    (tmp_path / "file.txt").write_text("token mode")
    target = f"{secure.host}/{USER}/regctl:v1"
    refused = regctl.run("artifact", "put", "-f", "file.txt", target, cwd=tmp_path, check=False)
    assert "403" in refused or "401" in refused or "denied" in refused.lower() or "unauthorized" in refused.lower()
    regctl.run("registry", "login", secure.host, "-u", USER, "--pass-stdin", cwd=tmp_path, stdin=PASSWORD + "\n")
    regctl.run("artifact", "put", "-f", "file.txt", target, cwd=tmp_path)
    assert regctl.run("artifact", "get", target, cwd=tmp_path) == "token mode"
