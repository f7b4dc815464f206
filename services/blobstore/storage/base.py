"""The storage driver interface every blob store backend implements, version ``API_VERSION``.

Modelled on the small interface CNCF Distribution uses: whole-object get/put,
readers at an offset, appendable writers, stat, list, move, delete, and an
optional direct location. Keys are relative "/"-separated paths produced by
:mod:`services.blobstore.layout`. Every driver is used through :class:`CheckedDriver`,
which checks every key, holds every driver to one not-found contract, and times, counts and
traces every operation (``wharf_storage_operation_*``), so a driver (ours or a third party's)
cannot forget any of it. services/blobstore/README.md states the
contract; tests/integration/test_storage_drivers.py is the suite every driver must pass.
"""

from __future__ import annotations

import abc
import dataclasses
import re
import time
from collections.abc import Callable, Iterator, Mapping
from typing import TYPE_CHECKING, Any, BinaryIO, Self, TypeVar

from services.common import metrics, tracing

if TYPE_CHECKING:
    from services.blobstore.settings import BlobStoreSettings

T = TypeVar("T")

# The interface's version. A change that breaks drivers (a new abstract method, a changed
# meaning) bumps it; a driver declares the version it implements and is refused otherwise.
API_VERSION = 1
_KEY_RE = re.compile(r"^[a-z0-9]+(?:/[A-Za-z0-9._-]+)*\Z")


class StorageError(Exception):
    """The backend failed (I/O error, object store unreachable)."""


class UploadBusyError(StorageError):
    """Another writer holds the object, or took it over from this writer (see :class:`FileWriter`).

    Nothing is wrong with the object: the caller may retry once the other writer is done.
    """


def check_key(key: str) -> str:
    if not _KEY_RE.match(key) or any(part in {".", ".."} for part in key.split("/")):
        raise ValueError(f"refusing storage key {key!r}")
    return key


@dataclasses.dataclass(frozen=True)
class FileInfo:
    key: str
    size: int
    modified_at: float


class FileWriter(abc.ABC):
    """Appends to one object across requests (and, on shared storage, across replicas).

    :meth:`close` makes what was written durable and resumable by a later
    ``writer(key, append=True)``; :meth:`commit` finishes the object so that
    :meth:`StorageDriver.reader` can read it (the writer is still closed after);
    :meth:`cancel` throws it away.

    **One writer at a time.** A writer holds its key exclusively, from
    :meth:`StorageDriver.writer` until :meth:`close` or :meth:`cancel`, against every
    other writer: in this process, in other processes, and on other replicas sharing the
    storage. Opening a second writer raises :class:`UploadBusyError` rather than
    waiting, and never lets two writers' bytes interleave. Callers rely on this: the blob
    store hashes bytes as it appends them and, between :meth:`commit` and :meth:`close`,
    verifies and moves the finished object, so the bytes stored must be exactly the bytes
    that writer saw. A backend whose exclusion can lapse (a lease on shared storage that
    runs out while its holder stalls) must fence the old holder: its next call fails with
    :class:`UploadBusyError` and nothing it writes after losing the key becomes part of
    the object. The filesystem driver uses ``flock``; the S3 driver, conditional writes
    of the session state (see :mod:`.s3_session`).
    """

    @property
    @abc.abstractmethod
    def size(self) -> int:
        """Bytes in the object, including what this writer appended."""

    @abc.abstractmethod
    def write(self, data: bytes) -> None: ...

    @abc.abstractmethod
    def close(self) -> None: ...

    @abc.abstractmethod
    def commit(self) -> None: ...

    @abc.abstractmethod
    def cancel(self) -> None: ...

    def still_at_key(self) -> bool:
        """Whether the object this writer holds is still the one at its key. A session deleted
        under the writer (a cancel or expiry renames its directory away) and recreated empty by
        another writer's open leaves this writer holding an orphan; the blob store checks this
        before trusting what it reads at the key and before moving it. Drivers whose keys cannot
        be replaced under a writer keep the default."""
        return True

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class StorageDriver(abc.ABC):
    """Not-found contract: ``get_content``, ``reader``, ``move`` (a missing source) and ``touch``
    raise ``FileNotFoundError``; ``stat`` returns None; ``delete`` returns False. Keys reach a
    driver already checked (:class:`CheckedDriver`)."""

    # A driver states the interface version it implements in its own class, ``wharf_interface =
    # API_VERSION`` (not inherited from here: a driver written for version 1 must not claim 2).

    @classmethod
    def from_settings(cls, settings: BlobStoreSettings, options: Mapping[str, Any]) -> StorageDriver:
        """The driver the blob store uses, built from its settings and the ``storage_options`` section
        of the configuration (``WHARF_STORAGE_OPTIONS_FILE``, or ``storage_options:`` in
        ``WHARF_CONFIG``: a mapping, empty when absent). Raise ValueError with a message for a
        missing or malformed option."""
        raise ValueError(f"{cls.__name__} does not say how to build it from settings (from_settings)")

    @abc.abstractmethod
    def get_content(self, key: str) -> bytes:
        """Whole small object; FileNotFoundError when absent."""

    @abc.abstractmethod
    def put_content(self, key: str, data: bytes) -> None:
        """Atomically replaces a small object."""

    @abc.abstractmethod
    def reader(self, key: str, offset: int = 0) -> BinaryIO:
        """A stream positioned at ``offset``; FileNotFoundError when absent."""

    @abc.abstractmethod
    def writer(self, key: str, append: bool) -> FileWriter:
        """A writer that appends to (or, with append=False, replaces) an object.

        Raises :class:`UploadBusyError` while another writer holds ``key`` (see :class:`FileWriter`)."""

    @abc.abstractmethod
    def stat(self, key: str) -> FileInfo | None:
        """Size and age of an object, including one a writer has not committed yet."""

    @abc.abstractmethod
    def list(self, prefix: str) -> Iterator[str]:
        """Names of the direct children of ``prefix``."""

    @abc.abstractmethod
    def move(self, source: str, dest: str) -> None:
        """Atomically makes ``dest`` hold ``source``'s bytes and removes ``source``; ``dest``'s
        modification time is the move's (garbage collection's grace counts from it)."""

    @abc.abstractmethod
    def delete(self, key: str) -> bool:
        """Removes an object or a whole prefix; False when nothing was there.

        Safe to race with itself, with a writer's :meth:`FileWriter.cancel` and with
        :meth:`sweep`: of concurrent deletes of one key, the ones that find it already gone
        return False instead of failing, and none leaves anything behind."""

    @abc.abstractmethod
    def touch(self, key: str) -> None:
        """Makes an existing object's modification time now: garbage collection spares young blobs,
        and a blob that an upload just found already stored is about to be linked again."""

    def sweep(self, older_than: float) -> int:
        """Removes backend leftovers no key refers to, started before ``older_than`` (Unix time):
        for S3, multipart uploads a crash left unrecorded; for the filesystem, temporary files and
        trees a crash or an interrupted delete left in its scratch directory. Returns how many."""
        return 0

    def local_path(self, key: str) -> str | None:
        """An absolute path a co-located process may read, when the backend has one."""
        return None

    def redirect_url(self, key: str) -> str | None:
        """A short-lived URL clients may read the object from, when the backend has one."""
        return None


class CheckedDriver(StorageDriver):
    """The driver the blob store and the collector use: ``inner`` behind one wrapper that checks
    every key and maps not-found to the contract above, whichever way ``inner`` reports it (a
    ``stat`` that raises ``FileNotFoundError`` answers None, a ``delete`` of nothing answers False),
    and measures each operation (a missing key is an answer, not an error)."""

    def __init__(self, inner: StorageDriver) -> None:
        version = getattr(type(inner), "wharf_interface", None)
        if version != API_VERSION:
            raise ValueError(f"{type(inner).__name__} implements storage driver API {version!r}; "
                             f"this blob store needs {API_VERSION}")
        self.inner = inner
        # The label: a driver's own short name when it has one (a third party's class name otherwise).
        self._name = str(getattr(inner, "name", type(inner).__name__.lower().removesuffix("driver")))[:40]
        self._figures: dict[str, tuple[Any, Any]] = {}

    def _figures_of(self, operation: str) -> tuple[Any, Any]:
        figures = self._figures.get(operation)
        if figures is None:
            figures = self._figures[operation] = (metrics.STORAGE_DURATION.labels(self._name, operation),
                                                  metrics.STORAGE_ERRORS.labels(self._name, operation))
        return figures

    def _measured(self, operation: str, call: Callable[..., T], *args: Any) -> T:
        figures = self._figures_of(operation)
        started = time.perf_counter()
        try:
            with tracing.span(f"storage {operation}", attributes={"wharf.storage.driver": self._name}):
                return call(*args)
        except FileNotFoundError:
            raise
        except Exception:
            figures[1].inc()
            raise
        finally:
            figures[0].observe(time.perf_counter() - started)

    def get_content(self, key: str) -> bytes:
        return self._measured("get_content", self.inner.get_content, check_key(key))

    def put_content(self, key: str, data: bytes) -> None:
        self._measured("put_content", self.inner.put_content, check_key(key), data)

    def reader(self, key: str, offset: int = 0) -> BinaryIO:
        if offset < 0:
            raise ValueError(f"negative offset {offset}")
        return self._measured("reader", self.inner.reader, check_key(key), offset)

    def writer(self, key: str, append: bool) -> FileWriter:
        return self._measured("writer", self.inner.writer, check_key(key), append)

    def stat(self, key: str) -> FileInfo | None:
        try:
            return self._measured("stat", self.inner.stat, check_key(key))
        except FileNotFoundError:
            return None

    def list(self, prefix: str) -> Iterator[str]:
        """Streams the listing; its duration is the time spent inside the driver, not the caller's
        time between names."""
        duration, errors = self._figures_of("list")
        key = check_key(prefix)
        spent = 0.0
        try:
            names = self.inner.list(key)
            while True:
                started = time.perf_counter()
                try:
                    name = next(names)
                except StopIteration:
                    return
                finally:
                    spent += time.perf_counter() - started
                yield name
        except FileNotFoundError:
            return
        except Exception:
            errors.inc()
            raise
        finally:
            duration.observe(spent)

    def move(self, source: str, dest: str) -> None:
        self._measured("move", self.inner.move, check_key(source), check_key(dest))

    def delete(self, key: str) -> bool:
        try:
            return bool(self._measured("delete", self.inner.delete, check_key(key)))
        except FileNotFoundError:
            return False

    def touch(self, key: str) -> None:
        self._measured("touch", self.inner.touch, check_key(key))

    def sweep(self, older_than: float) -> int:
        return self._measured("sweep", self.inner.sweep, older_than)

    def local_path(self, key: str) -> str | None:
        return self.inner.local_path(check_key(key))

    def redirect_url(self, key: str) -> str | None:
        return self.inner.redirect_url(check_key(key))
