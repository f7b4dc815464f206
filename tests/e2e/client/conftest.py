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
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from services.stack.processes import free_port, http_ok
from tests.support.stack import RunningStack
from tests.support.tools import require_tool

DISTRIBUTION_CONFIG = """\
version: 0.1
log:
  level: warn
storage:
  filesystem:
    rootdirectory: {root}
  delete:
    enabled: true
http:
  addr: 127.0.0.1:{port}
"""


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
    workdir = tmp_path_factory.mktemp("distribution")
    port = free_port()
    config = workdir / "config.yml"
    config.write_text(DISTRIBUTION_CONFIG.format(root=workdir / "data", port=port))
    with open(workdir / "registry.log", "ab") as log:
        process = subprocess.Popen([binary, "serve", str(config)], stdout=log, stderr=subprocess.STDOUT,
                                   start_new_session=True)
    try:
        deadline = time.monotonic() + 30
        while not http_ok(f"http://127.0.0.1:{port}/v2/"):
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"docker-registry did not start: {(workdir / 'registry.log').read_text()[-2000:]}")
            time.sleep(0.1)
        yield Registry("distribution", f"127.0.0.1:{port}")
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.fixture(scope="session")
def wharf_stack(start_stack: Callable[..., RunningStack]) -> RunningStack:
    """A Wharf of its own (filesystem blobs): ``tests/e2e`` runs its shared stack over several backends."""
    return start_stack()


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
