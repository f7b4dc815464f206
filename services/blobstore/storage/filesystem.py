"""Local filesystem driver: temp file + fsync + rename for every visible write.

Scratch space is ``<root>/_tmp``: files ``put_content`` is writing and trees
``delete`` is removing. Both are renamed out of it (or removed) on every path;
what a crash leaves there is swept by :meth:`FilesystemDriver.sweep`.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import errno
import fcntl
import logging
import mmap
import os
import pathlib
import shutil
import stat
import tempfile
import threading
import time
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any, BinaryIO

from services.blobstore.storage.base import API_VERSION, FileInfo, FileWriter, StorageDriver, UploadBusyError, check_key

log = logging.getLogger("wharf.blobstore.filesystem")

if TYPE_CHECKING:
    from services.blobstore.settings import BlobStoreSettings


def _fsync_dir(path: pathlib.Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# O_DIRECT wants block-aligned offsets, lengths and memory; 4 KiB suits every common device.
_ALIGN = 4096
# Bytes gathered before one direct write. Measured with bench/registry_bench.py (1 GiB push):
# 512 KiB 588 MB/s, 1 MiB 637, 2 MiB 579, 4 MiB 550; and two buffers per upload in flight
# keep the blob store's memory flat under many concurrent uploads.
_DIRECT_BUFFER = 1024 * 1024
# A full buffer is written by one of these threads while the caller fills the other buffer,
# so the device's latency overlaps with receiving and hashing the next bytes.
_WRITERS = concurrent.futures.ThreadPoolExecutor(max_workers=4, thread_name_prefix="direct-write")
# Direct writes need two aligned buffers per writer. They come from a bounded pool, so that
# memory stays flat however many uploads are open at once (500 slow uploads would otherwise
# hold 1 GB of buffers): a writer that finds the pool empty writes through the page cache
# instead, which needs no buffer, rather than waiting for one. Sixteen pairs (32 MiB) keep
# the four writer threads busy with room to spare. load_bench (b), 500 slow uploads: the blob
# store peaked at 309 MB with 32 pairs, at 243-273 MB (nine runs) with 16.
_DIRECT_BUFFER_PAIRS = 16


class _BufferPool:
    """At most ``pairs`` pairs of aligned buffers, reused from writer to writer."""

    def __init__(self, pairs: int) -> None:
        self._free: list[tuple[mmap.mmap, mmap.mmap]] = []
        self._left = pairs
        self._lock = threading.Lock()

    def take(self) -> tuple[mmap.mmap, mmap.mmap] | None:
        with self._lock:
            if self._free:
                return self._free.pop()
            if self._left == 0:
                return None
            self._left -= 1
        return mmap.mmap(-1, _DIRECT_BUFFER), mmap.mmap(-1, _DIRECT_BUFFER)

    def give(self, pair: tuple[mmap.mmap, mmap.mmap]) -> None:
        with self._lock:
            self._free.append(pair)


_BUFFERS = _BufferPool(_DIRECT_BUFFER_PAIRS)
# Scratch entries removed per sweep at most; the next sweep goes on where this one stopped.
_SWEEP_LIMIT = 10000
# The sweep spares scratch touched this recently by the real clock, whatever age it is asked
# for: puts and deletes use scratch for well under a second, and a clock step (or a caller
# simulating time) must not pull it from under them.
_SWEEP_MIN_AGE = 60.0


def _ensure_dir(path: pathlib.Path) -> None:
    """``mkdir -p`` that survives a concurrent delete renaming the directory away: pathlib's own
    reports FileExistsError when the directory vanishes between its mkdir and its check. Should
    the delete win every time, it is reported as having come first (FileNotFoundError: for an
    upload's directory, the session is gone)."""
    for _ in range(4):
        try:
            path.mkdir(parents=True, exist_ok=True)
            return
        except FileExistsError:
            try:
                # One look, not two: the directory was once seen to exist and then, renamed away
                # between the two, not to be a directory (tests/security/test_blobstore_fs_races.py).
                mode = path.stat().st_mode
            except FileNotFoundError:
                continue
            if not stat.S_ISDIR(mode):
                raise  # a file is in the way: a real error
    raise FileNotFoundError(errno.ENOENT, "removed while it was being created", str(path))


class _FileWriter(FileWriter):
    """Appends with O_DIRECT where the filesystem allows it, else through the page cache.

    Upload data is written once and read back rarely (the digest is usually hashed as it
    arrives), so caching it only costs: on the VMs we measured, buffered appends of a large
    blob slowed to ~400 MB/s under page-cache writeback while direct writes held ~2 GB/s.
    Direct I/O needs aligned writes, so bytes gather in an aligned buffer; the unaligned
    tail at close() is written through the page cache, and a later writer reads that tail
    back into its buffer and rewrites it from the block boundary. Two buffers take turns:
    one is written in the background while the other fills.
    """

    def __init__(self, path: pathlib.Path, append: bool) -> None:
        self._path = path
        _ensure_dir(path.parent)
        # Never O_TRUNC: a writer refused below (another holds the key) must not have emptied the
        # holder's file first; a replacing writer truncates once it holds the lock.
        flags = os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC
        self._direct = hasattr(os, "O_DIRECT")
        try:
            self._fd = os.open(path, flags | (os.O_DIRECT if self._direct else 0), 0o644)
        except OSError as exc:
            if not self._direct or exc.errno != errno.EINVAL:
                raise
            self._direct = False  # tmpfs and some network filesystems refuse O_DIRECT
            self._fd = os.open(path, flags, 0o644)
        self._closed = False
        self._pair: tuple[mmap.mmap, mmap.mmap] | None = None
        self._pending: concurrent.futures.Future[None] | None = None
        try:
            self._take(path, append)
        except BaseException:
            self._release()
            raise

    def _take(self, path: pathlib.Path, append: bool) -> None:
        """The rest of opening, once the file is open (a failure releases what was taken)."""
        try:
            # Two writers on one upload would interleave bytes; the second is refused.
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise UploadBusyError(str(path)) from None
        if not self.still_at_key():
            # Between the open and the lock, the holder moved the file away (a commit made it a
            # blob) or removed it: what is locked is not the key's any more, and must not be
            # written to, let alone truncated. The caller sees the key busy and looks again.
            raise UploadBusyError(str(path))
        if not append:
            os.ftruncate(self._fd, 0)
        self._size = os.fstat(self._fd).st_size
        self._pair = _BUFFERS.take() if self._direct else None
        if self._direct and self._pair is None:
            # No buffer free: this writer goes through the page cache.
            fcntl.fcntl(self._fd, fcntl.F_SETFL, fcntl.fcntl(self._fd, fcntl.F_GETFL) & ~os.O_DIRECT)
            self._direct = False
        self._buffer: mmap.mmap | None = self._pair[0] if self._pair is not None else None
        self._spare: mmap.mmap | None = self._pair[1] if self._pair is not None else None
        # The buffer always holds the file's bytes from _base (block-aligned) up to _size.
        self._base = self._size - self._size % _ALIGN if self._direct else self._size
        if self._buffer is not None and self._size > self._base:
            with open(path, "rb") as tail:
                tail.seek(self._base)
                # Slice assignment, not mmap.write(): a pooled buffer's file position is wherever
                # its previous writer left it.
                tail_bytes = tail.read(self._size - self._base)
                self._buffer[:len(tail_bytes)] = tail_bytes
        self._dirty = False

    @property
    def size(self) -> int:
        return self._size

    def write(self, data: bytes) -> None:
        if not data:
            return
        self._dirty = True
        if self._buffer is None:
            self._write_all(data, self._size)
            self._size += len(data)
            return
        view = memoryview(data)
        while view:
            filled = self._size - self._base
            take = min(len(view), _DIRECT_BUFFER - filled)
            self._buffer[filled:filled + take] = view[:take]
            self._size += take
            view = view[take:]
            if self._size - self._base == _DIRECT_BUFFER:
                self._wait_pending()
                assert self._spare is not None
                self._pending = _WRITERS.submit(self._write_all, self._buffer, self._base)
                self._buffer, self._spare = self._spare, self._buffer
                self._base = self._size

    def _write_all(self, data: bytes | memoryview | mmap.mmap, offset: int) -> None:
        view = memoryview(data)
        while view:
            written = os.pwrite(self._fd, view, offset)
            view, offset = view[written:], offset + written

    def _wait_pending(self) -> None:
        pending, self._pending = self._pending, None
        if pending is not None:
            pending.result()

    def _flush(self) -> None:
        """Everything written reaches the file and the device."""
        if not self._dirty:
            return
        self._wait_pending()
        if self._buffer is not None:
            filled = self._size - self._base
            aligned = filled - filled % _ALIGN
            if aligned:
                self._write_all(memoryview(self._buffer)[:aligned], self._base)
            if filled > aligned:
                flags = fcntl.fcntl(self._fd, fcntl.F_GETFL)
                fcntl.fcntl(self._fd, fcntl.F_SETFL, flags & ~os.O_DIRECT)
                try:
                    self._write_all(memoryview(self._buffer)[aligned:filled], self._base + aligned)
                finally:
                    fcntl.fcntl(self._fd, fcntl.F_SETFL, flags)
        os.fdatasync(self._fd)
        self._dirty = False

    def close(self) -> None:
        if not self._closed:
            try:
                self._flush()
            finally:
                self._release()

    def _release(self) -> None:
        self._closed = True
        try:
            self._wait_pending()
        finally:
            os.close(self._fd)
            if self._pair is not None:
                _BUFFERS.give(self._pair)
                self._pair = None

    def still_at_key(self) -> bool:
        try:
            held, found = os.fstat(self._fd), os.stat(self._path)
        except (FileNotFoundError, OSError):
            return False
        return (held.st_dev, held.st_ino) == (found.st_dev, found.st_ino)

    def commit(self) -> None:
        # Finishing is making the bytes durable and readable. The lock stays held until
        # close(), so the caller can verify and move the file undisturbed.
        self._flush()

    def cancel(self) -> None:
        if self._closed:
            self._path.unlink(missing_ok=True)
            return
        # Removed while still held, and only if it is still the key's file: once released, the
        # path may already be the next writer's file.
        if self.still_at_key():
            self._path.unlink(missing_ok=True)
        with contextlib.suppress(OSError):  # a failed background write: the file goes anyway
            self._release()


class FilesystemDriver(StorageDriver):

    wharf_interface = API_VERSION

    @classmethod
    def from_settings(cls, settings: BlobStoreSettings, options: Mapping[str, Any]) -> FilesystemDriver:
        return cls(settings.data_dir / "blobstore", expose_paths=settings.expose_paths)

    def __init__(self, root: pathlib.Path, expose_paths: bool = False) -> None:
        self._root = root.resolve()
        self._root.mkdir(parents=True, exist_ok=True)
        self._tmp = self._root / "_tmp"
        self._tmp.mkdir(exist_ok=True)
        self._expose_paths = expose_paths

    def _path(self, key: str) -> pathlib.Path:
        return self._root.joinpath(*check_key(key).split("/"))

    def get_content(self, key: str) -> bytes:
        return self._path(key).read_bytes()

    def put_content(self, key: str, data: bytes) -> None:
        path = self._path(key)
        _ensure_dir(path.parent)
        fd, tmp = tempfile.mkstemp(dir=self._tmp)
        try:
            try:
                # os.write rather than a file object: open() of a descriptor costs an fstat, an
                # isatty ioctl and a seek, a fifth of the system calls of a small blob's commit.
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view):]
                os.fdatasync(fd)
            finally:
                os.close(fd)
            os.replace(tmp, path)
        except BaseException:
            pathlib.Path(tmp).unlink(missing_ok=True)
            raise
        _fsync_dir(path.parent)

    def reader(self, key: str, offset: int = 0) -> BinaryIO:
        handle = open(self._path(key), "rb")  # noqa: SIM115 - the caller closes it
        if offset:
            handle.seek(offset)
        return handle

    def writer(self, key: str, append: bool) -> FileWriter:
        return _FileWriter(self._path(key), append)

    def stat(self, key: str) -> FileInfo | None:
        try:
            st = self._path(key).stat()
        except FileNotFoundError:
            return None
        return FileInfo(key, st.st_size, st.st_mtime)

    def list(self, prefix: str) -> Iterator[str]:
        try:
            yield from sorted(os.listdir(self._path(prefix)))
        except FileNotFoundError:
            return

    def move(self, source: str, dest: str) -> None:
        src, dst = self._path(source), self._path(dest)
        _ensure_dir(dst.parent)
        # A rename keeps the file's time, that of the upload's last append (hours ago for a client
        # that paused before its commit): garbage collection would take the blob for one stored
        # long ago and delete it before its upload is linked. The time is set on the source, so
        # the blob never exists under its key with the old one.
        os.utime(src)
        os.replace(src, dst)
        _fsync_dir(dst.parent)

    def delete(self, key: str) -> bool:
        """Idempotent and safe to race (other deletes, a writer's cancel, the janitor): the one
        rename or unlink that succeeds reports True, the others find nothing and report False."""
        path = self._path(key)
        if not path.is_dir():
            try:
                path.unlink()
                return True
            except FileNotFoundError:
                return False
            except IsADirectoryError:
                pass  # became a directory since the check; delete it as one
        # Rename first so a half-deleted tree is never visible under its key. Of concurrent
        # deletes only one rename succeeds; the others must not leave their scratch dir behind.
        doomed = pathlib.Path(tempfile.mkdtemp(dir=self._tmp))
        try:
            os.rename(path, doomed / "x")
        except BaseException as exc:
            with contextlib.suppress(FileNotFoundError):
                doomed.rmdir()
            if isinstance(exc, FileNotFoundError):
                return False  # another delete, a cancel or the janitor got there first
            raise
        shutil.rmtree(doomed, ignore_errors=True)
        return True

    def sweep(self, older_than: float) -> int:
        """Removes scratch files and trees last changed before ``older_than``: what a crash left
        between writing a temp file and renaming it, or in the middle of removing a tree."""
        removed = 0
        older_than = min(older_than, time.time() - _SWEEP_MIN_AGE)
        with os.scandir(self._tmp) as entries:
            for entry in entries:
                if removed >= _SWEEP_LIMIT:
                    break
                try:
                    if entry.stat(follow_symlinks=False).st_mtime >= older_than:
                        continue  # young: a put or a delete may still be using it
                    if entry.is_dir(follow_symlinks=False):
                        shutil.rmtree(entry.path)
                    else:
                        os.unlink(entry.path)
                except FileNotFoundError:
                    continue  # its owner (or another sweep) removed it meanwhile
                except OSError as exc:  # one stuck entry must not keep the sweep from the others
                    log.warning("could not sweep a scratch entry",
                                extra={"fields": {"path": entry.path, "error": str(exc)}})
                    continue
                removed += 1
        return removed

    def touch(self, key: str) -> None:
        os.utime(self._path(key))

    def local_path(self, key: str) -> str | None:
        return str(self._path(key)) if self._expose_paths else None
