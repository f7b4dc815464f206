"""The export file: what `wharf-admin export` writes and `wharf-admin import` reads.

JSON lines (UTF-8, one JSON object per line; gzip-compressed when the file name ends in ``.gz``).
docs/backup.md documents the format; in short::

    {"format": "wharf-metadata", "version": 1, "wharf_version": "...", "created": "<UTC ISO 8601>"}
    {"type": "repository", "name": N}
    {"type": "blob", "repository": N, "digest": D, "size": S}
    {"type": "manifest", "repository": N, "digest": D, "media_type": T, "subject": D or "",
     "tags": [...], "content": "<base64 of the exact bytes>"}
    ...
    {"type": "end", "repositories": n, "blobs": n, "manifests": n, "tags": n}

A repository's records follow its ``repository`` record: its blob links, then its manifests,
each after every manifest it references (image manifests, then indexes, children first). The
``end`` record makes a truncated file detectable. A reader accepts any version up to
``VERSION`` and refuses a newer one. Within a version, readers ignore fields they do not know,
so a field can be added without a new version; a new record type, or a changed meaning, bumps
``VERSION`` (readers refuse a record type they do not know).
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import datetime
import fcntl
import gzip
import io
import json
import os
import pathlib
import stat
import zlib
from collections.abc import Iterator
from typing import IO, Any, Protocol

from services.common import digests
from services.common.errors import RegistryError
from services.common.names import validate_name, validate_tag

FORMAT = "wharf-metadata"
VERSION = 1
# The longest line a reader takes: a manifest (16 MiB at most, 4/3 of that in base64) with its
# tags fits many times over.
MAX_LINE = 64 * 1024 * 1024
# Blob sizes are int64 on the wire (the metadata service's LinkBlob).
MAX_BLOB_SIZE = 2**63 - 1


class FormatError(ValueError):
    """The file is not an export this Wharf can read; the message names the line."""


def wharf_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("wharf")
    except PackageNotFoundError:
        return "unknown"


def header() -> dict[str, Any]:
    return {"format": FORMAT, "version": VERSION, "wharf_version": wharf_version(),
            "created": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")}


def repository(name: str) -> dict[str, Any]:
    return {"type": "repository", "name": name}


def blob(name: str, digest: str, size: int) -> dict[str, Any]:
    return {"type": "blob", "repository": name, "digest": digest, "size": size}


def manifest(name: str, digest: str, media_type: str, subject: str, tags: list[str], content: bytes) -> dict[str, Any]:
    return {"type": "manifest", "repository": name, "digest": digest, "media_type": media_type, "subject": subject,
            "tags": tags, "content": base64.b64encode(content).decode()}


def end(counts: dict[str, int]) -> dict[str, Any]:
    return {"type": "end", **counts}


def _create_private(path: pathlib.Path) -> IO[bytes]:
    """Opens ``path`` to write, readable by its owner only: the file holds every private
    repository's manifests and names. What is at ``path`` already must be a regular file of ours
    with no other name (a previous run's leftover): a symlink or a hard link planted there (in a
    shared directory such as /tmp) would otherwise have the export overwrite its target."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_nlink != 1 or st.st_uid != os.geteuid():
            raise FormatError(f"{path} exists and is not a file of this user's own: remove it first")
        # Two exports to one file (a cron run and a manual one) shared the partial file: the second
        # emptied it under the first, whose file then had a hole of zeros where its start was.
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise FormatError(f"another export is writing {path}") from None
        try:
            again = os.lstat(path)
        except FileNotFoundError:
            again = None
        if again is None or (again.st_dev, again.st_ino) != (st.st_dev, st.st_ino):
            raise FormatError(f"another export finished {path} meanwhile: run again")
        os.fchmod(fd, 0o600)  # a leftover may have been made with other modes
        os.ftruncate(fd, 0)
        return open(fd, "wb", closefd=True)  # the Writer closes it
    except BaseException:
        os.close(fd)
        raise


class Writer:
    """Writes to ``<file>.partial`` and renames it into place on :meth:`commit`: a file at the
    final name is always whole. Both are readable by their owner only (mode 0600)."""

    def __init__(self, path: pathlib.Path) -> None:
        self.path = path
        self._partial = path.with_name(path.name + ".partial")
        try:
            self._raw = _create_private(self._partial)
        except OSError as exc:  # ELOOP: a symlink at the partial name
            raise FormatError(f"cannot write {self._partial}: {exc.strerror}") from None
        self._gzip = gzip.GzipFile(filename=path.name, mode="wb", fileobj=self._raw) \
            if path.name.endswith(".gz") else None
        self._file = io.TextIOWrapper(self._gzip or self._raw, encoding="utf-8")
        self.write(header())

    def write(self, record: dict[str, Any]) -> None:
        self._file.write(json.dumps(record, separators=(",", ":")) + "\n")

    def _close(self) -> None:
        self._file.close()  # (and the GzipFile under it, which writes its last block on close)
        self._raw.close()  # (a GzipFile leaves the file it was given open)

    def commit(self) -> None:
        self._file.flush()
        if self._gzip is not None:
            self._gzip.close()
        self._raw.flush()
        os.fsync(self._raw.fileno())  # on disk before it has the final name
        self._close()
        self._partial.replace(self.path)

    def abort(self) -> None:
        self._close()
        self._partial.unlink(missing_ok=True)


@dataclasses.dataclass(frozen=True)
class Record:
    line: int
    type: str
    repository: str
    digest: str = ""
    size: int = 0
    media_type: str = ""
    subject: str = ""
    tags: tuple[str, ...] = ()
    content: bytes = b""
    counts: dict[str, int] = dataclasses.field(default_factory=dict)


def read(path: pathlib.Path) -> Iterator[Record]:
    """The file's records after its header, each checked; raises FormatError on the first bad line
    (a line longer than MAX_LINE included: a gzip bomb of one endless line is refused, not read
    into memory)."""
    opened = gzip.open(path, "rb") if path.name.endswith(".gz") else open(path, "rb")  # noqa: SIM115
    with opened as file:
        lines = _lines(path, file)
        first = next(lines, (1, ""))[1]
        try:
            head = json.loads(first)
        except (ValueError, RecursionError):
            raise FormatError(f"{path}: line 1 is not JSON: not a Wharf export") from None
        if not isinstance(head, dict) or head.get("format") != FORMAT:
            raise FormatError(f"{path}: not a Wharf export (line 1 has no \"format\": \"{FORMAT}\")")
        version = head.get("version")
        if not isinstance(version, int) or version < 1:
            raise FormatError(f"{path}: line 1: bad version {version!r}")
        if version > VERSION:
            raise FormatError(f"{path}: format version {version} (written by Wharf {head.get('wharf_version')}); "
                              f"this Wharf reads up to version {VERSION}: import with a newer wharf-admin")
        for number, text in lines:
            try:
                yield _record(number, json.loads(text))
            except (ValueError, TypeError, KeyError, RegistryError, RecursionError) as exc:
                raise FormatError(f"{path}: line {number}: {_why(exc)}") from None


class _Readable(Protocol):
    def readline(self, size: int = -1, /) -> bytes: ...


def _lines(path: pathlib.Path, file: _Readable) -> Iterator[tuple[int, str]]:
    """(line number, text), each at most MAX_LINE bytes of UTF-8; a line that is not UTF-8, or a
    gzip stream cut short or damaged, is a FormatError naming the line."""
    number = 0
    while True:
        number += 1
        try:
            raw = file.readline(MAX_LINE + 1)
        except (EOFError, zlib.error, gzip.BadGzipFile) as exc:
            raise FormatError(f"{path}: line {number} cannot be read ({type(exc).__name__}: {str(exc)[:100]}): "
                              "the file is damaged or cut short") from None
        if not raw:
            return
        if len(raw) > MAX_LINE:
            raise FormatError(f"{path}: line {number} is longer than {MAX_LINE} bytes: not a Wharf export")
        try:
            yield number, raw.decode("utf-8")
        except UnicodeDecodeError:
            raise FormatError(f"{path}: line {number} is not UTF-8") from None


def _why(exc: Exception) -> str:
    if isinstance(exc, RegistryError):
        return exc.message
    if isinstance(exc, KeyError):
        return f"missing field {exc.args[0]!r}"
    return str(exc)[:200]


def _str(value: Any, field: str) -> str:
    if not isinstance(value, str):
        raise ValueError(f"{field} must be a string")
    return value


def _record(line: int, data: Any) -> Record:
    if not isinstance(data, dict):
        raise ValueError("a record must be a JSON object")
    kind = data["type"]
    if kind == "repository":
        return Record(line, kind, validate_name(_str(data["name"], "name")))
    if kind == "end":
        counts = {k: v for k, v in data.items() if k != "type"}
        if not all(isinstance(v, int) for v in counts.values()):
            raise ValueError("the end record's counts must be integers")
        return Record(line, kind, "", counts=counts)
    name = validate_name(_str(data["repository"], "repository"))
    digest = digests.validate(_str(data["digest"], "digest"))
    if kind == "blob":
        size = data["size"]
        if not isinstance(size, int) or isinstance(size, bool) or not 0 <= size <= MAX_BLOB_SIZE:
            raise ValueError("size must be an integer from 0 to 2^63-1")
        return Record(line, kind, name, digest, size=size)
    if kind == "manifest":
        try:
            content = base64.b64decode(_str(data["content"], "content"), validate=True)
        except binascii.Error:
            raise ValueError("content is not base64") from None
        if digests.of(content, digest.partition(":")[0]) != digest:
            raise ValueError(f"the content does not hash to {digest}")
        subject = _str(data.get("subject") or "", "subject")
        if subject:
            digests.validate(subject)
        tags = data.get("tags") or []
        if not isinstance(tags, list):
            raise ValueError("tags must be a list")
        return Record(line, kind, name, digest, media_type=_str(data["media_type"], "media_type"), subject=subject,
                      tags=tuple(validate_tag(_str(t, "tag")) for t in tags), content=content)
    raise ValueError(f"unknown record type {kind!r}")
