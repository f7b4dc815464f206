"""Blob store domain logic over a storage driver: uploads, digest checks, reads.

The digest of an upload is computed incrementally while bytes are appended by
this process (the same bytes that were written and fsynced). When a session was
appended to by another replica or before a restart, the commit re-reads the
stored bytes instead, so a commit always verifies exactly what is stored. That
rests on the driver's one-writer-at-a-time contract (:class:`FileWriter`): no
other writer can change the bytes between the hashing append and the commit.

Running hashes are kept for a bounded number of sessions and forgotten when idle:
with round-robin across replicas most sessions finish on another replica, which
never tells this one. Forgetting one costs only a re-read at commit.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import json
import logging
import os
import stat
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from typing import BinaryIO, TypeVar

from services.blobstore import layout
from services.blobstore.storage.base import FileWriter, StorageDriver, UploadBusyError
from services.common import digests, metrics, upload_ids
from services.common.errors import (
    BLOB_UNKNOWN,
    BLOB_UPLOAD_INVALID,
    BLOB_UPLOAD_UNKNOWN,
    DIGEST_INVALID,
    RANGE_INVALID,
    RegistryError,
)

log = logging.getLogger("wharf.blobstore")
_HASH_READ = 4 * 1024 * 1024
# Algorithm tracked while appending; others are computed at commit time.
_STREAMING_ALGORITHM = "sha256"
# Running hashes kept at most; beyond, the least recently used is forgotten. A sha256 state
# is a few hundred bytes, so this is ~1 MB, and far more sessions than one replica's workers
# append to at once.
MAX_HASH_STATES = 4096


@dataclasses.dataclass(frozen=True)
class Upload:
    upload_id: str
    repository: str
    size: int
    started_at: int
    # False for a sealed id nobody has written to yet: an empty session with nothing stored.
    stored: bool = True


@dataclasses.dataclass(frozen=True)
class Blob:
    digest: str
    size: int
    local_path: str = ""
    redirect_url: str = ""


@dataclasses.dataclass
class _HashState:
    size: int
    hasher: digests.Hasher
    used_at: float = 0.0


@contextlib.contextmanager
def _session_races() -> Iterator[None]:
    """Turns what a concurrent request does to a session into the answers a client can act on:
    another writer holding it (retry later), or the session deleted under us (start again)."""
    try:
        yield
    except UploadBusyError:
        raise RegistryError(BLOB_UPLOAD_INVALID, "another request is writing to this upload") from None
    except FileNotFoundError:
        raise RegistryError(BLOB_UPLOAD_UNKNOWN, "upload unknown or expired") from None


# Blob bytes through the storage, both ways (what the gateway sends from disk itself is not here).
_BYTES_READ = metrics.STORAGE_BYTES.labels("read")
_BYTES_WRITTEN = metrics.STORAGE_BYTES.labels("written")


_Read = TypeVar("_Read", bytes, memoryview)


class BlobReader:
    """An open blob and how many bytes of it are still to be read.

    A blob in a local file is read with ``pread`` from an offset kept here, which also lets a
    caller on an event loop try the page cache first (``next_cached``): most downloads are of
    blobs read a moment ago, and a read that does not wait for the disk costs less on the loop
    than the hop to a thread and back."""

    def __init__(self, handle: BinaryIO, remaining: int) -> None:
        self._handle = handle
        self._remaining = remaining
        self._fd, self._offset, self._nowait = -1, 0, hasattr(os, "RWF_NOWAIT")
        with contextlib.suppress(AttributeError, OSError, ValueError):  # not a file: read it as a stream
            fd = handle.fileno()
            if stat.S_ISREG(os.fstat(fd).st_mode):
                self._fd, self._offset = fd, handle.tell()

    def next_chunk(self, chunk_size: int) -> bytes:
        """Up to ``chunk_size`` bytes; empty at the end."""
        if self._remaining <= 0:
            return b""
        want = min(chunk_size, self._remaining)
        return self._took(self._handle.read(want) if self._fd < 0 else os.pread(self._fd, want, self._offset))

    def next_cached(self, chunk_size: int) -> bytes | memoryview | None:
        """``next_chunk``, but only if it need not wait for the disk: None when some of it is not
        in the page cache, or the blob is not in a local file."""
        if self._remaining <= 0:
            return b""
        if self._fd < 0 or not self._nowait:
            return None
        buffer = bytearray(min(chunk_size, self._remaining))
        try:
            got = os.preadv(self._fd, [buffer], self._offset, os.RWF_NOWAIT)
        except BlockingIOError:
            return None
        except OSError:  # the file system does not take the flag: always read in a thread
            self._nowait = False
            return None
        return self._took(memoryview(buffer)[:got])

    def _took(self, data: _Read) -> _Read:
        self._remaining -= len(data)
        self._offset += len(data)
        _BYTES_READ.inc(len(data))
        if not data:
            self._remaining = 0
        return data

    def close(self) -> None:
        self._handle.close()


class AppendSession:
    """One append to an upload session: the writer held exclusively from open to finish or abort.

    The steps may run on different threads (each is short); nothing waits for the client
    inside them. A failure part-way keeps what was written (the session's offset moves on
    to it) and drops the running hash, so the commit re-reads whatever was stored.
    """

    def __init__(self, service: BlobService, upload: Upload, offset: int) -> None:
        self._service = service
        self._upload = upload
        self._stack = contextlib.ExitStack()
        with _session_races():
            self._writer = self._stack.enter_context(service._session_writer(upload.upload_id))
        try:
            # A negative offset appends wherever the session is (a PATCH without Content-Range).
            if offset >= 0 and offset != self._writer.size:
                raise RegistryError(RANGE_INVALID, f"upload is at offset {self._writer.size}, not {offset}",
                                    detail={"size": self._writer.size})
        except BaseException:
            self._stack.close()
            raise
        self._state = service._take_hash(upload.upload_id, self._writer.size)

    def write(self, data: bytes) -> None:
        if not data:
            return
        with _session_races():
            self._writer.write(data)
        _BYTES_WRITTEN.inc(len(data))
        if self._state is not None:
            self._state.hasher.update(data)

    def finish(self) -> Upload:
        with _session_races():
            size = self._writer.size
            self._stack.close()
        if self._state is not None:
            # Only now: an append that failed part-way (another writer took the session, storage
            # failed) leaves no hash, and its commit re-reads whatever was stored.
            self._state.size = size
            self._service._keep_hash(self._upload.upload_id, self._state)
        return Upload(self._upload.upload_id, self._upload.repository, size, self._upload.started_at)

    def finish_and_commit(self, digest: str) -> tuple[Upload, Blob]:
        """``finish`` and then the commit, under the writer the append holds: let go in between, a
        second request carrying the same last chunk (a client retrying a PUT still in flight)
        appended it again there, and both requests failed, the session ended and nothing stored.
        Now the commit ends the session first, and the other request finds it gone."""
        try:
            with _session_races():
                size = self._writer.size
                if self._state is not None:
                    self._state.size = size
                    self._service._keep_hash(self._upload.upload_id, self._state)  # the commit's digest
                    self._state = None
                blob = self._service._commit_held(self._upload.upload_id, self._writer, digest)
        finally:
            self._stack.close()
        return Upload(self._upload.upload_id, self._upload.repository, size, self._upload.started_at), blob

    def abort(self, exc: BaseException) -> None:
        """Ends the append after ``exc`` (the client went away, a bad chunk): written bytes stay."""
        with contextlib.suppress(Exception):
            self._stack.__exit__(type(exc), exc, exc.__traceback__)


# A sealed id's session that ended must stay unknown until the id expires rather than read as a
# new, empty session (services/common/upload_ids.py): its mark is layout.upload_ended_key. Marks
# written by earlier versions, as the info itself ({"ended": true}), are still honoured.
# A sealed id issued this far in the future (clocks apart) is still believed.
_CLOCK_SKEW = 300


class BlobService:
    def __init__(self, driver: StorageDriver, upload_ttl: int, max_hash_states: int = MAX_HASH_STATES,
                 id_key: bytes | None = None) -> None:
        self._driver = driver
        self._upload_ttl = upload_ttl
        self._max_hash_states = max_hash_states
        # The key gateways seal upload ids with; None: only this store's own ids are sessions.
        self._id_key = id_key
        # Least recently used first; every entry is for a session this process appended to.
        self._hashes: collections.OrderedDict[str, _HashState] = collections.OrderedDict()
        self._lock = threading.Lock()

    @property
    def hashed_uploads(self) -> int:
        """How many sessions this process keeps a running hash for (bounded; for tests and metrics)."""
        with self._lock:
            return len(self._hashes)

    def _keep_hash(self, upload_id: str, state: _HashState) -> None:
        state.used_at = time.time()
        with self._lock:
            self._hashes[upload_id] = state
            self._hashes.move_to_end(upload_id)
            self._prune_hashes(state.used_at)

    def _prune_hashes(self, now: float) -> None:
        """Forgets hashes beyond the bound and those idle longer than a session lives (its session
        has expired, or went on elsewhere). Called with the lock held."""
        while self._hashes:
            upload_id, oldest = next(iter(self._hashes.items()))
            if len(self._hashes) <= self._max_hash_states and now - oldest.used_at <= self._upload_ttl:
                break
            del self._hashes[upload_id]

    # -- committed blobs ---------------------------------------------------

    def stat(self, digest: str, want_location: bool = False) -> Blob:
        key = layout.blob_key(digest)
        info = self._driver.stat(key)
        if info is None:
            raise RegistryError(BLOB_UNKNOWN, f"blob {digest} unknown")
        if not want_location:
            return Blob(digest, info.size)
        return Blob(digest, info.size, self._driver.local_path(key) or "", self._driver.redirect_url(key) or "")

    def read(self, digest: str, offset: int, length: int, chunk_size: int) -> Iterator[bytes]:
        reader = self.open_read(digest, offset, length)
        try:
            while data := reader.next_chunk(chunk_size):
                yield data
        finally:
            reader.close()

    def open_read(self, digest: str, offset: int, length: int) -> BlobReader:
        """A read taken one chunk at a time (for a caller that waits on a slow client in between)."""
        size = self.stat(digest).size
        if offset < 0 or length < 0 or (offset > size) or (offset == size and size > 0):
            raise RegistryError(RANGE_INVALID, f"range starts at {offset} of a {size}-byte blob")
        remaining = size - offset if length == 0 else min(length, size - offset)
        return BlobReader(self._driver.reader(layout.blob_key(digest), offset), remaining)

    def delete(self, digest: str) -> bool:
        """Garbage collection's delete, under its fence (each one logged: what went, and when)."""
        key = layout.blob_key(digest)
        deleted = self._driver.delete(key.rsplit("/", 1)[0])
        log.info("blob deleted", extra={"fields": {"digest": digest, "found": deleted}})
        return deleted

    # -- upload sessions ---------------------------------------------------

    def create_upload(self, repository: str) -> Upload:
        upload_id = layout.new_upload_id()
        started = int(time.time())
        # The info alone makes the session: its data object is created by the first append (a
        # session without one is empty), which spares a small push's create a file and a writer.
        self._driver.put_content(layout.upload_info_key(upload_id),
                                 json.dumps({"repository": repository, "started_at": started}).encode())
        self._keep_hash(upload_id, _HashState(0, digests.hasher(_STREAMING_ALGORITHM)))
        return Upload(upload_id, repository, 0, started)

    def _read_info(self, upload_id: str) -> dict[str, object] | None:
        """The session's info as stored (None: none is); what cannot be read is an unknown upload."""
        if upload_ids.SEALED_RE.match(upload_id) and self._driver.stat(layout.upload_ended_key(upload_id)):
            return {"ended": True}
        try:
            info = json.loads(self._driver.get_content(layout.upload_info_key(upload_id)))
        except FileNotFoundError:
            return None
        except ValueError:
            raise RegistryError(BLOB_UPLOAD_UNKNOWN, "upload unknown or expired") from None
        if not isinstance(info, dict):
            raise RegistryError(BLOB_UPLOAD_UNKNOWN, "upload unknown or expired")
        return info

    def _stored_info(self, upload_id: str) -> dict[str, object] | None:
        """The session's info as stored; None when there is none, or only an ended session's mark."""
        info = self._read_info(upload_id)
        return None if info is None or info.get("ended") else info

    def _info(self, upload_id: str, repository: str) -> dict[str, object]:
        """A session's info: stored, or, for a sealed id of ``repository`` that no request has written
        to yet, the empty session it stands for (``fresh``)."""
        info = self._read_info(upload_id)
        if info is None:
            issued = upload_ids.issued_at(self._id_key, upload_id, repository)
            now = time.time()
            if issued is None or now - issued > self._upload_ttl or issued > now + _CLOCK_SKEW:
                raise RegistryError(BLOB_UPLOAD_UNKNOWN, "upload unknown or expired")
            return {"repository": repository, "started_at": issued, "fresh": True}
        if info.get("ended"):
            raise RegistryError(BLOB_UPLOAD_UNKNOWN, "upload unknown or expired")
        if repository and info.get("repository") != repository:
            raise RegistryError(BLOB_UPLOAD_UNKNOWN, "upload belongs to another repository")
        return info

    def get_upload(self, upload_id: str, repository: str) -> Upload:
        info = self._info(upload_id, repository)
        if info.get("fresh"):
            return Upload(upload_id, repository, 0, int(info["started_at"]), stored=False)  # type: ignore[call-overload]
        stat = self._driver.stat(layout.upload_data_key(upload_id))
        return Upload(upload_id, str(info["repository"]), 0 if stat is None else stat.size,
                      int(info.get("started_at", 0)))  # type: ignore[call-overload]

    @contextlib.contextmanager
    def _session_writer(self, upload_id: str) -> Iterator[FileWriter]:
        """The session's writer, held exclusively, for a session that still exists once it is held.

        A cancel, commit or expiry may end the session between the caller's look-up and the open,
        and opening a writer recreates a missing object: that must not outlive this call as an
        empty session (whose commit would hash nothing) or as an orphan directory."""
        with _session_races(), self._driver.writer(layout.upload_data_key(upload_id), append=True) as writer:
            if self._stored_info(upload_id) is None:
                writer.cancel()
                if not upload_ids.SEALED_RE.match(upload_id):  # a sealed id's mark of its end stays
                    self._driver.delete(layout.upload_dir(upload_id))
                raise RegistryError(BLOB_UPLOAD_UNKNOWN, "upload unknown or expired")
            yield writer

    def append(self, upload_id: str, repository: str, offset: int, chunks: Iterable[bytes]) -> Upload:
        session = self.open_append(upload_id, repository, offset)
        try:
            for data in chunks:
                session.write(data)
        except BaseException as exc:
            session.abort(exc)
            raise
        return session.finish()

    def open_append(self, upload_id: str, repository: str, offset: int) -> AppendSession:
        """An append taken one piece at a time, so that a caller waiting for its client's next bytes
        holds no thread meanwhile (the asyncio server calls each step in its executor)."""
        upload = self.get_upload(upload_id, repository)
        if not upload.stored:
            # The first bytes of a session a gateway started: now it is stored.
            self._driver.put_content(layout.upload_info_key(upload_id),
                                     json.dumps({"repository": repository, "started_at": upload.started_at}).encode())
            self._keep_hash(upload_id, _HashState(0, digests.hasher(_STREAMING_ALGORITHM)))
        return AppendSession(self, upload, offset)

    def _take_hash(self, upload_id: str, size: int) -> _HashState | None:
        with self._lock:
            state = self._hashes.pop(upload_id, None)
        return state if state is not None and state.size == size else None

    def _stored_digest(self, upload_id: str, algorithm: str, size: int) -> str:
        with self._lock:
            state = self._hashes.get(upload_id)
        if state is not None and state.size == size and algorithm == _STREAMING_ALGORITHM:
            return f"{algorithm}:{state.hasher.hexdigest()}"
        hasher = digests.hasher(algorithm)
        with self._driver.reader(layout.upload_data_key(upload_id)) as handle:
            while data := handle.read(_HASH_READ):
                hasher.update(data)
        return f"{algorithm}:{hasher.hexdigest()}"

    def commit(self, upload_id: str, repository: str, digest: str) -> Blob:
        digests.parse(digest)
        upload = self.get_upload(upload_id, repository)
        if not upload.stored:  # nothing was sent: the empty blob, or a mismatch
            return self._commit_whole(upload, b"", digest)[1]
        # The writer is held until the end, so no append can slip in between hashing and moving.
        with self._session_writer(upload_id) as writer:
            return self._commit_held(upload_id, writer, digest)

    def _commit_held(self, upload_id: str, writer: FileWriter, digest: str) -> Blob:
        """The commit of a stored session whose writer the caller holds (and closes afterwards)."""
        algorithm, _ = digests.parse(digest)
        size = writer.size
        ours, completed = True, False
        try:
            writer.commit()  # S3: completes the multipart upload so the bytes can be read back
            actual = self._stored_digest(upload_id, algorithm, size)
            # A cancel or expiry may have ended the session under us, and a racing writer's open
            # recreated an empty object at the key: then what was read at the key is not the
            # client's upload (its digest says nothing), and it must not be moved into place.
            if not writer.still_at_key() or self._stored_info(upload_id) is None:
                raise RegistryError(BLOB_UPLOAD_UNKNOWN, "upload unknown or expired")
            if actual != digest:
                # The size tells the gateway an empty session (a finished upload's URL used again).
                raise RegistryError(DIGEST_INVALID, f"content digest {actual} does not match {digest}",
                                    {"size": size})
            self._mark_ended(upload_id)
            self._store(digest, lambda key: self._driver.move(layout.upload_data_key(upload_id), key))
            completed = True
        except UploadBusyError:
            ours = False  # another writer took the session over: theirs to finish, not ours to delete
            raise
        finally:
            # Success or a digest mismatch: the session is over either way, nothing half-done stays.
            if ours:
                self._end(upload_id, completed)
        return Blob(digest, size)

    def _store(self, digest: str, put: Callable[[str], None]) -> None:
        """Makes verified bytes the blob ``digest``: ``put`` writes them at the blob's key, unless the
        blob is stored already (then it is only made young again for garbage collection, as it is
        about to be linked again)."""
        key = layout.blob_key(digest)
        if self._driver.stat(key) is None:
            put(key)
            return
        try:
            self._driver.touch(key)
        except FileNotFoundError:  # deleted between the two looks: store these bytes
            put(key)

    def commit_whole(self, upload_id: str, repository: str, offset: int, data: bytes,
                     digest: str) -> tuple[Upload, Blob] | None:
        """Commits an empty session with its whole content in one piece (a small PUT with a body,
        the commonest push of a small blob): the digest is checked in memory and the bytes are
        written once, at the blob's key, instead of appended, read back and moved. None when the
        session is not empty (the caller takes the general path). The session ends either way
        but that one, as a commit's does."""
        digests.parse(digest)
        upload = self.get_upload(upload_id, repository)
        if not upload.stored:
            if offset > 0:
                raise RegistryError(RANGE_INVALID, f"upload is at offset 0, not {offset}", detail={"size": 0})
            return self._commit_whole(upload, data, digest)
        if upload.size or offset > 0:
            return None
        with self._session_writer(upload_id) as writer:
            if writer.size:
                return None  # an append got in first
            completed = False
            try:
                # Cancelled or expired under us: the client's session is gone, and so is its commit.
                if self._stored_info(upload_id) is None:
                    raise RegistryError(BLOB_UPLOAD_UNKNOWN, "upload unknown or expired")
                self._store_whole(digest, data)
                completed = True
            finally:
                self._mark_ended(upload_id)
                writer.cancel()
                self._end(upload_id, completed)
        return dataclasses.replace(upload, size=len(data)), Blob(digest, len(data))

    def _commit_whole(self, upload: Upload, data: bytes, digest: str) -> tuple[Upload, Blob]:
        """commit_whole of a session nothing is stored for yet: no writer to hold, and, once
        committed, nothing to remove (``_end`` of a completed sealed session only removes what
        is stored; an append that raced in and stored bytes started the new session a committed
        URL's reuse starts). A failed commit still ends the session for good."""
        try:
            self._store_whole(digest, data)
        except BaseException:
            self._end(upload.upload_id)
            raise
        return dataclasses.replace(upload, size=len(data)), Blob(digest, len(data))

    def put_whole(self, digest: str, data: bytes) -> Blob:
        """A blob given whole (a small monolithic push): no session, the bytes written once."""
        self._store_whole(digest, data)
        return Blob(digest, len(data))

    def _store_whole(self, digest: str, data: bytes) -> None:
        actual = digests.of(data, digests.parse(digest)[0])
        if actual != digest:
            raise RegistryError(DIGEST_INVALID, f"content digest {actual} does not match {digest}",
                                {"size": len(data)})
        self._store(digest, lambda key: self._driver.put_content(key, data))
        _BYTES_WRITTEN.inc(len(data))

    def cancel(self, upload_id: str, repository: str) -> None:
        self._info(upload_id, repository)
        with _session_races():  # a concurrent cancel, commit or expiry removing the session under us
            ended = self._end(upload_id)
        if not ended:  # a concurrent cancel, commit or expiry got there first
            raise RegistryError(BLOB_UPLOAD_UNKNOWN, "upload unknown or expired")

    def _mark_ended(self, upload_id: str) -> None:
        """Ends the session for every other request before its data leaves its key. Between a
        commit's move (or a whole-blob commit's removal) of the data and the session's removal,
        a racing append or commit would otherwise find the info without data, recreate an empty
        data object by opening its writer, and take it for the session (a commit then hashed
        nothing: DIGEST_INVALID instead of BLOB_UPLOAD_UNKNOWN)."""
        if upload_ids.SEALED_RE.match(upload_id):
            self._driver.put_content(layout.upload_ended_key(upload_id), b"")
        else:
            self._driver.delete(layout.upload_info_key(upload_id))

    def _end(self, upload_id: str, completed: bool = False) -> bool:
        """Ends a session (False: it was already gone). A sealed id stays valid until it expires, so
        a session that was cancelled or refused leaves a mark that it ended (its URL answers
        BLOB_UPLOAD_UNKNOWN, as the client was told). A committed one leaves nothing: a mark per
        pushed blob would be a write per push and a directory entry kept for the session lifetime
        (millions a day at a few hundred pushes a second), so its URL, should the client use it
        again, starts a new empty session of the same repository."""
        if not upload_ids.SEALED_RE.match(upload_id):
            return self.discard(upload_id)
        if completed:
            self.discard(upload_id)
            return True
        # The mark first, in a key no append writes, and only then the bytes: there is no moment
        # in which the session reads as a fresh one (when the mark followed the removal, an append
        # in between started a new session under the cancelled URL, or overwrote the mark with its
        # own info).
        self._mark_ended(upload_id)
        self._forget_hash(upload_id)
        self._driver.delete(layout.upload_data_key(upload_id))
        return True

    def discard(self, upload_id: str) -> bool:
        """Ends a session; False when it was already gone."""
        self._forget_hash(upload_id)
        return self._driver.delete(layout.upload_dir(upload_id))

    def _forget_hash(self, upload_id: str) -> None:
        with self._lock:
            self._hashes.pop(upload_id, None)

    def put(self, repository: str, digest: str, chunks: Iterable[bytes]) -> Blob:
        digests.parse(digest)
        upload = self.create_upload(repository)
        try:
            self.append(upload.upload_id, repository, 0, chunks)
        except BaseException:
            self.discard(upload.upload_id)
            raise
        return self.commit(upload.upload_id, repository, digest)

    def count_uploads(self, limit: int) -> int:
        """How many upload sessions the storage holds, counting no further than ``limit``."""
        found = 0
        for upload_id in self._driver.list(layout.UPLOADS):
            if layout.upload_id_ok(upload_id):
                found += 1
                if found >= limit:
                    break
        return found

    def census(self, limit: int) -> tuple[int, int]:
        """How many blobs the storage holds and their bytes (counting no further than ``limit`` blobs)."""
        blobs = size = 0
        for algorithm in self._driver.list(layout.BLOBS):
            for shard in self._driver.list(f"{layout.BLOBS}/{algorithm}"):
                for encoded in self._driver.list(f"{layout.BLOBS}/{algorithm}/{shard}"):
                    info = self._driver.stat(f"{layout.BLOBS}/{algorithm}/{shard}/{encoded}/data")
                    if info is not None:
                        blobs += 1
                        size += info.size
                    if blobs >= limit:
                        return blobs, size
        return blobs, size

    def expire_uploads(self, now: float | None = None) -> int:
        """Deletes sessions idle for longer than the TTL; returns how many."""
        now = time.time() if now is None else now
        removed = 0
        for upload_id in list(self._driver.list(layout.UPLOADS)):
            if not layout.upload_id_ok(upload_id):
                continue
            info = self._driver.stat(layout.upload_data_key(upload_id)) or \
                self._driver.stat(layout.upload_info_key(upload_id)) or \
                self._driver.stat(layout.upload_ended_key(upload_id))
            if (info is None or now - info.modified_at > self._upload_ttl) and self.discard(upload_id):
                removed += 1
        with self._lock:
            self._prune_hashes(now)
        removed += self._driver.sweep(older_than=now - self._upload_ttl)
        if removed:
            log.info("expired uploads", extra={"fields": {"removed": removed}})
        return removed
