"""The local stack runner (`make run`) against an operator's Redis that takes a password: the Redis
URL (password included) reaches only the services that talk to Redis (hostile review of the
operations surfaces, docs/security.md)."""

from __future__ import annotations

import pathlib
import subprocess
from collections.abc import Callable, Iterator

import pytest

from services.stack.processes import free_port, redis_binary, wait_until
from tests.security.conftest import service_env
from tests.support.stack import RunningStack

REDIS_PASSWORD = "redis-pw-" + "q7" * 12


def _answers(port: int) -> bool:
    import socket

    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(64).startswith(b"-NOAUTH")
    except OSError:
        return False


@pytest.fixture(scope="module")
def protected_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A Redis that refuses clients without ``REDIS_PASSWORD``; its URL carries the password."""
    import time

    from services.stack.processes import Child

    directory = tmp_path_factory.mktemp("redis-pw")
    port = free_port()
    child = Child("redis", [redis_binary(), "--bind", "127.0.0.1", "--port", str(port), "--dir", str(directory),
                            "--save", "", "--appendonly", "no", "--requirepass", REDIS_PASSWORD,
                            "--logfile", str(directory / "redis.log")], {})
    wait_until(lambda: _answers(port), child, time.monotonic() + 20, "redis")
    yield f"redis://:{REDIS_PASSWORD}@127.0.0.1:{port}/0"
    child.stop()


@pytest.fixture(scope="module")
def envs(start_stack: Callable[..., RunningStack], protected_redis: str) -> dict[str, dict[str, str]]:
    stack = start_stack(env={"WHARF_REDIS_URL": protected_redis, "WHARF_AUTH": "token",
                             "WHARF_ADMIN_PASSWORD": "admin-pw-" + "z" * 24})
    found = service_env(stack)
    assert set(found) == {"metadata", "blobstore", "auth", "gateway"}, found.keys()
    return found


def test_the_redis_password_reaches_only_the_services_that_use_redis(envs: dict[str, dict[str, str]]) -> None:
    assert REDIS_PASSWORD in envs["metadata"]["WHARF_REDIS_URL"]
    assert REDIS_PASSWORD in envs["auth"]["WHARF_AUTH_REDIS_URL"]
    for role in ("gateway", "blobstore"):
        leaked = sorted(name for name, value in envs[role].items() if REDIS_PASSWORD in value)
        assert leaked == [], f"the {role} holds Redis's password in {leaked}"
    # The auth service reads its own variable; the metadata service's is not its business.
    assert "WHARF_REDIS_URL" not in envs["auth"]


def test_nor_is_it_on_any_command_line(envs: dict[str, dict[str, str]]) -> None:
    listing = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True, check=True).stdout
    assert REDIS_PASSWORD not in listing


def test_nor_in_the_runners_records(envs: dict[str, dict[str, str]]) -> None:
    data_dir = pathlib.Path(envs["gateway"]["WHARF_DATA_DIR"])
    for path in data_dir.rglob("*"):
        if path.is_file() and path.stat().st_size < 1_000_000:
            assert REDIS_PASSWORD.encode() not in path.read_bytes(), path
