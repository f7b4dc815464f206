"""Real registries for the client's end-to-end tests: Wharf (the shared stack) and CNCF Distribution.

Both run on free loopback ports with data in temporary directories. The
``wharf`` command runs as a subprocess, as a user runs it, with its own docker
config directory so no test reads or writes the user's credentials.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from tests.support.distribution import running_distribution
from tests.support.stack import RunningStack
from tests.support.tools import require_tool


@dataclasses.dataclass(frozen=True)
class Registry:
    kind: str  # "wharf" or "distribution"
    host: str  # 127.0.0.1:<port>

    def repo(self, prefix: str = "client") -> str:
        """A fresh repository reference no other test has touched."""
        return f"{self.host}/{prefix}/{uuid.uuid4().hex[:10]}"


@pytest.fixture(scope="session")
def distribution(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry]:
    binary = require_tool("docker-registry", "Debian package docker-registry")
    with running_distribution(tmp_path_factory.mktemp("distribution"), binary) as host:
        yield Registry("distribution", host)


@pytest.fixture(scope="session")
def wharf_stack(start_stack: Callable[..., RunningStack]) -> RunningStack:
    """A Wharf of its own (filesystem blobs): ``tests/e2e`` runs its shared stack over several backends."""
    return start_stack(keep=True)


@pytest.fixture(scope="session")
def wharf(wharf_stack: RunningStack) -> Registry:
    return Registry("wharf", wharf_stack.host)


@pytest.fixture(params=["wharf", "distribution"])
def registry(request: pytest.FixtureRequest) -> Registry:
    return request.getfixturevalue(str(request.param))  # type: ignore[no-any-return]


@dataclasses.dataclass
class Result:
    code: int
    out: bytes
    err: str

    @property
    def text(self) -> str:
        return self.out.decode()

    def json(self) -> Any:
        return json.loads(self.out)


class Wharf:
    """Runs the ``wharf`` command line in a subprocess with an isolated docker config."""

    def __init__(self, docker_config: pathlib.Path) -> None:
        self.docker_config = docker_config
        self.env = {k: v for k, v in os.environ.items() if k != "DOCKER_CONFIG"}
        self.env["DOCKER_CONFIG"] = str(docker_config)

    def __call__(self, *args: str, stdin: bytes = b"", expect: int | None = 0, plain_http: bool = True) -> Result:
        argv = [sys.executable, "-m", "wharf_client", *args, *(["--plain-http"] if plain_http else [])]
        done = subprocess.run(argv, input=stdin, capture_output=True, env=self.env, timeout=600)
        result = Result(done.returncode, done.stdout, done.stderr.decode(errors="replace"))
        assert "Traceback" not in result.err, result.err
        if expect is not None:
            assert result.code == expect, f"wharf {' '.join(args)} -> {result.code}, wanted {expect}:\n{result.err}"
        return result


@pytest.fixture()
def wharf_cli(tmp_path: pathlib.Path) -> Callable[..., Result]:
    return Wharf(tmp_path / "docker-config")
