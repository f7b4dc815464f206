"""Concurrent deletes on the filesystem driver, and the janitor's sweep of its scratch space.

Deleting a tree renames it into ``_tmp/`` first. Two deletes of one tree both saw it,
both made a scratch directory, and the loser's rename raised FileNotFoundError: a 503 for
a cancel racing another cancel, a commit or the janitor, and a scratch directory left
behind for good, since nothing ever swept ``_tmp/``.
"""

from __future__ import annotations

import concurrent.futures
import os
import pathlib
import threading
import time
from collections.abc import Callable

import pytest

from services.blobstore.blobs import BlobService
from services.blobstore.storage.filesystem import FilesystemDriver
from services.common import digests
from services.common.errors import RegistryError

THREADS = 16
ROUNDS = 20


@pytest.fixture()
def root(tmp_path: pathlib.Path) -> pathlib.Path:
    return tmp_path / "blobs"


def _race(calls: list[Callable[[], object]]) -> list[object]:
    """Runs the calls at the same moment; returns each one's result or the exception it raised."""
    barrier = threading.Barrier(len(calls))

    def run(call: Callable[[], object]) -> object:
        barrier.wait()
        try:
            return call()
        except Exception as exc:  # collected, and judged by the test
            return exc

    with concurrent.futures.ThreadPoolExecutor(len(calls)) as pool:
        return list(pool.map(run, calls))


def _scratch(root: pathlib.Path) -> list[str]:
    return sorted(os.listdir(root / "_tmp"))


def test_concurrent_deletes_of_one_tree_report_it_once(root: pathlib.Path) -> None:
    driver = FilesystemDriver(root)
    for _ in range(ROUNDS):
        for name in ("data", "info", "more/nested"):
            driver.put_content(f"uploads/t/{name}", b"x")
        results = _race([lambda: driver.delete("uploads/t")] * THREADS)
        assert sorted(results, key=str) == [False] * (THREADS - 1) + [True], results
        assert driver.stat("uploads/t/data") is None
    assert _scratch(root) == []


def test_concurrent_deletes_of_one_blob(root: pathlib.Path) -> None:
    blobs = BlobService(FilesystemDriver(root), upload_ttl=3600)
    for number in range(ROUNDS):
        digest = blobs.put("", digests.of(b"%d" % number), [b"%d" % number]).digest
        results = _race([lambda digest=digest: blobs.delete(digest)] * THREADS)  # type: ignore[misc]
        assert results.count(True) == 1 and results.count(False) == THREADS - 1, results
    assert _scratch(root) == []


def test_cancel_commit_and_janitor_racing_on_one_session(root: pathlib.Path) -> None:
    """Every caller gets an answer a client can act on, never a backend error; the session ends
    exactly once, a commit that wins files the right bytes, and nothing is left in scratch."""
    blobs = BlobService(FilesystemDriver(root), upload_ttl=3600)
    other_replica = BlobService(FilesystemDriver(root), upload_ttl=3600)
    for number in range(ROUNDS):
        data = b"payload %d" % number
        upload = blobs.create_upload("repo")
        blobs.append(upload.upload_id, "repo", 0, [data])

        def cancel(service: BlobService, upload_id: str = upload.upload_id) -> str:
            service.cancel(upload_id, "repo")
            return "cancelled"

        def commit(service: BlobService, upload_id: str = upload.upload_id, data: bytes = data) -> str:
            service.commit(upload_id, "repo", digests.of(data))
            return "committed"

        def expire(service: BlobService) -> str:
            return f"expired {service.expire_uploads(now=time.time() + 7200)}"

        calls: list[Callable[[], object]] = []
        for service in (blobs, other_replica):
            calls += [lambda s=service: cancel(s)] * 4 + [lambda s=service: commit(s)] * 2
            calls += [lambda s=service: expire(s)] * 2  # type: ignore[misc]
        results = _race(calls)
        for result in results:
            if isinstance(result, RegistryError):
                # Lost the race: the session is gone, or another request held it at that moment.
                # (Not DIGEST_INVALID: a commit must not hash a session a cancel just ended.)
                assert result.code in {"BLOB_UPLOAD_UNKNOWN", "BLOB_UPLOAD_INVALID"}, result
            else:
                assert isinstance(result, str), repr(result)
        assert results.count("committed") <= 1
        assert {"cancelled", "committed", "expired 1"} & set(results), results
        if "committed" in results:
            assert b"".join(blobs.read(digests.of(data), 0, 0, 64)) == data
        with pytest.raises(RegistryError):
            blobs.get_upload(upload.upload_id, "repo")
        assert not (root / "uploads" / upload.upload_id).exists()  # not even recreated by a late open
    assert _scratch(root) == []


def test_the_janitor_sweeps_stale_scratch(root: pathlib.Path) -> None:
    """Left by a crash mid-put or mid-delete; swept once older than the session lifetime."""
    blobs = BlobService(FilesystemDriver(root), upload_ttl=3600)
    scratch = root / "_tmp"
    (scratch / "tmp-dead-delete" / "x" / "deep").mkdir(parents=True)
    (scratch / "tmp-dead-delete" / "x" / "deep" / "data").write_bytes(b"old blob")
    (scratch / "tmp-dead-put").write_bytes(b"half a put")
    (scratch / "tmp-live-put").write_bytes(b"being written right now")
    stale = time.time() - 3600 - 60
    for path in ("tmp-dead-delete", "tmp-dead-put"):
        os.utime(scratch / path, (stale, stale))
    assert blobs.expire_uploads() == 2
    assert _scratch(root) == ["tmp-live-put"]
    assert blobs.expire_uploads() == 0


def test_a_writer_never_touches_a_file_moved_away_before_its_lock(root: pathlib.Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """Between a writer's open and its lock, the holder may move the file away (a commit makes a
    session's data a blob): the writer must not write to it, or truncate it, through its fd."""
    import fcntl

    from services.blobstore.storage.base import UploadBusyError

    driver = FilesystemDriver(root)
    real = fcntl.flock
    for append in (False, True):
        with driver.writer("uploads/s/data", append=True) as first:
            first.write(b"the session's bytes")
        blob = f"blobs/sha256/ab/ab{int(append)}/data"

        def moved_first(fd: int, operation: int, blob: str = blob) -> None:
            if operation & fcntl.LOCK_EX and (root / "uploads/s/data").exists():
                driver.move("uploads/s/data", blob)
            real(fd, operation)

        monkeypatch.setattr(fcntl, "flock", moved_first)
        with pytest.raises(UploadBusyError):
            driver.writer("uploads/s/data", append=append)
        monkeypatch.setattr(fcntl, "flock", real)
        assert driver.get_content(blob) == b"the session's bytes"


def test_no_append_gets_in_between_the_last_append_and_its_commit(root: pathlib.Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """A closing PUT sent twice at once (a client retrying one still in flight): the append let go
    of the session's writer before its commit took it again, and the other request's append of the
    same last chunk got in between; the commit then hashed the chunk twice (DIGEST_INVALID), the
    session ended, nothing was stored. Here the other append is made at the worst moment, as the
    commit reads the session's digest: it must find the session held, and the commit must store."""
    blobs = BlobService(FilesystemDriver(root), upload_ttl=3600)
    data = os.urandom(200_000)
    upload = blobs.create_upload("repo")
    blobs.append(upload.upload_id, "repo", 0, [data[:100_000]])
    session = blobs.open_append(upload.upload_id, "repo", -1)
    session.write(data[100_000:])
    intruder: list[object] = []
    stored_digest = blobs._stored_digest

    def digest_with_an_intruder(upload_id: str, algorithm: str, size: int) -> str:
        try:
            blobs.append(upload_id, "repo", -1, [data[100_000:]])
            intruder.append("appended")
        except RegistryError as err:
            intruder.append(err.code)
        return stored_digest(upload_id, algorithm, size)

    monkeypatch.setattr(blobs, "_stored_digest", digest_with_an_intruder)
    upload_after, blob = session.finish_and_commit(digests.of(data))
    assert intruder == ["BLOB_UPLOAD_INVALID"] and blob.size == len(data) == upload_after.size
    assert b"".join(blobs.read(digests.of(data), 0, 0, 1 << 20)) == data
