"""The oras CLI (oras.land/oras, Go): push, attach a referrer, discover it through the referrers
API, pull, list repositories and tags; and login in token mode."""

from __future__ import annotations

import pathlib
import subprocess

import pytest

from tests.e2e.test_token_clients import PASSWORD, USER, secure  # noqa: F401 - the token-mode stack fixture
from tests.support.stack import RunningStack
from tests.support.tools import isolated_env, require_tool

pytestmark = pytest.mark.e2e


class Oras:
    def __init__(self, binary: str, home: pathlib.Path) -> None:
        self.binary = binary
        self.env = isolated_env(home)

    def run(self, *args: str, cwd: pathlib.Path, check: bool = True) -> str:
        result = subprocess.run([self.binary, *args, "--plain-http"], cwd=cwd, env=self.env, capture_output=True,
                                text=True, timeout=120)
        if check:
            assert result.returncode == 0, f"oras {' '.join(args)} failed:\n{result.stderr}"
        return result.stdout + result.stderr


@pytest.fixture()
def oras(tmp_path: pathlib.Path) -> Oras:
    return Oras(require_tool("oras", "go install oras.land/oras/cmd/oras@v1.3.6"), tmp_path / "oras-home")


def test_push_attach_discover_pull(oras: Oras, stack: RunningStack, tmp_path: pathlib.Path) -> None:
    (tmp_path / "note.txt").write_text("hello from the oras CLI")
    (tmp_path / "review.txt").write_text("looks good")
    target = f"{stack.host}/oras-cli/notes:v1"
    oras.run("push", target, "note.txt:text/plain", "--artifact-type", "application/vnd.example.note",
             cwd=tmp_path)
    oras.run("attach", target, "review.txt", "--artifact-type", "application/vnd.example.review", cwd=tmp_path)
    discovered = oras.run("discover", target, "--format", "json", cwd=tmp_path)
    assert "application/vnd.example.review" in discovered
    out = tmp_path / "out"
    out.mkdir()
    oras.run("pull", target, cwd=out)
    assert (out / "note.txt").read_text() == "hello from the oras CLI"
    assert "oras-cli/notes" in oras.run("repo", "ls", stack.host, cwd=tmp_path)
    assert "v1" in oras.run("repo", "tags", f"{stack.host}/oras-cli/notes", cwd=tmp_path)


def test_login_and_push_with_tokens(oras: Oras, secure: RunningStack, tmp_path: pathlib.Path) -> None:  # noqa: F811
    (tmp_path / "file.txt").write_text("token mode")
    wrong = oras.run("login", secure.host, "-u", USER, "-p", "not-the-password", cwd=tmp_path, check=False)
    assert "401" in wrong or "unauthorized" in wrong.lower()
    oras.run("login", secure.host, "-u", USER, "-p", PASSWORD, cwd=tmp_path)
    oras.run("push", f"{secure.host}/{USER}/cli:v1", "file.txt", cwd=tmp_path)
    denied = oras.run("push", f"{secure.host}/someone/else:v1", "file.txt", cwd=tmp_path, check=False)
    assert "denied" in denied.lower() or "403" in denied
