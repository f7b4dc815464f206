"""Slow readers of a large manifest share one copy of it (the gateway's hostile review, 2026-12-03).

A manifest above an eighth of the read cache's budget (2 MiB by default) was never cached, so each
answer fetched its own copy, and each answer of a cached one was a copy too (a protobuf message
copies a bytes field on each access; the hot-read path joined the body to the head): a reader that
stopped reading held its copy until its idle timeout, 150 such readers of a 4.1 MB manifest ~200 MB
more per worker, bounded only by the connection limit. Now the cache keeps entries up to a quarter
of its budget (the largest manifest accepted, by default) as one bytes object every answer shares."""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Callable

import pytest
import requests

from services.common import digests, mediatypes
from tests.integration.test_slow_clients import _tree_rss
from tests.support.stack import RunningStack

READERS = 60


@pytest.fixture(scope="module")
def one_worker(start_stack: Callable[..., RunningStack]) -> RunningStack:
    return start_stack(env={"WHARF_GATEWAY_WORKERS": "1"})


def _large_manifest(url: str, name: str) -> bytes:
    config = b"{}"
    requests.post(f"{url}/v2/{name}/blobs/uploads/", params={"digest": digests.of(config)}, data=config, timeout=10)
    body = json.dumps({"schemaVersion": 2, "mediaType": mediatypes.OCI_MANIFEST, "layers": [],
                       "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                                  "digest": digests.of(config), "size": 2},
                       "annotations": {"filler": "x" * (3900 * 1024)}}).encode()
    response = requests.put(f"{url}/v2/{name}/manifests/big", data=body,
                            headers={"Content-Type": mediatypes.OCI_MANIFEST}, timeout=30)
    assert response.status_code == 201, response.text
    return body


def test_readers_that_stop_reading_a_large_manifest_hold_no_copy_of_it(one_worker: RunningStack) -> None:
    assert one_worker.process is not None
    body = _large_manifest(one_worker.url, "slow/readers")
    for _ in range(3):  # cached, and answered on the hot-read path
        assert requests.get(f"{one_worker.url}/v2/slow/readers/manifests/big", timeout=30,
                            headers={"Accept": mediatypes.OCI_MANIFEST}).content == body
    time.sleep(0.5)
    before = _tree_rss(one_worker.process.pid)["gateway"]
    readers: list[socket.socket] = []
    try:
        for _ in range(READERS):
            sock = socket.socket()
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            sock.connect(("127.0.0.1", one_worker.port))
            sock.sendall(b"GET /v2/slow/readers/manifests/big HTTP/1.1\r\nHost: x\r\n"
                         b"Accept: " + mediatypes.OCI_MANIFEST.encode() + b"\r\n\r\n")
            readers.append(sock)
        time.sleep(3)  # every answer started, and stuck in its send
        held = (_tree_rss(one_worker.process.pid)["gateway"] - before) / READERS
        # Measured: ~2.7 MB a reader before (a copy each); now the kernel's buffers only.
        assert held < 400 * 1024, f"{held / 1e6:.1f} MB held per stalled reader"
        # Still served to a reader that reads.
        assert requests.get(f"{one_worker.url}/v2/slow/readers/manifests/big", timeout=30,
                            headers={"Accept": mediatypes.OCI_MANIFEST}).content == body
    finally:
        for sock in readers:
            sock.close()
