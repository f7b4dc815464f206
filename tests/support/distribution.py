"""CNCF Distribution (Debian package docker-registry) on a free loopback port, for interop
tests and benchmarks that compare Wharf with it."""

from __future__ import annotations

import contextlib
import pathlib
import subprocess
import time
from collections.abc import Iterator

from services.common.health import http_ok
from services.stack.processes import free_port

FILESYSTEM_CONFIG = """\
version: 0.1
log:
  level: {level}
storage:
  filesystem:
    rootdirectory: {root}
  delete:
    enabled: true
http:
  addr: 127.0.0.1:{port}
"""


@contextlib.contextmanager
def running_distribution(workdir: pathlib.Path, binary: str, level: str = "warn",
                         port: int | None = None) -> Iterator[str]:
    """Yields ``127.0.0.1:<port>`` of a docker-registry with filesystem storage under ``workdir``
    (the same ``workdir`` and ``port`` again: the same registry back after a stop)."""
    port = port or free_port()
    workdir.mkdir(parents=True, exist_ok=True)
    config = workdir / "config.yml"
    config.write_text(FILESYSTEM_CONFIG.format(level=level, root=workdir / "data", port=port))
    log_path = workdir / "registry.log"
    with open(log_path, "ab") as log:
        process = subprocess.Popen([binary, "serve", str(config)], stdout=log, stderr=subprocess.STDOUT,
                                   start_new_session=True)
    try:
        deadline = time.monotonic() + 30
        while not http_ok(f"http://127.0.0.1:{port}/v2/"):
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"docker-registry did not start: {log_path.read_text()[-2000:]}")
            time.sleep(0.1)
        yield f"127.0.0.1:{port}"
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
