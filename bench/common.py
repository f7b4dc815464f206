"""What the benchmarks share: the blob payload, a plain HTTP registry client, wrk, the servers, tables.

The client must never be the bottleneck: bytes come from one 16 MiB block in memory, go out
with ``sendall`` over keep-alive http.client connections, and are read back with ``readinto``.
Servers are stopped (leftovers killed) when their ``with`` block ends, also on errors and SIGTERM.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import http.client
import json
import os
import re
import shutil
import signal
import struct
import subprocess
import sys
import time
import urllib.parse
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from proctree import kill_leftovers, snapshot  # noqa: E402

from services.common.health import http_ok  # noqa: E402
from services.stack.processes import free_port  # noqa: E402
from tests.support.stack import RunningStack  # noqa: E402

MB = 1_000_000
MIB = 1024 * 1024
CHUNK = 16 * MIB
READ_PIECE = 4 * MIB
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
RSS_LIMIT_MB = 150.0
REDIRECTS = (301, 302, 303, 307, 308)


class BenchError(RuntimeError):
    pass


def exit_on_sigterm() -> None:
    """SIGTERM raises SystemExit, so every ``with`` block unwinds: servers stop, temp dirs go."""
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))


@contextlib.contextmanager
def signals_held() -> Iterator[Callable[[], None]]:
    """Holds SIGTERM and SIGINT back until ``release()``: start a server inside, call ``release()``
    first thing in the ``try`` whose ``finally`` stops it, and no signal can orphan it mid-start.

    The signals are caught and re-raised, not blocked: a blocked mask would be inherited by the
    server's processes, which then could not be stopped with SIGTERM.
    """
    pending: list[int] = []
    previous = {sig: signal.signal(sig, lambda number, _: pending.append(number))
                for sig in (signal.SIGTERM, signal.SIGINT)}

    def release() -> None:
        if previous:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            previous.clear()
            for number in pending:
                signal.raise_signal(number)

    try:
        yield release
    finally:
        release()


# -- the blob ---------------------------------------------------------------------------------

class Payload:
    """A ``size``-byte blob made of one shared random block, each chunk stamped (seed, index)."""

    _block = bytearray()

    def __init__(self, size: int, seed: int) -> None:
        if not Payload._block:
            Payload._block = bytearray(os.urandom(CHUNK))
        self.size, self.seed = size, seed
        hasher = hashlib.sha256()
        for chunk in self.chunks():
            hasher.update(chunk)
        self.digest = f"sha256:{hasher.hexdigest()}"

    def chunks(self) -> Iterator[memoryview]:
        """Views over one buffer: consume each before asking for the next."""
        for index, start in enumerate(range(0, self.size, CHUNK)):
            struct.pack_into(">QQ", self._block, 0, self.seed, index)
            yield memoryview(self._block)[: min(CHUNK, self.size - start)]


# -- HTTP -------------------------------------------------------------------------------------

def path_of(location: str) -> str:
    parts = urllib.parse.urlsplit(location)
    return parts.path + (f"?{parts.query}" if parts.query else "")


class Client:
    """One keep-alive connection to a registry; ``headers`` (e.g. Authorization) go with every call."""

    def __init__(self, url: str, headers: Mapping[str, str] | None = None) -> None:
        parts = urllib.parse.urlsplit(url)
        self.conn = http.client.HTTPConnection(parts.hostname or "127.0.0.1", parts.port, timeout=600)
        self.headers = dict(headers or {})

    def call(self, method: str, path: str, body: bytes | memoryview = b"", headers: dict[str, str] | None = None,
             expect: int = 200) -> tuple[http.client.HTTPResponse, bytes]:
        sent = {"Content-Length": str(len(body)), **self.headers, **(headers or {})}
        self.conn.request(method, path, body=body, headers=sent)
        response = self.conn.getresponse()
        data = response.read()
        if response.status != expect:
            raise BenchError(f"{method} {path}: HTTP {response.status} (wanted {expect}): {data[:300]!r}")
        return response, data

    def close(self) -> None:
        self.conn.close()


def location_of(response: http.client.HTTPResponse) -> str:
    location = response.getheader("Location")
    if not location:
        raise BenchError(f"no Location in HTTP {response.status}")
    return path_of(location)


def push(client: Client, name: str, payload: Payload, commit_seconds: list[float] | None = None) -> float:
    """Chunked upload; returns the seconds from POST to the committed blob. The seconds of the
    closing PUT alone (the commit: digest check, move into place) are appended to ``commit_seconds``."""
    started = time.perf_counter()
    response, _ = client.call("POST", f"/v2/{name}/blobs/uploads/", expect=202)
    location, offset = location_of(response), 0
    for chunk in payload.chunks():
        end = offset + len(chunk) - 1
        response, _ = client.call("PATCH", location, chunk, {"Content-Type": "application/octet-stream",
                                                             "Content-Range": f"{offset}-{end}"}, expect=202)
        if response.getheader("Range") not in (None, f"0-{end}"):
            raise BenchError(f"after bytes {offset}-{end} the registry reports Range {response.getheader('Range')}")
        location, offset = location_of(response), end + 1
    separator = "&" if "?" in location else "?"
    committing = time.perf_counter()
    client.call("PUT", f"{location}{separator}digest={payload.digest}", expect=201)
    if commit_seconds is not None:
        commit_seconds.append(time.perf_counter() - committing)
    return time.perf_counter() - started


def push_small(client: Client, name: str, data: bytes) -> str:
    digest = f"sha256:{hashlib.sha256(data).hexdigest()}"
    response, _ = client.call("POST", f"/v2/{name}/blobs/uploads/", expect=202)
    location = location_of(response)
    separator = "&" if "?" in location else "?"
    client.call("PUT", f"{location}{separator}digest={digest}", data,
                {"Content-Type": "application/octet-stream"}, expect=201)
    return digest



def small_pushes(url: str, repository: str, count: int = 200, connections: int = 8, size: int = 64 * 1024) -> float:
    """Single-request pushes of ``count`` random blobs of ``size`` bytes over ``connections``
    keep-alive connections (each its share of the blobs), in blobs/s. ``repository`` may hold
    ``{}``, replaced by the connection's number (a repository per connection)."""
    data = [os.urandom(size) for _ in range(count)]

    return _rate(url, count, connections,
                 lambda client, first, index: push_small(client, repository.format(first), data[index]))


def _rate(url: str, count: int, connections: int, one: Callable[[Client, int, int], object]) -> float:
    """``one(client, connection, index)`` for ``count`` indexes spread over ``connections`` keep-alive
    connections, each its own thread; returns the rate per second."""
    from concurrent.futures import ThreadPoolExecutor

    def share(first: int) -> None:
        client = Client(url)
        try:
            for index in range(first, count, connections):
                one(client, first, index)
        finally:
            client.close()

    started = time.perf_counter()
    with ThreadPoolExecutor(connections) as pool:
        list(pool.map(share, range(connections)))
    return count / (time.perf_counter() - started)

def fetch(target: str, payload: Payload, verify: bool = False, statuses: list[int] | None = None) -> float:
    """GET of ``target``, following redirects with fresh connections that carry no headers
    (so no Authorization reaches another host); the body is read and discarded. Returns seconds.
    The status of every hop is appended to ``statuses`` when given."""
    started = time.perf_counter()
    for _ in range(5):
        client = Client(target)
        client.conn.request("GET", path_of(target))
        response = client.conn.getresponse()
        if statuses is not None:
            statuses.append(response.status)
        if response.status not in REDIRECTS:
            break
        target = urllib.parse.urljoin(target, response.getheader("Location") or "")
        client.close()
    try:
        if response.status != 200:
            raise BenchError(f"GET blob: HTTP {response.status}: {response.read(300)!r}")
        view, total = memoryview(bytearray(READ_PIECE)), 0
        hasher = hashlib.sha256() if verify else None
        while read := response.readinto(view):
            total += read
            if hasher:
                hasher.update(view[:read])
    finally:
        client.close()
    elapsed = time.perf_counter() - started
    if total != payload.size:
        raise BenchError(f"pulled {total} bytes, expected {payload.size}")
    if hasher and f"sha256:{hasher.hexdigest()}" != payload.digest:
        raise BenchError("pulled blob does not match its digest")
    return elapsed


def pull(url: str, name: str, payload: Payload, verify: bool = False, statuses: list[int] | None = None) -> float:
    """GET of the blob from a registry (following redirects) read and discarded; returns seconds."""
    return fetch(f"{url}/v2/{name}/blobs/{payload.digest}", payload, verify, statuses)


def push_image(client: Client, name: str, tag: str, layer: bytes | None = None) -> str:
    """Config + one layer (random unless given) + OCI manifest under ``tag``; returns the manifest digest."""
    layer = os.urandom(4096) if layer is None else layer
    config = json.dumps({"architecture": "amd64", "os": "linux",
                         "rootfs": {"type": "layers", "diff_ids": [f"sha256:{hashlib.sha256(layer).hexdigest()}"]}})
    config_digest, layer_digest = push_small(client, name, config.encode()), push_small(client, name, layer)
    manifest = json.dumps({
        "schemaVersion": 2, "mediaType": OCI_MANIFEST,
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config_digest,
                   "size": len(config)},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": layer_digest,
                    "size": len(layer)}]}).encode()
    client.call("PUT", f"/v2/{name}/manifests/{tag}", manifest, {"Content-Type": OCI_MANIFEST}, expect=201)
    _, body = client.call("GET", f"/v2/{name}/manifests/{tag}", headers={"Accept": OCI_MANIFEST})
    if body != manifest:
        raise BenchError("manifest GET returned other bytes than were pushed")
    return f"sha256:{hashlib.sha256(manifest).hexdigest()}"


def manifest_puts(url: str, repository: str, count: int = 600, connections: int = 8) -> float:
    """``count`` distinct image manifests (one config and one layer, pushed first; each manifest
    told apart by an annotation) PUT under tags of their own over ``connections`` keep-alive
    connections, in manifests/s: the last request of every image push."""
    client = Client(url)
    try:
        digest = push_image(client, repository, "base")
        _, body = client.call("GET", f"/v2/{repository}/manifests/{digest}", headers={"Accept": OCI_MANIFEST})
    finally:
        client.close()
    base = json.loads(body)
    manifests = [json.dumps({**base, "annotations": {"bench.index": str(index), "bench.nonce": os.urandom(8).hex()}})
                 .encode() for index in range(count)]

    return _rate(url, count, connections, lambda client, _, index: client.call(
        "PUT", f"/v2/{repository}/manifests/t{index}", manifests[index], {"Content-Type": OCI_MANIFEST}, expect=201))


def run_wrk(url: str, seconds: int, headers: Mapping[str, str] | None = None, strict: bool = False) -> dict[str, float]:
    """``wrk -t2 -c32`` GETs of ``url`` with the OCI manifest Accept header (plus ``headers``).

    Fails when more than 1% of the requests (at least 10) failed, or with ``strict`` on any non-2xx.
    """
    argv = [shutil.which("wrk") or "/usr/bin/wrk", "-t2", "-c32", f"-d{seconds}s", "-H", f"Accept: {OCI_MANIFEST}"]
    for key, value in (headers or {}).items():
        argv += ["-H", f"{key}: {value}"]
    out = subprocess.run([*argv, url], capture_output=True, text=True, timeout=seconds + 60, check=True).stdout
    rate, total = re.search(r"Requests/sec:\s+([\d.]+)", out), re.search(r"(\d+) requests in", out)
    if not rate or not total:
        raise BenchError(f"cannot parse wrk output:\n{out}")
    non_2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    result = {"rps": float(rate.group(1)), "requests": int(total.group(1)),
              "non_2xx": int(non_2xx.group(1)) if non_2xx else 0,
              "socket_errors": sum(int(n) for n in errors.groups()) if errors else 0}
    if strict and result["non_2xx"]:
        raise BenchError(f"wrk saw {result['non_2xx']} non-2xx responses at {url}:\n{out}")
    if result["non_2xx"] + result["socket_errors"] > max(10, result["requests"] // 100):
        raise BenchError(f"wrk saw too many failures at {url}:\n{out}")
    return result


# -- the servers ------------------------------------------------------------------------------

@dataclasses.dataclass
class Server:
    name: str
    url: str
    root_pid: int


@contextlib.contextmanager
def wharf(workdir: Path, env: Mapping[str, str] | None = None, name: str = "wharf") -> Iterator[Server]:
    """``python -m services.stack`` at warn level without access logs; ``env`` selects modes.
    The same ``workdir`` again restarts a stack on its data (Redis keeps the metadata there)."""
    pythonpath = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    stack_env = {"WHARF_LOG_LEVEL": "warning", "PYTHONPATH": pythonpath, **(env or {})}
    with signals_held() as release:
        stack = RunningStack(workdir / "data", env=stack_env, log_path=workdir / "wharf.log").start()
        assert stack.process is not None
        root = stack.process.pid
        started = snapshot(root)
        try:
            release()
            yield Server(name, stack.url, root)
        except Exception:
            alive = stack.process.poll() is None
            print(f"[{name}] stack process {'still running' if alive else 'has exited'}; log tail:\n"
                  f"{stack.log_tail()}", file=sys.stderr)
            raise
        finally:
            with signals_held():  # another signal must not cut the clean-up short
                started.update(snapshot(root))
                stack.stop()
                kill_leftovers(started)


DISTRIBUTION_CONFIG = """version: 0.1
log: {{level: warn, accesslog: {{disabled: true}}}}
storage:
  filesystem: {{rootdirectory: {root}}}
  delete: {{enabled: true}}
  cache: {{blobdescriptor: inmemory}}
http: {{addr: "127.0.0.1:{port}"}}
"""


@contextlib.contextmanager
def distribution(workdir: Path, binary: str, config: str = DISTRIBUTION_CONFIG,
                 env: Mapping[str, str] | None = None, name: str = "distribution") -> Iterator[Server]:
    """docker-registry serving ``config`` (a template of ``root`` and ``port``) in ``env`` (default: ours)."""
    port = free_port()
    config_path = workdir / "config.yml"
    config_path.write_text(config.format(root=workdir / "data", port=port))
    with signals_held() as release:
        with open(workdir / "distribution.log", "ab") as log:
            process = subprocess.Popen([binary, "serve", str(config_path)], stdout=log, stderr=subprocess.STDOUT,
                                       start_new_session=True, env=None if env is None else dict(env))
        try:
            release()
            deadline = time.monotonic() + 30
            while not http_ok(f"http://127.0.0.1:{port}/v2/"):
                if process.poll() is not None or time.monotonic() > deadline:
                    tail = (workdir / "distribution.log").read_text(errors="replace")[-2000:]
                    raise BenchError(f"docker-registry did not start:\n{tail}")
                time.sleep(0.1)
            yield Server(name, f"http://127.0.0.1:{port}", process.pid)
        finally:
            with signals_held():
                process.terminate()
                try:
                    process.wait(10)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()


# -- report -----------------------------------------------------------------------------------

def merge_max(into: dict[str, float], new: dict[str, float]) -> None:
    for key, value in new.items():
        into[key] = max(into.get(key, 0.0), value)


def cell(value: Any, digits: int = 1) -> str:
    if value is None:
        return "-"
    return f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def print_grid(header: list[str], lines: list[list[str]]) -> None:
    """A text table: the first column left-aligned, the others right-aligned, a rule under the header."""
    widths = [max(len(line[i]) for line in [header, *lines]) for i in range(len(header))]
    for number, line in enumerate([header, *lines]):
        cells = [c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(line, widths, strict=True))]
        print(" | ".join(cells))
        if number == 0:
            print("-+-".join("-" * w for w in widths))


def run_main(main: Callable[[], int]) -> None:
    """The scripts' entry point: a BenchError (or a server that did not start) is one line on
    stderr and exit status 1."""
    try:
        sys.exit(main())
    except RuntimeError as err:
        print(f"benchmark failed: {err}", file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:
        sys.exit(130)
