"""A real Redis server per test session, on a free port, with AOF on."""

from __future__ import annotations

import pathlib
import subprocess
import time
from collections.abc import Iterator

import pytest
import redis

from services.stack.processes import free_port, redis_binary, redis_ready


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    directory: pathlib.Path = tmp_path_factory.mktemp("redis")
    port = free_port()
    process = subprocess.Popen([redis_binary(), "--bind", "127.0.0.1", "--port", str(port), "--dir", str(directory),
                                "--appendonly", "yes", "--save", "", "--daemonize", "no"],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 20
    while not redis_ready("127.0.0.1", port):
        if time.monotonic() > deadline or process.poll() is not None:
            process.kill()
            raise RuntimeError("redis-server did not start")
        time.sleep(0.05)
    yield f"redis://127.0.0.1:{port}/0"
    process.terminate()
    process.wait(10)


@pytest.fixture()
def redis_client(redis_url: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_url)
    client.flushdb()
    yield client
    client.close()
