"""Local filesystem driver: temp file + fsync + rename for every visible write."""

from __future__ import annotations

import fcntl
import os
import pathlib
import shutil
import tempfile
from collections.abc import Iterator
from typing import BinaryIO

from services.blobstore.storage.base import FileInfo, FileWriter, StorageDriver, UploadBusyError, check_key


def _fsync_dir(path: pathlib.Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class _FileWriter(FileWriter):
    def __init__(self, path: pathlib.Path, append: bool) -> None:
        self._path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self._file = open(path, "ab" if append else "wb")  # noqa: SIM115 - closed in close()
        try:
            # Two writers on one upload would interleave bytes; the second is refused.
            fcntl.flock(self._file.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._file.close()
            raise UploadBusyError(str(path)) from None
        self._size = self._file.seek(0, os.SEEK_END)

    @property
    def size(self) -> int:
        return self._size

    def write(self, data: bytes) -> None:
        self._file.write(data)
        self._size += len(data)

    def close(self) -> None:
        if not self._file.closed:
            try:
                self._sync()
            finally:
                self._file.close()

    def _sync(self) -> None:
        self._file.flush()
        os.fdatasync(self._file.fileno())

    def commit(self) -> None:
        # Appended bytes are readable as they land; finishing is making them durable. The lock
        # stays held until close(), so the caller can verify and move the file undisturbed.
        self._sync()

    def cancel(self) -> None:
        self._file.close()
        self._path.unlink(missing_ok=True)


class FilesystemDriver(StorageDriver):
    name = "filesystem"

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
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self._tmp)
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
                handle.flush()
                os.fdatasync(handle.fileno())
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
        dst.parent.mkdir(parents=True, exist_ok=True)
        os.replace(src, dst)
        _fsync_dir(dst.parent)

    def delete(self, key: str) -> bool:
        path = self._path(key)
        if path.is_dir():
            # Rename first so a half-deleted tree is never visible under its key.
            doomed = pathlib.Path(tempfile.mkdtemp(dir=self._tmp))
            os.replace(path, doomed / "x")
            shutil.rmtree(doomed, ignore_errors=True)
            return True
        try:
            path.unlink()
            return True
        except FileNotFoundError:
            return False

    def local_path(self, key: str) -> str | None:
        return str(self._path(key)) if self._expose_paths else None
