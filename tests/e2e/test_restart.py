"""`make run`, push, SIGTERM, `make run` again, pull: data must survive and nothing may be left running.

This goes through the real command a developer types, so it also covers the
Makefile, the console script and the stack's signal handling; the push and pull
are plain HTTP (urllib), so the test needs no outside client.
"""

from __future__ import annotations

import contextlib
import os
import pathlib
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from email.message import Message

import pytest

from services.common.health import http_ok
from services.stack.processes import free_port
from tests.e2e.images import OCI_INDEX, OCI_MANIFEST, BuiltImage, assert_same_objects, write_oci_index_layout
from tests.support.tools import ROOT

pytestmark = [pytest.mark.e2e,
              pytest.mark.skipif(not pathlib.Path("/proc/self/stat").exists(), reason="walks /proc (Linux)")]

READY_TIMEOUT = 300.0  # make may (re)install the venv and regenerate the gRPC code first
STOP_TIMEOUT = 60.0
Process = tuple[int, int]  # (pid, start time): a pid alone may be reused


class MakeRun:
    """`make run` in its own process group, with its output in a log file."""

    def __init__(self, port: int, data_dir: pathlib.Path, log_path: pathlib.Path) -> None:
        self.url = f"http://127.0.0.1:{port}"
        self.log_path = log_path
        # Drop a surrounding make's settings (`make test`), so this is the command a user types.
        environ = {k: v for k, v in os.environ.items() if k not in {"MAKEFLAGS", "MFLAGS", "MAKELEVEL"}}
        environ.update(WHARF_PORT=str(port), WHARF_DATA_DIR=str(data_dir))
        with open(log_path, "ab") as log:
            self.process = subprocess.Popen(["make", "run"], cwd=ROOT, env=environ, stdout=log,
                                            stderr=subprocess.STDOUT, start_new_session=True)

    def wait_ready(self) -> None:
        deadline = time.monotonic() + READY_TIMEOUT
        while not http_ok(f"{self.url}/v2/"):
            assert self.process.poll() is None, f"make run exited with {self.process.returncode}:\n{self.log()}"
            assert time.monotonic() < deadline, f"registry not ready in {READY_TIMEOUT}s:\n{self.log()}"
            time.sleep(0.2)

    def terminate(self) -> int:
        """SIGTERM to the process group, as a terminal's Ctrl-C or a supervisor would send."""
        os.killpg(self.process.pid, signal.SIGTERM)
        try:
            return self.process.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()
            raise AssertionError(f"make run did not stop within {STOP_TIMEOUT}s of SIGTERM:\n{self.log()}") from None

    def log(self, lines: int = 60) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])


@pytest.fixture()
def make_runs() -> Iterator[list[MakeRun]]:
    """Every `make run` a test starts; whatever is still running at the end is stopped."""
    runs: list[MakeRun] = []
    yield runs
    for run in runs:
        if run.process.poll() is None:
            with contextlib.suppress(AssertionError):  # the test already failed; just stop it
                run.terminate()


def _stat(pid: int) -> tuple[int, int, str] | None:
    """(parent pid, start time, command name) of a running process, from /proc; None once it exited."""
    try:
        text = pathlib.Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    name = text[text.index("(") + 1:text.rindex(")")]
    state, ppid, *rest = text[text.rindex(")") + 2:].split()
    if state in {"Z", "X"}:  # exited, only waiting to be reaped
        return None
    return int(ppid), int(rest[17]), name  # starttime is field 22 of proc(5)


def descendants(root: int) -> dict[Process, str]:
    """Every live process below root (children start their own sessions, so the group would miss them)."""
    table = {pid: info for pid in (int(p.name) for p in pathlib.Path("/proc").iterdir() if p.name.isdigit())
             if (info := _stat(pid))}
    found: dict[Process, str] = {}
    parents = {root}
    while parents:
        children = {pid for pid, (ppid, _, _) in table.items() if ppid in parents and (pid, table[pid][1]) not in found}
        found.update({(pid, table[pid][1]): table[pid][2] for pid in children})
        parents = children
    return found


def still_running(processes: dict[Process, str]) -> dict[Process, str]:
    return {proc: name for proc, name in processes.items() if (_stat(proc[0]) or (0, -1, ""))[1] == proc[1]}


def port_open(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(1)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def request(method: str, url: str, data: bytes | None = None,
            headers: dict[str, str] | None = None) -> tuple[int, Message, bytes]:
    """(status, headers, body) for any status; the headers look up names case-insensitively."""
    req = urllib.request.Request(url, data=data, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=30) as response:
            return response.status, response.headers, response.read()
    except urllib.error.HTTPError as err:
        return err.code, err.headers, err.read()


def push(base: str, repository: str, image: BuiltImage) -> None:
    """Blobs by POST then PUT to the session, child manifests by digest, the index by tag."""
    for digest, data in image.blobs.items():
        status, headers, _ = request("POST", f"{base}/v2/{repository}/blobs/uploads/", b"")
        assert status == 202, status
        location = urllib.parse.urljoin(base, headers["Location"])
        separator = "&" if "?" in location else "?"
        status, _, body = request("PUT", f"{location}{separator}digest={digest}", data,
                                  {"Content-Type": "application/octet-stream"})
        assert status == 201, body
    for digest in image.manifests.values():
        status, _, body = request("PUT", f"{base}/v2/{repository}/manifests/{digest}", image.objects[digest],
                                  {"Content-Type": OCI_MANIFEST})
        assert status == 201, body
    status, headers, body = request("PUT", f"{base}/v2/{repository}/manifests/{image.tag}", image.root,
                                    {"Content-Type": image.media_type})
    assert status == 201 and headers["Docker-Content-Digest"] == image.digest, body


def pull(base: str, repository: str, image: BuiltImage) -> dict[str, bytes]:
    """Everything the tag reaches, keyed by the digest the registry announced."""
    accept = {"Accept": f"{OCI_INDEX}, {OCI_MANIFEST}"}
    pulled: dict[str, bytes] = {}
    for reference in [image.tag, *image.manifests.values()]:
        status, headers, body = request("GET", f"{base}/v2/{repository}/manifests/{reference}", headers=accept)
        assert status == 200, body
        pulled[headers["Docker-Content-Digest"]] = body
    for digest in image.blobs:
        status, headers, body = request("GET", f"{base}/v2/{repository}/blobs/{digest}")
        assert status == 200 and headers["Docker-Content-Digest"] == digest, status
        pulled[digest] = body
    return pulled


def test_data_survives_sigterm_and_make_run_again(make_runs: list[MakeRun], tmp_path: pathlib.Path) -> None:
    port, data_dir = free_port(), (tmp_path / "data").resolve()
    image = write_oci_index_layout(tmp_path / "image", tag="restart")
    repository = "e2e/restart/multi"

    first = MakeRun(port, data_dir, tmp_path / "make-run-1.log")
    make_runs.append(first)
    first.wait_ready()
    push(first.url, repository, image)
    assert_same_objects(pull(first.url, repository, image), image.objects)
    started = descendants(first.process.pid)
    assert "redis-server" in started.values(), f"the process walk missed the services: {started}"

    status = first.terminate()
    assert status in (0, -signal.SIGTERM), f"make run exited with {status}:\n{first.log()}"
    assert not still_running(started), f"processes left running after make exited: {still_running(started)}"
    assert not port_open(port), "the registry port still accepts connections"

    aof_files = [p for p in (data_dir / "redis").rglob("appendonly.aof*") if p.name.endswith(".aof")]
    assert aof_files and sum(p.stat().st_size for p in aof_files) > 0, f"no Redis AOF under {data_dir / 'redis'}"

    second = MakeRun(port, data_dir, tmp_path / "make-run-2.log")
    make_runs.append(second)
    second.wait_ready()
    assert_same_objects(pull(second.url, repository, image), image.objects)
