"""Wharf against CNCF Distribution on this machine: blob push, blob pull, manifest GET, memory.

What is measured, one registry after the other (never both at once, the machine has 2 cores):

1. push: one blob (``--blob-mib``, default 1 GiB) as a chunked upload, the way real clients
   do it: POST a session, PATCH 16 MiB chunks with ``Content-Range: start-end`` following the
   Location of every answer, then PUT ``?digest=``. Timed from POST to the 201 of the PUT.
   The client must never be the bottleneck, so the bytes come from one 16 MiB random block
   in memory (each chunk is stamped with its run and index, so chunks and runs differ), the
   sha256 is computed before the clock starts, and chunks go out with ``sendall`` of a
   memoryview over one keep-alive http.client connection.
2. pull: GET of that blob read with ``readinto`` in 4 MiB pieces and discarded; the length is
   checked on every pull and the sha256 on one untimed pass.
3. manifest GET by tag: a small OCI image (config + 1 layer + manifest) is pushed, then
   ``wrk -t2 -c32`` asks for it by tag with the OCI manifest Accept header. This is the
   per-request cost of the gateway (HTTP + gRPC + Redis) versus one Go process.
4. memory: a thread samples VmRSS of every descendant of each registry's root process every
   ~50 ms during push and pull; peaks are reported per process (named from its cmdline), with
   the CPU seconds each process used in the phase (the largest over runs), which shows where
   Wharf's time goes.

Both log at warn level without access logs. Distribution uses filesystem storage with deletes on
and the in-memory blob descriptor cache of Debian's default config; Wharf is ``python -m
services.stack`` with its defaults.

Units: MB = 10^6 bytes, so MB/s compare with ``dd``/``fio`` figures. On these noisy machines a
ratio within about +-20% of 1 is a tie (../shared/PERFORMANCE-NOTES.md).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import hashlib
import http.client
import json
import os
import re
import shutil
import signal
import statistics
import struct
import subprocess
import sys
import tempfile
import time
import urllib.parse
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from proctree import Sampler, kill_leftovers, snapshot  # noqa: E402

from services.stack.processes import free_port, http_ok  # noqa: E402
from tests.support.stack import RunningStack  # noqa: E402

MB = 1_000_000
MIB = 1024 * 1024
CHUNK = 16 * MIB
READ_PIECE = 4 * MIB
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
RSS_LIMIT_MB = 150.0


class BenchError(RuntimeError):
    pass


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

def _path_of(location: str) -> str:
    parts = urllib.parse.urlsplit(location)
    return parts.path + (f"?{parts.query}" if parts.query else "")


class Client:
    """One keep-alive connection to a registry."""

    def __init__(self, url: str) -> None:
        parts = urllib.parse.urlsplit(url)
        self.conn = http.client.HTTPConnection(parts.hostname or "127.0.0.1", parts.port, timeout=600)

    def call(self, method: str, path: str, body: bytes | memoryview = b"", headers: dict[str, str] | None = None,
             expect: int = 200) -> tuple[http.client.HTTPResponse, bytes]:
        sent = {"Content-Length": str(len(body)), **(headers or {})}
        self.conn.request(method, path, body=body, headers=sent)
        response = self.conn.getresponse()
        data = response.read()
        if response.status != expect:
            raise BenchError(f"{method} {path}: HTTP {response.status} (wanted {expect}): {data[:300]!r}")
        return response, data

    def close(self) -> None:
        self.conn.close()


def _location(response: http.client.HTTPResponse) -> str:
    location = response.getheader("Location")
    if not location:
        raise BenchError(f"no Location in HTTP {response.status}")
    return _path_of(location)


def push(client: Client, name: str, payload: Payload) -> float:
    """Chunked upload; returns the seconds from POST to the committed blob."""
    started = time.perf_counter()
    response, _ = client.call("POST", f"/v2/{name}/blobs/uploads/", expect=202)
    location, offset = _location(response), 0
    for chunk in payload.chunks():
        end = offset + len(chunk) - 1
        response, _ = client.call("PATCH", location, chunk, {"Content-Type": "application/octet-stream",
                                                             "Content-Range": f"{offset}-{end}"}, expect=202)
        if response.getheader("Range") not in (None, f"0-{end}"):
            raise BenchError(f"after bytes {offset}-{end} the registry reports Range {response.getheader('Range')}")
        location, offset = _location(response), end + 1
    separator = "&" if "?" in location else "?"
    client.call("PUT", f"{location}{separator}digest={payload.digest}", expect=201)
    return time.perf_counter() - started


def push_small(client: Client, name: str, data: bytes) -> str:
    digest = f"sha256:{hashlib.sha256(data).hexdigest()}"
    response, _ = client.call("POST", f"/v2/{name}/blobs/uploads/", expect=202)
    location = _location(response)
    separator = "&" if "?" in location else "?"
    client.call("PUT", f"{location}{separator}digest={digest}", data,
                {"Content-Type": "application/octet-stream"}, expect=201)
    return digest


def pull(url: str, name: str, payload: Payload, verify: bool = False) -> float:
    """GET of the blob (following redirects) read and discarded; returns seconds."""
    started = time.perf_counter()
    target = f"{url}/v2/{name}/blobs/{payload.digest}"
    for _ in range(5):
        client = Client(target)
        client.conn.request("GET", _path_of(target))
        response = client.conn.getresponse()
        if response.status not in (301, 302, 303, 307, 308):
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


def push_image(client: Client, name: str, tag: str) -> str:
    """Config + one layer + OCI manifest under ``tag``; returns the manifest digest."""
    layer = os.urandom(4096)
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


def run_wrk(url: str, seconds: int) -> dict[str, float]:
    argv = [shutil.which("wrk") or "/usr/bin/wrk", "-t2", "-c32", f"-d{seconds}s", "-H", f"Accept: {OCI_MANIFEST}", url]
    out = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 60, check=True).stdout
    rate, total = re.search(r"Requests/sec:\s+([\d.]+)", out), re.search(r"(\d+) requests in", out)
    if not rate or not total:
        raise BenchError(f"cannot parse wrk output:\n{out}")
    non_2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    result = {"rps": float(rate.group(1)), "requests": int(total.group(1)),
              "non_2xx": int(non_2xx.group(1)) if non_2xx else 0,
              "socket_errors": sum(int(n) for n in errors.groups()) if errors else 0}
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
def wharf(workdir: Path) -> Iterator[Server]:
    pythonpath = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    env = {"WHARF_LOG_LEVEL": "warning", "PYTHONPATH": pythonpath}
    stack = RunningStack(workdir / "data", env=env, log_path=workdir / "wharf.log").start()
    assert stack.process is not None
    root = stack.process.pid
    started = snapshot(root)
    try:
        yield Server("wharf", stack.url, root)
    except Exception:
        alive = stack.process.poll() is None
        print(f"[wharf] stack process {'still running' if alive else 'has exited'}; log tail:\n{stack.log_tail()}",
              file=sys.stderr)
        raise
    finally:
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
def distribution(workdir: Path, binary: str) -> Iterator[Server]:
    port = free_port()
    config = workdir / "config.yml"
    config.write_text(DISTRIBUTION_CONFIG.format(root=workdir / "data", port=port))
    with open(workdir / "distribution.log", "ab") as log:
        process = subprocess.Popen([binary, "serve", str(config)], stdout=log, stderr=subprocess.STDOUT,
                                   start_new_session=True)
    try:
        deadline = time.monotonic() + 30
        while not http_ok(f"http://127.0.0.1:{port}/v2/"):
            if process.poll() is not None or time.monotonic() > deadline:
                tail = (workdir / "distribution.log").read_text(errors="replace")[-2000:]
                raise BenchError(f"docker-registry did not start:\n{tail}")
            time.sleep(0.1)
        yield Server("distribution", f"http://127.0.0.1:{port}", process.pid)
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


# -- one registry, all measurements -----------------------------------------------------------

def _merge_max(into: dict[str, float], new: dict[str, float]) -> None:
    for key, value in new.items():
        into[key] = max(into.get(key, 0.0), value)


def measure(server: Server, payloads: list[Payload], args: argparse.Namespace) -> dict[str, Any]:
    def log(message: str) -> None:
        print(f"[{server.name}] {message}", file=sys.stderr, flush=True)

    result: dict[str, Any] = {"push_mbps": [], "pull_mbps": [], "rss_push_mb": {}, "rss_pull_mb": {},
                              "cpu_push_s": {}, "cpu_pull_s": {}}
    client = Client(server.url)
    try:
        for payload in payloads:
            with Sampler(server.root_pid) as sampler:
                seconds = push(client, "bench/big", payload)
            result["push_mbps"].append(payload.size / seconds / MB)
            _merge_max(result["rss_push_mb"], sampler.peak_mb)
            _merge_max(result["cpu_push_s"], sampler.cpu_seconds())
            log(f"push {payload.size / MB:.0f} MB in {seconds:.2f} s: {result['push_mbps'][-1]:.0f} MB/s")
        blob = payloads[-1]
        pull(server.url, "bench/big", blob, verify=True)
        for _ in payloads:
            with Sampler(server.root_pid) as sampler:
                seconds = pull(server.url, "bench/big", blob)
            result["pull_mbps"].append(blob.size / seconds / MB)
            _merge_max(result["rss_pull_mb"], sampler.peak_mb)
            _merge_max(result["cpu_pull_s"], sampler.cpu_seconds())
            log(f"pull in {seconds:.2f} s: {result['pull_mbps'][-1]:.0f} MB/s")
        push_image(client, "bench/small", "latest")
    finally:
        client.close()
    url = f"{server.url}/v2/bench/small/manifests/latest"
    run_wrk(url, 2)  # warm-up: lazy gRPC channels, connection pools, caches
    result["manifest"] = run_wrk(url, args.wrk_seconds)
    log(f"manifest GET {result['manifest']['rps']:.0f} req/s")
    aggregate = max if args.aggregate == "best" else statistics.median
    result["push"], result["pull"] = aggregate(result["push_mbps"]), aggregate(result["pull_mbps"])
    return result


# -- report -----------------------------------------------------------------------------------

def build_rows(ours: dict[str, Any], theirs: dict[str, Any] | None) -> list[dict[str, Any]]:
    """One dict per table line: metric, wharf, distribution, ratio (wharf/distribution), target, met."""
    rows: list[dict[str, Any]] = []

    def row(metric: str, value: Callable[[dict[str, Any]], float] | float, target: str = "",
            met: bool | None = None, ratio_target: float | None = None) -> None:
        """``value`` is a float for Wharf only, or a getter applied to both results."""
        wharf_value = value if isinstance(value, float) else value(ours)
        dist_value = value(theirs) if theirs and not isinstance(value, float) else None
        ratio = wharf_value / dist_value if dist_value else None
        if ratio_target is not None:
            target, met = f">= {ratio_target:g}x", None if ratio is None else ratio >= ratio_target
        rows.append({"metric": metric, "wharf": wharf_value, "distribution": dist_value, "ratio": ratio,
                     "target": target, "met": met})

    row("push MB/s", lambda r: r["push"], ratio_target=1.5)
    row("pull MB/s", lambda r: r["pull"], ratio_target=1.0)
    row("manifest GET req/s", lambda r: r["manifest"]["rps"], ratio_target=1.0)
    row("manifest GET non-2xx + socket errors", lambda r: r["manifest"]["non_2xx"] + r["manifest"]["socket_errors"])
    for phase in ("push", "pull"):
        rss, cpu = f"rss_{phase}_mb", f"cpu_{phase}_s"
        for name, peak in sorted(ours[rss].items()):
            row(f"peak RSS {phase} MB: {name}", float(peak), target=f"< {RSS_LIMIT_MB:g}", met=peak < RSS_LIMIT_MB)
        row(f"peak RSS {phase} MB: largest process", lambda r: max(r[rss].values()))  # noqa: B023 - called now
        for name, seconds in sorted(ours[cpu].items(), key=lambda item: -item[1]):
            if seconds >= 0.05:
                row(f"CPU s {phase}: {name}", float(seconds))
        row(f"CPU s {phase}: all processes", lambda r: sum(r[cpu].values()))  # noqa: B023 - called now
    return rows


def _cell(value: Any, digits: int = 1) -> str:
    if value is None:
        return "-"
    return f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def print_table(rows: list[dict[str, Any]]) -> None:
    header = ["metric", "wharf", "distribution", "ratio", "target"]
    lines = [[row["metric"], _cell(row["wharf"]), _cell(row["distribution"]), _cell(row["ratio"], 2),
              f"{row['target']} {'' if row['met'] is None else ('ok' if row['met'] else 'MISS')}".strip()]
             for row in rows]
    widths = [max(len(line[i]) for line in [header, *lines]) for i in range(len(header))]
    for number, line in enumerate([header, *lines]):
        cells = [c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(line, widths, strict=True))]
        print(" | ".join(cells))
        if number == 0:
            print("-+-".join("-" * w for w in widths))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--blob-mib", type=int, default=1024, help="size of the pushed/pulled blob in MiB")
    parser.add_argument("--runs", type=int, default=1, help="push and pull this many times per registry")
    parser.add_argument("--aggregate", choices=["median", "best"], default="median", help="how runs combine")
    parser.add_argument("--wrk-seconds", type=int, default=10, help="duration of the manifest GET load")
    parser.add_argument("--skip-distribution", action="store_true", help="measure Wharf only")
    parser.add_argument("--distribution-bin", default="/usr/bin/docker-registry", help="CNCF Distribution binary")
    parser.add_argument("--tmp-dir", default=None, help="where both registries keep their data (a disk, not tmpfs)")
    parser.add_argument("--json", action="store_true", help="print results as JSON instead of a table")
    args = parser.parse_args()
    if args.blob_mib <= 0 or args.runs <= 0:
        parser.error("--blob-mib and --runs must be positive")
    if not args.skip_distribution and not os.access(args.distribution_bin, os.X_OK):
        parser.error(f"{args.distribution_bin} not found: install docker-registry or pass --skip-distribution")
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # unwind the with-blocks: stop servers, remove dirs

    load_before = os.getloadavg()[0]
    print(f"hashing {args.runs} x {args.blob_mib} MiB payload(s)...", file=sys.stderr, flush=True)
    payloads = [Payload(args.blob_mib * MIB, seed) for seed in range(args.runs)]
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="wharf-bench-", dir=args.tmp_dir) as tmp:
        (Path(tmp) / "wharf").mkdir()
        with wharf(Path(tmp) / "wharf") as server:
            results["wharf"] = measure(server, payloads, args)
        if not args.skip_distribution:
            (Path(tmp) / "distribution").mkdir()
            with distribution(Path(tmp) / "distribution", args.distribution_bin) as server:
                results["distribution"] = measure(server, payloads, args)
    rows = build_rows(results["wharf"], results.get("distribution"))
    load = f"1-min load average {load_before:.1f} before, {os.getloadavg()[0]:.1f} after"
    if args.json:
        config = {"blob_bytes": args.blob_mib * MIB, "chunk_bytes": CHUNK, "runs": args.runs,
                  "aggregate": args.aggregate, "wrk": f"-t2 -c32 -d{args.wrk_seconds}s", "load": load}
        print(json.dumps({"config": config, "results": results, "rows": rows}, indent=2))
    else:
        print(f"\nblob {args.blob_mib} MiB in {CHUNK // MIB} MiB PATCHes, {args.aggregate} of {args.runs} run(s); "
              f"MB = 10^6 bytes; ratios within +-20% of 1 are ties on this machine;\n"
              f"{load} (2 cores: anything else running skews the figures)\n")
        print_table(rows)
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except BenchError as err:
        print(f"benchmark failed: {err}", file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:
        sys.exit(130)
