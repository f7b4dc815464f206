"""Blob store logic over the filesystem driver: sessions, offsets, digests, expiry."""

from __future__ import annotations

import hashlib
import pathlib
import time

import pytest

from services.blobstore.blobs import BlobService
from services.blobstore.storage.filesystem import FilesystemDriver
from services.common import digests
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
