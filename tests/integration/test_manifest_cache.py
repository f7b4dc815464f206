"""The gateways' read cache never serves what a finished write replaced or removed.

Two metadata replicas over one Redis, a gateway on each (two worker processes apiece, so
four caches). Writes go through one gateway and reads through the other, right after the
write returns; then the hard cases: a gateway frozen (SIGSTOP) while a write happens, and a
metadata replica killed while its gateway holds a warm cache.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import json
import os
import pathlib
import signal
import socket
import threading
import time
import types
from collections.abc import Callable, Iterator

import pytest
import requests

from tests.support import prometheus
from tests.support.pusher import OCI_MANIFEST, digest, push_blob, push_image, random_layers
from tests.support.stack import RunningStack
from tests.support.topology import Topology

LEASE = 1.0


class PausableProxy:
    """A TCP proxy that can stop forwarding without closing anything: a network partition."""

    def __init__(self, upstream: str) -> None:
        host, port = upstream.rsplit(":", 1)
        self._upstream = (host, int(port))
        self.running = threading.Event()
        self.running.set()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.address = f"127.0.0.1:{self._listener.getsockname()[1]}"
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
                server = socket.create_connection(self._upstream)
            except OSError:
                return
            for source, sink in ((client, server), (server, client)):
                threading.Thread(target=self._pump, args=(source, sink), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                self.running.wait()
                sink.sendall(data)
        except OSError:
            pass
        finally:
            for end in (source, sink):
                with contextlib.suppress(OSError):
                    end.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        self.running.set()
        self._listener.close()


class Cluster:
    def __init__(self, topology: Topology, gateways: list[str], proxy: PausableProxy) -> None:
        self.topology = topology
        self.gateways = gateways
        self.proxy = proxy  # between the second gateway and its metadata replica

    def child(self, name: str):  # type: ignore[no-untyped-def]
        return next(c for c in self.topology.children if c.name == name)

    def metadata(self, index: int):  # type: ignore[no-untyped-def]
        return [c for c in self.topology.children if c.name == "metadata"][index]

    def workers(self, index: int) -> list[int]:
        master = self.child(f"gateway-{index}").process.pid
        children = pathlib.Path(f"/proc/{master}/task/{master}/children").read_text().split()
        return [int(pid) for pid in children]


@pytest.fixture()
def cluster(tmp_path: pathlib.Path) -> Iterator[Cluster]:
    topology = Topology(tmp_path, {"WHARF_CACHE_LEASE": str(LEASE), "WHARF_CACHE_ACK_TIMEOUT": "0.3",
                                   "WHARF_GATEWAY_WORKERS": "2",
                                   "WHARF_RPC_TIMEOUT": "5"})
    proxy = None
    try:
        _, redis_url = topology.redis()
        metadata = [topology.metadata(redis_url) for _ in range(2)]
        blobstore = topology.blobstore(0, {})
        proxy = PausableProxy(metadata[1].address)
        gateways = [topology.gateway(0, [blobstore], metadata[0]),
                    topology.gateway(1, [blobstore], types.SimpleNamespace(address=proxy.address))]  # type: ignore[arg-type]
        yield Cluster(topology, gateways, proxy)
    finally:
        if proxy is not None:
            proxy.close()
        topology.stop()


def _digests_seen(gateway: str, repository: str, reference: str, connections: int = 8) -> set[str | int]:
    """What several fresh connections (spread over the gateway's workers) get for the reference."""
    seen: set[str | int] = set()
    for _ in range(connections):
        with requests.Session() as session:
            response = session.get(f"{gateway}/v2/{repository}/manifests/{reference}",
                                   headers={"Accept": OCI_MANIFEST}, timeout=30)
            seen.add(response.headers["Docker-Content-Digest"] if response.status_code == 200
                     else response.status_code)
    return seen


def _warm(cluster: Cluster, repository: str, reference: str, expected: str) -> None:
    """Reads through every gateway for a while, so that every worker caches the manifest."""
    for _ in range(3):
        for gateway in cluster.gateways:
            assert _digests_seen(gateway, repository, reference) == {expected}
        time.sleep(0.3)


def _small_layer() -> list[bytes]:
    return random_layers(1, 512)


def test_a_write_through_one_replica_is_seen_at_once_through_the_other(cluster: Cluster) -> None:
    writer, reader = cluster.gateways
    digest = push_image([writer], "cache/app", "v1", _small_layer())
    _warm(cluster, "cache/app", "v1", digest)
    for _ in range(5):
        new = push_image([writer], "cache/app", "v1", _small_layer())
        assert _digests_seen(reader, "cache/app", "v1") == {new}
        assert _digests_seen(writer, "cache/app", "v1") == {new}
    # Deletes too: of a tag, then of the manifest by digest (which takes its other tags along).
    requests.put(f"{writer}/v2/cache/app/manifests/v2", data=requests.get(
        f"{writer}/v2/cache/app/manifests/v1", headers={"Accept": OCI_MANIFEST}, timeout=30).content,
        headers={"Content-Type": OCI_MANIFEST}, timeout=30).raise_for_status()
    _warm(cluster, "cache/app", "v2", new)
    assert requests.delete(f"{reader}/v2/cache/app/manifests/v1", timeout=30).status_code == 202
    assert _digests_seen(writer, "cache/app", "v1") == {404}
    assert _digests_seen(writer, "cache/app", "v2") == {new}
    assert _digests_seen(reader, "cache/app", new) == {new}
    assert requests.delete(f"{writer}/v2/cache/app/manifests/{new}", timeout=30).status_code == 202
    for gateway in cluster.gateways:
        assert _digests_seen(gateway, "cache/app", "v2") == {404}
        assert _digests_seen(gateway, "cache/app", new) == {404}


def _blob_statuses(gateway: str, repository: str, blob: str, connections: int = 8) -> set[int]:
    statuses = set()
    for _ in range(connections):
        with requests.Session() as session:
            statuses.add(session.head(f"{gateway}/v2/{repository}/blobs/{blob}", timeout=30).status_code)
    return statuses


def test_a_blob_unlinked_through_one_replica_is_gone_at_once_through_the_other(cluster: Cluster) -> None:
    writer, reader = cluster.gateways
    blob = push_blob([writer], "cache/links", b"a layer both gateways cache the link of")
    for _ in range(3):
        for gateway in cluster.gateways:
            assert _blob_statuses(gateway, "cache/links", blob) == {200}
        time.sleep(0.3)
    assert requests.delete(f"{writer}/v2/cache/links/blobs/{blob}", timeout=30).status_code == 202
    for gateway in cluster.gateways:
        assert _blob_statuses(gateway, "cache/links", blob) == {404}
        assert requests.get(f"{gateway}/v2/cache/links/blobs/{blob}", timeout=30).status_code == 404
    # Linked again (a new push): served again.
    assert push_blob([reader], "cache/links", b"a layer both gateways cache the link of") == blob
    assert _blob_statuses(writer, "cache/links", blob) == {200}


def _tags_seen(gateway: str, repository: str, connections: int = 8) -> set[tuple[str, ...]]:
    seen = set()
    for _ in range(connections):
        with requests.Session() as session:
            pages: list[str] = []
            url: str | None = f"{gateway}/v2/{repository}/tags/list?n=2"
            while url:
                response = session.get(url, timeout=30)
                pages += response.json()["tags"] or []
                link = response.headers.get("Link", "")
                url = gateway + link[1:link.index(">")] if link else None
            seen.add(tuple(pages))
    return seen


def test_tag_pages_follow_every_tag_write_through_the_other_replica(cluster: Cluster) -> None:
    writer, reader = cluster.gateways
    digest = push_image([writer], "cache/tags", "a", _small_layer())
    for tag in ("b", "c"):
        push_image([writer], "cache/tags", tag, _small_layer())
    for _ in range(3):
        assert _tags_seen(reader, "cache/tags") == {("a", "b", "c")}
        time.sleep(0.3)
    push_image([writer], "cache/tags", "d", _small_layer())
    assert _tags_seen(reader, "cache/tags") == {("a", "b", "c", "d")}
    assert requests.delete(f"{writer}/v2/cache/tags/manifests/b", timeout=30).status_code == 202
    assert _tags_seen(reader, "cache/tags") == {("a", "c", "d")}
    assert requests.delete(f"{writer}/v2/cache/tags/manifests/{digest}", timeout=30).status_code == 202
    assert _tags_seen(reader, "cache/tags") == {("c", "d")}


def _catalogs_seen(gateway: str, connections: int = 8) -> set[tuple[str, ...]]:
    seen = set()
    for _ in range(connections):
        with requests.Session() as session:
            names = session.get(f"{gateway}/v2/_catalog", timeout=30).json()["repositories"]
            seen.add(tuple(name for name in names if name.startswith("catalog/")))
    return seen


def test_catalog_pages_follow_every_new_and_removed_repository_through_the_other_replica(cluster: Cluster) -> None:
    """Catalog pages are cached too: a repository's first link (a blob alone, no manifest) and its
    first manifest announce it, and whatever empties a repository drops it, on every worker of
    the other gateway as soon as the write returns."""
    writer, reader = cluster.gateways
    push_blob([writer], "catalog/one", b"the first repository's blob")
    for _ in range(3):
        assert _catalogs_seen(reader) == {("catalog/one",)}
        time.sleep(0.3)
    blob = push_blob([writer], "catalog/two", b"a blob alone makes a repository")
    assert _catalogs_seen(reader) == {("catalog/one", "catalog/two")}
    digest = push_image([writer], "catalog/three", "v1", _small_layer())
    assert _catalogs_seen(reader) == {("catalog/one", "catalog/three", "catalog/two")}
    assert requests.delete(f"{writer}/v2/catalog/two/blobs/{blob}", timeout=30).status_code == 202
    assert _catalogs_seen(reader) == {("catalog/one", "catalog/three")}
    assert requests.delete(f"{writer}/v2/catalog/three/manifests/{digest}", timeout=30).status_code == 202
    for gateway in cluster.gateways:
        # catalog/three still links its layers (a repository while it links anything).
        assert _catalogs_seen(gateway) == {("catalog/one", "catalog/three")}


def test_a_frozen_gateway_does_not_serve_what_changed_meanwhile(cluster: Cluster) -> None:
    writer, reader = cluster.gateways
    digest = push_image([writer], "cache/frozen", "latest", _small_layer())
    _warm(cluster, "cache/frozen", "latest", digest)
    layer = push_blob([writer], "cache/frozen", b"x" * 100)
    assert layer
    frozen = cluster.workers(1)
    for pid in frozen:
        os.kill(pid, signal.SIGSTOP)
    try:
        started = time.monotonic()
        new = push_image([writer], "cache/frozen", "latest", _small_layer())
        waited = time.monotonic() - started
    finally:
        for pid in frozen:
            os.kill(pid, signal.SIGCONT)
    # The write waited for the frozen workers' acks, then for their leases; no longer.
    assert waited < LEASE + 5, waited
    assert _digests_seen(reader, "cache/frozen", "latest") == {new}
    # And the evicted workers come back to caching: a later write is quick again.
    time.sleep(LEASE)
    _warm(cluster, "cache/frozen", "latest", new)
    started = time.monotonic()
    newer = push_image([writer], "cache/frozen", "latest", _small_layer())
    assert time.monotonic() - started < 2
    assert _digests_seen(reader, "cache/frozen", "latest") == {newer}


def test_a_partitioned_gateway_stops_serving_before_the_write_returns(cluster: Cluster) -> None:
    """The gateway runs on but hears nothing from its replica: the write waits out its lease."""
    writer, reader = cluster.gateways
    digest = push_image([writer], "cache/partition", "latest", _small_layer())
    _warm(cluster, "cache/partition", "latest", digest)
    layers = _small_layer()
    cluster.proxy.running.clear()
    try:
        new = push_image([writer], "cache/partition", "latest", layers)
        seen = _digests_seen(reader, "cache/partition", "latest", connections=2)
        assert digest not in seen, seen
    finally:
        cluster.proxy.running.set()
    deadline = time.monotonic() + 20
    while _digests_seen(reader, "cache/partition", "latest") != {new}:
        assert time.monotonic() < deadline
        time.sleep(0.2)


@pytest.mark.parametrize("fate", ["killed", "frozen"])
def test_a_lost_replica_leaves_no_stale_cache_behind(cluster: Cluster, fate: str) -> None:
    """The reader's metadata replica dies (its streams end) or freezes (they stay open, silent)."""
    writer, reader = cluster.gateways
    digest = push_image([writer], "cache/orphan", "latest", _small_layer())
    _warm(cluster, "cache/orphan", "latest", digest)
    lost = cluster.metadata(1)
    if fate == "killed":
        cluster.topology.kill(lost)
    else:
        os.killpg(lost.process.pid, signal.SIGSTOP)
    try:
        started = time.monotonic()
        new = push_image([writer], "cache/orphan", "latest", _small_layer())
        # Waits at most for the lost replica's confirmation, then for its lease-grantor entry.
        assert time.monotonic() - started < LEASE + 5
        seen = _digests_seen(reader, "cache/orphan", "latest", connections=2)
        assert digest not in seen, seen
    finally:
        if fate == "frozen":
            os.killpg(lost.process.pid, signal.SIGCONT)
    if fate == "frozen":
        deadline = time.monotonic() + 20
        while _digests_seen(reader, "cache/orphan", "latest") != {new}:
            assert time.monotonic() < deadline
            time.sleep(0.2)


def test_many_concurrent_writes_are_all_confirmed(start_stack: Callable[..., RunningStack]) -> None:
    """More concurrent writes than the metadata service has Redis connections: each still gets its
    confirmation (they once waited on a connection each, and starved the one that confirms)."""
    stack = start_stack()
    layer, config = b"a shared layer", b"{}"
    for n in range(8):
        push_blob([stack.url], f"burst/r{n}", layer)
        push_blob([stack.url], f"burst/r{n}", config)

    def put(n: int) -> int:
        manifest = json.dumps({
            "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": digest(config), "size": 2},
            "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": digest(layer),
                        "size": len(layer)}], "annotations": {"n": str(n)}})
        return requests.put(f"{stack.url}/v2/burst/r{n % 8}/manifests/t{n}", data=manifest, timeout=60,
                            headers={"Content-Type": "application/vnd.oci.image.manifest.v1+json"}).status_code
    with concurrent.futures.ThreadPoolExecutor(64) as pool:
        assert set(pool.map(put, range(256))) == {201}
    figures, _ = prometheus.scrape(stack)
    assert prometheus.value(figures["metadata"], "wharf_metadata_unconfirmed_invalidations_total") == 0
    published = prometheus.value(figures["metadata"], "wharf_metadata_invalidations_published_total")
    assert published >= 256
    # Concurrent writes share rounds (group commit): 64 writers at once cannot need one each.
    assert prometheus.value(figures["metadata"], "wharf_metadata_invalidation_rounds_total") < published / 2
