"""Streams of blob bytes: sources an upload can (re)open at any offset, and a verifying download reader.

Uploads resume after a dropped connection from the offset the registry reports,
so every source must reopen at an offset: files seek, tarball members seek
inside the archive, and registry blobs reopen with an HTTP ``Range`` request.
Nothing here holds a whole blob in memory.
"""

from __future__ import annotations

import io
import os
import pathlib
import secrets
import time
from collections.abc import Callable
from typing import IO, TYPE_CHECKING, Protocol

import requests

from wharf_client.bodies import is_connection_error
from wharf_client.digest import Verifier
from wharf_client.errors import TransportError
from wharf_client.manifest import Descriptor

if TYPE_CHECKING:
    from wharf_client.registry import Repository

# Bytes per read when streaming: large enough that per-call overhead vanishes, small enough to stay flat in memory.
IO_CHUNK = 1024 * 1024
# How many times a download reopens at its offset after the connection drops.
DOWNLOAD_RESUMES = 5

Progress = Callable[[int], None]


class BlobSource(Protocol):
    """A blob an upload can read from any offset."""

    @property
    def descriptor(self) -> Descriptor: ...

    def open(self, offset: int = 0) -> IO[bytes]: ...


class BytesSource:
    def __init__(self, data: bytes, descriptor: Descriptor) -> None:
        self._data = data
        self._descriptor = descriptor

    @property
    def descriptor(self) -> Descriptor:
        return self._descriptor

    def open(self, offset: int = 0) -> IO[bytes]:
        return io.BytesIO(memoryview(self._data)[offset:].tobytes())


class FileSource:
    """A blob stored in a file, whole or as a region (a member of an uncompressed tar)."""

    def __init__(self, path: pathlib.Path, descriptor: Descriptor, start: int = 0) -> None:
        self.path = path
        self.start = start
        self._descriptor = descriptor

    @property
    def descriptor(self) -> Descriptor:
        return self._descriptor

    def open(self, offset: int = 0) -> IO[bytes]:
        handle = open(self.path, "rb")  # noqa: SIM115 - returned to the caller, who closes it
        handle.seek(self.start + offset)
        return handle


class LimitedReader:
    """``length`` bytes of ``stream`` as a request body; requests sends it with that Content-Length.

    A plain object with ``read`` and ``__len__`` on purpose: requests then sends it as a
    sized body (no ``tell``, which would make it guess the length, no ``__iter__``, which
    would make it chunk-encode). Closing it leaves the underlying stream open, so the
    next chunk of a chunked upload continues where this one stopped.
    """

    def __init__(self, stream: IO[bytes], length: int, on_read: Progress | None = None, start: int = 0) -> None:
        self._stream = stream
        self._remaining = length
        self._length = length
        self._on_read = on_read
        self._position = start

    def __len__(self) -> int:
        return self._length

    def read(self, size: int | None = -1) -> bytes:
        if self._remaining <= 0:
            return b""
        # http.client asks for 8-16 KiB at a time; reading more per call keeps Python overhead out of the way.
        want = self._remaining if size is None or size < 0 else min(max(size, IO_CHUNK), self._remaining)
        data = self._stream.read(want)
        if not data:
            raise TransportError(f"source ended {self._remaining} bytes early")
        self._remaining -= len(data)
        self._position += len(data)
        if self._on_read:
            self._on_read(self._position)
        return data

    def close(self) -> None:
        """Nothing to release: the stream belongs to the caller."""


class SpeedFloor:
    """Whether a download has become too slow to go on with on this connection: fewer than
    ``speed`` bytes per second over ``window`` seconds spent waiting in reads (the caller's own
    pace, writing to a slow disk say, does not count). ``speed`` 0: never."""

    def __init__(self, speed: int, window: float) -> None:
        self.speed, self._window = speed, window
        self._waited, self._got = 0.0, 0

    def too_slow(self, got: int, waited: float) -> bool:
        if self.speed <= 0:
            return False
        self._waited += waited
        self._got += got
        if self._waited < self._window:
            return False
        slow = self._got < self.speed * self._waited
        self._waited, self._got = 0.0, 0
        return slow


class BlobReader(io.RawIOBase):
    """A blob download: streams, resumes with Range after a dropped connection, and checks the digest at the end.

    Reading from offset 0 to the end verifies size and digest; the last read raises
    :class:`DigestMismatch` if the bytes were not the ones asked for.
    """

    def __init__(self, repository: Repository, descriptor: Descriptor, offset: int = 0) -> None:
        super().__init__()
        self.repository = repository
        self.descriptor = descriptor
        self._offset = offset
        self._verifier = Verifier(descriptor.digest, descriptor.size, f"blob {descriptor.digest}") \
            if offset == 0 else None
        self._response: requests.Response | None = None
        self._resumes = 0
        options = repository.transport.options
        self._floor = SpeedFloor(options.min_speed, options.min_speed_window)
        self._open()

    def _open(self) -> None:
        self._response = self.repository.get_blob_response(self.descriptor.digest, self._offset)

    def readable(self) -> bool:
        return True

    @property
    def position(self) -> int:
        return self._offset

    def read(self, size: int | None = -1) -> bytes:
        if size is None or size < 0:
            return b"".join(iter(lambda: self.read(IO_CHUNK), b""))
        remaining = self.descriptor.size - self._offset
        if remaining <= 0:
            self._finish()
            return b""
        while True:
            assert self._response is not None
            started = time.monotonic()
            try:
                # read1: what has arrived (at least a byte), so that the floor sees a dripping body
                # byte by byte instead of waiting for a whole chunk of it.
                data = self._response.raw.read1(min(size, remaining), decode_content=True)
            except Exception as exc:
                if not is_connection_error(exc):
                    raise
                if self._resumes >= DOWNLOAD_RESUMES:
                    raise TransportError(f"download of {self.descriptor.digest} broke at byte {self._offset}: "
                                         f"{type(exc).__name__}: {exc}") from None
                data = b""
            if data and self._floor.too_slow(len(data), time.monotonic() - started):
                if self._resumes >= DOWNLOAD_RESUMES:
                    raise TransportError(f"download of {self.descriptor.digest} stayed slower than "
                                         f"{self._floor.speed} bytes/s at byte {self._offset}; giving up")
                data = b""  # dropped, and asked again from the reopened connection
            if data:
                break
            # A short body or a dropped connection: continue from where the bytes stopped.
            if self._resumes >= DOWNLOAD_RESUMES:
                raise TransportError(f"download of {self.descriptor.digest} ended at byte {self._offset} of "
                                     f"{self.descriptor.size}")
            self._resumes += 1
            self._response.close()
            self._open()
        self._offset += len(data)
        if self._verifier:
            self._verifier.update(data)
        if self._offset >= self.descriptor.size:
            self._finish()
        return data

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        data = self.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)

    def _finish(self) -> None:
        if self._verifier:
            verifier, self._verifier = self._verifier, None
            verifier.check()

    def close(self) -> None:
        if self._response is not None:
            self._response.close()
            self._response = None
        super().close()


class RegistrySource:
    """A blob in a registry repository, as the source of a copy."""

    def __init__(self, repository: Repository, descriptor: Descriptor) -> None:
        self.repository = repository
        self._descriptor = descriptor

    @property
    def descriptor(self) -> Descriptor:
        return self._descriptor

    def open(self, offset: int = 0) -> IO[bytes]:
        return BlobReader(self.repository, self._descriptor, offset)  # type: ignore[return-value]


def new_partial(target: pathlib.Path) -> tuple[int, pathlib.Path]:
    """A new file next to ``target`` to download into before it is verified: (descriptor, path).

    Its name is random and it is created exclusively (``O_EXCL``), so a ``.name.partial``
    planted beforehand as a symbolic link (in a shared directory, say) is never written
    through; the mode is a plain file's (0666 less the umask), as ``open`` would give.
    """
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
    while True:
        partial = target.with_name(f".{target.name[:200]}.{secrets.token_hex(6)}.partial")
        try:
            return os.open(partial, flags, 0o666), partial
        except FileExistsError:
            continue


def copy_stream(reader: IO[bytes], writer: IO[bytes], progress: Progress | None = None, start: int = 0) -> int:
    """Copies until EOF in bounded pieces; returns the number of bytes copied."""
    done = start
    while chunk := reader.read(IO_CHUNK):
        writer.write(chunk)
        done += len(chunk)
        if progress:
            progress(done)
    return done - start
