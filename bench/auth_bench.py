"""The cost of token authentication on Wharf's hottest read: manifest GET by tag, WHARF_AUTH=none vs token.

Why: with WHARF_AUTH=token every request carries a bearer token (an ES256 JWT) that the gateway
verifies locally, with keys cached from the auth service, before it does anything else. That
work sits on the per-request path that already decides the manifest rate, so its overhead is
measured on its own; the target is under 10% fewer requests per second than without auth.

What is measured: two Wharf stacks run side by side (``python -m services.stack``, warn level,
no access logs), one with WHARF_AUTH=none and one with WHARF_AUTH=token (a random admin
password, WHARF_BCRYPT_ROUNDS=4). The same small OCI image (config + one 4 KiB layer + manifest,
byte for byte the same in both) is pushed to both, to the token stack with a token from
``GET /token?service=wharf&scope=repository:<repo>:pull,push`` (HTTP Basic admin:<password>).
Then ``wrk -t2 -c32`` GETs the manifest by tag with the OCI Accept header (and, in token mode,
``Authorization: Bearer <token>``) for ``--wrk-seconds``. The two modes alternate, in ABBA order,
for ``--rounds`` rounds, because the machine is noisy (2 cores, other work may run); the table
shows every round, the medians and overhead = (none - token) / none. A non-2xx answer fails the
run. The CPU time all of a stack's processes used per request (from /proc) is shown as well:
unlike req/s it hardly depends on what else the machine is doing.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import secrets
import tempfile
import urllib.parse
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import abtest
from common import (
    OCI_MANIFEST,
    BenchError,
    Client,
    Server,
    exit_on_sigterm,
    push_image,
    run_main,
    run_wrk,
)
from proctree import Sampler

REPOSITORY = "bench/small"
TAG = "latest"
TARGET_OVERHEAD = 0.10


def get_token(server: Server, password: str) -> str:
    """A pull,push token for REPOSITORY from the token endpoint, with HTTP Basic credentials."""
    query = urllib.parse.urlencode({"service": "wharf", "scope": f"repository:{REPOSITORY}:pull,push"})
    basic = base64.b64encode(f"admin:{password}".encode()).decode()
    client = Client(server.url, {"Authorization": f"Basic {basic}"})
    try:
        _, body = client.call("GET", f"/token?{query}")
    finally:
        client.close()
    token = json.loads(body).get("token")
    if not isinstance(token, str) or not token:
        raise BenchError(f"no token in the answer of GET /token: {body[:300]!r}")
    return token


def check_auth_is_on(server: Server, token: str) -> None:
    """Without a token the manifest must be refused with a challenge, with it served."""
    client = Client(server.url)
    try:
        response, _ = client.call("GET", f"/v2/{REPOSITORY}/manifests/{TAG}", headers={"Accept": OCI_MANIFEST},
                                  expect=401)
        if "Bearer" not in (response.getheader("WWW-Authenticate") or ""):
            raise BenchError(f"401 without a Bearer challenge: {response.getheader('WWW-Authenticate')!r}")
        client.call("GET", f"/v2/{REPOSITORY}/manifests/{TAG}",
                    headers={"Accept": OCI_MANIFEST, "Authorization": f"Bearer {token}"})
    finally:
        client.close()


def load(server: Server, seconds: int, headers: dict[str, str]) -> dict[str, float]:
    """One wrk run; adds the CPU milliseconds the stack's processes spent per request."""
    url = f"{server.url}/v2/{REPOSITORY}/manifests/{TAG}"
    with Sampler(server.root_pid, interval=0.5) as sampler:
        result = run_wrk(url, seconds, headers, strict=True)
    result["cpu_ms_per_request"] = sum(sampler.cpu_seconds().values()) * 1000 / max(result["requests"], 1)
    return result


def measure(servers: dict[str, Server], password: str, args: argparse.Namespace) -> dict[str, list[dict[str, float]]]:
    layer = os.urandom(4096)  # one image, pushed to both stacks
    token = get_token(servers["token"], password)
    digests = set()
    for mode, server in servers.items():
        client = Client(server.url, {"Authorization": f"Bearer {token}"} if mode == "token" else {})
        try:
            digests.add(push_image(client, REPOSITORY, TAG, layer))
        finally:
            client.close()
    if len(digests) != 1:
        raise BenchError(f"the two stacks hold different manifests: {digests}")
    check_auth_is_on(servers["token"], token)

    def headers(mode: str) -> dict[str, str]:
        # A fresh token per run: the default WHARF_TOKEN_TTL (300 s) must never expire mid-run.
        return {"Authorization": f"Bearer {get_token(servers['token'], password)}"} if mode == "token" else {}

    for mode, server in servers.items():  # warm-up: lazy gRPC channels, key cache, connection pools
        load(server, args.warmup_seconds, headers(mode))
    return abtest.alternate(("none", "token"), args.rounds,
                            lambda mode: load(servers[mode], args.wrk_seconds, headers(mode)),
                            lambda run: f"{run['rps']:.0f} req/s, {run['cpu_ms_per_request']:.2f} CPU ms/request")


def summarize(runs: abtest.Runs) -> dict[str, Any]:
    rps = abtest.overhead(runs, "none", "token", "rps")
    cpu = abtest.overhead(runs, "none", "token", "cpu_ms_per_request", higher_is_better=False)
    return {"median_rps": rps["median"], "median_cpu_ms_per_request": cpu["median"], "overhead": rps["overhead"],
            "overhead_per_round": rps["per_round"], "cpu_overhead": cpu["overhead"],
            "target": f"< {TARGET_OVERHEAD:.0%}", "met": rps["overhead"] < TARGET_OVERHEAD}


def print_table(runs: abtest.Runs) -> None:
    abtest.print_overheads(runs, "none", "token", [("req/s", "rps", True, 0, TARGET_OVERHEAD),
                                                   ("CPU ms/request", "cpu_ms_per_request", False, 2, None)])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3, help="alternating none/token wrk runs per mode")
    parser.add_argument("--wrk-seconds", type=int, default=10, help="duration of each wrk run")
    parser.add_argument("--warmup-seconds", type=int, default=2, help="untimed wrk run per mode before the rounds")
    parser.add_argument("--tmp-dir", default=None, help="where the two stacks keep their data")
    parser.add_argument("--json", action="store_true", help="print results as JSON instead of a table")
    args = parser.parse_args()
    if args.rounds <= 0 or args.wrk_seconds <= 0 or args.warmup_seconds <= 0:
        parser.error("--rounds, --wrk-seconds and --warmup-seconds must be positive")
    exit_on_sigterm()  # unwind the with-blocks: stop both stacks, remove the temp dir

    load_before = os.getloadavg()[0]
    password = secrets.token_urlsafe(24)
    modes = {"none": {"WHARF_AUTH": "none"},
             "token": {"WHARF_AUTH": "token", "WHARF_ADMIN_PASSWORD": password, "WHARF_BCRYPT_ROUNDS": "4"}}
    with tempfile.TemporaryDirectory(prefix="wharf-auth-bench-", dir=args.tmp_dir) as tmp, ExitStack() as stacks:
        servers = abtest.start_stacks(stacks, Path(tmp), modes, "auth")
        runs = measure(servers, password, args)
    summary = summarize(runs)
    load_note = f"1-min load average {load_before:.1f} before, {os.getloadavg()[0]:.1f} after"
    if args.json:
        config = {"wrk": f"-t2 -c32 -d{args.wrk_seconds}s", "rounds": args.rounds, "order": "ABBA", "load": load_note}
        print(json.dumps({"config": config, "runs": runs, "summary": summary}, indent=2))
    else:
        print(f"\nmanifest GET by tag, wrk -t2 -c32 -d{args.wrk_seconds}s, {args.rounds} alternating round(s); "
              f"overhead = (none - token) / none;\n{load_note} (2 cores: anything else running skews the figures)\n")
        print_table(runs)
    return 0


if __name__ == "__main__":
    run_main(main)
