"""Blob store logic over the filesystem driver: sessions, offsets, digests, expiry."""

from __future__ import annotations

import hashlib
import os
import pathlib
import threading
import time

import pytest

from services.blobstore.blobs import BlobService
from services.blobstore.storage.filesystem import FilesystemDriver
from services.common import digests, upload_ids
from services.common.errors import RegistryError


@pytest.fixture()
def root(tmp_path: pathlib.Path) -> pathlib.Path:
    return tmp_path / "blobs"


@pytest.fixture()
def blobs(root: pathlib.Path) -> BlobService:
    return BlobService(FilesystemDriver(root), upload_ttl=3600)


def _code(exc: pytest.ExceptionInfo[RegistryError]) -> str:
    return exc.value.code


def test_chunked_upload_commits_verified_bytes(blobs: BlobService) -> None:
    upload = blobs.create_upload("repo")
    blobs.append(upload.upload_id, "repo", 0, [b"hello ", b"wor"])
    blobs.append(upload.upload_id, "repo", 9, [b"ld"])
    blob = blobs.commit(upload.upload_id, "repo", digests.of(b"hello world"))
    assert blob.size == 11
    assert b"".join(blobs.read(blob.digest, 0, 0, 4)) == b"hello world"
    assert b"".join(blobs.read(blob.digest, 6, 3, 4)) == b"wor"


def test_wrong_offset_is_refused_and_session_survives(blobs: BlobService) -> None:
    upload = blobs.create_upload("repo")
    blobs.append(upload.upload_id, "repo", 0, [b"abc"])
    with pytest.raises(RegistryError) as info:
        blobs.append(upload.upload_id, "repo", 1, [b"zzz"])
    assert _code(info) == "RANGE_INVALID" and info.value.detail == {"size": 3}
    assert blobs.get_upload(upload.upload_id, "repo").size == 3


def test_digest_mismatch_leaves_nothing_visible(blobs: BlobService) -> None:
    upload = blobs.create_upload("repo")
    blobs.append(upload.upload_id, "repo", 0, [b"actual"])
    claimed = digests.of(b"claimed")
    with pytest.raises(RegistryError) as info:
        blobs.commit(upload.upload_id, "repo", claimed)
    assert _code(info) == "DIGEST_INVALID"
    with pytest.raises(RegistryError):
        blobs.stat(claimed)
    with pytest.raises(RegistryError) as info:
        blobs.get_upload(upload.upload_id, "repo")
    assert _code(info) == "BLOB_UPLOAD_UNKNOWN"


def test_sha512_and_commit_by_another_replica(root: pathlib.Path, blobs: BlobService) -> None:
    upload = blobs.create_upload("repo")
    blobs.append(upload.upload_id, "repo", 0, [b"payload"])
    # A second service over the same storage has no hash state: it must re-read the stored bytes.
    other = BlobService(FilesystemDriver(root), upload_ttl=3600)
    digest = "sha512:" + hashlib.sha512(b"payload").hexdigest()
    assert other.commit(upload.upload_id, "repo", digest).size == 7
    assert blobs.stat(digest).size == 7


def test_upload_belongs_to_its_repository(blobs: BlobService) -> None:
    upload = blobs.create_upload("repo")
    with pytest.raises(RegistryError) as info:
        blobs.append(upload.upload_id, "other", 0, [b"x"])
    assert _code(info) == "BLOB_UPLOAD_UNKNOWN"


@pytest.mark.parametrize("upload_id", ["../../etc", "x" * 32, "", "0" * 31])
def test_malformed_upload_ids_are_unknown(blobs: BlobService, upload_id: str) -> None:
    with pytest.raises(RegistryError) as info:
        blobs.get_upload(upload_id, "repo")
    assert _code(info) == "BLOB_UPLOAD_UNKNOWN"


def test_monolithic_put_and_empty_blob(blobs: BlobService) -> None:
    assert blobs.put("repo", digests.of(b""), iter([])).size == 0
    assert list(blobs.read(digests.of(b""), 0, 0, 1024)) == []
    with pytest.raises(RegistryError):
        blobs.put("repo", digests.of(b"x"), iter([b"y"]))


def test_read_past_the_end_is_a_range_error(blobs: BlobService) -> None:
    digest = blobs.put("repo", digests.of(b"abc"), iter([b"abc"])).digest
    with pytest.raises(RegistryError) as info:
        list(blobs.read(digest, 3, 0, 16))
    assert _code(info) == "RANGE_INVALID"


def test_expired_sessions_are_swept(blobs: BlobService) -> None:
    old = blobs.create_upload("repo")
    assert blobs.expire_uploads(now=time.time()) == 0
    assert blobs.expire_uploads(now=time.time() + 7200) == 1
    with pytest.raises(RegistryError):
        blobs.get_upload(old.upload_id, "repo")


def test_a_whole_body_commit_writes_the_blob_once_and_ends_the_session(root: pathlib.Path,
                                                                       blobs: BlobService) -> None:
    """The small-push path (services/blobstore/blobs.py, commit_whole): the digest checked in memory,
    the bytes stored at the blob's key, the session gone; a mismatch stores nothing and ends the
    session as a commit's mismatch does; a second push of stored bytes only touches them."""
    data = b"a small layer"
    upload = blobs.create_upload("repo")
    assert blobs.get_upload(upload.upload_id, "repo").size == 0  # no data object until an append
    whole = blobs.commit_whole(upload.upload_id, "repo", 0, data, digests.of(data))
    assert whole is not None and whole[1].size == len(data) and whole[0].size == len(data)
    assert b"".join(blobs.read(digests.of(data), 0, 0, 4)) == data
    with pytest.raises(RegistryError) as info:
        blobs.get_upload(upload.upload_id, "repo")
    assert _code(info) == "BLOB_UPLOAD_UNKNOWN"
    assert not any((root / "uploads").iterdir())

    again = blobs.create_upload("repo")
    blob_file = root / "blobs" / "sha256" / digests.of(data)[7:9] / digests.of(data)[7:] / "data"
    old = time.time() - 3600
    os.utime(blob_file, (old, old))
    assert blobs.commit_whole(again.upload_id, "repo", -1, data, digests.of(data)) is not None
    assert blob_file.stat().st_mtime > old + 3000  # young again for garbage collection

    wrong = blobs.create_upload("repo")
    with pytest.raises(RegistryError) as info:
        blobs.commit_whole(wrong.upload_id, "repo", 0, b"other bytes", digests.of(b"claimed"))
    assert _code(info) == "DIGEST_INVALID"
    with pytest.raises(RegistryError):
        blobs.stat(digests.of(b"claimed"))
    with pytest.raises(RegistryError):
        blobs.get_upload(wrong.upload_id, "repo")


def test_a_whole_body_commit_leaves_a_started_session_to_the_general_path(blobs: BlobService) -> None:
    upload = blobs.create_upload("repo")
    blobs.append(upload.upload_id, "repo", 0, [b"first "])
    assert blobs.commit_whole(upload.upload_id, "repo", 6, b"second", digests.of(b"first second")) is None
    assert blobs.get_upload(upload.upload_id, "repo").size == 6  # untouched
    with pytest.raises(RegistryError) as info:
        blobs.commit_whole(upload.upload_id, "other", 0, b"x", digests.of(b"x"))
    assert _code(info) == "BLOB_UPLOAD_UNKNOWN"
    blobs.cancel(upload.upload_id, "repo")
    with pytest.raises(RegistryError) as info:
        blobs.commit_whole(upload.upload_id, "repo", 0, b"x", digests.of(b"x"))
    assert _code(info) == "BLOB_UPLOAD_UNKNOWN"


def test_sealed_ids_are_empty_sessions_until_they_expire(root: pathlib.Path) -> None:
    """services/common/upload_ids.py: a sealed id is a session of its repository only, only with
    the key, and only for the session lifetime; its end is marked until then, and swept after."""
    key = upload_ids.key_from("x" * 40)
    blobs = BlobService(FilesystemDriver(root), upload_ttl=60, id_key=key)
    upload_id = upload_ids.issue(key, "repo")
    assert blobs.get_upload(upload_id, "repo").size == 0
    assert not (root / "uploads").exists() or not any((root / "uploads").iterdir())  # nothing stored yet
    for repository, service in (("other", blobs), ("", blobs),
                                ("repo", BlobService(FilesystemDriver(root), upload_ttl=60)),
                                ("repo", BlobService(FilesystemDriver(root), upload_ttl=60,
                                                     id_key=upload_ids.key_from("y" * 40)))):
        with pytest.raises(RegistryError) as info:
            service.get_upload(upload_id, repository)
        assert _code(info) == "BLOB_UPLOAD_UNKNOWN"
    old = upload_ids.issue(key, "repo", now=time.time() - 61)
    with pytest.raises(RegistryError):
        blobs.get_upload(old, "repo")
    future = upload_ids.issue(key, "repo", now=time.time() + 3600)
    with pytest.raises(RegistryError):
        blobs.get_upload(future, "repo")

    blobs.append(upload_id, "repo", 0, [b"abc"])  # now stored
    assert blobs.get_upload(upload_id, "repo").size == 3
    blobs.cancel(upload_id, "repo")
    with pytest.raises(RegistryError):
        blobs.get_upload(upload_id, "repo")
    with pytest.raises(RegistryError):
        blobs.append(upload_id, "repo", 0, [b"abc"])
    # The mark of its end goes with the id's lifetime.
    assert blobs.expire_uploads(now=time.time() + 120) == 1
    assert not any((root / "uploads").iterdir())



@pytest.mark.parametrize("other", ["cancel", "append"])
@pytest.mark.parametrize("stored", [b"", b"0123456789"])
def test_a_cancel_racing_a_cancel_or_an_append_ends_the_session_for_good(root: pathlib.Path, stored: bytes,
                                                                        other: str) -> None:
    """Two cancels at once, or a cancel beside an append, on a sealed session (fresh or holding
    bytes): no storage error (once a 503 from a mark written into a directory another cancel had
    just renamed away), and the session ends whoever wins (once the append's new info overwrote the
    mark, or the append landed in the gap between removal and mark: the cancelled URL lived on)."""
    key = upload_ids.key_from("x" * 40)
    blobs = BlobService(FilesystemDriver(root), upload_ttl=60, id_key=key)
    for _ in range(60):
        upload_id = upload_ids.issue(key, "repo")
        if stored:
            blobs.append(upload_id, "repo", 0, [stored])
        barrier = threading.Barrier(2)
        outcomes: list[str] = []

        def run(step: str, upload_id: str = upload_id, barrier: threading.Barrier = barrier,
                outcomes: list[str] = outcomes) -> None:
            barrier.wait()
            try:
                if step == "cancel":
                    blobs.cancel(upload_id, "repo")
                else:
                    blobs.append(upload_id, "repo", -1, [b"x" * 100])
                outcomes.append(step)
            except RegistryError as err:
                outcomes.append(err.code)

        threads = [threading.Thread(target=run, args=("cancel",)), threading.Thread(target=run, args=(other,))]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)
        assert "cancel" in outcomes, outcomes
        assert set(outcomes) <= {"cancel", "append", "BLOB_UPLOAD_UNKNOWN", "BLOB_UPLOAD_INVALID"}, outcomes
        with pytest.raises(RegistryError) as info:
            blobs.get_upload(upload_id, "repo")
        assert _code(info) == "BLOB_UPLOAD_UNKNOWN"

def test_a_blob_given_whole_needs_no_session(root: pathlib.Path, blobs: BlobService) -> None:
    """Put with everything in one message (a small monolithic push): stored once, no session made;
    a mismatch stores nothing."""
    data = b"monolithic and small"
    assert blobs.put_whole(digests.of(data), data).size == len(data)
    assert b"".join(blobs.read(digests.of(data), 0, 0, 64)) == data
    with pytest.raises(RegistryError) as info:
        blobs.put_whole(digests.of(b"claimed"), data)
    assert _code(info) == "DIGEST_INVALID"
    with pytest.raises(RegistryError):
        blobs.stat(digests.of(b"claimed"))
    assert not (root / "uploads").exists() or not any((root / "uploads").iterdir())
