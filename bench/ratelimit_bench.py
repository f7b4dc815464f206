"""The cost of rate limits that are not reached: manifest GET and small-push throughput without a
rate-limit rule vs under one (issue 19: "the limit costs nothing measurable when not reached").

What is measured: two Wharf stacks side by side (``python -m services.stack``, warn level, no
access logs), one without a policy, one with a policy file whose ``**`` rule covers every request
at limits the benchmark does not reach (100,000 requests/s, burst 20,000, 10 GiB/s of pushes:
each gateway worker leases 2,000 tokens at a time, so the leases turn over several times a
second, and every request also pays for finding its rule and spending from its leases). All load
comes from one address (127.0.0.1): the worst case, one bucket that every request touches.
Per round, for each mode in ABBA order: ``wrk -t2 -c32`` GETs a manifest by tag for
``--wrk-seconds`` (req/s, and the CPU all the stack's processes used per request), then
``--pushes`` single-request pushes of 64 KiB blobs (POST, then PUT with the body) over 8
connections (pushes/s). Before the rounds, a second rule with a tiny limit is hit on purpose
to show that the limits are in force in the "rule" stack.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import urllib.error
import urllib.request
from contextlib import ExitStack
from pathlib import Path

import abtest
from common import BenchError, Client, Server, exit_on_sigterm, push_image, run_main, run_wrk, small_pushes
from proctree import Sampler

REPOSITORY = "bench/ratelimit"
TAG = "latest"
TARGET = 0.03
POLICY = """
ratelimits:
  - repositories: "proof/**"          # reached on purpose: the limits are on
    requests_per_second: 1
    burst: 2
  - repositories: "**"                # every request of the benchmark: never reached
    requests_per_second: 100000
    burst: 20000
    push_bytes_per_second: 10GiB
"""


def limits_in_force(server: Server) -> bool:
    """True when a burst of 2 on proof/** gives a 429 by the fifth request."""
    for _ in range(5):
        try:
            urllib.request.urlopen(f"{server.url}/v2/proof/app/tags/list", timeout=10).close()
        except urllib.error.HTTPError as err:
            if err.code == 429:
                return True
    return False


def one_round(server: Server, args: argparse.Namespace) -> dict[str, float]:
    with Sampler(server.root_pid, interval=0.5) as sampler:
        result = run_wrk(f"{server.url}/v2/{REPOSITORY}/manifests/{TAG}", args.wrk_seconds, strict=True)
    result["cpu_ms_per_request"] = sum(sampler.cpu_seconds().values()) * 1000 / max(result["requests"], 1)
    result["small_pushes_s"] = small_pushes(server.url, REPOSITORY, args.pushes)
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=4, help="alternating none/rule rounds")
    parser.add_argument("--wrk-seconds", type=int, default=6, help="duration of each manifest GET run")
    parser.add_argument("--pushes", type=int, default=200, help="64 KiB pushes per round")
    parser.add_argument("--tmp-dir", default=None, help="where the two stacks keep their data")
    parser.add_argument("--json", action="store_true", help="print results as JSON instead of a table")
    args = parser.parse_args()
    if min(args.rounds, args.wrk_seconds, args.pushes) <= 0:
        parser.error("every count and duration must be positive")
    exit_on_sigterm()
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="wharf-ratelimit-bench-", dir=args.tmp_dir) as tmp, \
            ExitStack() as stacks:
        policy = Path(tmp) / "policy.yaml"
        policy.write_text(POLICY)
        modes = {"none": {}, "rule": {"WHARF_POLICY_FILE": str(policy)}}
        servers = abtest.start_stacks(stacks, Path(tmp), modes, "ratelimit")
        for mode, server in servers.items():
            client = Client(server.url)
            try:
                push_image(client, REPOSITORY, TAG, os.urandom(4096))
            finally:
                client.close()
            run_wrk(f"{server.url}/v2/{REPOSITORY}/manifests/{TAG}", 2, strict=True)  # warm-up
            if limits_in_force(server) != (mode == "rule"):
                raise BenchError(f"the {mode} stack's limits are not what the benchmark expects")
        runs = abtest.alternate(
            ("none", "rule"), args.rounds, lambda mode: one_round(servers[mode], args),
            lambda r: f"{r['rps']:.0f} req/s, {r['cpu_ms_per_request']:.3f} CPU ms/req, "
                      f"{r['small_pushes_s']:.0f} small pushes/s")
    figures = [("manifest GET req/s", "rps", True, 0, TARGET),
               ("CPU ms/request", "cpu_ms_per_request", False, 3, TARGET),
               ("64 KiB pushes/s", "small_pushes_s", True, 0, TARGET)]
    load_note = f"1-min load average {load_before:.1f} before, {os.getloadavg()[0]:.1f} after"
    abtest.report(runs, "none", "rule", figures, args.json,
                  f"no rate-limit rule vs a rule not reached, {args.rounds} alternating round(s), "
                  f"wrk -t2 -c32 -d{args.wrk_seconds}s, {args.pushes} pushes of 64 KiB over 8 connections; "
                  f"overhead = how much worse 'rule' is",
                  load_note)
    return 0


if __name__ == "__main__":
    run_main(main)
