"""Runs pieces of deploy/ outside containers: one turn of a compose service's shell loop, and
Redis with the arguments a deployment gives it.

What a container would provide is stood in for, and only that: the loop's programs come first
on PATH (the test says what they do), its `/tmp` is a scratch directory, and its `sleep` records
what it was asked and then sends the shell the TERM that `docker compose stop` would.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import pathlib
import signal
import subprocess
import time
from collections.abc import Mapping

import redis

from services.stack.processes import free_port, redis_binary, redis_ready


@dataclasses.dataclass(frozen=True)
class LoopTurn:
    returncode: int
    stdout: str
    stderr: str
    slept: list[str]      # the arguments the loop gave sleep
    tmp: pathlib.Path     # the directory standing for the container's /tmp

    def container_path(self, path: str) -> pathlib.Path:
        """Where a path of the container's /tmp is here."""
        assert path.startswith("/tmp/"), path
        return self.tmp / path.removeprefix("/tmp/")


def run_loop_once(argv: list[str], workdir: pathlib.Path, programs: Mapping[str, str],
                  env: Mapping[str, str] | None = None, cwd: pathlib.Path | None = None,
                  timeout: float = 120) -> LoopTurn:
    """Runs ``argv`` (a shell and its script, ``sh -c SCRIPT``) until it first calls sleep.

    ``programs`` maps each program the script runs to the shell code standing for it."""
    tmp, bin_dir = workdir / "tmp", workdir / "bin"
    tmp.mkdir(parents=True, exist_ok=True)
    bin_dir.mkdir(parents=True, exist_ok=True)
    slept = workdir / "slept"
    stand_ins = {**programs, "sleep": f"printf '%s\\n' \"$@\" > '{slept}'\nkill -TERM $PPID"}
    for name, code in stand_ins.items():
        (bin_dir / name).write_text(f"#!/bin/sh\n{code}\n")
        (bin_dir / name).chmod(0o755)
    argv = [arg.replace("/tmp/", f"{tmp}/") for arg in argv]
    environ = {**os.environ, **(env or {}), "PATH": f"{bin_dir}:{os.environ['PATH']}"}
    result = subprocess.run(argv, env=environ, cwd=cwd, capture_output=True, text=True, timeout=timeout)
    asked = slept.read_text().splitlines() if slept.exists() else []
    return LoopTurn(result.returncode, result.stdout, result.stderr, asked, tmp)


@dataclasses.dataclass(frozen=True)
class Filled:
    policy: str           # maxmemory-policy as Redis runs it
    written: int          # keys written before Redis refused a write
    kept: int             # keys still there afterwards
    refusal: str          # the error of the refused write


def fill_redis(args: list[str], workdir: pathlib.Path, maxmemory: str = "4mb", value_size: int = 16384,
               limit: int = 10_000) -> Filled:
    """Starts redis-server with a deployment's ``args`` (its maxmemory lowered to ``maxmemory``,
    its data in ``workdir``), writes distinct keys until Redis refuses one or ``limit`` are written,
    and says what happened."""
    if "--dir" in args:  # the deployment's data directory (a volume) is ``workdir`` here
        at = args.index("--dir")
        args = args[:at] + args[at + 2:]
    port = free_port()
    process = subprocess.Popen([redis_binary(), *args, "--maxmemory", maxmemory, "--dir", str(workdir),
                                "--bind", "127.0.0.1", "--port", str(port), "--daemonize", "no"],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + 30
        while not redis_ready("127.0.0.1", port):
            assert process.poll() is None and time.monotonic() < deadline, f"redis-server {args} did not start"
            time.sleep(0.05)
        with redis.Redis(host="127.0.0.1", port=port, socket_timeout=10) as client:
            policy = str(client.config_get("maxmemory-policy")["maxmemory-policy"])
            written, refusal = 0, ""
            while written < limit:
                try:
                    client.set(f"key:{written}", b"x" * value_size)
                except redis.ResponseError as exc:
                    refusal = f"{type(exc).__name__}: {exc}"
                    break
                written += 1
            kept = int(client.dbsize())
        return Filled(policy, written, kept, refusal)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
