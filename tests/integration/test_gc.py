"""wharf-gc against a running stack: what a deleted manifest left behind goes, what any manifest
still needs stays (also when shared with another repository), young blobs survive a run, one run
at a time. Collections during pushes: test_gc_online.py."""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys
import time
from collections.abc import Callable

import pytest
import redis
import requests

from services.blobstore.settings import BlobStoreSettings
from services.blobstore.storage import create_driver
from services.blobstore.storage.filesystem import FilesystemDriver
from services.common.settings import load
from services.gc.collector import Collector, LockLost
from services.metadata import redis_keys as keys
from tests.support.pusher import OCI_MANIFEST, PushError, digest, push_blob, push_image, random_layers
from tests.support.s3 import S3Server
from tests.support.stack import RunningStack

ROOT = pathlib.Path(__file__).resolve().parents[2]


def _gc(stack: RunningStack, *args: str) -> dict[str, object]:
    env = {k: v for k, v in os.environ.items() if k != "WHARF_REDIS_URL"}
    env.update(stack.extra_env, WHARF_DATA_DIR=str(stack.data_dir))  # Redis: from the file the stack wrote
    result = subprocess.run([sys.executable, "-m", "services.gc", *args], env=env, cwd=ROOT, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    return dict(json.loads(result.stdout.strip().splitlines()[-1]))


def _redis_url(stack: RunningStack) -> str:
    return (stack.data_dir / "redis" / "url").read_text().strip()


def _blob_files(stack: RunningStack) -> set[str]:
    """The blobs the blob store holds, listed through its storage driver."""
    driver = create_driver(load(BlobStoreSettings, {**stack.extra_env, "WHARF_DATA_DIR": str(stack.data_dir)}))
    return {f"sha256:{encoded}" for shard in driver.list("blobs/sha256")
            for encoded in driver.list(f"blobs/sha256/{shard}")}


def _status(url: str) -> int:
    return requests.get(url, headers={"Accept": OCI_MANIFEST}, timeout=30).status_code


@pytest.fixture(params=["filesystem", "seaweedfs"])
def backend_env(request: pytest.FixtureRequest) -> dict[str, str]:
    if request.param == "filesystem":
        return {}
    server: S3Server = request.getfixturevalue("seaweedfs")
    return {**server.env(), "WHARF_S3_REDIRECT": "false"}


def test_collects_what_deleted_manifests_left(start_stack: Callable[..., RunningStack],
                                              backend_env: dict[str, str]) -> None:
    stack = start_stack(env=backend_env)
    url = stack.url
    shared = random_layers(1, 4096)[0]
    doomed_layer, kept_layer = random_layers(2, 4096)
    doomed = push_image([url], "gc/app", "old", [shared, doomed_layer])
    kept = push_image([url], "gc/app", "new", [shared, kept_layer])
    other = push_image([url], "gc/other", "v1", [doomed_layer])  # the same layer, needed elsewhere
    stray = push_blob([url], "gc/app", b"uploaded, never used by a manifest")
    assert requests.delete(f"{url}/v2/gc/app/manifests/{doomed}", timeout=30).status_code == 202
    config_of_kept = json.loads(requests.get(f"{url}/v2/gc/app/manifests/{kept}", headers={
        "Accept": OCI_MANIFEST}, timeout=30).content)["config"]["digest"]
    before = _blob_files(stack)

    young = _gc(stack)  # default grace: everything here is too young
    assert young["blobs_deleted"] == 0 and young["links_removed"] == 0
    dry = _gc(stack, "--grace", "0", "--dry-run")
    assert dry["blobs_deleted"] and _blob_files(stack) == before

    # A gateway caches blob links: the run must invalidate what it unlinks before any blob goes.
    for _ in range(4):
        with requests.Session() as fresh:  # fresh connections reach every worker
            assert fresh.head(f"{url}/v2/gc/app/blobs/{digest(doomed_layer)}", timeout=30).status_code == 200
    report = _gc(stack, "--grace", "0")
    after = _blob_files(stack)
    assert digest(doomed_layer) in after  # gc/other's manifest still needs it
    assert stray not in after
    assert digest(shared) in after and digest(kept_layer) in after and config_of_kept in after
    assert report["blobs_deleted"] == len(before - after) >= 2  # the stray blob and the old image's config
    # Every delete went through the blob store (its Delete call), not around it.
    assert stack.log_path.read_text().count("BlobStore/Delete") == report["blobs_deleted"]
    # gc/app no longer serves the layer only the deleted manifest used; the others pull whole.
    assert requests.head(f"{url}/v2/gc/app/blobs/{digest(doomed_layer)}", timeout=30).status_code == 404
    for repository, reference in (("gc/app", "new"), ("gc/other", "v1")):
        manifest = json.loads(requests.get(f"{url}/v2/{repository}/manifests/{reference}",
                                           headers={"Accept": OCI_MANIFEST}, timeout=30).content)
        for descriptor in [manifest["config"], *manifest["layers"]]:
            blob = requests.get(f"{url}/v2/{repository}/blobs/{descriptor['digest']}", timeout=30)
            assert blob.status_code == 200 and digest(blob.content) == descriptor["digest"]
    assert other  # still tagged
    # A second run finds nothing more.
    assert _gc(stack, "--grace", "0")["blobs_deleted"] == 0
    # The runs' figures, as the metadata service exports them (docs/observability.md).
    address = json.loads((stack.data_dir / "metrics.json").read_text())["metadata"]
    figures = requests.get(f"http://{address}/metrics", timeout=30).text
    assert 'wharf_gc_runs_total{result="ok"} 3.0' in figures
    assert f"wharf_gc_blobs_removed_total {float(report['blobs_deleted'])}" in figures
    assert f"wharf_gc_links_removed_total {float(report['links_removed'])}" in figures


def _gc_refused(stack: RunningStack, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "WHARF_REDIS_URL"}
    env.update(stack.extra_env, WHARF_DATA_DIR=str(stack.data_dir))
    return subprocess.run([sys.executable, "-m", "services.gc", *args], env=env, cwd=ROOT, capture_output=True,
                          text=True, timeout=120)


def test_writes_get_503_while_an_operator_holds_maintenance(start_stack: Callable[..., RunningStack]) -> None:
    """The read-only switch stays for operators (a restore, say): pushes and deletes get 503, the
    collector refuses to start (a dry run still reports), a whole-repository delete fails
    (it said it deleted what it had not), and a mark set while a collection runs stops its deletes."""
    stack = start_stack()
    push_image([stack.url], "gc/ro", "v1", random_layers(1, 1024))
    untagged = push_image([stack.url], "gc/ro", "gone", random_layers(1, 1024))
    assert requests.delete(f"{stack.url}/v2/gc/ro/manifests/gone", timeout=30).status_code == 202
    client = redis.Redis.from_url(_redis_url(stack))
    client.set("wharf:maintenance", json.dumps({"by": "test"}), px=60_000)
    try:
        with pytest.raises(PushError) as refused:
            push_image([stack.url], "gc/ro", "v2", random_layers(1, 1024))
        assert "503" in str(refused.value)
        assert _status(f"{stack.url}/v2/gc/ro/manifests/v1") == 200  # reads go on
        deleted = requests.delete(f"{stack.url}/v2/gc/ro/manifests/v1", timeout=30)
        assert deleted.status_code == 503 and deleted.headers.get("Retry-After")
        before = _blob_files(stack)  # with what the refused push stored (its links were refused)
        gc = _gc_refused(stack, "--grace", "0", "--delete-untagged")
        assert gc.returncode == 2 and "read-only for maintenance" in gc.stderr
        assert _gc(stack, "--grace", "0", "--delete-untagged", "--dry-run")["manifests_removed"]
        assert _status(f"{stack.url}/v2/gc/ro/manifests/{untagged}") == 200 and _blob_files(stack) == before
        repo_delete = stack.maintenance("repo", "delete", "gc/ro", "--yes")
        assert repo_delete.returncode != 0 and "read-only" in repo_delete.stderr
        assert _status(f"{stack.url}/v2/gc/ro/manifests/v1") == 200
        # The scripts refuse on their own (a mark set after a collection started).
        lifecycle = redis.Redis.from_url(_redis_url(stack))
        script = lifecycle.register_script(keys.GC_DELETE_MANIFEST)
        with pytest.raises(redis.ResponseError, match=keys.READ_ONLY):
            script(args=[keys.repo_prefix("gc/ro"), keys.CATALOG, "gc/ro", untagged, 0, "1", "0", "{}"])
    finally:
        client.delete("wharf:maintenance")
    push_image([stack.url], "gc/ro", "v2", random_layers(1, 1024))
    assert _gc(stack, "--grace", "0", "--delete-untagged")["manifests_removed"]
    assert _status(f"{stack.url}/v2/gc/ro/manifests/{untagged}") == 404


def test_a_manifest_pushed_again_is_young_again(start_stack: Callable[..., RunningStack]) -> None:
    """A client pushes its platform manifests by digest, then the index naming them: a manifest
    stored untagged long ago and pushed again just now must survive a collection in between, as
    a blob pushed again does (its first arrival, `created`, stays what retention reads)."""
    stack = start_stack()
    old = push_image([stack.url], "gc/again", "t", random_layers(1, 1024))
    never_again = push_image([stack.url], "gc/again", "u", random_layers(1, 1024))
    for tag in ("t", "u"):
        assert requests.delete(f"{stack.url}/v2/gc/again/manifests/{tag}", timeout=30).status_code == 202
    client = redis.Redis.from_url(_redis_url(stack))
    for digest_ in (old, never_again):  # both arrived an hour ago
        client.hset(keys.manifest("gc/again", digest_), "created", int((time.time() - 3600) * 1000))
    body = requests.get(f"{stack.url}/v2/gc/again/manifests/{old}", headers={"Accept": OCI_MANIFEST}, timeout=30)
    pushed = requests.put(f"{stack.url}/v2/gc/again/manifests/{old}", data=body.content, timeout=30,
                          headers={"Content-Type": OCI_MANIFEST})
    assert pushed.status_code == 201
    report = _gc(stack, "--grace", "600", "--delete-untagged")
    assert report["manifests_removed"] == 1
    assert _status(f"{stack.url}/v2/gc/again/manifests/{old}") == 200
    assert _status(f"{stack.url}/v2/gc/again/manifests/{never_again}") == 404


def test_one_collection_at_a_time(start_stack: Callable[..., RunningStack]) -> None:
    stack = start_stack()
    client = redis.Redis.from_url(_redis_url(stack))
    client.set(keys.GC_LOCK, json.dumps({"gc": "another"}), px=60_000)
    try:
        busy = subprocess.run([sys.executable, "-m", "services.gc"], cwd=ROOT, capture_output=True, text=True,
                              env=dict(os.environ, WHARF_DATA_DIR=str(stack.data_dir),
                                       WHARF_REDIS_URL=_redis_url(stack)), timeout=60)
        assert busy.returncode == 2 and "another garbage collection" in busy.stderr
    finally:
        client.delete(keys.GC_LOCK)


class _NoMetadata:
    def collect(self, repository: str, grace_ms: int, delete_untagged: bool, dry_run: bool) -> tuple[list[str],
                                                                                                      list[str]]:
        return [], []

    def begin_delete(self, digest: str) -> tuple[str, str]:
        return "", "linked"

    def end_delete(self, digest: str, fence: str) -> None:
        return None

    def delete_manifest(self, repository: str, digest: str) -> None:
        return None


def _collector(redis_client: redis.Redis, tmp_path: pathlib.Path) -> Collector:
    return Collector(redis_client, FilesystemDriver(tmp_path / "blobs"), _NoMetadata(), lambda digest: False,
                     grace=0, lock_ttl=0.3)


def test_a_run_stops_when_its_lock_is_lost(redis_client: redis.Redis, tmp_path: pathlib.Path) -> None:
    """A run that outlives its lock (or whose lock someone removed) must not go on without it."""
    redis_client.zadd(keys.CATALOG, {"lost/repo": 0})
    collector = _collector(redis_client, tmp_path)
    collector._renewed = 0.0  # as if the last renewal were long ago
    redis_client.delete(keys.GC_LOCK)
    collector._held = json.dumps({"gc": "mine"})
    with pytest.raises(LockLost):
        collector._collect()
    redis_client.set(keys.GC_LOCK, json.dumps({"gc": "mine"}))
    collector._renewed = 0.0
    collector._collect()  # ours again: renewed, and the run goes through
    assert 0 < redis_client.pttl(keys.GC_LOCK) <= 300


def test_a_run_never_renews_or_ends_another_runs_lock(redis_client: redis.Redis, tmp_path: pathlib.Path) -> None:
    """Renewal and release compare the holder in the same step as they act (a Lua script): a run whose
    lock expired and was taken by another run neither extends nor deletes the other run's lock. With a
    GET followed by PEXPIRE/DEL, the lock could change hands between the two calls."""
    collector = _collector(redis_client, tmp_path)
    other = json.dumps({"gc": "another run", "since": 1})
    # The other run's value contains this run's token as a substring: an `in` check would match it.
    collector._held = json.dumps({"gc": "another run"})[:-2]
    redis_client.set(keys.GC_LOCK, other, px=60_000)
    collector._renewed = 0.0
    with pytest.raises(LockLost):
        collector._hold_lock()
    assert redis_client.pttl(keys.GC_LOCK) > 300
    collector._release(keys=[keys.GC_LOCK], args=[collector._held])
    assert redis_client.get(keys.GC_LOCK) == other.encode()
