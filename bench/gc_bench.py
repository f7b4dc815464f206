"""Push throughput while garbage collection runs, against the same pushes without it.

Why: `wharf-gc` collects online (services/metadata/README.md, "Online garbage collection"):
pushes go on during a run. The target is at least 80% of the push throughput without a
collection. (Distribution's collector needs the registry read-only or stopped: 0% there.)

What is measured: one Wharf stack (``python -m services.stack``, warn level). It is first
filled with ``--repositories`` repositories of ``--images`` images each (so that a run has a
registry to walk: every repository collected, every stored blob listed), and a third of those
images are deleted (so that it has something to remove). Then, per round, in ABBA order:
``--pushers`` connections push images (two ``--layer-kib`` KiB layers, a config, a tagged
manifest; every fourth image is deleted again, which leaves the next run work) for
``--seconds``, either alone ("quiet") or while `wharf-gc --grace G --delete-untagged` runs
back to back ("gc"; G = ``--grace``, 30 s: a push's layers are linked before its manifest
arrives, and with no grace at all a collection may unlink them in between, which the client
sees as MANIFEST_BLOB_UNKNOWN — the grace is what keeps in-flight pushes whole; the filling's
leftovers pass it during the first rounds). Printed: images/s and MB/s of each mode (medians), the ratio, and the
collections that ran during the "gc" rounds with their mean duration.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from pathlib import Path

import abtest
from common import OCI_MANIFEST, REPO, Client, exit_on_sigterm, push_small, run_main, wharf

TARGET = 0.8


def push_one(client: Client, repository: str, tag: str, layer_bytes: int) -> tuple[str, int]:
    layers = [os.urandom(layer_bytes) for _ in range(2)]
    config = json.dumps({"architecture": "amd64", "os": "linux", "nonce": os.urandom(8).hex()}).encode()
    descriptors = [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": push_small(client, repository, x),
                    "size": len(x)} for x in layers]
    manifest = json.dumps({"schemaVersion": 2, "mediaType": OCI_MANIFEST, "layers": descriptors,
                           "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                                      "digest": push_small(client, repository, config), "size": len(config)}}).encode()
    response, _ = client.call("PUT", f"/v2/{repository}/manifests/{tag}", manifest, {"Content-Type": OCI_MANIFEST},
                              expect=201)
    return response.getheader("Docker-Content-Digest") or "", 2 * layer_bytes + len(config) + len(manifest)


def fill(url: str, repositories: int, images: int) -> None:
    def one(index: int) -> None:
        client = Client(url)
        try:
            for number in range(images):
                digest, _ = push_one(client, f"bench/fill-{index}", f"v{number}", 4096)
                if number % 3 == 0:
                    client.call("DELETE", f"/v2/bench/fill-{index}/manifests/{digest}", expect=202)
        finally:
            client.close()
    with ThreadPoolExecutor(4) as pool:
        list(pool.map(one, range(repositories)))


def pushes(url: str, pushers: int, seconds: float, layer_bytes: int, round_id: int) -> dict[str, float]:
    stop = time.monotonic() + seconds
    counts = [0] * pushers
    sent = [0] * pushers

    def work(number: int) -> None:
        client = Client(url)
        try:
            while time.monotonic() < stop:
                repository = f"bench/push-{number}"
                digest, size = push_one(client, repository, f"r{round_id}-{counts[number] % 8}", layer_bytes)
                counts[number] += 1
                sent[number] += size
                if counts[number] % 4 == 0:
                    client.call("DELETE", f"/v2/{repository}/manifests/{digest}", expect=202)
        finally:
            client.close()
    started = time.perf_counter()
    with ThreadPoolExecutor(pushers) as pool:
        list(pool.map(work, range(pushers)))
    elapsed = time.perf_counter() - started
    return {"images_s": sum(counts) / elapsed, "mb_s": sum(sent) / elapsed / 1e6}


class Collections:
    """`wharf-gc --grace G --delete-untagged` back to back, in the background, until stopped."""

    def __init__(self, data_dir: Path, grace: float) -> None:
        self._data_dir = data_dir
        self._grace = grace
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self.durations: list[float] = []
        self.deleted = 0

    def _run(self) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("WHARF_")}
        env.update(WHARF_DATA_DIR=str(self._data_dir), WHARF_LOG_LEVEL="warning",
                   PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
        while not self._stop.is_set():
            started = time.perf_counter()
            argv = [sys.executable, "-m", "services.gc", "--grace", str(self._grace), "--delete-untagged"]
            result = subprocess.run(argv, env=env, cwd=REPO, capture_output=True, text=True, timeout=600)
            if result.returncode != 0:
                abtest.log(f"wharf-gc failed: {result.stderr[-500:]}")
                return
            self.durations.append(time.perf_counter() - started)
            self.deleted += int(json.loads(result.stdout.strip().splitlines()[-1])["blobs_deleted"])

    def __enter__(self) -> Collections:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=4, help="alternating quiet/gc rounds")
    parser.add_argument("--seconds", type=float, default=20.0, help="duration of each round's pushes")
    parser.add_argument("--pushers", type=int, default=4, help="concurrent pushing connections")
    parser.add_argument("--layer-kib", type=int, default=1024, help="size of each of an image's two layers")
    parser.add_argument("--repositories", type=int, default=100, help="repositories the registry is filled with")
    parser.add_argument("--images", type=int, default=6, help="images per filled repository (a third deleted)")
    parser.add_argument("--grace", type=float, default=30.0, help="the collections' --grace (seconds)")
    parser.add_argument("--tmp-dir", default=None, help="where the stack keeps its data")
    parser.add_argument("--json", action="store_true", help="print results as JSON instead of a table")
    args = parser.parse_args()
    if min(args.rounds, args.seconds, args.pushers, args.layer_kib, args.repositories, args.images) <= 0:
        parser.error("every count and duration must be positive")
    exit_on_sigterm()
    with tempfile.TemporaryDirectory(prefix="wharf-gc-bench-", dir=args.tmp_dir) as tmp, ExitStack() as stacks:
        server = stacks.enter_context(wharf(Path(tmp), {"WHARF_STACK_METRICS": "false"}, name="wharf"))
        data_dir = Path(tmp) / "data"
        abtest.log(f"filling: {args.repositories} repositories x {args.images} images")
        fill(server.url, args.repositories, args.images)
        collections: list[Collections] = []
        round_ids = iter(range(1, 10_000))

        def run(mode: str) -> dict[str, float]:
            with ExitStack() as during:
                if mode == "gc":
                    collections.append(during.enter_context(Collections(data_dir, args.grace)))
                return pushes(server.url, args.pushers, args.seconds, args.layer_kib * 1024, next(round_ids))
        runs = abtest.alternate(("quiet", "gc"), args.rounds, run,
                                lambda r: f"{r['images_s']:.1f} images/s, {r['mb_s']:.1f} MB/s")
    durations = [d for c in collections for d in c.durations]
    result = {mode: {key: statistics.median(r[key] for r in rs) for key in ("images_s", "mb_s")}
              for mode, rs in runs.items()}
    ratio = result["gc"]["mb_s"] / result["quiet"]["mb_s"]
    summary = {"quiet": result["quiet"], "gc": result["gc"], "ratio": ratio, "target": TARGET,
               "collections": len(durations), "mean_collection_s": statistics.mean(durations) if durations else None,
               "blobs_deleted": sum(c.deleted for c in collections), "load_avg": os.getloadavg()[0]}
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        print(f"push throughput, {args.pushers} pushers, 2 x {args.layer_kib} KiB layers per image, "
              f"{args.rounds} rounds of {args.seconds:.0f} s (medians)")
        for mode in ("quiet", "gc"):
            print(f"  {mode:6s} {result[mode]['images_s']:8.1f} images/s {result[mode]['mb_s']:8.1f} MB/s")
        print(f"  during collections: {ratio:.2f}x of without (target >= {TARGET})")
        print(f"  {len(durations)} collections ran, {summary['mean_collection_s'] or 0:.1f} s each on average, "
              f"{summary['blobs_deleted']} blobs deleted")
    return 0 if ratio >= TARGET else 1


if __name__ == "__main__":
    run_main(main)
