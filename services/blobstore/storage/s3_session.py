"""S3 upload sessions: an object being appended to, as a multipart upload with one writer at a time.

The session lives in the bucket beside the object, so any blob store replica can continue it::

    <key>.multipart          JSON state (below); also the session's lock
    <key>.tail.<writer id>   bytes not yet in a part (S3 parts are >= 5 MiB but the last),
                             stored by the writer that closed last

Appends go to parts once enough bytes are buffered; ``close`` stores the remainder as a
tail; ``commit`` sends it as the last part and completes the upload (or, for a small
object, PUTs it whole), after which the object is readable.

**Exclusion.** Every write of the state is conditional: ``If-None-Match: *`` creates it,
``If-Match: <the ETag it was read or stored with>`` replaces it, so of two writers that
read the same state only one can store the next. A writer takes the session by storing
its id with a lease, renews the lease with every save (and at half-time while bytes
trickle in) and gives it back at close; meanwhile other writers get
:class:`UploadBusyError`. A lease that ran out (its replica died or stalled) may be taken
over, and the old holder's next save then fails, so nothing it does afterwards becomes
part of the object:

- its tail has a name of its own, which no state refers to;
- a part it sends has a number nobody else uses: numbers come from ``next_part`` and are
  never reused, not even after a failed attempt, and a takeover skips the one number the
  old holder may be sending at that moment (SeaweedFS keeps every upload of a part
  number and completes with whichever the listed ETag names; never reusing one keeps us
  clear of such differences);
- it can complete the multipart upload only with parts it recorded while it held the
  lease, which ends that upload for everyone, and its small-object PUT is create-only,
  so a finished object never changes under the writer that finished it.

Correctness rests on the conditional writes alone; the lease length (and clock skew
between replicas) only decides how soon a dead writer's session can be continued.

State fields: ``upload_id``; ``parts`` [{n, etag, size}]; ``size`` (bytes in parts);
``next_part``; ``tail`` {name, size} or null; ``writer`` (holder's id, "" when free);
``lease_until`` (Unix time); ``gen`` (grows with every save, so no two saves store the
same bytes and an ETag never comes back: If-Match cannot be fooled by a state that went
back to an earlier value); ``committed`` (the object is finished; the holder is
verifying and moving it).
"""

from __future__ import annotations

import contextlib
import copy
import json
import logging
import secrets
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from minio.datatypes import Part

from services.blobstore.storage.base import FileWriter, StorageError, UploadBusyError

if TYPE_CHECKING:
    from services.blobstore.storage.s3 import S3Driver

log = logging.getLogger("wharf.blobstore.s3")
MIN_PART = 5 * 1024 * 1024
# Parts are sent once this much is buffered: big enough for throughput, small enough that an
# upload in flight holds little memory (the blob store's RSS target is 150 MB).
PART_TARGET = 8 * 1024 * 1024
STATE_SUFFIX = ".multipart"
TAIL_SUFFIX = ".tail"


def state_key(key: str) -> str:
    return key + STATE_SUFFIX


def _fresh_state() -> dict[str, Any]:
    return {"upload_id": "", "parts": [], "size": 0, "next_part": 1, "tail": None, "writer": "",
            "lease_until": 0.0, "gen": 0, "committed": False}


def read_state(driver: S3Driver, key: str) -> tuple[dict[str, Any], str, float] | None:
    """The session state of ``key`` with the ETag to replace it with and its Last-Modified time;
    None when there is no session."""
    found = driver._get_with_etag(state_key(key))
    if found is None:
        return None
    raw, etag, modified = found
    try:
        stored = json.loads(raw)
    except ValueError:
        raise StorageError(f"damaged upload state for {key}") from None
    state = _fresh_state()
    state.update(stored)
    if "next_part" not in stored:  # saved before part numbers were tracked: after the last one used
        state["next_part"] = max((int(p["n"]) for p in state["parts"]), default=0) + 1
    if "tail" not in stored:  # saved when every session had one tail object, of unrecorded size
        state["tail"] = {"name": key + TAIL_SUFFIX, "size": -1}
    return state, etag, modified


class MultipartWriter(FileWriter):
    """Appends to ``key`` as the only writer of its session until :meth:`close` or :meth:`cancel`."""

    def __init__(self, driver: S3Driver, key: str, append: bool, lease_seconds: float) -> None:
        self._d = driver
        self._key = key
        self._lease = lease_seconds
        self._id = secrets.token_hex(8)
        # Pending bytes as received; joined once per part, so each byte is copied once here.
        self._chunks: list[bytes] = []
        self._buffered = 0
        self._etag = ""
        self._renew_at = 0.0
        self._dirty = False  # bytes arrived since open, so close() stores a new tail
        self._failed = False  # a call failed part-way: close() keeps the state last saved
        self._lost = False  # another writer has the session now: this one may store nothing more
        self._committed = False
        self._closed = False
        self._state = self._acquire()
        self._saved = copy.deepcopy(self._state)
        try:
            if append:
                self._load_tail()
            else:
                self._reset()
        except BaseException:
            self._failed = True
            self.close()
            raise

    # -- the session state ---------------------------------------------------

    def _acquire(self) -> dict[str, Any]:
        found = read_state(self._d, self._key)
        if found is None:
            state = _fresh_state()
        else:
            state, self._etag, _ = found
            if state["writer"] and float(state["lease_until"]) > time.time():
                raise UploadBusyError(self._key)
            if state["writer"]:
                # Its holder stopped renewing but may still be sending part next_part: leave it that number.
                log.warning("taking over an upload session whose writer stopped renewing its lease",
                            extra={"fields": {"key": self._key}})
                state["next_part"] = int(state["next_part"]) + 1
        state["writer"] = self._id
        self._store(state)
        return state

    def _store(self, state: dict[str, Any]) -> None:
        """Saves ``state`` if the stored one is still the one this writer last read or saved;
        renews the lease (or gives it back, when ``writer`` is empty). UploadBusyError when not."""
        state["gen"] = int(state["gen"]) + 1
        state["lease_until"] = time.time() + self._lease if state["writer"] else 0.0
        etag = self._d._put_if(state_key(self._key), json.dumps(state).encode(), self._etag or None)
        if etag is None:
            self._lost = True
            raise UploadBusyError(self._key)
        self._etag = etag
        self._renew_at = time.monotonic() + self._lease / 2
        self._saved = copy.deepcopy(state)

    def _release(self) -> None:
        """After a failed call: gives the session back as last saved, so every acknowledged byte
        stays, yet keeps the part numbers this writer used and the multipart upload it created."""
        state = copy.deepcopy(self._saved)
        state["next_part"] = max(int(state["next_part"]), int(self._state["next_part"]))
        state["upload_id"] = state["upload_id"] or self._state["upload_id"]
        state["writer"] = ""
        try:
            self._store(state)
        except StorageError as exc:  # the lease runs out instead; the failure that got us here propagates
            log.warning("could not release an upload session", extra={"fields": {"key": self._key, "error": str(exc)}})

    def _vanished(self) -> Exception:
        """What a writer whose multipart upload no longer exists raises: UploadBusyError when
        another writer took the session over (and may have completed the upload), else the
        not-found contract (a cancel or an expiry deleted the session under this writer; or the
        upload was aborted outside Wharf, and the parts are lost with it)."""
        found = read_state(self._d, self._key)
        if found is not None and found[0]["writer"] == self._id:
            return FileNotFoundError(self._key)  # still ours: close() gives the session back
        self._lost = True  # nothing of the session is this writer's to give back
        return FileNotFoundError(self._key) if found is None else UploadBusyError(self._key)

    @contextlib.contextmanager
    def _failing(self) -> Iterator[None]:
        try:
            yield
        except BaseException:
            self._failed = True
            raise

    def _check_open(self) -> None:
        if self._lost:
            raise UploadBusyError(self._key)
        if self._closed or self._committed:
            raise StorageError("writer already closed")

    def _load_tail(self) -> None:
        tail = self._state["tail"]
        if not tail:
            return
        data = self._d._get_bytes(tail["name"])
        if data is None and tail["size"] < 0:
            data = b""  # an old-style session that never stored a tail
        if data is None or (tail["size"] >= 0 and len(data) != tail["size"]):
            raise StorageError(f"the stored tail of {self._key} is missing or damaged")
        if data:
            self._chunks, self._buffered = [data], len(data)

    def _reset(self) -> None:
        """Replaces the object: forgets the old session first, then removes what it left."""
        old = self._state
        if old["upload_id"] or old["parts"] or old["tail"] or old["committed"]:
            self._state = dict(_fresh_state(), writer=self._id, gen=old["gen"])
            self._store(self._state)
            if old["upload_id"] and not old["committed"]:
                self._d._abort(self._key, old["upload_id"])
        self._d._remove(self._key, *([old["tail"]["name"]] if old["tail"] else []))

    # -- appending -------------------------------------------------------------

    @property
    def size(self) -> int:
        return int(self._state["size"]) + self._buffered

    def write(self, data: bytes) -> None:
        self._check_open()
        if not data:
            return
        self._chunks.append(bytes(data))
        self._buffered += len(data)
        self._dirty = True
        with self._failing():
            if self._buffered >= PART_TARGET:
                self._send_part()
            elif time.monotonic() >= self._renew_at:
                self._store(self._state)  # bytes trickle in: keep the lease

    def _take(self) -> bytes:
        data = b"".join(self._chunks)
        self._chunks, self._buffered = [], 0
        return data

    def _send_part(self) -> None:
        if time.monotonic() >= self._renew_at:
            self._store(self._state)  # confirms the session is still ours before sending
        created = not self._state["upload_id"]
        if created:
            self._state["upload_id"] = self._d._create_multipart(self._key)
        number = int(self._state["next_part"])
        self._state["next_part"] = number + 1  # taken for good, even if this attempt fails
        data = self._take()
        try:
            etag = self._d._upload_part(self._key, self._state["upload_id"], number, data)
        except FileNotFoundError:
            raise self._vanished() from None
        old_tail = self._state["tail"]
        self._state["parts"].append({"n": number, "etag": etag, "size": len(data)})
        self._state["size"] += len(data)
        self._state["tail"] = None  # its bytes began this part
        try:
            # Saved after every part, so a crash loses at most the bytes still buffered.
            self._store(self._state)
        except UploadBusyError:
            if created:
                self._d._abort(self._key, self._state["upload_id"])
            raise
        if old_tail:
            self._d._remove(old_tail["name"])

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._lost:
            return
        if self._committed:
            # The holder has verified and moved (or dropped) the object; ending the session frees it.
            self._d._remove(state_key(self._key))
            return
        if self._failed:
            self._release()
            return
        try:
            if self._dirty and self._buffered >= MIN_PART:
                self._send_part()
            old_tail = self._state["tail"]
            if self._dirty:
                data = self._take()
                self._state["tail"] = None
                if data:
                    name = f"{self._key}{TAIL_SUFFIX}.{self._id}"
                    self._d._put_bytes(name, data)
                    self._state["tail"] = {"name": name, "size": len(data)}
            self._state["writer"] = ""
            self._store(self._state)
        except BaseException:
            self._failed = True
            if not self._lost:
                self._release()  # this close will not be retried: give the session back now
            raise
        if old_tail and old_tail != self._state["tail"]:
            self._d._remove(old_tail["name"])

    def commit(self) -> None:
        self._check_open()
        with self._failing():
            old_tail = self._state["tail"]
            if not self._state["parts"]:
                self._store(self._state)  # still ours, checked right before the object appears
                if self._state["upload_id"]:  # created, but its first part never got recorded
                    self._d._abort(self._key, self._state["upload_id"])
                    self._state["upload_id"] = ""
                # Create-only: a writer that lost the session cannot replace a finished object.
                if not self._d._put_new(self._key, self._take()):
                    raise UploadBusyError(self._key)
            else:
                if self._buffered:
                    self._send_part()
                else:
                    self._store(self._state)
                try:
                    self._d._complete(self._key, self._state["upload_id"],
                                      [Part(int(p["n"]), p["etag"]) for p in self._state["parts"]])
                except FileNotFoundError:
                    raise self._vanished() from None
            self._state.update(committed=True, tail=None)
            self._store(self._state)  # keeps the lease: the caller verifies and moves before close()
        self._committed = True
        if old_tail:
            self._d._remove(old_tail["name"])

    def cancel(self) -> None:
        if self._lost:
            raise UploadBusyError(self._key)
        self._closed = True
        self._d.delete(self._key)
