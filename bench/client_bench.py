"""`wharf copy` against `skopeo copy`, and the memory of `wharf pull`, on this machine.

What is measured:

1. copy: a 5-layer image of 500 MB (``--layer-mb`` x ``--layers``) sits in a source registry;
   ``wharf copy`` and ``skopeo copy`` each copy it to a fresh, empty destination registry, in
   alternating order, ``--runs`` times each. Throughput is blob bytes / wall-clock seconds of
   the whole command (process start to exit), so each client pays its own start-up and
   manifest round trips. Registries are CNCF Distribution by default (``--kind wharf`` uses
   Wharf stacks): the same servers for both clients, so the difference is the client.
2. pull memory: ``wharf pull`` of a one-layer image and of the 500 MB image into an OCI layout
   and into a docker tarball; peak RSS of the wharf process (``wait4`` rusage), which must stay
   flat (under 100 MB) whatever the image size.

Layers are random bytes gzip-compressed at level 1 (real gzip, so neither client is
confused, and incompressible, so sizes are what they say). MB = 10^6 bytes. On these
2-core machines a ratio within about +-20% of 1 is a tie.
"""

from __future__ import annotations

import argparse
import contextlib
import gzip
import hashlib
import json
import os
import pathlib
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator

REPO = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "client"))

from wharf_client import (  # noqa: E402
    Client,
    ClientOptions,
    Descriptor,
    RegistryOptions,
    StaticCredentials,
    push_blob,
)
from wharf_client.blobio import BytesSource, FileSource  # noqa: E402
from wharf_client.manifest import image_manifest  # noqa: E402

from tests.support.distribution import running_distribution  # noqa: E402
from tests.support.stack import RunningStack  # noqa: E402

MB = 1_000_000
@contextlib.contextmanager
def distribution(workdir: pathlib.Path, binary: str) -> Iterator[str]:
    try:
        with running_distribution(workdir, binary, level="error") as host:
            yield host
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


@contextlib.contextmanager
def wharf_stack(workdir: pathlib.Path) -> Iterator[str]:
    workdir.mkdir(parents=True)
    stack = RunningStack(workdir / "data", log_path=workdir / "stack.log").start()
    try:
        yield stack.host
    finally:
        stack.stop()
        shutil.rmtree(workdir, ignore_errors=True)


def registry(kind: str, workdir: pathlib.Path, binary: str) -> contextlib.AbstractContextManager[str]:
    return distribution(workdir, binary) if kind == "distribution" else wharf_stack(workdir)


def make_layers(directory: pathlib.Path, count: int, size: int) -> list[tuple[pathlib.Path, str]]:
    """gzip'd random layers and their diff ids (sha256 of the uncompressed bytes, which a docker tarball checks)."""
    made = []
    for number in range(count):
        path = directory / f"layer-{number}.gz"
        diff = hashlib.sha256()
        with open(path, "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", compresslevel=1, mtime=0) as out:
            for _ in range(size // MB):
                block = os.urandom(MB)
                diff.update(block)
                out.write(block)
        made.append((path, "sha256:" + diff.hexdigest()))
    return made


def push_image(host: str, repository: str, layers: list[tuple[pathlib.Path, str]]) -> int:
    """Pushes config + layers + manifest with the library; returns the blob bytes."""
    options = ClientOptions(default_registry_options=RegistryOptions(plain_http=True))
    with Client(options, StaticCredentials()) as client:
        repo = client.repository(f"{host}/{repository}")
        descriptors = []
        for path, _ in layers:
            digest = hashlib.sha256()
            with open(path, "rb") as handle:
                while chunk := handle.read(MB):
                    digest.update(chunk)
            descriptor = Descriptor("application/vnd.oci.image.layer.v1.tar+gzip", "sha256:" + digest.hexdigest(),
                                    path.stat().st_size)
            push_blob(repo, FileSource(path, descriptor))
            descriptors.append(descriptor)
        config = json.dumps({"architecture": "amd64", "os": "linux",
                             "rootfs": {"type": "layers", "diff_ids": [diff_id for _, diff_id in layers]}})
        config_bytes = config.encode()
        config_desc = Descriptor("application/vnd.oci.image.config.v1+json",
                                 "sha256:" + hashlib.sha256(config_bytes).hexdigest(), len(config_bytes))
        push_blob(repo, BytesSource(config_bytes, config_desc))
        repo.put_manifest(image_manifest(config_desc, descriptors), "bench")
        return sum(d.size for d in descriptors) + len(config_bytes)


def run_measured(argv: list[str], env: dict[str, str] | None = None) -> tuple[float, float]:
    """(wall seconds, peak RSS in MB) of a command, which must succeed."""
    started = time.perf_counter()
    process = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(process.pid, 0)
    seconds = time.perf_counter() - started
    stderr = process.stderr.read().decode(errors="replace") if process.stderr else ""
    process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode != 0:
        raise RuntimeError(f"{' '.join(argv[:3])} failed ({process.returncode}):\n{stderr[-2000:]}")
    return seconds, usage.ru_maxrss * 1024 / MB


def skopeo_env(home: pathlib.Path) -> tuple[list[str], dict[str, str]]:
    home.mkdir(parents=True, exist_ok=True)
    (home / "policy.json").write_text(json.dumps({"default": [{"type": "insecureAcceptAnything"}]}))
    (home / "tmp").mkdir(exist_ok=True)
    env = dict(os.environ, HOME=str(home), XDG_RUNTIME_DIR=str(home / "run"),
               REGISTRY_AUTH_FILE=str(home / "auth.json"), CONTAINERS_REGISTRIES_CONF=str(home / "registries.conf"))
    (home / "auth.json").write_text('{"auths": {}}')
    (home / "registries.conf").write_text("")
    return ["skopeo", "--policy", str(home / "policy.json"), "--tmpdir", str(home / "tmp")], env


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--kind", choices=["distribution", "wharf"], default="distribution",
                        help="which registry serves as source and destinations (default distribution)")
    parser.add_argument("--layers", type=int, default=5)
    parser.add_argument("--layer-mb", type=int, default=100)
    parser.add_argument("--runs", type=int, default=2, help="copies per client")
    parser.add_argument("--distribution-bin", default="/usr/bin/docker-registry")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    if shutil.which("skopeo") is None:
        parser.error("skopeo is not installed")
    wharf = [sys.executable, "-m", "wharf_client"]
    env = dict(os.environ, PYTHONPATH=f"{REPO / 'client'}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
    results: dict[str, object] = {"kind": args.kind, "image_mb": args.layers * args.layer_mb}
    with tempfile.TemporaryDirectory(prefix="wharf-client-bench-") as scratch:
        tmp = pathlib.Path(scratch)
        print(f"making {args.layers} x {args.layer_mb} MB layers...", file=sys.stderr, flush=True)
        (tmp / "layers").mkdir()
        layers = make_layers(tmp / "layers", args.layers, args.layer_mb * MB)
        skopeo, skopeo_environ = skopeo_env(tmp / "skopeo-home")
        with registry(args.kind, tmp / "source", args.distribution_bin) as source:
            total = push_image(source, "bench/image", layers)
            small = push_image(source, "bench/small", layers[:1])
            timings: dict[str, list[float]] = {"wharf": [], "skopeo": []}
            for run in range(args.runs):
                order = ["wharf", "skopeo"] if run % 2 == 0 else ["skopeo", "wharf"]
                for client in order:
                    with registry(args.kind, tmp / f"dest-{client}-{run}", args.distribution_bin) as dest:
                        src, dst = f"{source}/bench/image:bench", f"{dest}/bench/copy:bench"
                        if client == "wharf":
                            argv = [*wharf, "copy", src, dst, "--plain-http", "-q"]
                            seconds, _ = run_measured(argv, env)
                        else:
                            argv = [*skopeo, "copy", "--quiet", "--src-tls-verify=false", "--dest-tls-verify=false",
                                    f"docker://{src}", f"docker://{dst}"]
                            seconds, _ = run_measured(argv, skopeo_environ)
                    timings[client].append(seconds)
                    print(f"copy run {run + 1} {client}: {total / seconds / MB:.1f} MB/s ({seconds:.2f} s)",
                          file=sys.stderr, flush=True)
            memory: dict[str, float] = {}
            for name, size in (("small", small), ("image", total)):
                for fmt, target in (("oci", tmp / f"pull-{name}"), ("docker", tmp / f"pull-{name}.tar")):
                    ref = f"{source}/bench/{name}:bench"
                    argv = [*wharf, "pull", ref, str(target), "--format", fmt, "--platform", "linux/amd64",
                            "--plain-http", "-q"]
                    seconds, rss = run_measured(argv, env)
                    memory[f"{fmt} {size / MB:.0f} MB"] = rss
                    print(f"pull {fmt} {size / MB:.0f} MB: peak RSS {rss:.1f} MB, {size / seconds / MB:.1f} MB/s",
                          file=sys.stderr, flush=True)
                    shutil.rmtree(target, ignore_errors=True) if target.is_dir() else target.unlink()
    best = {client: total / min(values) / MB for client, values in timings.items()}
    median = {client: total / statistics.median(values) / MB for client, values in timings.items()}
    results.update(copy_best_mbps=best, copy_median_mbps=median, ratio_best=best["wharf"] / best["skopeo"],
                   pull_peak_rss_mb=memory)
    if args.json:
        print(json.dumps(results, indent=2))
    else:
        print(f"\n{args.kind} -> {args.kind}, image {total / MB:.0f} MB in {args.layers} layers, {args.runs} runs each")
        print(f"wharf copy : best {best['wharf']:.1f} MB/s, median {median['wharf']:.1f} MB/s")
        print(f"skopeo copy: best {best['skopeo']:.1f} MB/s, median {median['skopeo']:.1f} MB/s")
        print(f"ratio wharf/skopeo (best): {best['wharf'] / best['skopeo']:.2f}")
        for label, rss in memory.items():
            print(f"wharf pull {label}: peak RSS {rss:.1f} MB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
