"""S3 driver (the minio SDK): objects in one bucket under an optional prefix.

An object being appended to is an S3 multipart upload whose state lives in the
bucket beside it, so any blob store replica can continue it, one writer at a
time; :mod:`.s3_session` describes the state and how writers exclude each other
with conditional PUTs (``If-None-Match``/``If-Match``), which this module sends.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import email.utils
import io
import logging
import socket
import threading
import time
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any, BinaryIO

import urllib3
from minio import Minio
from minio.commonconfig import REPLACE, ComposeSource, CopySource
from minio.datatypes import Part
from minio.error import S3Error

from services.blobstore.storage.base import API_VERSION, FileInfo, FileWriter, StorageDriver, StorageError, check_key
from services.blobstore.storage.s3_session import STATE_SUFFIX, TAIL_SUFFIX, MultipartWriter, read_state

log = logging.getLogger("wharf.blobstore.s3")
# S3 copies a single object of at most 5 GiB; larger ones are composed from ranges.
MAX_COPY = 5 * 1024 * 1024 * 1024
_MISSING = {"NoSuchKey", "NoSuchObject", "NoSuchUpload", "ResourceNotFound"}
# A conditional PUT that did not land: 412 from both servers; MinIO (like AWS) answers If-Match
# on an absent object with 404 NoSuchKey; AWS answers a conditional write racing another with 409.
_NOT_LANDED = {"PreconditionFailed", "NoSuchKey", "ConditionalRequestConflict"}
# The most one S3 request may take in all, and one that sends or reads a part's worth of bytes
# (urllib3's timeout bounds each wait for a byte, never a request: see _Watchdog).
CALL_SECONDS = 60.0
TRANSFER_SECONDS = 300.0

if TYPE_CHECKING:
    from services.blobstore.settings import BlobStoreSettings


@dataclasses.dataclass(frozen=True)
class S3Config:
    endpoint: str
    bucket: str
    access_key: str
    secret_key: str
    region: str = "us-east-1"
    prefix: str = ""
    secure: bool = False
    redirect: bool = True
    redirect_ttl: int = 600
    redirect_endpoint: str = ""
    # How long an upload session's writer holds it without renewing: a replica that dies while
    # appending blocks its session this long. Correctness does not depend on it (see s3_session).
    lease_seconds: float = 120.0


def _missing(exc: S3Error) -> bool:
    return exc.code in _MISSING


@contextlib.contextmanager
def _upload_gone(key: str) -> Iterator[None]:
    """A multipart upload that no longer exists (a cancel or an expiry deleted the session under
    its writer, another writer completed it) is the not-found contract, which the writer turns
    into the answer a client can act on; as an S3Error it was a 503 the client retried for ever."""
    try:
        yield
    except S3Error as exc:
        if exc.code == "NoSuchUpload":
            raise FileNotFoundError(key) from None
        raise


class _Watchdog:
    """Cuts S3 requests that outlast their deadline by shutting their sockets.

    urllib3's read timeout bounds each wait for a byte, not a request: an S3 server, or a proxy or
    a half-broken connection in between, that sends a byte now and then held a storage thread for
    as long as it went on (a HEAD's 300 header bytes at one per 2 s: 10 minutes, three times with
    the retries). Eight such requests stopped every push and pull of a blob store of eight
    threads; the gateway's deadlines answered its clients 503, and the blob store stayed stuck
    for minutes after S3 was healthy again. Now a thread waits at most a request's deadline
    (the retries included: a retry after the deadline is cut at the next tick), then gets a
    StorageError (503 to the client, which retries)."""

    TICK = 1.0

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._armed: dict[int, tuple[float, list[socket.socket]]] = {}
        self._local = threading.local()
        self._thread: threading.Thread | None = None

    @contextlib.contextmanager
    def limit(self, seconds: float | None, sock: socket.socket | None = None) -> Iterator[None]:
        """The requests this thread sends meanwhile (and ``sock``'s reads) end within ``seconds``
        (None: no bound). Nested limits keep the outer one."""
        if seconds is None or getattr(self._local, "entry", None) is not None:
            yield
            return
        entry: tuple[float, list[socket.socket]] = (time.monotonic() + seconds, [] if sock is None else [sock])
        self._local.entry = entry
        with self._lock:
            self._armed[id(entry)] = entry
            if self._thread is None:
                self._thread = threading.Thread(target=self._watch, name="s3-deadlines", daemon=True)
                self._thread.start()
        try:
            yield
        finally:
            self._local.entry = None
            with self._lock:
                self._armed.pop(id(entry), None)

    def note(self, sock: socket.socket | None) -> None:
        """A socket the current thread's limited request uses (called by the connections)."""
        entry = getattr(self._local, "entry", None)
        if entry is not None and sock is not None and sock not in entry[1]:
            entry[1].append(sock)

    def _watch(self) -> None:
        while True:
            time.sleep(self.TICK)
            now = time.monotonic()
            with self._lock:
                for deadline, sockets in self._armed.values():
                    if deadline <= now:
                        for sock in sockets:
                            with contextlib.suppress(OSError):
                                sock.shutdown(socket.SHUT_RDWR)


_WATCHDOG = _Watchdog()


class _WatchedConnection(urllib3.connection.HTTPConnection):
    def connect(self) -> None:
        super().connect()
        _WATCHDOG.note(self.sock)

    def request(self, *args: Any, **kwargs: Any) -> None:
        _WATCHDOG.note(self.sock)  # a pooled connection (a new one is noted as it connects)
        super().request(*args, **kwargs)


class _WatchedTLSConnection(_WatchedConnection, urllib3.connection.HTTPSConnection):
    """The same, over TLS (the methods above reach HTTPSConnection's through the MRO)."""


class _WatchedPool(urllib3.HTTPConnectionPool):
    ConnectionCls = _WatchedConnection


class _WatchedTLSPool(urllib3.HTTPSConnectionPool):
    ConnectionCls = _WatchedTLSConnection


class _Reader(io.RawIOBase):
    """A file-like view of a GET response that releases the connection on close."""

    def __init__(self, response: Any) -> None:
        self._response = response

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        # Each read (a chunk of a download) under the deadline of a request: the GET that opened
        # the body returned long ago, and another thread may be the one reading now.
        sock = getattr(getattr(self._response, "connection", None), "sock", None)
        try:
            with _WATCHDOG.limit(CALL_SECONDS, sock):
                return bytes(self._response.read(None if size is None or size < 0 else size) or b"")
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            raise StorageError(f"S3 read failed: {type(exc).__name__}") from exc

    def readinto(self, buffer: Any) -> int:
        data = self.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)

    def close(self) -> None:
        if not self.closed:
            with contextlib.suppress(Exception):
                self._response.close()
                self._response.release_conn()
        super().close()


class S3Driver(StorageDriver):

    wharf_interface = API_VERSION

    @classmethod
    def from_settings(cls, settings: BlobStoreSettings, options: Mapping[str, Any]) -> S3Driver:
        return cls(S3Config(
            endpoint=settings.s3_endpoint, bucket=settings.s3_bucket, access_key=settings.s3_access_key,
            secret_key=settings.s3_secret(), region=settings.s3_region, prefix=settings.s3_prefix,
            secure=settings.s3_secure, redirect=settings.s3_redirect, redirect_ttl=settings.s3_redirect_ttl,
            redirect_endpoint=settings.s3_redirect_endpoint))

    def __init__(self, config: S3Config) -> None:
        self._config = config
        # Bounded retries: a dead S3 server must turn into a quick UNAVAILABLE, not a hang.
        http = urllib3.PoolManager(timeout=urllib3.Timeout(connect=5, read=60), maxsize=32,
                                   retries=urllib3.Retry(total=2, backoff_factor=0.2,
                                                         status_forcelist=[500, 502, 503, 504]))
        http.pool_classes_by_scheme = {"http": _WatchedPool, "https": _WatchedTLSPool}
        self._client = Minio(config.endpoint, access_key=config.access_key, secret_key=config.secret_key,
                             secure=config.secure, region=config.region, http_client=http)
        self._presigner = Minio(config.redirect_endpoint or config.endpoint, access_key=config.access_key,
                                secret_key=config.secret_key, secure=config.secure, region=config.region)
        self._bucket = config.bucket
        self._prefix = config.prefix.strip("/")
        self._call(self._ensure_bucket)

    def _ensure_bucket(self) -> None:
        if not self._client.bucket_exists(self._bucket):
            with contextlib.suppress(S3Error):  # another replica may have just created it
                self._client.make_bucket(self._bucket)

    def _name(self, key: str) -> str:
        check_key(key)
        return f"{self._prefix}/{key}" if self._prefix else key

    def _call(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        """``fn`` (a request) within CALL_SECONDS, with its failures as StorageError."""
        return self._call_within(CALL_SECONDS, fn, *args, **kwargs)

    def _call_within(self, seconds: float | None, fn: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            with _WATCHDOG.limit(seconds):
                return fn(*args, **kwargs)
        except S3Error:
            raise
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            raise StorageError(f"S3 unreachable: {type(exc).__name__}") from exc

    # -- small helpers used by the writer ----------------------------------

    def _get_bytes(self, key: str) -> bytes | None:
        try:
            return self.get_content(key)
        except FileNotFoundError:
            return None

    def _put_bytes(self, key: str, data: bytes) -> None:
        self.put_content(key, data)

    def _get_with_etag(self, key: str) -> tuple[bytes, str, float] | None:
        """An object's bytes, ETag and Last-Modified time, read in one GET; None when absent."""
        with _WATCHDOG.limit(CALL_SECONDS):  # the GET and its body: a small object
            return self._get_small(key)

    def _get_small(self, key: str) -> tuple[bytes, str, float] | None:
        try:
            response = self._call(self._client.get_object, self._bucket, self._name(key))
        except S3Error as exc:
            if _missing(exc):
                return None
            raise StorageError(f"S3 read failed: {exc.code}") from exc
        try:
            data = bytes(self._call(response.read))
            modified = response.headers.get("Last-Modified")
            return (data, str(response.headers.get("ETag", "")).strip('"'),
                    email.utils.parsedate_to_datetime(modified).timestamp() if modified else time.time())
        finally:
            response.close()
            response.release_conn()

    def _put_if(self, key: str, data: bytes, etag: str | None) -> str | None:
        """PUTs ``data`` only if the object is still at ``etag`` (None: still absent). Returns the
        new ETag, or None when the object had changed (or appeared, or vanished) meanwhile."""
        condition = {"If-Match": f'"{etag}"'} if etag else {"If-None-Match": "*"}
        try:
            result = self._call(self._client._put_object, self._bucket, self._name(key), data,
                                headers={"Content-Type": "application/octet-stream", **condition})
        except S3Error as exc:
            if exc.code not in _NOT_LANDED:
                raise StorageError(f"S3 write failed: {exc.code}") from exc
            # urllib3 retries a PUT whose answer was lost, and the retry then finds our own write.
            # Our states never repeat bytes, so equal bytes mean that write landed.
            current = self._get_with_etag(key)
            return current[1] if current is not None and current[0] == data else None
        return str(result.etag)

    def _put_new(self, key: str, data: bytes) -> bool:
        """Creates an object that must not exist yet; False when it does."""
        return self._put_if(key, data, None) is not None

    def _remove(self, *keys: str) -> None:
        for key in keys:
            with contextlib.suppress(S3Error):
                self._call(self._client.remove_object, self._bucket, self._name(key))

    def _create_multipart(self, key: str) -> str:
        return str(self._call(self._client._create_multipart_upload, self._bucket, self._name(key),
                              {"Content-Type": "application/octet-stream"}))

    def _upload_part(self, key: str, upload_id: str, number: int, data: bytes) -> str:
        with _upload_gone(key):
            return str(self._call_within(TRANSFER_SECONDS, self._client._upload_part, self._bucket,
                                         self._name(key), data, None, upload_id, number))

    def _complete(self, key: str, upload_id: str, parts: list[Part]) -> None:
        with _upload_gone(key):
            # Server-side work that grows with the object (each wait for a byte still bounded).
            self._call_within(None, self._client._complete_multipart_upload, self._bucket, self._name(key),
                              upload_id, parts)

    def _abort(self, key: str, upload_id: str) -> None:
        with contextlib.suppress(S3Error):
            self._call(self._client._abort_multipart_upload, self._bucket, self._name(key), upload_id)

    # -- the driver interface ----------------------------------------------

    def get_content(self, key: str) -> bytes:
        with self.reader(key) as handle:
            return handle.read()

    def put_content(self, key: str, data: bytes) -> None:
        # A single PUT is atomic in S3: readers see the old object or the new one.
        self._call_within(TRANSFER_SECONDS, self._client.put_object, self._bucket, self._name(key),
                          io.BytesIO(data), len(data))

    def reader(self, key: str, offset: int = 0) -> BinaryIO:
        try:
            response = self._call(self._client.get_object, self._bucket, self._name(key), offset=offset)
        except S3Error as exc:
            if _missing(exc):
                raise FileNotFoundError(key) from None
            raise StorageError(f"S3 read failed: {exc.code}") from exc
        return io.BufferedReader(_Reader(response), buffer_size=1024 * 1024)  # type: ignore[return-value]

    def writer(self, key: str, append: bool) -> FileWriter:
        return MultipartWriter(self, key, append, self._config.lease_seconds)

    def stat(self, key: str) -> FileInfo | None:
        try:
            info = self._call(self._client.stat_object, self._bucket, self._name(key))
            return FileInfo(key, int(info.size), info.last_modified.timestamp() if info.last_modified else 0.0)
        except S3Error as exc:
            if not _missing(exc):
                raise StorageError(f"S3 stat failed: {exc.code}") from exc
        found = read_state(self, key)
        if found is None or found[0]["committed"]:  # committed: its holder moved the object away
            return None
        state, _, saved_at = found
        tail = state["tail"]
        tail_size = 0
        if tail and tail["size"] >= 0:
            tail_size = int(tail["size"])
        elif tail:  # an old-style session: the tail's size is the object's
            info = self.stat(tail["name"])
            tail_size = info.size if info else 0
        # Every append saves the state, so its age is the session's idle time.
        return FileInfo(key, int(state["size"]) + tail_size, saved_at)

    def list(self, prefix: str) -> Iterator[str]:
        base = self._name(prefix) + "/"
        seen: set[str] = set()
        for obj in self._call(self._client.list_objects, self._bucket, prefix=base, recursive=False):
            child = obj.object_name[len(base):].strip("/").split("/", 1)[0]
            if child and child not in seen:
                seen.add(child)
                yield child

    def move(self, source: str, dest: str) -> None:
        info = self.stat(source)
        if info is None:
            raise FileNotFoundError(source)
        src = CopySource(self._bucket, self._name(source))
        try:
            # Server-side copies take as long as the object is large: no bound but urllib3's.
            if info.size <= MAX_COPY:
                self._call_within(None, self._client.copy_object, self._bucket, self._name(dest), src)
            else:
                self._call_within(None, self._client.compose_object, self._bucket, self._name(dest),
                                  [ComposeSource(self._bucket, self._name(source))])
        except S3Error as exc:
            if _missing(exc):  # the source went between the look and the copy: the not-found contract
                raise FileNotFoundError(source) from None
            raise
        self._remove(source)

    def touch(self, key: str) -> None:
        # S3 has no "touch": copying an object onto itself with replaced metadata renews its
        # Last-Modified. Larger objects cannot be copied in one call; they keep their age.
        info = self.stat(key)
        if info is None:
            raise FileNotFoundError(key)
        if info.size > MAX_COPY:
            return
        try:
            self._call_within(None, self._client.copy_object, self._bucket, self._name(key),
                              CopySource(self._bucket, self._name(key)),
                              metadata={"x-amz-meta-wharf-touched": str(int(time.time()))},
                              metadata_directive=REPLACE)
        except S3Error as exc:
            if _missing(exc):  # gone between the look and the copy (a concurrent overwrite or delete)
                raise FileNotFoundError(key) from None
            raise

    def _relative(self, object_name: str) -> str:
        return object_name[len(self._prefix) + 1:] if self._prefix else object_name

    def delete(self, key: str) -> bool:
        """Deletes an object with its upload session (state, tails, pending multipart upload), or
        every object under a prefix. A writer still holding a deleted session fails its next save
        with UploadBusyError; deleting what is already gone returns False."""
        base = self._name(key)
        names = [*self._listed(base + "/")]
        names += [n for n in self._listed(base + ".") if n.startswith((key + STATE_SUFFIX, key + TAIL_SUFFIX))]
        found = bool(names) or self._exists(key)
        for name in names:
            if name.endswith(STATE_SUFFIX):
                try:
                    session = read_state(self, name[: -len(STATE_SUFFIX)])
                except StorageError:  # unreadable: removed all the same; the sweep or S3 expiry ends its upload
                    continue
                if session and session[0]["upload_id"] and not session[0]["committed"]:
                    self._abort(name[: -len(STATE_SUFFIX)], session[0]["upload_id"])
        self._remove(*names, key)
        return found

    def _listed(self, prefix: str) -> tuple[str, ...]:
        """Every key under ``prefix`` (an object name prefix). A listing is a generator whose
        requests run as it is iterated, outside ``_call``: here, within a request's deadline."""
        try:
            with _WATCHDOG.limit(CALL_SECONDS):
                return tuple(self._relative(o.object_name) for o in
                             self._client.list_objects(self._bucket, prefix=prefix, recursive=True))
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            raise StorageError(f"S3 unreachable: {type(exc).__name__}") from exc

    def _exists(self, key: str) -> bool:
        try:
            self._call(self._client.stat_object, self._bucket, self._name(key))
            return True
        except S3Error as exc:
            if _missing(exc):
                return False
            raise StorageError(f"S3 stat failed: {exc.code}") from exc

    def sweep(self, older_than: float) -> int:
        """Aborts multipart uploads under our prefix started before ``older_than``. Recorded ones
        are aborted with their session; this catches those a crash left between creating the
        upload and saving its state."""
        aborted, key_marker, id_marker = 0, None, None
        prefix = f"{self._prefix}/" if self._prefix else None
        for _ in range(1000):  # pages of up to 1000 uploads; bounded whatever the bucket holds
            page = self._call(self._client._list_multipart_uploads, self._bucket, prefix=prefix,
                              key_marker=key_marker, upload_id_marker=id_marker, max_uploads=1000)
            for upload in page.uploads:
                started = upload.initiated_time.timestamp() if upload.initiated_time else 0.0
                if started < older_than and upload.upload_id and \
                        not self._in_use(upload.object_name, upload.upload_id, older_than):
                    with contextlib.suppress(S3Error):
                        self._call(self._client._abort_multipart_upload, self._bucket, upload.object_name,
                                   upload.upload_id)
                        aborted += 1
            if not page.is_truncated:
                break
            # minio-py 7.2 stores the next upload id marker under a misspelt attribute name.
            id_marker = getattr(page, "next_upload_id_marker", None) or getattr(page, "self._next_upload_id_marker",
                                                                                None)
            key_marker = page.next_key_marker
        return aborted

    def _in_use(self, object_name: str, upload_id: str, idle_since: float) -> bool:
        """Whether a session saved after ``idle_since`` records the multipart upload: an upload
        started longer ago than the session lifetime may still be appended to (a large push over
        a slow link, a session resumed later; only idle sessions expire), and aborting it lost
        every part stored, every later append and commit of the session failing."""
        key = self._relative(object_name)
        try:
            check_key(key)
            found = read_state(self, key)
        except (ValueError, StorageError):  # not one of our keys, or a damaged state: a leftover
            return False
        return found is not None and found[0]["upload_id"] == upload_id and found[2] >= idle_since

    def redirect_url(self, key: str) -> str | None:
        if not self._config.redirect:
            return None
        return str(self._presigner.presigned_get_object(self._bucket, self._name(key),
                                                        expires=datetime.timedelta(seconds=self._config.redirect_ttl)))
