"""S3 driver (the minio SDK): objects in one bucket under an optional prefix.

An object being appended to is an S3 multipart upload whose state lives in the
bucket beside it, so any blob store replica can continue it:

    <key>.multipart    JSON: S3 upload id, parts (number, etag, size), bytes in parts
    <key>.tail         bytes not yet in a part (S3 parts must be >= 5 MiB but the last)

Appends go to parts once enough bytes are buffered; :meth:`close` stores the
remainder as the tail object; :meth:`commit` uploads the tail as the last part
and completes the upload, after which the object is readable.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import io
import json
import logging
import time
from collections.abc import Iterator
from typing import Any, BinaryIO

import urllib3
from minio import Minio
from minio.commonconfig import REPLACE, ComposeSource, CopySource
from minio.datatypes import Part
from minio.error import S3Error

from services.blobstore.storage.base import FileInfo, FileWriter, StorageDriver, StorageError, check_key

log = logging.getLogger("wharf.blobstore.s3")
MIN_PART = 5 * 1024 * 1024
# Parts are sent once this much is buffered: big enough for throughput, small enough that an
# upload in flight holds little memory (the blob store's RSS target is 150 MB).
PART_TARGET = 8 * 1024 * 1024
# S3 copies a single object of at most 5 GiB; larger ones are composed from ranges.
MAX_COPY = 5 * 1024 * 1024 * 1024
_MISSING = {"NoSuchKey", "NoSuchObject", "NoSuchUpload", "ResourceNotFound"}


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


def _missing(exc: S3Error) -> bool:
    return exc.code in _MISSING


class _Reader(io.RawIOBase):
    """A file-like view of a GET response that releases the connection on close."""

    def __init__(self, response: Any) -> None:
        self._response = response

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        return bytes(self._response.read(None if size is None or size < 0 else size) or b"")

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


class _MultipartWriter(FileWriter):
    def __init__(self, driver: S3Driver, key: str, append: bool) -> None:
        self._d = driver
        self._key = key
        self._state: dict[str, Any] = {"upload_id": "", "parts": [], "size": 0}
        # Pending bytes as received; joined once per part, so each byte is copied once here.
        self._chunks: list[bytes] = []
        self._buffered = 0
        self._done = False
        existing = driver._get_json(key + ".multipart")
        if append:
            self._state = existing or self._state
            tail = driver._get_bytes(key + ".tail") or b""
            if tail:
                self._chunks, self._buffered = [tail], len(tail)
        else:
            if existing and existing.get("upload_id"):
                driver._abort(key, existing["upload_id"])
            driver._remove(key, key + ".multipart", key + ".tail")

    @property
    def size(self) -> int:
        return int(self._state["size"]) + self._buffered

    def write(self, data: bytes) -> None:
        self._chunks.append(bytes(data))
        self._buffered += len(data)
        if self._buffered >= PART_TARGET:
            self._send_part()

    def _take(self) -> bytes:
        data = b"".join(self._chunks)
        self._chunks, self._buffered = [], 0
        return data

    def _send_part(self) -> None:
        if not self._state["upload_id"]:
            self._state["upload_id"] = self._d._create_multipart(self._key)
        number = len(self._state["parts"]) + 1
        data = self._take()
        etag = self._d._upload_part(self._key, self._state["upload_id"], number, data)
        self._state["parts"].append({"n": number, "etag": etag, "size": len(data)})
        self._state["size"] += len(data)
        # Saved after every part, so a crash loses at most the bytes still buffered.
        self._d._put_json(self._key + ".multipart", self._state)

    def close(self) -> None:
        if self._done:
            return
        self._done = True
        if self._buffered >= MIN_PART:
            self._send_part()
        self._d._put_json(self._key + ".multipart", self._state)
        self._d._put_bytes(self._key + ".tail", self._take())

    def commit(self) -> None:
        if self._done:
            raise StorageError("writer already closed")
        self._done = True  # close() after commit has nothing left to do
        if not self._state["upload_id"]:
            self._d._put_bytes(self._key, self._take())
        else:
            if self._buffered:
                self._send_part()
            parts = [Part(p["n"], p["etag"]) for p in self._state["parts"]]
            self._d._complete(self._key, self._state["upload_id"], parts)
        self._d._remove(self._key + ".multipart", self._key + ".tail")

    def cancel(self) -> None:
        self._done = True
        if self._state["upload_id"]:
            self._d._abort(self._key, self._state["upload_id"])
        self._d._remove(self._key, self._key + ".multipart", self._key + ".tail")


class S3Driver(StorageDriver):
    name = "s3"

    def __init__(self, config: S3Config) -> None:
        self._config = config
        # Bounded retries: a dead S3 server must turn into a quick UNAVAILABLE, not a hang.
        http = urllib3.PoolManager(timeout=urllib3.Timeout(connect=5, read=60), maxsize=32,
                                   retries=urllib3.Retry(total=2, backoff_factor=0.2,
                                                         status_forcelist=[500, 502, 503, 504]))
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
        try:
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

    def _get_json(self, key: str) -> dict[str, Any] | None:
        raw = self._get_bytes(key)
        return json.loads(raw) if raw else None

    def _put_bytes(self, key: str, data: bytes) -> None:
        self.put_content(key, data)

    def _put_json(self, key: str, value: dict[str, Any]) -> None:
        self.put_content(key, json.dumps(value).encode())

    def _remove(self, *keys: str) -> None:
        for key in keys:
            with contextlib.suppress(S3Error):
                self._call(self._client.remove_object, self._bucket, self._name(key))

    def _create_multipart(self, key: str) -> str:
        return str(self._call(self._client._create_multipart_upload, self._bucket, self._name(key),
                              {"Content-Type": "application/octet-stream"}))

    def _upload_part(self, key: str, upload_id: str, number: int, data: bytes) -> str:
        return str(self._call(self._client._upload_part, self._bucket, self._name(key), data, None,
                              upload_id, number))

    def _complete(self, key: str, upload_id: str, parts: list[Part]) -> None:
        self._call(self._client._complete_multipart_upload, self._bucket, self._name(key), upload_id, parts)

    def _abort(self, key: str, upload_id: str) -> None:
        with contextlib.suppress(S3Error):
            self._call(self._client._abort_multipart_upload, self._bucket, self._name(key), upload_id)

    # -- the driver interface ----------------------------------------------

    def get_content(self, key: str) -> bytes:
        with self.reader(key) as handle:
            return handle.read()

    def put_content(self, key: str, data: bytes) -> None:
        # A single PUT is atomic in S3: readers see the old object or the new one.
        self._call(self._client.put_object, self._bucket, self._name(key), io.BytesIO(data), len(data))

    def reader(self, key: str, offset: int = 0) -> BinaryIO:
        try:
            response = self._call(self._client.get_object, self._bucket, self._name(key), offset=offset)
        except S3Error as exc:
            if _missing(exc):
                raise FileNotFoundError(key) from None
            raise StorageError(f"S3 read failed: {exc.code}") from exc
        return io.BufferedReader(_Reader(response), buffer_size=1024 * 1024)  # type: ignore[return-value]

    def writer(self, key: str, append: bool) -> FileWriter:
        return _MultipartWriter(self, key, append)

    def stat(self, key: str) -> FileInfo | None:
        try:
            info = self._call(self._client.stat_object, self._bucket, self._name(key))
            return FileInfo(key, int(info.size), info.last_modified.timestamp() if info.last_modified else 0.0)
        except S3Error as exc:
            if not _missing(exc):
                raise StorageError(f"S3 stat failed: {exc.code}") from exc
        state = self._get_json(key + ".multipart")
        if state is None:
            return None
        tail = self.stat(key + ".tail")
        return FileInfo(key, int(state["size"]) + (tail.size if tail else 0),
                        tail.modified_at if tail else time.time())

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
        if info.size <= MAX_COPY:
            self._call(self._client.copy_object, self._bucket, self._name(dest), src)
        else:
            self._call(self._client.compose_object, self._bucket, self._name(dest),
                       [ComposeSource(self._bucket, self._name(source))])
        self._remove(source)

    def touch(self, key: str) -> None:
        # S3 has no "touch": copying an object onto itself with replaced metadata renews its
        # Last-Modified. Larger objects cannot be copied in one call; they keep their age.
        info = self.stat(key)
        if info is None or info.size > MAX_COPY:
            return
        self._call(self._client.copy_object, self._bucket, self._name(key), CopySource(self._bucket, self._name(key)),
                   metadata={"x-amz-meta-wharf-touched": str(int(time.time()))}, metadata_directive=REPLACE)

    def _relative(self, object_name: str) -> str:
        return object_name[len(self._prefix) + 1:] if self._prefix else object_name

    def delete(self, key: str) -> bool:
        """Deletes an object (with its pending multipart upload) or every object under a prefix."""
        children = [self._relative(o.object_name) for o in
                    self._call(self._client.list_objects, self._bucket, prefix=self._name(key) + "/", recursive=True)]
        found = bool(children) or self.stat(key) is not None
        for child in [*children, key]:
            if child.endswith((".multipart", ".tail")):
                continue
            state = self._get_json(child + ".multipart")
            if state and state.get("upload_id"):
                self._abort(child, state["upload_id"])
            self._remove(child, child + ".multipart", child + ".tail")
        return found

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
                if started < older_than and upload.upload_id:
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

    def redirect_url(self, key: str) -> str | None:
        if not self._config.redirect:
            return None
        return str(self._presigner.presigned_get_object(self._bucket, self._name(key),
                                                        expires=datetime.timedelta(seconds=self._config.redirect_ttl)))
