"""Runs deploy/compose.yaml's topology as local processes, as close to `docker compose up` as
a machine without a container engine gets.

Each Wharf service runs the program its Dockerfile target runs (CMD), with that target's
ENV and the compose service's environment, interpolated as compose would. What a
container engine would provide is translated, and only that:

- a service name and container port (``metadata:50052``, ``redis://redis:6379/0``)
  becomes the 127.0.0.1 address of that service's process;
- ``dns:///NAME:PORT`` becomes the list of every replica's address, which is what
  compose's DNS answers for a scaled service;
- a container's own listen address (``0.0.0.0:50051``, ``127.0.0.1:50051`` in a
  healthcheck, ``WHARF_PORT``) becomes a free port of its process;
- an absolute path inside a mounted volume becomes that volume's directory; any other
  absolute path lies in a scratch directory standing for the container's filesystem.

Healthchecks run the compose ``healthcheck.test`` command with the same translation;
``depends_on`` decides the start order. Redis runs with the compose command's arguments;
the S3 server (MinIO, as in compose) is the test's; the secrets init runs its real
script; the bucket init is done with the S3 API, as its ``mc mb`` would. A service whose
command is a shell loop (the gc profile) runs one turn of its real script.
"""

from __future__ import annotations

import contextlib
import json
import os
import pathlib
import re
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from typing import Any

from services.stack.processes import free_port, redis_binary, redis_ready
from tests.deploy.deployfiles import (
    ROOT,
    compose_model,
    console_scripts,
    dockerfile_stages,
    environment,
    listen_ports,
    mounts,
    program_argv,
    wharf_services,
)
from tests.deploy.rehearse import LoopTurn, run_loop_once

START_TIMEOUT = 60.0
_ADDRESS = re.compile(r"(?P<host>[A-Za-z0-9][A-Za-z0-9._-]*):(?P<port>\d+)")


class Replica:
    """One container: its ports, its filesystem, its process and its log."""

    def __init__(self, service: str, index: int, ports: set[int], workdir: pathlib.Path) -> None:
        self.service = service
        self.index = index
        self.name = f"{service}-{index + 1}"
        self.ports = {port: free_port() for port in sorted(ports)}
        self.root = workdir / "containers" / self.name
        self.root.mkdir(parents=True, exist_ok=True)
        self.log = workdir / "logs" / f"{self.name}.log"
        self.log.parent.mkdir(parents=True, exist_ok=True)
        self.process: subprocess.Popen[bytes] | None = None

    def address(self, port: int) -> str:
        return f"127.0.0.1:{self.ports[port]}"

    def log_lines(self) -> list[dict[str, Any]]:
        lines = []
        for raw in self.log.read_text(errors="replace").splitlines():
            with contextlib.suppress(ValueError):
                lines.append(json.loads(raw))
        return lines

    def log_tail(self, count: int = 30) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-count:])


class Topology:
    def __init__(self, workdir: pathlib.Path, environ: Mapping[str, str], scale: Mapping[str, int]) -> None:
        self.workdir = workdir
        self.model = compose_model(environ)
        self.services: dict[str, Any] = self.model["services"]
        self.targets = wharf_services(self.model)
        self.stages = dockerfile_stages()[1]
        self.volumes = {name: workdir / "volumes" / name for name in self.model.get("volumes", {})}
        for path in self.volumes.values():
            path.mkdir(parents=True, exist_ok=True)
        # Addresses of what the test runs itself (Redis, the S3 server): service -> port -> address.
        self.external: dict[str, dict[int, str]] = {}
        self.replicas: dict[str, list[Replica]] = {}
        for name in self.targets:
            ports = listen_ports(self.env_of(name))
            self.replicas[name] = [Replica(name, i, ports, workdir) for i in range(scale.get(name, 1))]
        self._infra: list[subprocess.Popen[bytes]] = []
        self._started: set[str] = set()

    # -- what compose would compute ----------------------------------------------------------

    def env_of(self, service: str) -> dict[str, str]:
        """Image ENV (Wharf's settings only) overlaid with the compose environment."""
        image = {k: v for k, v in self.stages[self.targets[service]].env.items() if k.startswith("WHARF_")}
        return {**image, **environment(self.services[service])}

    def addresses(self, service: str, port: int) -> list[str]:
        if service in self.external:
            return [self.external[service][port]]
        return [replica.address(port) for replica in self.replicas[service]]

    def translate(self, value: str, replica: Replica | None, service: str) -> str:
        """A value as seen inside a container -> the same value for a local process."""
        if value.startswith("dns:///"):
            host, port = value.removeprefix("dns:///").rsplit(":", 1)
            return ",".join(self.addresses(host, int(port)))
        if value.startswith("/"):
            return str(self.host_path(service, replica, value))
        if value == "0.0.0.0":
            return "127.0.0.1"

        def address(match: re.Match[str]) -> str:
            host, port = match.group("host"), int(match.group("port"))
            if host in ("0.0.0.0", "127.0.0.1", "localhost") and replica is not None and port in replica.ports:
                return replica.address(port)
            if host in self.services:
                found = self.addresses(host, port)
                assert len(found) == 1, f"{value}: {host} has {len(found)} replicas; use dns:///{host}:{port}"
                return found[0]
            return match.group(0)
        return _ADDRESS.sub(address, value)

    def host_path(self, service: str, replica: Replica | None, path: str) -> pathlib.Path:
        for mount in sorted(mounts(self.services[service]), key=lambda m: -len(m.target)):
            if path == mount.target or path.startswith(mount.target.rstrip("/") + "/"):
                return self.volumes[mount.source] / path[len(mount.target):].lstrip("/")
        assert replica is not None, f"{service}: {path} is not in a volume"
        return replica.root / path.lstrip("/")

    def process_env(self, replica: Replica) -> dict[str, str]:
        base = {k: v for k, v in os.environ.items() if not k.startswith("WHARF_")}
        env = {key: self.translate(value, replica, replica.service)
               for key, value in self.env_of(replica.service).items()}
        if "WHARF_PORT" in env:
            env["WHARF_PORT"] = str(replica.ports[int(env["WHARF_PORT"])])
        return {**base, "PYTHONUNBUFFERED": "1", **env}

    # -- starting ----------------------------------------------------------------------------

    def start(self, service: str, handlers: Mapping[str, Callable[[], None]]) -> None:
        """Starts a service after its dependencies, honouring each depends_on condition."""
        if service in self._started:
            return
        for dependency, rule in (self.services[service].get("depends_on") or {}).items():
            self.start(dependency, handlers)
            assert rule["condition"] in {"service_healthy", "service_completed_successfully"}, (service, rule)
        if service in handlers:
            handlers[service]()
        else:
            for replica in self.replicas[service]:
                self._spawn(replica)
            for replica in self.replicas[service]:
                self._wait_healthy(replica)
        self._started.add(service)

    def _spawn(self, replica: Replica) -> None:
        [program] = self.stages[self.targets[replica.service]].cmd
        with open(replica.log, "ab") as log:
            replica.process = subprocess.Popen(program_argv(program), cwd=ROOT, env=self.process_env(replica),
                                               stdout=log, stderr=subprocess.STDOUT, start_new_session=True)

    def healthcheck_argv(self, replica: Replica) -> list[str]:
        kind, program, *args = self.services[replica.service]["healthcheck"]["test"]
        assert kind == "CMD", self.services[replica.service]["healthcheck"]
        return program_argv(program, *[self.translate(a, replica, replica.service) for a in args])

    def _wait_healthy(self, replica: Replica) -> None:
        argv = self.healthcheck_argv(replica)
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            assert replica.process is not None
            if replica.process.poll() is not None:
                raise RuntimeError(f"{replica.name} exited with {replica.process.returncode}:\n{replica.log_tail()}")
            if subprocess.run(argv, cwd=ROOT, capture_output=True, timeout=30).returncode == 0:
                return
            time.sleep(0.2)
        raise RuntimeError(f"{replica.name} not healthy in {START_TIMEOUT}s:\n{replica.log_tail()}")

    def exec(self, service: str, argv: list[str], stdin: str = "",
             env: Mapping[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        """`docker compose exec [-e ...] SERVICE ...` on the first replica: its environment, its addresses."""
        replica = self.replicas[service][0]
        program, *args = argv
        translated = [self.translate(a, replica, service) for a in args]
        return subprocess.run(program_argv(program, *translated), cwd=ROOT,
                              env={**self.process_env(replica), **(env or {})}, input=stdin, capture_output=True,
                              text=True, timeout=60)

    def run_loop_once(self, service: str) -> LoopTurn:
        """One turn of a service whose command is a shell loop (the gc profile's): its real script
        with the service's environment, as its processes get it, and Wharf's programs from this
        checkout; its sleep ends the loop (rehearse.run_loop_once)."""
        replica = self.replicas[service][0]
        definition = self.services[service]
        programs = {name: f'exec {shlex.join(program_argv(name))} "$@"' for name in console_scripts()}
        return run_loop_once([*definition["entrypoint"], *definition["command"]], replica.root / "loop", programs,
                             self.process_env(replica), cwd=ROOT)

    def read_file(self, service: str, path: str) -> str:
        """`docker compose exec SERVICE cat PATH`."""
        replica = self.replicas[service][0] if service in self.replicas else None
        return self.host_path(service, replica, path).read_text()

    # -- what the test runs instead of third-party images --------------------------------------

    def start_redis(self) -> None:
        """Redis with the compose command's persistence arguments, its data in the redis volume."""
        service = self.services["redis"]
        program, *args = service["command"]
        assert program == "redis-server"
        [data] = [m for m in mounts(service) if m.target == "/data"]
        port = free_port()
        process = subprocess.Popen([redis_binary(), *args, "--bind", "127.0.0.1", "--port", str(port),
                                    "--dir", str(self.volumes[data.source]), "--daemonize", "no"],
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        self._infra.append(process)
        deadline = time.monotonic() + START_TIMEOUT
        while not redis_ready("127.0.0.1", port):
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("redis-server did not start")
            time.sleep(0.05)
        self.external["redis"] = {6379: f"127.0.0.1:{port}"}

    def run_init_secrets(self) -> None:
        """The init container's own script, its volume paths pointed at the volume directories."""
        service = self.services["init-secrets"]
        entrypoint, script = service["entrypoint"], service["command"][0]
        for mount in mounts(service):
            script = script.replace(mount.target, str(self.volumes[mount.source]))
        tools = self.workdir / "init-secrets-bin"
        tools.mkdir(exist_ok=True)
        (tools / "python").symlink_to(sys.executable)
        if os.geteuid() != 0:  # chown needs root, as it has in the container
            (tools / "chown").write_text("#!/bin/sh\nexit 0\n")
            (tools / "chown").chmod(0o755)
        env = {**environment(service), "PATH": f"{tools}:{os.environ['PATH']}"}
        result = subprocess.run([*entrypoint, script], env=env, capture_output=True, text=True, timeout=60)
        assert result.returncode == 0, f"init-secrets failed:\n{result.stderr}"

    def stop(self) -> None:
        processes = [r.process for rs in reversed(self.replicas.values()) for r in rs if r.process]
        for process in [*processes, *reversed(self._infra)]:
            if process.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGTERM)
        for process in [*processes, *self._infra]:
            try:
                process.wait(20)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
                process.wait()
        self.print_trouble()

    def print_trouble(self) -> None:
        """Every service's warnings, errors, 5xx answers and non-JSON lines (tracebacks), on stdout:
        pytest shows them with a failure, so a rare one can be diagnosed from the CI log alone."""
        for replicas in self.replicas.values():
            for replica in replicas:
                if not replica.log.exists():
                    continue
                for raw in replica.log.read_text(errors="replace").splitlines():
                    try:
                        line = json.loads(raw)
                        level, status = str(line.get("level", "")), line.get("status")
                    except (ValueError, AttributeError):
                        level, status = "raw", None
                    if level.lower() not in ("info", "debug") or (isinstance(status, int) and status >= 500):
                        print(f"[{replica.name}] {raw}")
