"""Many slow clients at once, Wharf and CNCF Distribution v3.0.0 in the same run.

    .venv/bin/python bench/load_bench.py                  # the four scenarios at full scale
    .venv/bin/python bench/load_bench.py --scale 0.1      # a tenth of the clients, for a quick look
    .venv/bin/python bench/load_bench.py --scenarios a,c --registries wharf

Scenarios (issue 11): (a) 1,000 clients each pulling a 16 MiB blob at 256 KiB/s; (b) 500
clients each pushing 4 MiB at 256 KiB/s in one streamed PATCH, then PUT; (c) 2,000
connections sending their request head one line every 2 s, for 30 s; (d) 10,000 idle
keep-alive connections, for 30 s. During each, a prober in its own process sends a
manifest GET by tag on a fresh connection every 100 ms.

A neighbour the issue names in passing ("a node pool pulling the same layer at scale-up"):
(e) 1,000 clients each pulling one 16 MiB layer the registry does not have yet through its
pull-through cache, at 256 KiB/s, all at once. The upstream is a Distribution v3.0.0 behind the
throttling proxy of mirror_bench.py (50 MB/s per connection, 20 ms per request); Wharf mirrors
it (``WHARF_MIRRORS_FILE``), Distribution runs in proxy mode; the probe asks for the mirrored
image's manifest. Also printed for (e): how many times the upstream served the layer.

Printed per scenario and registry: whether every transfer was digest-correct, the total
time, the probe's p50/p99/max and failures, and the peak RSS of every Wharf process. The
load runs in several processes of asyncio clients (each client's socket has a small
receive buffer, so the server really meets a slow reader); the prober is another process,
so neither the load nor the sampler takes its GIL.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import hashlib
import json
import multiprocessing
import os
import resource
import shutil
import socket
import statistics
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from common import (
    DISTRIBUTION_CONFIG,
    OCI_MANIFEST,
    REPO,
    Client,
    Payload,
    cell,
    distribution,
    exit_on_sigterm,
    print_grid,
    push_small,
    run_main,
    wharf,
)
from proctree import Sampler
from throttle import since, throttled

RATE = 256 * 1024  # bytes per second, per client
PIECE = 16 * 1024
DISTRIBUTION_MODULE = "github.com/distribution/distribution/v3/cmd/registry@v3.0.0"
TOOLS = REPO / ".tools" / "bin"


def distribution_v3() -> str:
    """The v3.0.0 binary in .tools/bin, built with `go install` when missing."""
    binary = TOOLS / "registry"
    if not binary.exists():
        print(f"building {DISTRIBUTION_MODULE} into {TOOLS} ...", flush=True)
        subprocess.run(["go", "install", DISTRIBUTION_MODULE], check=True, env={**os.environ, "GOBIN": str(TOOLS)})
    return str(binary)


def raise_nofile() -> None:
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


# -- the clients ------------------------------------------------------------------------------

async def _open(host: str, port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 64 * 1024)
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, (host, port))
    return await asyncio.open_connection(sock=sock, limit=1 << 20)


async def _head(reader: asyncio.StreamReader) -> tuple[int, dict[str, str]]:
    raw = await reader.readuntil(b"\r\n\r\n")
    lines = raw.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:] if line)}
    return int(lines[0].split()[1]), headers


async def slow_pull(host: str, port: int, path: str, digest: str) -> bool:
    """GET at RATE; True when every byte arrived and they hash to ``digest``."""
    reader, writer = await _open(host, port)
    try:
        writer.write(f"GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
        status, headers = await _head(reader)
        if status in (301, 302, 303, 307, 308):
            return False  # the bench serves blobs itself (filesystem); a redirect is not expected
        remaining = int(headers.get("content-length", "-1"))
        hasher, started, received = hashlib.sha256(), time.monotonic(), 0
        while remaining != 0:
            data = await reader.read(min(PIECE, remaining) if remaining > 0 else PIECE)
            if not data:
                break
            hasher.update(data)
            received += len(data)
            remaining -= len(data)
            ahead = received / RATE - (time.monotonic() - started)
            if ahead > 0:
                await asyncio.sleep(ahead)
        return status == 200 and remaining == 0 and f"sha256:{hasher.hexdigest()}" == digest
    finally:
        writer.close()


class PushBody:
    """A client's 4 MiB body: the shared ``base`` with its last 8 bytes replaced by the client's
    number, so that every blob differs. Neither the body nor its digest costs the load processes
    a copy or a hash of their own while the clock runs: the pieces are views of ``base``, and the
    digest continues a hash of the shared part taken once (``hashlib``'s ``copy``)."""

    def __init__(self, base: memoryview, shared: hashlib._Hash, number: int) -> None:
        self.number = number
        self.tail = number.to_bytes(8, "big")
        self.base = base
        hasher = shared.copy()
        hasher.update(self.tail)
        self.digest = f"sha256:{hasher.hexdigest()}"

    def __len__(self) -> int:
        return len(self.base)

    def pieces(self, size: int) -> list[memoryview | bytes]:
        body = len(self.base) - len(self.tail)
        out: list[memoryview | bytes] = [self.base[start:min(start + size, body)] for start in range(0, body, size)]
        out.append(self.tail)
        return out


def _error_code(body: bytes) -> str:
    """The first error's code and message in a registry's JSON error body (what a failure was)."""
    try:
        first = json.loads(body)["errors"][0]
        return f"{first.get('code')}: {str(first.get('message'))[:120]}"
    except (ValueError, KeyError, IndexError, TypeError):
        return body[:120].decode("latin-1")


async def slow_push(host: str, port: int, name: str, data: PushBody) -> bool | str:
    """POST, one streamed PATCH at RATE, PUT ?digest=; True when the registry committed it (201),
    else what went wrong (the request and its status)."""
    reader, writer = await _open(host, port)
    step = "POST"
    try:
        writer.write(f"POST /v2/{name}/blobs/uploads/ HTTP/1.1\r\nHost: {host}\r\nContent-Length: 0\r\n\r\n".encode())
        status, headers = await _head(reader)
        await reader.readexactly(int(headers.get("content-length", "0")))
        if status != 202:
            return f"POST {status}"
        location = headers["location"].split("://", 1)[-1]
        location = location[location.index("/"):] if not location.startswith("/") else location
        step = "PATCH"
        writer.write(f"PATCH {location} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/octet-stream\r\n"
                     f"Content-Length: {len(data)}\r\n\r\n".encode())
        started = time.monotonic()
        sent = 0
        for piece in data.pieces(PIECE):
            writer.write(piece)
            await writer.drain()
            sent += len(piece)
            ahead = sent / RATE - (time.monotonic() - started)
            if ahead > 0:
                await asyncio.sleep(ahead)
        status, headers = await _head(reader)
        body = await reader.readexactly(int(headers.get("content-length", "0")))
        if status != 202:
            return f"PATCH {status} {_error_code(body)}"
        location = headers["location"].split("://", 1)[-1]
        location = location[location.index("/"):] if not location.startswith("/") else location
        separator = "&" if "?" in location else "?"
        step = "PUT"
        writer.write(f"PUT {location}{separator}digest={data.digest} HTTP/1.1\r\nHost: {host}\r\n"
                     "Content-Length: 0\r\n\r\n".encode())
        status, headers = await _head(reader)
        if status == 201:
            return True
        body = await reader.readexactly(int(headers.get("content-length", "0")))
        return f"PUT {status} {_error_code(body)}"
    except (OSError, asyncio.IncompleteReadError) as err:
        return f"{step} {type(err).__name__}"
    finally:
        writer.close()


async def slowloris(host: str, port: int, seconds: float) -> None:
    _, writer = await _open(host, port)
    try:
        writer.write(f"GET /v2/ HTTP/1.1\r\nHost: {host}\r\n".encode())
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            await asyncio.sleep(2)
            writer.write(b"X-Slow: 1\r\n")
            await writer.drain()
    except OSError:
        pass  # the server closed it (a header timeout): that is allowed
    finally:
        writer.close()


async def idle(host: str, port: int, seconds: float) -> bool | str:
    """One request, then an idle keep-alive connection; True when the request was answered, else
    what went wrong."""
    try:
        reader, writer = await _open(host, port)
    except OSError as err:
        return f"connect {type(err).__name__}"
    try:
        writer.write(f"GET /v2/ HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
        status, headers = await _head(reader)
        await reader.readexactly(int(headers.get("content-length", "0")))
        await asyncio.sleep(seconds)
        return True if status in (200, 401) else f"GET /v2/ {status}"
    except (OSError, asyncio.IncompleteReadError) as err:
        return f"GET /v2/ {type(err).__name__}"
    finally:
        writer.close()


def _load(kind: str, host: str, port: int, count: int, arg: object, results: multiprocessing.Queue,
          ready: multiprocessing.synchronize.Event, go: multiprocessing.synchronize.Event) -> None:
    """One load process: ``count`` clients of ``kind`` at once, from when ``go`` is set (after
    each process has set ``ready``: its clients' bodies are prepared off the clock); puts (ok,
    failed, why each failed) on ``results``."""
    raise_nofile()
    bodies: list[PushBody] = []
    if kind == "push":
        prefix, base, offset = arg  # type: ignore[misc]
        view = memoryview(base)
        shared = hashlib.sha256(view[:-8])
        bodies = [PushBody(view, shared, offset + i) for i in range(count)]
    ready.set()
    go.wait()

    async def run() -> tuple[int, int]:
        if kind == "pull":
            path, digest = arg  # type: ignore[misc]
            jobs = [slow_pull(host, port, path, digest) for _ in range(count)]
        elif kind == "push":
            jobs = [slow_push(host, port, f"{prefix}/c{body.number}", body) for body in bodies]
        elif kind == "slowloris":
            jobs = [slowloris(host, port, float(arg)) for _ in range(count)]  # type: ignore[arg-type]
        else:
            jobs = [idle(host, port, float(arg)) for _ in range(count)]  # type: ignore[arg-type]
        outcomes = await asyncio.gather(*jobs, return_exceptions=True)
        ok = sum(1 for o in outcomes if o is True or (o is None and kind == "slowloris"))
        reasons = collections.Counter(o if isinstance(o, str) else type(o).__name__ for o in outcomes
                                      if not (o is True or (o is None and kind == "slowloris")))
        return ok, len(outcomes) - ok, dict(reasons)

    results.put(asyncio.run(run()))


def _probe(url: str, stop: multiprocessing.synchronize.Event, results: multiprocessing.Queue) -> None:
    import http.client
    import urllib.parse

    parsed = urllib.parse.urlsplit(url)
    latencies: list[float] = []
    failures = 0
    while not stop.is_set():
        started = time.monotonic()
        try:
            connection = http.client.HTTPConnection(parsed.hostname, parsed.port, timeout=30)
            connection.request("GET", parsed.path, headers={"Accept": OCI_MANIFEST})
            response = connection.getresponse()
            response.read()
            connection.close()
            if response.status == 200:
                latencies.append(time.monotonic() - started)
            else:
                failures += 1
        except OSError:
            failures += 1
        stop.wait(max(0.0, 0.1 - (time.monotonic() - started)))
    results.put((latencies, failures))


# -- one scenario against one registry ----------------------------------------------------------

def scenario(name: str, url: str, root_pid: int | None, count: int, seconds: float,
             setup: dict[str, object]) -> dict[str, object]:
    host, port = url.split("//", 1)[1].split(":")
    context = multiprocessing.get_context("fork")
    stop, probe_results = context.Event(), context.Queue()
    prober = context.Process(target=_probe, args=(setup["manifest_url"], stop, probe_results), daemon=True)
    processes = max(1, min(4, count // 250))
    load_results = context.Queue()
    share = [count // processes + (1 if i < count % processes else 0) for i in range(processes)]
    sampler = Sampler(root_pid) if root_pid else None
    go = context.Event()
    loads, readies = [], []
    offset = 0
    for part in share:
        if name in ("a", "e"):
            arg: object = (setup["blob_path"], setup["blob_digest"])
            kind = "pull"
        elif name == "b":
            arg, kind = (f"load/{os.getpid()}-{time.monotonic_ns()}", setup["push_base"], offset), "push"
        elif name == "c":
            arg, kind = seconds, "slowloris"
        else:
            arg, kind = seconds, "idle"
        readies.append(context.Event())
        loads.append(context.Process(target=_load, args=(kind, host, int(port), part, arg, load_results,
                                                         readies[-1], go)))
        offset += part
    for process in loads:
        process.start()
    for ready in readies:
        ready.wait()
    # The probe starts once the clients are prepared, half a second before the load: what it
    # measures is the load, not the idle registry while the load processes prepare.
    prober.start()
    time.sleep(0.5)
    started = time.monotonic()
    with sampler if sampler else _nothing():
        go.set()
        outcomes = [load_results.get() for _ in loads]
        for process in loads:
            process.join()
        elapsed = time.monotonic() - started
    stop.set()
    latencies, failures = probe_results.get()
    prober.join()
    latencies.sort()
    ok = sum(o[0] for o in outcomes)
    bad = sum(o[1] for o in outcomes)
    reasons: collections.Counter[str] = collections.Counter()
    for outcome in outcomes:
        reasons.update(outcome[2])
    return {"correct": bad == 0, "ok": ok, "bad": bad, "reasons": dict(reasons), "seconds": elapsed,
            "p50": statistics.median(latencies) * 1000 if latencies else float("nan"),
            "p99": latencies[int(len(latencies) * 0.99) - 1] * 1000 if latencies else float("nan"),
            "max": latencies[-1] * 1000 if latencies else float("nan"), "probe_failures": failures,
            "probes": len(latencies), "rss": dict(sampler.peak_mb) if sampler else {}}


class _nothing:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None


def prepare(url: str) -> dict[str, object]:
    client = Client(url)
    try:
        blob = os.urandom(16 * 1024 * 1024)
        digest = push_small(client, "load/pull", blob)
        config = push_small(client, "load/probe", b"{}")
        manifest = (f'{{"schemaVersion": 2, "mediaType": "{OCI_MANIFEST}", "config": {{"mediaType": '
                    f'"application/vnd.oci.image.config.v1+json", "digest": "{config}", "size": 2}}, '
                    '"layers": []}').encode()
        client.call("PUT", "/v2/load/probe/manifests/v1", manifest, {"Content-Type": OCI_MANIFEST}, expect=201)
    finally:
        client.close()
    return {"blob_path": f"/v2/load/pull/blobs/{digest}", "blob_digest": digest,
            "manifest_url": f"{url}/v2/load/probe/manifests/v1", "push_base": os.urandom(4 * 1024 * 1024)}


SCENARIOS = {"a": ("1,000 pulls of 16 MiB at 256 KiB/s", 1000, 0.0),
             "b": ("500 pushes of 4 MiB at 256 KiB/s", 500, 0.0),
             "c": ("2,000 slowloris connections, 30 s", 2000, 30.0),
             "d": ("10,000 idle keep-alive connections, 30 s", 10000, 30.0),
             "e": ("1,000 pulls of one uncached 16 MiB layer through the mirror", 1000, 0.0)}
MIRROR_PREFIX = "upstream.bench"
PROXY_CONFIG = DISTRIBUTION_CONFIG + 'proxy: {{remoteurl: "{remote}"}}\n'


@contextlib.contextmanager
def upstream_with_layer(workdir: Path) -> Iterator[tuple[str, str, Any]]:
    """(e)'s upstream: Distribution v3.0.0 holding ``mirror/layer:v1`` (one 16 MiB layer) behind
    the throttling proxy; yields the proxy's URL, the layer's digest and the proxy's counters."""
    from mirror_bench import upload_image  # the same image shape as the mirror bench

    (workdir / "upstream").mkdir()
    layer = Payload(16 * 1024 * 1024, seed=1603)
    with distribution(workdir / "upstream", distribution_v3(), name="upstream") as upstream:
        upload_image(upstream.url, "mirror/layer", layer)
        with throttled(upstream.url, 50e6, 0.02) as throttle:
            yield throttle.url, layer.digest, throttle


def mirror_server(registry: str, workdir: Path, upstream_url: str) -> Any:
    if registry == "wharf":
        mirrors = workdir / "mirrors.yaml"
        mirrors.write_text(f"upstreams:\n  - prefix: {MIRROR_PREFIX}\n    url: {upstream_url}\n    insecure: true\n"
                           "    tag_ttl: 1h\n")
        return wharf(workdir, {"WHARF_MIRRORS_FILE": str(mirrors)})
    return distribution(workdir, distribution_v3(), config=PROXY_CONFIG.replace("{remote}", upstream_url))


def mirror_setup(registry: str, url: str, digest: str) -> dict[str, object]:
    """The layer's path through the mirror, and the probe's manifest (fetched once, so cached)."""
    name = f"{MIRROR_PREFIX}/mirror/layer" if registry == "wharf" else "mirror/layer"
    client = Client(url)
    try:
        client.call("GET", f"/v2/{name}/manifests/v1", b"", {"Accept": OCI_MANIFEST}, expect=200)
    finally:
        client.close()
    return {"blob_path": f"/v2/{name}/blobs/{digest}", "blob_digest": digest,
            "manifest_url": f"{url}/v2/{name}/manifests/v1"}


def main() -> int:
    exit_on_sigterm()
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scale", type=float, default=1.0, help="fraction of each scenario's clients")
    parser.add_argument("--scenarios", default="a,b,c,d")
    parser.add_argument("--registries", default="wharf,distribution")
    parser.add_argument("--stream-pulls", action="store_true",
                        help="Wharf serves pulls through the blob store (no sendfile), as in compose and Kubernetes")
    args = parser.parse_args()
    raise_nofile()
    rows: list[list[str]] = []
    rss_lines: list[str] = []
    wanted = args.scenarios.split(",")
    if any(name not in SCENARIOS for name in wanted):
        parser.error(f"--scenarios takes some of {','.join(SCENARIOS)}")

    def run(name: str, registry: str, running: Any, setup: dict[str, object], workdir: Path) -> None:
        title, clients, seconds = SCENARIOS[name]
        count = max(1, int(clients * args.scale))
        result = scenario(name, running.url, running.root_pid if registry == "wharf" else None, count, seconds, setup)
        rows.append([f"({name}) {title}", registry, str(count), "yes" if result["correct"] else
                     f"NO ({result['bad']} failed)", cell(result["seconds"]), cell(result["p50"]),
                     cell(result["p99"]), cell(result["max"]), str(result["probe_failures"])])
        if result["reasons"]:
            failed = ", ".join(f"{k}: {v}" for k, v in sorted(result["reasons"].items()))
            rss_lines.append(f"({name}) {registry} failures: {failed}")
            log = workdir / "wharf.log"
            if log.exists():  # kept: the scratch directory goes with the run
                kept = Path(tempfile.gettempdir()) / f"load-bench-{name}-{os.getpid()}.log"
                shutil.copyfile(log, kept)
                rss_lines.append(f"({name}) {registry} log: {kept}")
        if result["rss"]:
            peaks = ", ".join(f"{k} {v:.0f}" for k, v in sorted(result["rss"].items()))
            rss_lines.append(f"({name}) peak RSS MB: {peaks}")
        print(" | ".join(rows[-1]), flush=True)

    local = [name for name in wanted if name != "e"]
    for registry in args.registries.split(","):
        if local:
            with tempfile.TemporaryDirectory(prefix=f"load-{registry}-") as scratch:
                workdir = Path(scratch)
                streamed = {"WHARF_LOCAL_BLOB_ROOT": ""} if args.stream_pulls else None
                server = wharf(workdir, streamed) if registry == "wharf" else distribution(workdir, distribution_v3())
                with server as running:
                    setup = prepare(running.url)
                    for name in local:
                        run(name, registry, running, setup, workdir)
    if "e" in wanted:
        with tempfile.TemporaryDirectory(prefix="load-mirror-") as scratch, \
                upstream_with_layer(Path(scratch)) as (upstream_url, digest, throttle):
            for registry in args.registries.split(","):
                workdir = Path(scratch) / registry
                workdir.mkdir()
                with mirror_server(registry, workdir, upstream_url) as running:
                    setup = mirror_setup(registry, running.url, digest)
                    before = throttle.snapshot()
                    run("e", registry, running, setup, workdir)
                    served = since(before, throttle.snapshot())
                    rss_lines.append(f"(e) {registry}: the upstream served the layer "
                                     f"{served['bytes_down'] / (16 * 1024 * 1024):.1f} times "
                                     f"({served['blob_gets']} blob GETs)")
    print()
    print_grid(["scenario", "registry", "clients", "all correct", "total s", "probe p50 ms", "p99 ms", "max ms",
                "probe failures"], rows)
    print(*rss_lines, sep="\n")
    return 0


if __name__ == "__main__":
    run_main(main)
