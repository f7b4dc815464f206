"""Wharf's pull-through cache against CNCF Distribution v3.0.0 in proxy mode, same upstream, same run.

The upstream is a plain Distribution v3.0.0 on the filesystem, filled by the bench with two
images (``bench/first``, ``bench/crowd``), each one layer of ``--blob-mib`` MiB from a seed of its
own (so no scenario finds its blob cached by another). Everyone reaches it through a throttling
proxy the bench runs in a process of its own (throttle.py): ``--upstream-mbps`` MB/s per
connection, ``--latency-ms`` before each connection and each request. So the upstream is slow
the way a remote registry is, and the figures measure the design rather than two processes
sharing two cores; the proxy also counts the bytes and blob GETs the upstream served.

Measured, one puller after the other (never two at once):

1. direct: the manifest and then the layer of ``bench/first`` straight from the throttled
   upstream, the baseline a mirror's first pull is compared with.
2. Wharf (``python -m services.stack`` with ``WHARF_MIRRORS_FILE`` naming the proxy, prefix
   ``upstream.bench``, ``insecure: true``), pulling ``upstream.bench/bench/first``; and
3. Distribution v3.0.0 with ``proxy.remoteurl`` at the proxy and a fresh cache directory,
   pulling ``bench/first``. For each mirror:
   - first pull: the manifest GET (ms), then the layer's GET, timed (s, MB/s), uncached;
   - cached pull: three more GETs of the layer (a second apart from the first), median MB/s,
     and the upstream bytes they caused (should be none);
   - crowd: the manifest of ``bench/crowd`` once, then ``--concurrent`` clients released
     together each GET its uncached layer: total time until the last finished, and the bytes
     the upstream served meanwhile as a multiple of the layer's size (Wharf fetches a blob
     once however many ask; Distribution streams from the upstream for each request that
     arrives while its first fetch is in flight).

Every pull reads the layer in 4 MiB pieces and checks its length and sha256 (so a cached pull
is capped near the client's sha256 rate, ~1.2 GB/s on one core here); every manifest is checked
against its digest. Units: MB = 10^6 bytes. Ratios within about +-20% of 1 are ties on these
machines (../shared/PERFORMANCE-NOTES.md). Targets: first pull Wharf/direct >= 0.9x and
Wharf/Distribution >= 1x; cached pull Wharf/Distribution >= 1x; crowd upstream bytes for Wharf 1x.
The exit status is 0 whether they are met or not (1 when the bench itself fails).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import hashlib
import json
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from common import (
    DISTRIBUTION_CONFIG,
    MB,
    MIB,
    OCI_MANIFEST,
    BenchError,
    Client,
    Payload,
    cell,
    distribution,
    exit_on_sigterm,
    print_grid,
    pull,
    push,
    push_small,
    run_main,
    wharf,
)
from throttle import Throttle, since, throttled

PREFIX = "upstream.bench"
FIRST, CROWD, TAG = "bench/first", "bench/crowd", "v1"
CACHED_PULLS = 3
# Distribution in proxy mode: the common config (filesystem, in-memory descriptor cache) plus the remote.
PROXY_CONFIG = DISTRIBUTION_CONFIG + 'proxy: {{remoteurl: "{remote}"}}\n'


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# -- the upstream -----------------------------------------------------------------------------

def upload_image(url: str, name: str, layer: Payload) -> str:
    """Config + ``layer`` (a chunked upload) + OCI manifest under ``TAG``; returns the manifest digest."""
    client = Client(url)
    try:
        push(client, name, layer)
        config = json.dumps({"architecture": "amd64", "os": "linux",
                             "rootfs": {"type": "layers", "diff_ids": [layer.digest]}}).encode()
        manifest = json.dumps({
            "schemaVersion": 2, "mediaType": OCI_MANIFEST,
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                       "digest": push_small(client, name, config), "size": len(config)},
            "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": layer.digest,
                        "size": layer.size}]}).encode()
        client.call("PUT", f"/v2/{name}/manifests/{TAG}", manifest, {"Content-Type": OCI_MANIFEST}, expect=201)
    finally:
        client.close()
    return f"sha256:{hashlib.sha256(manifest).hexdigest()}"


# -- pulls ------------------------------------------------------------------------------------

def get_manifest(url: str, name: str, digest: str) -> float:
    """GET of ``name:TAG``; checks the body against ``digest``. Returns seconds."""
    started = time.perf_counter()
    client = Client(url)
    try:
        _, body = client.call("GET", f"/v2/{name}/manifests/{TAG}", headers={"Accept": OCI_MANIFEST})
    finally:
        client.close()
    if f"sha256:{hashlib.sha256(body).hexdigest()}" != digest:
        raise BenchError(f"the manifest of {name}:{TAG} does not match {digest}")
    return time.perf_counter() - started


def first_pull(url: str, name: str, manifest: str, layer: Payload, throttle: Throttle) -> dict[str, Any]:
    before = throttle.snapshot()
    manifest_s = get_manifest(url, name, manifest)
    seconds = pull(url, name, layer, verify=True)
    upstream = since(before, throttle.snapshot())
    return {"manifest_ms": 1000 * manifest_s, "seconds": seconds, "mbps": layer.size / seconds / MB,
            "upstream_x": upstream["bytes_down"] / layer.size, "upstream_blob_gets": upstream["blob_gets"]}


def cached_pulls(url: str, name: str, layer: Payload, throttle: Throttle) -> dict[str, Any]:
    time.sleep(1)  # the first pull's commit may land just after its last byte
    before = throttle.snapshot()
    rates = [layer.size / pull(url, name, layer, verify=True) / MB for _ in range(CACHED_PULLS)]
    upstream = since(before, throttle.snapshot())
    return {"mbps": statistics.median(rates), "runs_mbps": rates, "upstream_x": upstream["bytes_down"] / layer.size,
            "upstream_blob_gets": upstream["blob_gets"]}


def crowd_pulls(url: str, name: str, manifest: str, layer: Payload, clients: int,
                throttle: Throttle) -> dict[str, Any]:
    """``clients`` threads released together, each pulling the uncached ``layer``."""
    get_manifest(url, name, manifest)
    start = threading.Barrier(clients + 1)

    def one(_: int) -> float:
        start.wait()
        return pull(url, name, layer, verify=True)

    before = throttle.snapshot()
    with concurrent.futures.ThreadPoolExecutor(clients) as pool:
        futures = [pool.submit(one, number) for number in range(clients)]
        start.wait(timeout=60)
        started = time.perf_counter()
        seconds = [future.result() for future in futures]
        total = time.perf_counter() - started
    upstream = since(before, throttle.snapshot())
    return {"clients": clients, "total_s": total, "first_client_s": min(seconds),
            "median_client_s": statistics.median(seconds), "upstream_x": upstream["bytes_down"] / layer.size,
            "upstream_blob_gets": upstream["blob_gets"], "upstream_connections": upstream["connections"]}


def measure_mirror(url: str, prefix: str, images: dict[str, tuple[str, Payload]], clients: int,
                   throttle: Throttle, who: str) -> dict[str, Any]:
    first_manifest, first_layer = images[FIRST]
    result: dict[str, Any] = {"first": first_pull(url, prefix + FIRST, first_manifest, first_layer, throttle)}
    log(f"[{who}] first pull {result['first']['seconds']:.2f} s, {result['first']['mbps']:.1f} MB/s, "
        f"upstream {result['first']['upstream_x']:.2f}x the layer")
    result["cached"] = cached_pulls(url, prefix + FIRST, first_layer, throttle)
    log(f"[{who}] cached pulls {', '.join(f'{r:.0f}' for r in result['cached']['runs_mbps'])} MB/s, "
        f"upstream {result['cached']['upstream_x']:.2f}x")
    crowd_manifest, crowd_layer = images[CROWD]
    result["crowd"] = crowd_pulls(url, prefix + CROWD, crowd_manifest, crowd_layer, clients, throttle)
    log(f"[{who}] {clients} concurrent first pulls in {result['crowd']['total_s']:.2f} s, "
        f"upstream {result['crowd']['upstream_x']:.2f}x the layer in {result['crowd']['upstream_blob_gets']} GETs")
    return result


# -- report -----------------------------------------------------------------------------------

def ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def checks(results: dict[str, Any]) -> list[dict[str, Any]]:
    """One dict per target: what, measured value, target text, met."""
    ours, theirs, direct = results["wharf"], results["distribution"], results["direct"]
    found = [
        ("first pull MB/s, Wharf / direct", ratio(ours["first"]["mbps"], direct["mbps"]), 0.9),
        ("first pull MB/s, Wharf / Distribution", ratio(ours["first"]["mbps"], theirs["first"]["mbps"]), 1.0),
        ("cached pull MB/s, Wharf / Distribution", ratio(ours["cached"]["mbps"], theirs["cached"]["mbps"]), 1.0),
    ]
    rows = [{"check": what, "value": value, "target": f">= {target:g}x", "met": value is not None and value >= target}
            for what, value, target in found]
    crowd = ours["crowd"]
    rows.append({"check": f"{crowd['clients']} concurrent first pulls, Wharf's upstream bytes / layer",
                 "value": crowd["upstream_x"], "target": "1x (one blob GET, < 1.01x)",
                 "met": crowd["upstream_blob_gets"] == 1 and crowd["upstream_x"] < 1.01})
    return rows


def print_report(results: dict[str, Any], args: argparse.Namespace) -> None:
    direct, ours, theirs = results["direct"], results["wharf"], results["distribution"]
    clients = args.concurrent

    def line(label: str, key: tuple[str, str], digits: int = 1, with_direct: bool = False) -> list[str]:
        values = [direct.get(key[1]) if with_direct else None, ours[key[0]][key[1]], theirs[key[0]][key[1]]]
        return [label, *[cell(v, digits) for v in values], cell(ratio(values[1], values[0]), 2),
                cell(ratio(values[1], values[2]), 2)]

    lines = [
        line("first pull: manifest GET ms", ("first", "manifest_ms"), with_direct=True),
        line("first pull: layer GET s", ("first", "seconds"), 2, with_direct=True),
        line("first pull: layer MB/s", ("first", "mbps"), with_direct=True),
        line("first pull: upstream bytes / layer", ("first", "upstream_x"), 2, with_direct=True),
        line(f"cached pull: layer MB/s (median of {CACHED_PULLS})", ("cached", "mbps")),
        line("cached pulls: upstream bytes / layer", ("cached", "upstream_x"), 2),
        line(f"{clients} concurrent first pulls: total s", ("crowd", "total_s"), 2),
        line(f"{clients} concurrent first pulls: first client done s", ("crowd", "first_client_s"), 2),
        line(f"{clients} concurrent first pulls: median client s", ("crowd", "median_client_s"), 2),
        line(f"{clients} concurrent first pulls: upstream bytes / layer", ("crowd", "upstream_x"), 2),
        line(f"{clients} concurrent first pulls: upstream blob GETs", ("crowd", "upstream_blob_gets")),
    ]
    print(f"\nlayer {args.blob_mib} MiB; upstream: Distribution v3.0.0 behind a proxy at {args.upstream_mbps:g} MB/s "
          f"per connection and {args.latency_ms:g} ms per connection and request;\nMB = 10^6 bytes; ratios of s, ms "
          f"and bytes: lower is better; ratios within +-20% of 1 are ties on this machine;\n{results['load']} "
          "(2 cores: anything else running skews the figures)\n")
    print_grid(["metric", "direct", "wharf", "distribution", "wharf/direct", "wharf/distribution"], lines)
    print()
    print_grid(["target", "measured", "target", "verdict"],
               [[row["check"], cell(row["value"], 2), row["target"], "met" if row["met"] else "NOT MET"]
                for row in results["checks"]])


# -- main -------------------------------------------------------------------------------------

def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--blob-mib", type=int, default=512, help="size of each image's layer in MiB")
    parser.add_argument("--concurrent", type=int, default=20, help="clients pulling one uncached layer at once")
    parser.add_argument("--upstream-mbps", type=float, default=50.0, help="MB/s per connection to the upstream")
    parser.add_argument("--latency-ms", type=float, default=20.0, help="added per upstream connection and request")
    parser.add_argument("--distribution-bin", default="", help="CNCF Distribution v3 binary (default: .tools/bin)")
    parser.add_argument("--tmp-dir", default=None, help="where the registries keep their data (a disk, not tmpfs)")
    parser.add_argument("--json", action="store_true", help="print results as JSON instead of tables")
    args = parser.parse_args()
    if args.blob_mib <= 0 or args.concurrent <= 0 or args.upstream_mbps <= 0 or args.latency_ms < 0:
        parser.error("--blob-mib, --concurrent and --upstream-mbps must be positive, --latency-ms not negative")
    if not args.distribution_bin:
        from load_bench import distribution_v3

        args.distribution_bin = distribution_v3()
    if not os.access(args.distribution_bin, os.X_OK):
        parser.error(f"{args.distribution_bin} is not an executable")
    exit_on_sigterm()

    load_before = os.getloadavg()[0]
    log(f"hashing 2 x {args.blob_mib} MiB layers...")
    layers = {FIRST: Payload(args.blob_mib * MIB, seed=1601), CROWD: Payload(args.blob_mib * MIB, seed=1602)}
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="wharf-mirror-bench-", dir=args.tmp_dir) as tmp_name:
        tmp = Path(tmp_name)
        for part in ("upstream", "wharf", "distribution"):
            (tmp / part).mkdir()
        with distribution(tmp / "upstream", args.distribution_bin, name="upstream") as upstream:
            log(f"filling the upstream ({upstream.url})...")
            images = {name: (upload_image(upstream.url, name, layer), layer) for name, layer in layers.items()}
            with throttled(upstream.url, args.upstream_mbps * MB, args.latency_ms / 1000) as throttle:
                manifest, layer = images[FIRST]
                results["direct"] = first_pull(throttle.url, FIRST, manifest, layer, throttle)
                log(f"[direct] first pull {results['direct']['seconds']:.2f} s, {results['direct']['mbps']:.1f} MB/s")
                mirrors = tmp / "mirrors.yaml"
                mirrors.write_text(f"upstreams:\n  - prefix: {PREFIX}\n    url: {throttle.url}\n    insecure: true\n"
                                   "    tag_ttl: 1h\n")
                with wharf(tmp / "wharf", {"WHARF_MIRRORS_FILE": str(mirrors)}) as server:
                    results["wharf"] = measure_mirror(server.url, f"{PREFIX}/", images, args.concurrent, throttle,
                                                      "wharf")
                proxy_config = PROXY_CONFIG.replace("{remote}", throttle.url)
                with distribution(tmp / "distribution", args.distribution_bin, config=proxy_config) as server:
                    results["distribution"] = measure_mirror(server.url, "", images, args.concurrent, throttle,
                                                             "distribution")
    results["load"] = f"1-min load average {load_before:.1f} before, {os.getloadavg()[0]:.1f} after"
    results["checks"] = checks(results)
    if args.json:
        config = {"blob_bytes": args.blob_mib * MIB, "concurrent": args.concurrent,
                  "upstream_mbps": args.upstream_mbps, "latency_ms": args.latency_ms, "cached_pulls": CACHED_PULLS}
        print(json.dumps({"config": config, **results}, indent=2))
    else:
        print_report(results, args)
    return 0


if __name__ == "__main__":
    run_main(main)
