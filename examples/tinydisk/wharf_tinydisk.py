"""``tinydisk``: the storage driver docs/extending.md writes from scratch, one file per object.

Objects live at ``<root>/<key>``. A writer appends to ``<root>/.partial/<key>`` and holds
``<root>/.locks/<key>`` (flock) from its opening to its close, so a second writer of the key fails
at once with UploadBusyError; ``commit`` renames the partial file into place. Keys always start
with a lower-case letter or digit (CheckedDriver refuses others), so the two dot-directories can
never be keys. Simple by design: no buffering, one fsync per commit.
"""

from __future__ import annotations

import fcntl
import os
import pathlib
import shutil
from collections.abc import Iterator, Mapping
from typing import IO, Any, BinaryIO

from services.blobstore.storage.base import (
    API_VERSION,
    FileInfo,
    FileWriter,
    StorageDriver,
    UploadBusyError,
    check_key,
)


class _Writer(FileWriter):
    def __init__(self, path: pathlib.Path, partial: pathlib.Path, lock: pathlib.Path, append: bool) -> None:
        for directory in (partial.parent, lock.parent, path.parent):
            directory.mkdir(parents=True, exist_ok=True)
        self._path, self._partial = path, partial
        self._lock: IO[str] | None = open(lock, "a")  # noqa: SIM115 - held until close()
        try:
            fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._lock.close()
            raise UploadBusyError(path.name) from None
        if append and not partial.exists() and path.exists():
            shutil.copyfile(path, partial)  # continue a committed object without touching it
        self._file: BinaryIO | None = open(partial, "ab" if append else "wb")  # noqa: SIM115

    @property
    def size(self) -> int:
        assert self._file is not None
        self._file.flush()
        return os.fstat(self._file.fileno()).st_size

    def write(self, data: bytes) -> None:
        assert self._file is not None
        self._file.write(data)

    def close(self) -> None:
        """Durable and resumable: a later writer(append=True) continues the partial file."""
        if self._file is not None:
            self._file.flush()
            os.fsync(self._file.fileno())
            self._file.close()
            self._file = None
        if self._lock is not None:
            self._lock.close()  # releases the flock
            self._lock = None

    def commit(self) -> None:
        assert self._file is not None
        self._file.flush()
        os.fsync(self._file.fileno())
        os.replace(self._partial, self._path)
        self.close()

    def cancel(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
        self._partial.unlink(missing_ok=True)
        self.close()


class TinyDisk(StorageDriver):
    wharf_interface = API_VERSION  # the interface version this driver implements
    name = "tinydisk"  # its label in the storage metrics

    def __init__(self, root: pathlib.Path) -> None:
        self._root = root
        root.mkdir(parents=True, exist_ok=True)

    @classmethod
    def from_settings(cls, settings: Any, options: Mapping[str, Any]) -> TinyDisk:
        root = options.get("root")
        if not isinstance(root, str) or not root.startswith("/"):
            raise ValueError("tinydisk needs root: an absolute directory, in the storage options")
        return cls(pathlib.Path(root))

    def _at(self, key: str, area: str = "") -> pathlib.Path:
        check_key(key)  # Wharf checks keys before a driver sees them; a driver checks again (ValueError)
        return self._root / area / key if area else self._root / key

    def get_content(self, key: str) -> bytes:
        return self._at(key).read_bytes()

    def put_content(self, key: str, data: bytes) -> None:
        with self.writer(key, append=False) as writer:
            writer.write(data)
            writer.commit()

    def reader(self, key: str, offset: int = 0) -> BinaryIO:
        stream = open(self._at(key), "rb")  # noqa: SIM115 - the caller closes it
        stream.seek(offset)
        return stream

    def writer(self, key: str, append: bool) -> FileWriter:
        return _Writer(self._at(key), self._at(key, ".partial"), self._at(key, ".locks"), append)

    def stat(self, key: str) -> FileInfo | None:
        for path in (self._at(key), self._at(key, ".partial")):
            try:
                found = path.stat()
            except (FileNotFoundError, NotADirectoryError):
                continue
            if path.is_file():
                return FileInfo(key=key, size=found.st_size, modified_at=found.st_mtime)
        return None

    def list(self, prefix: str) -> Iterator[str]:
        try:
            yield from sorted(os.listdir(self._at(prefix)))
        except (FileNotFoundError, NotADirectoryError):
            return

    def move(self, source: str, dest: str) -> None:
        self._at(dest).parent.mkdir(parents=True, exist_ok=True)
        os.replace(self._at(source), self._at(dest))

    def delete(self, key: str) -> bool:
        path = self._at(key)
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)  # a concurrent delete may take parts first
            return True
        try:
            path.unlink()
        except FileNotFoundError:
            return False
        return True

    def touch(self, key: str) -> None:
        os.utime(self._at(key))
