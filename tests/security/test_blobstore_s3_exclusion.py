"""One writer per S3 upload session, against real MinIO and SeaweedFS.

Before the S3 driver had writer exclusion, two appends of equal length racing on one
session (two threads of one replica, or two replicas) both passed the offset check and
both wrote; the stored bytes were one writer's while the running hash was the other's,
and the commit filed the stored bytes under the hashed digest. These tests race writers
and check that exactly one gets through, the others are refused, and every blob that
commits hashes to its digest when read back.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import hashlib
import os
import threading
import time

import pytest

from services.blobstore import layout
from services.blobstore.blobs import BlobService
from services.blobstore.storage.base import UploadBusyError
from services.blobstore.storage.s3 import S3Config, S3Driver
from services.blobstore.storage.s3_session import PART_TARGET
from services.common import digests
from services.common.errors import RegistryError
from tests.support.s3 import S3Server


def _replica(server: S3Server, bucket: str, lease_seconds: float = 120.0) -> S3Driver:
    """One blob store replica's driver; several over one bucket share the sessions."""
    return S3Driver(S3Config(endpoint=server.endpoint, bucket=bucket, access_key=server.access_key,
                             secret_key=server.secret_key, prefix="excl", lease_seconds=lease_seconds))


def _commit_retrying(service: BlobService, upload_id: str, digest: str) -> str:
    """Commits as a client would: a loser of the race may hold the session for a moment (to be
    told its offset is stale), and BLOB_UPLOAD_INVALID says to try again."""
    for _ in range(50):
        try:
            return service.commit(upload_id, "repo", digest).digest
        except RegistryError as exc:
            if exc.code != "BLOB_UPLOAD_INVALID":
                raise
            time.sleep(0.05)
    raise AssertionError("the session stayed busy")


@pytest.fixture()
def bucket(s3_server: S3Server) -> str:
    return s3_server.env()["WHARF_S3_BUCKET"]


def test_the_server_honours_conditional_puts(s3_server: S3Server, bucket: str) -> None:
    """What the exclusion rests on: create-only and compare-and-swap PUTs (the driver's _put_if)."""
    driver = _replica(s3_server, bucket)
    first = driver._put_if("cond/state", b"one", None)
    assert first is not None
    assert driver._put_if("cond/state", b"two", None) is None  # If-None-Match: * on an existing object
    second = driver._put_if("cond/state", b"three", first)
    assert second is not None and second != first
    assert driver._put_if("cond/state", b"four", first) is None  # If-Match with a stale ETag
    assert driver._put_if("cond/absent", b"x", second) is None  # If-Match on an absent object
    assert driver.get_content("cond/state") == b"three"


def test_a_second_writer_is_refused_on_every_replica(s3_server: S3Server, bucket: str) -> None:
    here, there = _replica(s3_server, bucket), _replica(s3_server, bucket)
    with here.writer("up/data", append=True) as first:
        first.write(b"abc")
        for driver in (here, there):
            with pytest.raises(UploadBusyError):
                driver.writer("up/data", append=True)
    with there.writer("up/data", append=True) as second:  # released by close()
        assert second.size == 3
        second.write(b"def")
    finishing = here.writer("up/data", append=True)
    finishing.commit()
    with pytest.raises(UploadBusyError):  # held from commit until close, while the caller verifies
        there.writer("up/data", append=True)
    assert there.get_content("up/data") == b"abcdef"
    finishing.close()


@pytest.mark.parametrize("chunk_size", [4096, PART_TARGET + 4096], ids=["tail", "part"])
def test_racing_appends_never_commit_bytes_other_than_the_hashed_ones(s3_server: S3Server, bucket: str,
                                                                     chunk_size: int) -> None:
    """Four clients, two on each of two replicas, append equal-length different chunks at one
    offset at once; then each client whose append was accepted commits the digest of what it
    sent. Replica 0 created the session, so one of its appends carries the running hash."""
    replicas = [BlobService(_replica(s3_server, bucket), upload_ttl=3600) for _ in range(2)]
    reader = _replica(s3_server, bucket)
    rounds_seen: list[list[str]] = []
    committed: list[str] = []
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        for _ in range(6 if chunk_size < PART_TARGET else 2):
            upload = replicas[0].create_upload("repo")
            prefix = os.urandom(1000)
            replicas[0].append(upload.upload_id, "repo", 0, [prefix])
            barrier = threading.Barrier(4)

            def contend(number: int, upload_id: str = upload.upload_id, offset: int = len(prefix),
                        barrier: threading.Barrier = barrier) -> str:
                barrier.wait()
                try:
                    replicas[number % 2].append(upload_id, "repo", offset, [bytes([number]) * chunk_size])
                except RegistryError as exc:
                    return f"refused:{exc.code}"
                return "appended"

            outcomes = list(pool.map(contend, range(4)))
            rounds_seen.append(outcomes)
            for number in sorted(range(4), key=lambda n: n % 2):  # replica 0's clients first
                if outcomes[number] == "appended":
                    digest = digests.of(prefix + bytes([number]) * chunk_size)
                    with contextlib.suppress(RegistryError):  # DIGEST_INVALID, or the session is over
                        committed.append(_commit_retrying(replicas[number % 2], upload.upload_id, digest))
    # First what matters most: whatever was filed under a digest hashes to that digest.
    for digest in committed:
        assert digests.of(reader.get_content(layout.blob_key(digest))) == digest, "bytes filed under another digest"
    for outcomes in rounds_seen:
        # One append got in; the others were refused while it held the session or, coming after
        # it, told that the offset had moved on. None of them appended as well.
        assert outcomes.count("appended") == 1, outcomes
        assert set(outcomes) <= {"appended", "refused:BLOB_UPLOAD_INVALID", "refused:RANGE_INVALID"}, outcomes
    assert any("refused:BLOB_UPLOAD_INVALID" in outcomes for outcomes in rounds_seen), rounds_seen
    assert len(committed) == len(rounds_seen)  # and its client committed it


def test_writers_on_many_replicas_never_interleave(s3_server: S3Server, bucket: str) -> None:
    """Six replicas hammer one object; each writer that got in appended its whole chunk, at the
    size it found, and the stored object is exactly those chunks back to back."""
    replicas = [_replica(s3_server, bucket) for _ in range(6)]
    replicas[0].writer("hammer/data", append=False).close()
    landed: list[tuple[int, bytes]] = []
    busy = 0
    lock = threading.Lock()
    barrier = threading.Barrier(len(replicas))

    def hammer(number: int) -> None:
        nonlocal busy
        barrier.wait()
        for attempt in range(5):
            # One writer sends a part now and then; the others stay in the tail.
            size = PART_TARGET + 1 if (number, attempt) == (0, 2) else 50_000 + number * 1000 + attempt
            chunk = hashlib.sha256(f"{number}/{attempt}".encode()).digest() * (size // 32 + 1)
            try:
                with replicas[number].writer("hammer/data", append=True) as writer:
                    start = writer.size
                    writer.write(chunk[: size // 2])
                    writer.write(chunk[size // 2: size])
            except UploadBusyError:
                with lock:
                    busy += 1
                continue
            with lock:
                landed.append((start, chunk[:size]))

    with concurrent.futures.ThreadPoolExecutor(len(replicas)) as pool:
        list(pool.map(hammer, range(len(replicas))))
    assert busy > 0 and landed
    finishing = replicas[0].writer("hammer/data", append=True)
    finishing.commit()
    stored = replicas[1].get_content("hammer/data")
    finishing.close()
    offset = 0
    for start, chunk in sorted(landed):
        assert start == offset, "a writer's bytes landed where another's were"
        assert stored[start:start + len(chunk)] == chunk
        offset += len(chunk)
    assert len(stored) == offset


def test_a_dead_writers_lease_is_taken_over_and_the_old_writer_fenced(s3_server: S3Server, bucket: str) -> None:
    """A replica that stopped mid-append blocks the session only for its lease; if it wakes up
    afterwards, nothing it stores becomes part of the object."""
    stalled, other = _replica(s3_server, bucket, lease_seconds=1.0), _replica(s3_server, bucket)
    with other.writer("lease/data", append=True) as writer:
        writer.write(b"kept;")
    zombie = stalled.writer("lease/data", append=True)
    zombie.write(b"never-saved;")
    with pytest.raises(UploadBusyError):
        other.writer("lease/data", append=True)
    time.sleep(1.5)
    with other.writer("lease/data", append=True) as successor:
        assert successor.size == len(b"kept;")  # what the dead writer had not saved is not there
        successor.write(b"successor;")
    with pytest.raises(UploadBusyError):
        zombie.write(b"late")  # its lease is due for renewal, and the renewal fails
    zombie.close()  # a lost writer stores nothing
    with pytest.raises(UploadBusyError):
        zombie.commit()
    finishing = other.writer("lease/data", append=True)
    finishing.commit()
    assert other.get_content("lease/data") == b"kept;successor;"
    finishing.close()


def test_a_writer_that_lost_its_session_cannot_replace_parts_or_commit(s3_server: S3Server, bucket: str) -> None:
    """The worst case for a lease: the old holder believes it still holds the session (its clock
    runs behind, simulated by never renewing) and sends a part after the takeover. The part
    number it uses is one the successor skipped, so the successor's parts are untouched."""
    stalled, other = _replica(s3_server, bucket, lease_seconds=1.0), _replica(s3_server, bucket)
    first = os.urandom(PART_TARGET)
    with other.writer("fence/data", append=False) as writer:
        writer.write(first)  # part 1
    zombie = stalled.writer("fence/data", append=True)
    zombie._renew_at = float("inf")  # type: ignore[attr-defined]  # it never notices its lease ran out
    time.sleep(1.5)
    second = os.urandom(PART_TARGET)
    with other.writer("fence/data", append=True) as successor:
        successor.write(second)  # a part numbered after the one the zombie may be sending
    with pytest.raises(UploadBusyError):
        zombie.write(os.urandom(PART_TARGET))  # its part is sent, but its save of the state fails
    with pytest.raises(UploadBusyError):
        zombie.commit()
    finishing = other.writer("fence/data", append=True)
    finishing.commit()
    assert hashlib.sha256(other.get_content("fence/data")).digest() == hashlib.sha256(first + second).digest()
    finishing.close()


def test_a_deleted_session_fails_its_writer_cleanly(s3_server: S3Server, bucket: str) -> None:
    """Cancel or expiry while a writer holds the session: the writer's next save is refused."""
    driver, other = _replica(s3_server, bucket), _replica(s3_server, bucket)
    writer = driver.writer("gone/data", append=True)
    writer.write(b"x" * 10)
    assert other.delete("gone") is True
    assert other.delete("gone") is False
    with pytest.raises(UploadBusyError):
        writer.close()
    assert other.stat("gone/data") is None
