"""Issue 4: three blob store replicas and two gateways over one S3 bucket.

Uploads rotate every request over both gateways (so consecutive PATCHes of one
session reach different blob store replicas); then one replica is SIGKILLed in
the middle of a round of pushes: every push succeeds, or fails with a clear
error that a retry fixes, and every referenced blob reads back with its digest.
"""

from __future__ import annotations

import pathlib
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest

from tests.support.pusher import PushError, push_image, random_layers, verify_image
from tests.support.s3 import S3Server
from tests.support.topology import Topology

pytestmark = pytest.mark.e2e


@pytest.fixture()
def cluster(tmp_path: pathlib.Path, seaweedfs: S3Server) -> Iterator[tuple[Topology, list[str]]]:
    topology = Topology(tmp_path, seaweedfs.env())
    try:
        _, redis_url = topology.redis()
        metadata = topology.metadata(redis_url)
        blobstores = [topology.blobstore(i, {}) for i in range(3)]
        gateways = [topology.gateway(i, blobstores, metadata, {"WHARF_S3_REDIRECT": "false"}) for i in range(2)]
        yield topology, gateways
    finally:
        topology.stop()


def _push(gateways: list[str], index: int, round_name: str) -> tuple[str, str]:
    repository, tag = f"scale/{round_name}-{index % 5}", f"v{index}"
    # Layers of 1.5 MiB in 512 KiB chunks: several PATCHes per blob, on alternating gateways.
    push_image(gateways if index % 2 else gateways[::-1], repository, tag, random_layers(3, 1536 * 1024),
               chunk=512 * 1024)
    return repository, tag


def test_concurrent_pushes_across_gateways_and_replicas(cluster: tuple[Topology, list[str]]) -> None:
    _, gateways = cluster
    with ThreadPoolExecutor(max_workers=20) as pool:
        pushed = list(pool.map(lambda i: _push(gateways, i, "calm"), range(20)))
    for index, (repository, tag) in enumerate(pushed):
        assert verify_image(gateways[index % 2], repository, tag) == 4


def test_a_replica_killed_mid_push_never_corrupts(cluster: tuple[Topology, list[str]]) -> None:
    topology, gateways = cluster
    victim = next(c for c in topology.children if c.name == "blobstore-1")
    results: dict[int, object] = {}

    def attempt(index: int) -> None:
        try:
            results[index] = _push(gateways, index, "storm")
        except PushError as exc:
            results[index] = exc

    killer = threading.Timer(1.0, topology.kill, args=[victim])
    killer.start()
    with ThreadPoolExecutor(max_workers=20) as pool:
        list(pool.map(attempt, range(20)))
    killer.join()
    assert victim.process.poll() is not None, "the replica was not killed during the round"
    failures = {i: r for i, r in results.items() if isinstance(r, PushError)}
    print(f"{len(failures)} of 20 pushes failed when the replica died: {[str(f)[:120] for f in failures.values()]}")
    for index, failure in failures.items():
        # A clear, retryable answer: a registry error body, never a hang or a bare 500 page.
        assert failure.status in (400, 404, 416, 500, 502, 503), failure
        assert '"errors"' in failure.body, failure
        time.sleep(0.1)
        results[index] = _push(gateways, index, "storm")  # the retry succeeds on the survivors
    for repository, tag in results.values():  # type: ignore[misc]
        assert verify_image(gateways[0], repository, tag) == 4
