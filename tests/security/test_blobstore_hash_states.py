"""The blob store's in-memory running hashes are bounded and expire.

Each replica keeps a running sha256 for the sessions it appends to, and only the
replica that finishes a session removed it. With round-robin across replicas most
sessions finish elsewhere, so every replica's table grew with every upload, forever:
a client could grow it at will by opening sessions. Forgetting a hash costs only a
re-read of the stored bytes at commit.
"""

from __future__ import annotations

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


def test_sessions_finished_on_another_replica_do_not_pile_up(root: pathlib.Path) -> None:
    here = BlobService(FilesystemDriver(root), upload_ttl=3600, max_hash_states=8)
    elsewhere = BlobService(FilesystemDriver(root), upload_ttl=3600)
    for number in range(40):
        upload = here.create_upload("repo")
        data = f"layer {number}".encode()
        elsewhere.append(upload.upload_id, "repo", 0, [data])
        elsewhere.commit(upload.upload_id, "repo", digests.of(data))
        assert here.hashed_uploads <= 8
    assert elsewhere.hashed_uploads == 0


def test_idle_hashes_expire_with_the_session_lifetime(root: pathlib.Path) -> None:
    here = BlobService(FilesystemDriver(root), upload_ttl=60)
    elsewhere = BlobService(FilesystemDriver(root), upload_ttl=60)
    for number in range(5):
        upload = here.create_upload("repo")
        elsewhere.put("repo", digests.of(b"%d" % number), [b"%d" % number])
        elsewhere.cancel(upload.upload_id, "repo")  # ended elsewhere: this replica never hears of it
    assert here.hashed_uploads == 5
    here.expire_uploads(now=time.time() + 30)
    assert here.hashed_uploads == 5  # not idle long enough yet
    here.expire_uploads(now=time.time() + 61)
    assert here.hashed_uploads == 0


def test_an_idle_hash_is_dropped_when_the_next_one_is_kept(root: pathlib.Path) -> None:
    """Between janitor runs too: keeping a hash prunes those idle longer than a session lives."""
    here = BlobService(FilesystemDriver(root), upload_ttl=1)
    here.create_upload("repo")
    time.sleep(1.2)
    here.create_upload("repo")
    assert here.hashed_uploads == 1


def test_a_forgotten_hash_means_a_re_read_not_a_wrong_answer(root: pathlib.Path) -> None:
    here = BlobService(FilesystemDriver(root), upload_ttl=3600, max_hash_states=1)
    first, second = here.create_upload("repo"), here.create_upload("repo")  # the first hash is evicted
    here.append(first.upload_id, "repo", 0, [b"first"])
    here.append(second.upload_id, "repo", 0, [b"second"])
    assert here.hashed_uploads == 1
    with pytest.raises(RegistryError) as info:
        here.commit(first.upload_id, "repo", digests.of(b"not first"))
    assert info.value.code == "DIGEST_INVALID"
    assert here.commit(second.upload_id, "repo", digests.of(b"second")).size == 6
    third = here.create_upload("repo")
    here.append(third.upload_id, "repo", 0, [b"third"])
    assert here.commit(third.upload_id, "repo", digests.of(b"third")).size == 5
    assert b"".join(here.read(digests.of(b"third"), 0, 0, 64)) == b"third"
