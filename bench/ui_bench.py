"""The web UI's repositories page on a large registry (issue 21): seeds N repositories through the
registry API, then measures the server time of list pages (first, middle, a search, by push).

Each repository gets one small config and one manifest, pushed monolithically, many at a time.
Server time is the gateway's own: the time from the request to the last byte of the page, on a
keep-alive connection from this machine (the network adds nothing measurable on loopback).

    .venv/bin/python bench/ui_bench.py                 # 10,000 repositories
    .venv/bin/python bench/ui_bench.py --repositories 2000 --rounds 20
    .venv/bin/python bench/ui_bench.py --data-dir /tmp/wharf-ui-bench   # seeds once, reuses after
"""

from __future__ import annotations

import argparse
import concurrent.futures
import hashlib
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import requests

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from tests.support.stack import RunningStack  # noqa: E402

MANIFEST = "application/vnd.oci.image.manifest.v1+json"


def _push(session: requests.Session, url: str, name: str) -> None:
    config = json.dumps({"architecture": "amd64", "os": "linux", "config": {"Labels": {"name": name}}}).encode()
    digest = "sha256:" + hashlib.sha256(config).hexdigest()
    answer = session.post(f"{url}/v2/{name}/blobs/uploads/", params={"digest": digest}, data=config, timeout=30)
    answer.raise_for_status()
    manifest = json.dumps({"schemaVersion": 2, "mediaType": MANIFEST, "config": {
        "mediaType": "application/vnd.oci.image.config.v1+json", "digest": digest, "size": len(config)},
        "layers": []}).encode()
    answer = session.put(f"{url}/v2/{name}/manifests/latest", data=manifest, headers={"Content-Type": MANIFEST},
                         timeout=30)
    answer.raise_for_status()


def seed(url: str, count: int, workers: int) -> float:
    names = [f"team{i % 100:02d}/app-{i:05d}" for i in range(count)]
    started = time.perf_counter()

    def run(part: list[str]) -> None:
        with requests.Session() as session:
            for name in part:
                _push(session, url, name)

    with concurrent.futures.ThreadPoolExecutor(workers) as pool:
        list(pool.map(run, [names[i::workers] for i in range(workers)]))
    return time.perf_counter() - started


def measure(url: str, path: str, rounds: int, push_first: bool = False) -> tuple[float, float, int]:
    """(median ms, max ms, rows) of GET path; ``push_first``: a new repository pushed before each
    request (not timed), so each page merges a push into the worker's snapshot."""
    times: list[float] = []
    rows = 0
    with requests.Session() as session:
        session.get(url + path, timeout=30)  # warm the connection
        for round_ in range(rounds):
            if push_first:
                _push(session, url, f"pushed/during-bench-{time.time_ns()}-{round_}")
            started = time.perf_counter()
            answer = session.get(url + path, timeout=30)
            times.append((time.perf_counter() - started) * 1000)
            answer.raise_for_status()
            rows = answer.text.count('class="repository"')
    return statistics.median(times), max(times), rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    parser.add_argument("--repositories", type=int, default=10000)
    parser.add_argument("--workers", type=int, default=32, help="pushes in parallel")
    parser.add_argument("--rounds", type=int, default=20, help="requests per page measured")
    parser.add_argument("--data-dir", type=Path, help="keep the stack's data here; a directory this bench "
                        "seeded before (with as many repositories) is reused without seeding again")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        data = args.data_dir or Path(folder) / "data"
        marker = data / f".ui-bench-seeded-{args.repositories}"
        stack = RunningStack(data, {"WHARF_LOG_LEVEL": "warning"}).start()
        try:
            if marker.exists():
                print(f"reusing the {args.repositories} repositories seeded in {data}")
            else:
                seconds = seed(stack.url, args.repositories, args.workers)
                marker.touch()
                print(f"seeded {args.repositories} repositories in {seconds:.1f} s "
                      f"({args.repositories / seconds:.0f}/s, {args.workers} in parallel)")
            middle = f"team{49:02d}/app-{(args.repositories // 2):05d}"
            pages = {"first page, by name": "/", "a middle page, by name": f"/?after={middle}",
                     "first page, last pushed first": "/?sort=pushed",
                     "a search ('app-0012'), by name": "/?q=app-0012",
                     "a search matching nothing": "/?q=no-such-name",
                     "the list alone (search box)": "/ui/repositories?q=team07",
                     "last pushed first, a push before each": "/?sort=pushed"}
            print(f"{'page':40} {'median ms':>10} {'max ms':>8} {'rows':>5}")
            for label, path in pages.items():
                median, worst, rows = measure(stack.url, path, args.rounds, push_first="a push" in label)
                print(f"{label:40} {median:10.1f} {worst:8.1f} {rows:5d}")
        finally:
            stack.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
