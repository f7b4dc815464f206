"""The cost of metrics: manifest GET and push throughput with every service's /metrics off vs on.

Why: every request is counted and timed (services/common/metrics.py), on the gateway's hottest
path too (a cached manifest GET, tens of microseconds of work); the target is under 3% fewer
requests, and under 3% less push throughput, than without metrics.

What is measured: two Wharf stacks side by side (``python -m services.stack``, warn level, no
access logs), one with WHARF_STACK_METRICS=false and one with metrics on (the default: every
service serves /metrics, the gateway's master adds up its workers). A Prometheus-like scraper
GETs every /metrics of the "on" stack every ``--scrape-interval`` seconds during its runs (5:
three times Prometheus's default rate), so what a scrape costs counts too.
Per round, for each mode in ABBA order: ``wrk -t2 -c32`` GETs a manifest by tag for
``--wrk-seconds`` (req/s and the CPU all the stack's processes used per request, from /proc,
which hardly depends on what else the machine does), then ``--pushes`` uploads of
``--blob-mib`` MiB each (chunked PATCHes, one connection; MB/s), then 200 single-request pushes
of 64 KiB over 8 connections (pushes/s, the neighbour of the big-push figure).
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import threading
import urllib.request
from contextlib import ExitStack
from pathlib import Path

import abtest
from common import (
    Client,
    Payload,
    Server,
    exit_on_sigterm,
    push,
    push_image,
    run_main,
    run_wrk,
    small_pushes,
)
from proctree import Sampler

REPOSITORY = "bench/metrics"
TAG = "latest"
TARGET = 0.03
MIB = 1024 * 1024


class Scraper:
    """GETs every /metrics of a stack every ``interval`` seconds, as Prometheus would."""

    def __init__(self, data_dir: Path, interval: float) -> None:
        self._interval = interval
        self._addresses = list(json.loads((data_dir / "metrics.json").read_text()).values())
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self.scrapes = 0

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            for address in self._addresses:
                with urllib.request.urlopen(f"http://{address}/metrics", timeout=10) as answer:
                    answer.read()
                self.scrapes += 1

    def __enter__(self) -> Scraper:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def one_round(server: Server, data_dir: Path | None, args: argparse.Namespace, seed: int) -> dict[str, float]:
    with ExitStack() as scraping:
        if data_dir is not None:
            scraping.enter_context(Scraper(data_dir, args.scrape_interval))
        with Sampler(server.root_pid, interval=0.5) as sampler:
            result = run_wrk(f"{server.url}/v2/{REPOSITORY}/manifests/{TAG}", args.wrk_seconds, strict=True)
        result["cpu_ms_per_request"] = sum(sampler.cpu_seconds().values()) * 1000 / max(result["requests"], 1)
        client = Client(server.url)
        try:
            seconds = sum(push(client, REPOSITORY, Payload(args.blob_mib * MIB, seed * 100 + n))
                          for n in range(args.pushes))
        finally:
            client.close()
        result["push_mb_s"] = args.pushes * args.blob_mib * MIB / seconds / 1e6
        result["small_pushes_s"] = small_pushes(server.url, REPOSITORY)
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=4, help="alternating off/on rounds")
    parser.add_argument("--wrk-seconds", type=int, default=8, help="duration of each manifest GET run")
    parser.add_argument("--pushes", type=int, default=3, help="large pushes per round")
    parser.add_argument("--blob-mib", type=int, default=128, help="size of each large push")
    parser.add_argument("--scrape-interval", type=float, default=5.0, help="seconds between scrapes of the 'on' stack")
    parser.add_argument("--tmp-dir", default=None, help="where the two stacks keep their data")
    parser.add_argument("--json", action="store_true", help="print results as JSON instead of a table")
    args = parser.parse_args()
    if min(args.rounds, args.wrk_seconds, args.pushes, args.blob_mib) <= 0:
        parser.error("every count and duration must be positive")
    exit_on_sigterm()
    load_before = os.getloadavg()[0]
    modes = {"off": {"WHARF_STACK_METRICS": "false"}, "on": {"WHARF_STACK_METRICS": "true"}}
    with tempfile.TemporaryDirectory(prefix="wharf-metrics-bench-", dir=args.tmp_dir) as tmp, ExitStack() as stacks:
        servers = abtest.start_stacks(stacks, Path(tmp), modes, "metrics")
        layer = os.urandom(4096)
        for server in servers.values():
            client = Client(server.url)
            try:
                push_image(client, REPOSITORY, TAG, layer)
            finally:
                client.close()
            run_wrk(f"{server.url}/v2/{REPOSITORY}/manifests/{TAG}", 2, strict=True)  # warm-up
        seeds = iter(range(1, 1000))
        runs = abtest.alternate(
            ("off", "on"), args.rounds,
            lambda mode: one_round(servers[mode], Path(tmp) / mode / "data" if mode == "on" else None, args,
                                   next(seeds)),
            lambda r: f"{r['rps']:.0f} req/s, {r['cpu_ms_per_request']:.3f} CPU ms/req, {r['push_mb_s']:.0f} MB/s, "
                      f"{r['small_pushes_s']:.0f} small pushes/s")
    figures = [("manifest GET req/s", "rps", True, 0, TARGET),
               ("CPU ms/request", "cpu_ms_per_request", False, 3, None),
               (f"push MB/s ({args.blob_mib} MiB)", "push_mb_s", True, 0, TARGET),
               ("64 KiB pushes/s", "small_pushes_s", True, 0, None)]
    load_note = f"1-min load average {load_before:.1f} before, {os.getloadavg()[0]:.1f} after"
    abtest.report(runs, "off", "on", figures, args.json,
                  f"metrics off vs on (scraped every {args.scrape_interval:g} s), {args.rounds} alternating round(s), "
                  f"wrk -t2 -c32 -d{args.wrk_seconds}s; "
                  f"overhead = how much worse 'on' is",
                  load_note)
    return 0


if __name__ == "__main__":
    run_main(main)
