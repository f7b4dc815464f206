"""Starts the real Wharf stack (Redis + services + gateway) as processes on free ports."""

from __future__ import annotations

import os
import pathlib
import signal
import subprocess
import sys
import time
import urllib.request

from services.common.health import http_ok
from services.stack.processes import free_port


class RunningStack:
    def __init__(self, data_dir: pathlib.Path, env: dict[str, str] | None = None, port: int | None = None,
                 log_path: pathlib.Path | None = None) -> None:
        self.data_dir = data_dir
        self.port = port or free_port()
        self._port_chosen = port is None  # ours to change should another process take it first
        self.host = f"127.0.0.1:{self.port}"
        self.extra_env = dict(env or {})
        self.url = f"{'https' if self.extra_env.get('WHARF_TLS_CERT_FILE') else 'http'}://{self.host}"
        self.log_path = log_path or data_dir.parent / f"stack-{self.port}.log"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 60.0) -> RunningStack:
        environ = {**os.environ, "WHARF_PORT": str(self.port), "WHARF_DATA_DIR": str(self.data_dir),
                   "WHARF_ACCESS_LOG": "false", **self.extra_env}
        self._log = open(self.log_path, "ab")  # noqa: SIM115 - closed in stop()
        self.process = subprocess.Popen([sys.executable, "-m", "services.stack"], env=environ,
                                        stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                if "already in use" in self.log_tail() and self._port_chosen:
                    # The free port was taken between its choice and the gateway's bind (another
                    # process's ephemeral port): the same stack on another free port.
                    self._log.close()
                    self.port = free_port()
                    self.host = f"127.0.0.1:{self.port}"
                    self.url = f"{self.url.split('://')[0]}://{self.host}"
                    return self.start(max(deadline - time.monotonic(), 5.0))
                raise RuntimeError(f"stack exited early; log: {self.log_path}\n{self.log_tail()}")
            if http_ok(f"{self.url}/v2/"):
                return self
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"stack not ready in {timeout}s; log: {self.log_path}\n{self.log_tail()}")

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def stop(self, timeout: float = 30.0) -> None:
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        self.process = None
        self._log.close()

    def admin(self, password: str, *args: str, stdin: str = "") -> str:
        """Runs `wharf-admin <args>` against this stack as `admin` (it finds the stack through its
        data directory, as next to `make run`); fails the test when the command fails."""
        env = dict(os.environ, WHARF_ADMIN_PASSWORD=password, WHARF_DATA_DIR=str(self.data_dir))
        result = subprocess.run([sys.executable, "-m", "services.auth.admin_cli", *args], input=stdin, env=env,
                                capture_output=True, text=True, timeout=60)
        assert result.returncode == 0, result.stderr
        return result.stdout

    def maintenance(self, *args: str, cwd: pathlib.Path | None = None) -> subprocess.CompletedProcess[str]:
        """Runs `wharf-admin check|export|import <args>` beside this stack as an operator would beside
        `make run`: only WHARF_DATA_DIR tells it where the stack is (no address, URL or token
        variable); the caller judges the exit status."""
        told = ("WHARF_REDIS_URL", "WHARF_METADATA_ADDR", "WHARF_BLOBSTORE_ADDR", "WHARF_INTERNAL_TOKEN_FILE")
        env = {k: v for k, v in os.environ.items() if k not in told}
        env["WHARF_DATA_DIR"] = str(self.data_dir)
        return subprocess.run([sys.executable, "-m", "services.auth.admin_cli", *args], env=env, cwd=cwd,
                              capture_output=True, text=True, timeout=300)

    def get(self, path: str) -> bytes:
        with urllib.request.urlopen(self.url + path, timeout=10) as response:
            return bytes(response.read())
