"""The services started one by one, for topologies the stack runner does not make:
several gateways, several blob store replicas, a backend that goes away and comes back."""

from __future__ import annotations

import os
import pathlib
import signal
import time
from typing import IO

from services.common.health import grpc_serving, http_ok
from services.common.internal_auth import TOKEN_VARIABLE, ensure_token_file
from services.stack.processes import (
    Child,
    free_port,
    python_module,
    start_redis,
    wait_until,
)


class Topology:
    def __init__(self, directory: pathlib.Path, env: dict[str, str] | None = None) -> None:
        self.directory = directory
        token_file = ensure_token_file(directory / "internal-token")
        self.env = {**os.environ, "WHARF_DATA_DIR": str(directory), "WHARF_ACCESS_LOG": "false",
                    TOKEN_VARIABLE: str(token_file), **(env or {})}
        self.children: list[Child] = []
        self._logs: list[IO[bytes]] = []

    def _start(self, name: str, argv: list[str], env: dict[str, str], address: str = "") -> Child:
        log = open(self.directory / f"{name}.log", "ab")  # noqa: SIM115 - closed in stop()
        self._logs.append(log)
        child = Child(name, argv, env, address=address, output=log)
        self.children.append(child)
        return child

    def redis(self, port: int | None = None) -> tuple[Child, str]:
        log = open(self.directory / "redis.log", "ab")  # noqa: SIM115 - closed in stop()
        self._logs.append(log)
        child, url = start_redis(self.directory / "redis", self.env, _deadline(), port=port, output=log,
                                 appendfsync="everysec")
        self.children.append(child)
        return child, url

    def grpc_service(self, module: str, name: str, listen_var: str, env: dict[str, str]) -> Child:
        address = f"127.0.0.1:{free_port()}"
        child = self._start(name, python_module(module), {**self.env, **env, listen_var: address}, address)
        wait_until(lambda: grpc_serving(address), child, _deadline(), name)
        return child

    def metadata(self, redis_url: str) -> Child:
        return self.grpc_service("services.metadata", "metadata", "WHARF_METADATA_LISTEN",
                                 {"WHARF_REDIS_URL": redis_url})

    def blobstore(self, index: int, env: dict[str, str]) -> Child:
        return self.grpc_service("services.blobstore", f"blobstore-{index}", "WHARF_BLOBSTORE_LISTEN", env)

    def gateway(self, index: int, blobstores: list[Child], metadata: Child, env: dict[str, str] | None = None) -> str:
        port = free_port()
        gateway_env = {**self.env, **(env or {}), "WHARF_PORT": str(port), "WHARF_METADATA_ADDR": metadata.address,
                       "WHARF_BLOBSTORE_ADDR": ",".join(b.address for b in blobstores)}
        child = self._start(f"gateway-{index}", python_module("services.api"), gateway_env)
        url = f"http://127.0.0.1:{port}"
        wait_until(lambda: http_ok(url + "/v2/"), child, _deadline(), child.name)
        return url

    def kill(self, child: Child) -> None:
        os.killpg(child.process.pid, signal.SIGKILL)
        child.process.wait()

    def stop(self) -> None:
        for child in reversed(self.children):
            child.stop()
        for log in self._logs:
            log.close()


def _deadline() -> float:
    return time.monotonic() + 60
