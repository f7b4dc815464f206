"""Wharf on S3 (Issue 4) side by side with CNCF Distribution's S3 driver, on the SAME S3 server.

Why: with WHARF_STORAGE=s3 the bytes live in object storage, so the reference for a pull is the
S3 server itself, and for a push the Go registry doing the same job. Targets: push >= 1x
Distribution; pull with redirects >= 0.9x of the S3 server's own GET of the object; the blob
store's peak RSS < 150 MB while it moves a 1 GiB blob (it must stream, never buffer a blob).

What is measured, one thing at a time (the machine has 2 cores), in one run against one S3
server (SeaweedFS ``weed mini`` from the venv, or MinIO with ``--minio``):

1. Wharf (``python -m services.stack``, WHARF_S3_REDIRECT=true): push of one ``--blob-mib`` blob
   in 16 MiB PATCHes (POST .. PUT ?digest=, the client of registry_bench.py; the closing PUT,
   which on S3 completes the multipart upload and copies the object into place, is also timed
   alone); then its pull: the gateway answers 307 to a presigned URL, the client follows it on
   a fresh connection without Authorization; then the S3 server's direct GET of the same object
   (a raw GET of a presigned URL from the minio SDK, read by the same client code): the reference.
2. Wharf restarted on the same data with WHARF_S3_REDIRECT=false: pull streamed through the
   gateway (S3 -> blob store -> gRPC -> gateway -> client).
3. Distribution 2.8 with its S3 driver (own bucket, chunksize 16 MiB, rootdirectory /dist,
   redirects on): push and pull via 307; restarted with redirects disabled: streamed pull.

During each phase the VmRSS and CPU time of every process of the registry and of the S3 server
are sampled from /proc (proctree.py): peak RSS per process, CPU seconds show where time goes.
MB = 10^6 bytes. On these noisy machines a ratio within about +-20% of 1 is a tie.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

from common import (
    CHUNK,
    MB,
    MIB,
    RSS_LIMIT_MB,
    BenchError,
    Client,
    Payload,
    Server,
    cell,
    distribution,
    exit_on_sigterm,
    fetch,
    merge_max,
    print_grid,
    pull,
    push,
    run_main,
    signals_held,
    wharf,
)
from minio import Minio
from proctree import Sampler

from services.blobstore.layout import blob_key
from tests.support.s3 import S3Server, start_minio, start_seaweedfs

NAME = "bench/big"
WHARF_BUCKET, DIST_BUCKET = "wharf-bench", "dist-bench"
DIST_CONFIG = """version: 0.1
log:
  level: warn
  accesslog:
    disabled: true
storage:
  s3:
    region: us-east-1
    regionendpoint: http://{endpoint}
    bucket: {bucket}
    accesskey: {access_key}
    secretkey: {secret_key}
    secure: false
    v4auth: true
    chunksize: 16777216
    rootdirectory: /dist
  redirect:
    disable: {disable}
  delete:
    enabled: true
  cache:
    blobdescriptor: inmemory
http:
  addr: "127.0.0.1:{port}"
"""


def log(message: str) -> None:
    print(f"[s3] {message}", file=sys.stderr, flush=True)


@contextmanager
def s3_server(directory: Path, minio_bin: str | None) -> Iterator[S3Server]:
    with signals_held() as release:
        server = start_minio(directory, minio_bin) if minio_bin else start_seaweedfs(directory)
        try:
            release()
            yield server
        finally:
            with signals_held():  # another signal must not cut the clean-up short
                server.stop()


def sdk(server: S3Server) -> Minio:
    return Minio(server.endpoint, access_key=server.access_key, secret_key=server.secret_key, secure=False,
                 region="us-east-1")


def phase(label: str, size: int, roots: dict[str, int], actions: list[Callable[[], float]]) -> dict[str, Any]:
    """Runs each timed action while sampling the process trees in ``roots`` ("registry", "s3")."""
    result: dict[str, Any] = {"mbps": [], "rss_mb": {}, "cpu_s": {}, "s3_cpu_s": 0.0}
    for action in actions:
        with ExitStack() as stack:
            samplers = {role: stack.enter_context(Sampler(pid)) for role, pid in roots.items()}
            seconds = action()
        result["mbps"].append(size / seconds / MB)
        if "registry" in samplers:
            merge_max(result["rss_mb"], samplers["registry"].peak_mb)
            merge_max(result["cpu_s"], samplers["registry"].cpu_seconds())
        result["s3_cpu_s"] = max(result["s3_cpu_s"], sum(samplers["s3"].cpu_seconds().values()))
        log(f"{label}: {size / MB:.0f} MB in {seconds:.2f} s = {result['mbps'][-1]:.0f} MB/s")
    result["median"] = statistics.median(result["mbps"])
    return result


def pull_action(server: Server, blob: Payload, redirect: bool) -> Callable[[], float]:
    """A timed pull that also checks the answer was (or was not) a 307 to S3."""
    def action() -> float:
        statuses: list[int] = []
        seconds = pull(server.url, NAME, blob, statuses=statuses)
        if statuses != ([307, 200] if redirect else [200]):
            raise BenchError(f"{server.name}: blob GET answered {statuses}, expected redirect={redirect}")
        return seconds
    return action


def measure_registry(server: Server, s3_root: int, payloads: list[Payload], push_too: bool,
                     redirect: bool, reference: Callable[[], float] | None = None) -> dict[str, Any]:
    roots = {"registry": server.root_pid, "s3": s3_root}
    blob, result = payloads[-1], {}
    if push_too:
        client, commits = Client(server.url), []
        try:
            result["push"] = phase(f"{server.name} push", blob.size, roots,
                                   [lambda p=p: push(client, NAME, p, commits) for p in payloads])
        finally:
            client.close()
        result["push"]["commit_s"] = statistics.median(commits)
        log(f"{server.name} push: the closing PUT (commit) took {commits[-1]:.2f} s")
        pull(server.url, NAME, blob, verify=True)  # untimed: the content is right
    key = "pull_redirect" if redirect else "pull_streamed"
    result[key] = phase(f"{server.name} pull", blob.size, roots, [pull_action(server, blob, redirect)] * len(payloads))
    if reference:
        result["s3_get"] = phase("S3 direct GET", blob.size, {"s3": s3_root}, [reference] * len(payloads))
    return result


def measure(s3: S3Server, payloads: list[Payload], workdir: Path, args: argparse.Namespace) -> dict[str, Any]:
    blob, s3_root = payloads[-1], s3.process.pid
    presigned = sdk(s3).presigned_get_object(WHARF_BUCKET, blob_key(blob.digest))
    results: dict[str, Any] = {"wharf": {}, "distribution": {}}
    (workdir / "wharf").mkdir()
    for redirect in (True, False):  # the second stack restarts on the first one's data
        env = {**s3.env(WHARF_BUCKET), "WHARF_S3_REDIRECT": str(redirect).lower()}
        with wharf(workdir / "wharf", env, name=f"wharf redirect={str(redirect).lower()}") as server:
            results["wharf"].update(measure_registry(server, s3_root, payloads, push_too=redirect, redirect=redirect,
                                                     reference=(lambda: fetch(presigned, blob)) if redirect else None))
    if args.skip_distribution:
        return results
    sdk(s3).make_bucket(DIST_BUCKET)
    # Distribution 2.8's S3 driver panics at start when AWS_CA_BUNDLE is set: no AWS_* for it.
    env = {key: value for key, value in os.environ.items() if not key.startswith("AWS_")}
    (workdir / "distribution").mkdir()
    for redirect in (True, False):
        config = DIST_CONFIG.format(endpoint=s3.endpoint, bucket=DIST_BUCKET, access_key=s3.access_key,
                                    secret_key=s3.secret_key, disable=str(not redirect).lower(),
                                    port="{port}", root="{root}")
        with distribution(workdir / "distribution", args.distribution_bin, config, env,
                          name=f"distribution redirect={str(redirect).lower()}") as server:
            results["distribution"].update(measure_registry(server, s3_root, payloads, push_too=redirect,
                                                            redirect=redirect))
    return results


def build_rows(results: dict[str, Any]) -> list[dict[str, Any]]:
    ours, theirs = results["wharf"], results["distribution"]
    rows: list[dict[str, Any]] = []

    def row(metric: str, wharf_value: float | None, dist_value: float | None = None, s3_value: float | None = None,
            ratio: float | None = None, target: str = "", met: bool | None = None) -> None:
        rows.append({"metric": metric, "wharf": wharf_value, "distribution": dist_value, "s3": s3_value,
                     "ratio": ratio, "target": target, "met": met})

    def median(result: dict[str, Any], key: str) -> float | None:
        return result[key]["median"] if key in result else None

    push_w, push_d = median(ours, "push"), median(theirs, "push")
    ratio = push_w / push_d if push_w and push_d else None
    row("push MB/s", push_w, push_d, None, ratio, ">= 1x Distribution", None if ratio is None else ratio >= 1)
    row("push: seconds of the closing PUT (commit)", ours["push"]["commit_s"],
        theirs["push"]["commit_s"] if "push" in theirs else None)
    pull_w, s3_get = median(ours, "pull_redirect"), median(ours, "s3_get")
    ratio = pull_w / s3_get if pull_w and s3_get else None
    row("pull MB/s, 307 to S3", pull_w, median(theirs, "pull_redirect"), s3_get, ratio, ">= 0.9x S3 GET",
        None if ratio is None else ratio >= 0.9)
    streamed_w, streamed_d = median(ours, "pull_streamed"), median(theirs, "pull_streamed")
    row("pull MB/s, streamed by the registry", streamed_w, streamed_d, s3_get,
        streamed_w / streamed_d if streamed_w and streamed_d else None, "(ratio: vs Distribution)")
    for key, label in (("push", "push"), ("pull_redirect", "pull 307"), ("pull_streamed", "pull streamed")):
        if key not in ours:
            continue
        peak = ours[key]["rss_mb"].get("blob store")
        row(f"peak RSS MB {label}: blob store", peak, target=f"< {RSS_LIMIT_MB:g}",
            met=None if peak is None else peak < RSS_LIMIT_MB)
        row(f"peak RSS MB {label}: largest process", max(ours[key]["rss_mb"].values()),
            max(theirs[key]["rss_mb"].values()) if key in theirs else None)
        for name, seconds in sorted(ours[key]["cpu_s"].items(), key=lambda item: -item[1]):
            if seconds >= 0.5:
                row(f"CPU s {label}: {name}", seconds)
        row(f"CPU s {label}: registry, all processes", sum(ours[key]["cpu_s"].values()),
            sum(theirs[key]["cpu_s"].values()) if key in theirs else None)
        row(f"CPU s {label}: S3 server", ours[key]["s3_cpu_s"], theirs[key]["s3_cpu_s"] if key in theirs else None)
    if "s3_get" in ours:
        row("CPU s S3 direct GET: S3 server", None, None, ours["s3_get"]["s3_cpu_s"])
    return rows


def print_table(rows: list[dict[str, Any]]) -> None:
    header = ["metric", "wharf", "distribution", "S3 direct", "ratio", "target"]
    lines = [[row["metric"], cell(row["wharf"]), cell(row["distribution"]), cell(row["s3"]), cell(row["ratio"], 2),
              f"{row['target']} {'' if row['met'] is None else ('ok' if row['met'] else 'MISS')}".strip()]
             for row in rows]
    print_grid(header, lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--blob-mib", type=int, default=1024, help="size of the pushed/pulled blob in MiB")
    parser.add_argument("--runs", type=int, default=1, help="pushes (distinct blobs) and pulls per measurement")
    parser.add_argument("--minio", action="store_true", help="use MinIO instead of SeaweedFS as the S3 server")
    parser.add_argument("--minio-bin", default=str(Path(__file__).resolve().parent.parent / ".tools/bin/minio"),
                        help="the MinIO binary for --minio")
    parser.add_argument("--skip-distribution", action="store_true", help="measure Wharf only")
    parser.add_argument("--distribution-bin", default="/usr/bin/docker-registry", help="CNCF Distribution binary")
    parser.add_argument("--tmp-dir", default=None, help="where the S3 server and registries keep data (not tmpfs)")
    parser.add_argument("--json", action="store_true", help="print results as JSON instead of a table")
    args = parser.parse_args()
    if args.blob_mib <= 0 or args.runs <= 0:
        parser.error("--blob-mib and --runs must be positive")
    if args.minio and not os.access(args.minio_bin, os.X_OK):
        parser.error(f"{args.minio_bin} not found or not executable")
    if not args.skip_distribution and not os.access(args.distribution_bin, os.X_OK):
        parser.error(f"{args.distribution_bin} not found: install docker-registry or pass --skip-distribution")
    exit_on_sigterm()  # unwind the with-blocks: stop registries and the S3 server, remove the temp dir

    load_before = os.getloadavg()[0]
    log(f"hashing {args.runs} x {args.blob_mib} MiB payload(s)...")
    payloads = [Payload(args.blob_mib * MIB, seed) for seed in range(args.runs)]
    with tempfile.TemporaryDirectory(prefix="wharf-s3-bench-", dir=args.tmp_dir) as tmp, \
            s3_server(Path(tmp) / "s3", args.minio_bin if args.minio else None) as s3:
        log(f"{s3.kind} S3 server at {s3.endpoint}")
        results = measure(s3, payloads, Path(tmp), args)
        kind = s3.kind
    rows = build_rows(results)
    load_note = f"1-min load average {load_before:.1f} before, {os.getloadavg()[0]:.1f} after"
    if args.json:
        config = {"blob_bytes": args.blob_mib * MIB, "chunk_bytes": CHUNK, "runs": args.runs, "s3_server": kind,
                  "load": load_note}
        print(json.dumps({"config": config, "results": results, "rows": rows}, indent=2))
    else:
        print(f"\nblob {args.blob_mib} MiB in {CHUNK // MIB} MiB PATCHes, median of {args.runs} run(s), S3 server: "
              f"{kind}; MB = 10^6 bytes; ratios within +-20% of 1 are ties;\n{load_note} "
              "(2 cores: anything else running skews the figures)\n")
        print_table(rows)
    return 0


if __name__ == "__main__":
    run_main(main)
