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
4. small requests: 200 blobs of 64 KiB pushed by 8 threads (POST, then PUT ``?digest=`` with
   the body: the monolithic upload clients use for small layers), in blobs/s, and beside it
   100 blobs of 1 MiB the same way and 600 manifest PUTs (a tag each) by 8 threads; blob HEAD under
   ``hey -c32`` (wrk cannot read HEAD answers), in req/s; the same small blob's GET under
   ``wrk -c32`` (an image's config, which every node pulling it fetches); and a listing of
   1,000 tags in pages of 100 following ``Link``, in ms (median of 5).
5. memory: a thread samples VmRSS of every descendant of each registry's root process every
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
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from common import (
    CHUNK,
    MB,
    MIB,
    OCI_MANIFEST,
    REPO,
    RSS_LIMIT_MB,
    BenchError,
    Client,
    Payload,
    Server,
    cell,
    distribution,
    exit_on_sigterm,
    manifest_puts,
    merge_max,
    print_grid,
    pull,
    push,
    push_image,
    push_small,
    run_main,
    run_wrk,
    small_pushes,
    wharf,
)
from proctree import Sampler

# -- one registry, all measurements -----------------------------------------------------------

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
            merge_max(result["rss_push_mb"], sampler.peak_mb)
            merge_max(result["cpu_push_s"], sampler.cpu_seconds())
            log(f"push {payload.size / MB:.0f} MB in {seconds:.2f} s: {result['push_mbps'][-1]:.0f} MB/s")
        blob = payloads[-1]
        pull(server.url, "bench/big", blob, verify=True)
        for _ in payloads:
            with Sampler(server.root_pid) as sampler:
                seconds = pull(server.url, "bench/big", blob)
            result["pull_mbps"].append(blob.size / seconds / MB)
            merge_max(result["rss_pull_mb"], sampler.peak_mb)
            merge_max(result["cpu_pull_s"], sampler.cpu_seconds())
            log(f"pull in {seconds:.2f} s: {result['pull_mbps'][-1]:.0f} MB/s")
        push_image(client, "bench/small", "latest")
    finally:
        client.close()
    url = f"{server.url}/v2/bench/small/manifests/latest"
    run_wrk(url, 2)  # warm-up: lazy gRPC channels, connection pools, caches
    result["manifest"] = run_wrk(url, args.wrk_seconds)
    log(f"manifest GET {result['manifest']['rps']:.0f} req/s")
    # SMALL_BLOBS distinct 64 KiB blobs, each POST then PUT ?digest=, SMALL_THREADS connections
    # each to a repository of its own; the first round is a warm-up, as for the GETs (each
    # worker's first upload and channels).
    rounds = [small_pushes(server.url, "bench/small{}", SMALL_BLOBS, SMALL_THREADS, SMALL_SIZE)
              for _ in range(args.runs + 1)][1:]
    aggregate = max if args.aggregate == "best" else statistics.median
    result["small_push"] = aggregate(rounds)
    log(f"small-blob push {result['small_push']:.0f} blobs/s (rounds: {', '.join(f'{r:.0f}' for r in rounds)})")
    # Neighbours of the small push: a 1 MiB blob the same way (oras and helm push every blob as
    # one PUT), and the manifest PUT that ends every image push.
    rounds = [small_pushes(server.url, "bench/mid{}", MID_BLOBS, SMALL_THREADS, MID_SIZE) for _ in range(args.runs)]
    result["mid_push"] = aggregate(rounds)
    log(f"1 MiB blob push {result['mid_push']:.0f} blobs/s")
    rounds = [manifest_puts(server.url, f"bench/manifests{run}") for run in range(args.runs)]
    result["manifest_put"] = aggregate(rounds)
    log(f"manifest PUT {result['manifest_put']:.0f} manifests/s")
    small_url = f"{server.url}/v2/bench/small/blobs/{small_digest(server.url)}"
    result["head"] = run_hey(small_url, args.wrk_seconds)
    log(f"blob HEAD {result['head']:.0f} req/s")
    # Neighbours of the figures above: a client that opens a connection per request (scripts,
    # health checks, the load bench's prober), and the /v2/ check every client starts with.
    result["head_fresh"] = run_hey(small_url, args.wrk_seconds, "-disable-keepalive")
    log(f"blob HEAD, a fresh connection each {result['head_fresh']:.0f} req/s")
    result["ping"] = run_wrk(f"{server.url}/v2/", args.wrk_seconds, strict=True)
    log(f"GET /v2/ {result['ping']['rps']:.0f} req/s")
    # A small blob's GET: an image's config, which every node pulling the image fetches.
    result["small_get"] = run_wrk(small_url, args.wrk_seconds, strict=True)
    log(f"small blob GET {result['small_get']['rps']:.0f} req/s")
    result["tags_ms"] = tag_listing_ms(server.url)
    log(f"1,000 tags in pages of 100: {result['tags_ms']:.1f} ms")
    result["push"], result["pull"] = aggregate(result["push_mbps"]), aggregate(result["pull_mbps"])
    return result


SMALL_BLOBS, SMALL_THREADS, SMALL_SIZE = 200, 8, 64 * 1024
MID_BLOBS, MID_SIZE = 100, 1024 * 1024
HEY_MODULE = "github.com/rakyll/hey@v0.1.4"


def small_digest(url: str) -> str:
    client = Client(url)
    try:
        return push_small(client, "bench/small", b"a small blob for HEAD")
    finally:
        client.close()


def run_hey(url: str, seconds: int, *options: str) -> float:
    """Requests/s of HEAD under hey -c32 (built into .tools/bin when missing); ``options`` adds
    hey's own (``-disable-keepalive``: a fresh connection per request)."""
    binary = REPO / ".tools" / "bin" / "hey"
    if not binary.exists():
        subprocess.run(["go", "install", HEY_MODULE], check=True, env={**os.environ, "GOBIN": str(binary.parent)})
    out = subprocess.run([str(binary), "-z", f"{seconds}s", "-c", "32", "-m", "HEAD", *options, url],
                         capture_output=True, text=True, check=True).stdout
    codes = re.findall(r"\[(\d{3})\]\s+(\d+) responses", out)
    if any(code != "200" for code, _ in codes):
        raise BenchError(f"blob HEAD answered {codes}")
    return float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]


def tag_listing_ms(url: str, tags: int = 1000, page: int = 100) -> float:
    """Median ms to list ``tags`` tags in pages of ``page`` following Link."""
    client = Client(url)
    try:
        push_image(client, "bench/tags", "t0000")
        manifest = client.call("GET", "/v2/bench/tags/manifests/t0000", headers={"Accept": OCI_MANIFEST})[1]
        for i in range(1, tags):
            client.call("PUT", f"/v2/bench/tags/manifests/t{i:04d}", manifest, {"Content-Type": OCI_MANIFEST},
                        expect=201)
        timings = []
        for _ in range(5):
            started, path, seen = time.perf_counter(), f"/v2/bench/tags/tags/list?n={page}", 0
            while path:
                response, body = client.call("GET", path)
                seen += len(json.loads(body)["tags"])
                link = response.getheader("Link") or ""
                path = link[1:link.index(">")] if link else ""
            timings.append((time.perf_counter() - started) * 1000)
            if seen != tags:
                raise BenchError(f"listed {seen} tags, not {tags}")
        return statistics.median(timings)
    finally:
        client.close()


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

    # Issue 11's targets against Distribution v3.0.0: large push and pull ahead by a fifth.
    row("push MB/s", lambda r: r["push"], ratio_target=1.2)
    row("pull MB/s", lambda r: r["pull"], ratio_target=1.2)
    row("manifest GET req/s", lambda r: r["manifest"]["rps"], ratio_target=1.0)
    row("manifest GET non-2xx + socket errors", lambda r: r["manifest"]["non_2xx"] + r["manifest"]["socket_errors"])
    row("small-blob push (64 KiB, 8 threads) blobs/s", lambda r: r["small_push"], ratio_target=1.0)
    row("1 MiB blob push (8 threads) blobs/s", lambda r: r["mid_push"])
    row("manifest PUT, a tag each (8 threads) manifests/s", lambda r: r["manifest_put"])
    row("blob HEAD (hey -c32) req/s", lambda r: r["head"], ratio_target=1.0)
    row("blob HEAD, a fresh connection each (hey -c32 -disable-keepalive) req/s", lambda r: r["head_fresh"])
    row("small blob GET (wrk -c32) req/s", lambda r: r["small_get"]["rps"])
    row("GET /v2/ (wrk -c32) req/s", lambda r: r["ping"]["rps"])
    row("1,000 tags in pages of 100, ms (lower is better)", lambda r: r["tags_ms"], target="<= 1x")
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


def print_table(rows: list[dict[str, Any]]) -> None:
    header = ["metric", "wharf", "distribution", "ratio", "target"]
    lines = [[row["metric"], cell(row["wharf"]), cell(row["distribution"]), cell(row["ratio"], 2),
              f"{row['target']} {'' if row['met'] is None else ('ok' if row['met'] else 'MISS')}".strip()]
             for row in rows]
    print_grid(header, lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--blob-mib", type=int, default=1024, help="size of the pushed/pulled blob in MiB")
    parser.add_argument("--runs", type=int, default=1, help="push and pull this many times per registry")
    parser.add_argument("--aggregate", choices=["median", "best"], default="median", help="how runs combine")
    parser.add_argument("--wrk-seconds", type=int, default=10, help="duration of the manifest GET load")
    parser.add_argument("--skip-distribution", action="store_true", help="measure Wharf only")
    parser.add_argument("--distribution-bin", default="",
                        help="CNCF Distribution binary (default: v3.0.0 in .tools/bin, built with go install when "
                             "missing; /usr/bin/docker-registry is 2.8.2)")
    parser.add_argument("--tmp-dir", default=None, help="where both registries keep their data (a disk, not tmpfs)")
    parser.add_argument("--json", action="store_true", help="print results as JSON instead of a table")
    args = parser.parse_args()
    if args.blob_mib <= 0 or args.runs <= 0:
        parser.error("--blob-mib and --runs must be positive")
    if not args.skip_distribution and not args.distribution_bin:
        from load_bench import distribution_v3

        args.distribution_bin = distribution_v3()
    if not args.skip_distribution and not os.access(args.distribution_bin, os.X_OK):
        parser.error(f"{args.distribution_bin} not found: install docker-registry or pass --skip-distribution")
    exit_on_sigterm()  # unwind the with-blocks: stop servers, remove dirs

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
    run_main(main)
