"""Blob uploads: skip what exists, mount across repositories, then monolithic or chunked and resumable.

Order of preference, cheapest first: a HEAD that finds the blob already there;
a cross-repository mount (no bytes move); one request for a small blob; chunked
PATCHes for a large one, where a dropped connection costs at most one chunk:
the upload asks the registry how far it got (its ``Range`` header) and continues
from there. Registries differ on the monolithic POST (Wharf answers 201,
Distribution 2.8 ignores the body and answers 202 with a session), so both are
handled and the answer is remembered per registry.
"""

from __future__ import annotations

import enum
import logging
import re
import time
from collections.abc import Callable, Sequence

import requests

from wharf_client.blobio import BlobSource, LimitedReader
from wharf_client.bodies import where
from wharf_client.errors import ProtocolError, RegistryError, TransportError
from wharf_client.registry import Repository
from wharf_client.transport import backoff_delay
from wharf_client.untrusted import header_number

log = logging.getLogger("wharf_client.upload")
_RANGE_RE = re.compile(r"^(?:bytes[ =])?([0-9]{1,19})-([0-9]{1,19})$")  # ASCII, int-sized: a registry's header
OCTET = {"Content-Type": "application/octet-stream"}
# How often one chunked upload may continue from the registry's offset, whatever the reason: a
# registry whose offset never advances (or goes back each time) ends in an error, not a loop.
MAX_RESUMES = 32


class RangeMismatch(ProtocolError):
    """After a PATCH, the registry reports an offset other than the end of the bytes just sent."""


class Outcome(enum.Enum):
    EXISTS = "exists"
    MOUNTED = "mounted"
    UPLOADED = "uploaded"


def received_bytes(range_header: str | None) -> int | None:
    """How many bytes a session holds from its ``Range: 0-<last>`` header (0-0 is read as empty)."""
    found = _RANGE_RE.match((range_header or "").strip())
    if not found:
        return None
    last = int(found.group(2))
    return 0 if last == 0 else last + 1


class Uploader:
    """Pushes one blob into one repository. ``progress`` is called with the bytes the registry has so far."""

    def __init__(self, repository: Repository, source: BlobSource, progress: Callable[[int], None] | None = None,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        self.repository = repository
        self.source = source
        self.descriptor = source.descriptor
        self.transport = repository.transport
        self.options = repository.transport.options
        self.progress = progress or (lambda _: None)
        self._sleep = sleep
        self.resumes = 0  # how many times a chunked upload continued after a failure (tests read this)

    @property
    def _uploads(self) -> str:
        return f"/v2/{self.repository.name}/blobs/uploads/"

    def run(self, mount_from: Sequence[str] = (), check_exists: bool = True) -> Outcome:
        digest = self.descriptor.digest
        if check_exists and self.repository.blob_size(digest, self.repository.push) is not None:
            self.progress(self.descriptor.size)
            return Outcome.EXISTS
        session: str | None = None
        for source_repository in mount_from:
            if source_repository == self.repository.name:
                continue
            session = self._mount(source_repository)
            if session is None:
                self.progress(self.descriptor.size)
                return Outcome.MOUNTED
        if self.descriptor.size <= self.options.monolithic_limit:
            self._monolithic(session)
        else:
            self._chunked(session)
        self.progress(self.descriptor.size)
        return Outcome.UPLOADED

    def _mount(self, source_repository: str) -> str | None:
        """None when mounted; else the session the registry opened instead (reused for the upload)."""
        scopes = [*self.repository.push, f"repository:{source_repository}:pull"]
        response = self.transport.request("POST", self._uploads, scopes=scopes, expect=(201, 202),
                                          params={"mount": self.descriptor.digest, "from": source_repository})
        response.close()
        if response.status_code == 201:
            return None
        return self._location(response)

    def _start_session(self) -> tuple[str, int]:
        response = self.transport.request("POST", self._uploads, scopes=self.repository.push, expect=(202,),
                                          headers={"Content-Length": "0"})
        response.close()
        return self._location(response), header_number(response.headers.get("OCI-Chunk-Min-Length")) or 0

    def _location(self, response: requests.Response) -> str:
        """The upload session a 202 names: its Location, which must be there and on the registry."""
        location = response.headers.get("Location")
        if not location:
            raise ProtocolError(f"{where(response)}: HTTP {response.status_code} without the Location header "
                                "of the upload session")
        return self.transport.resolve(response, location)

    def _body(self, offset: int = 0) -> Callable[[], LimitedReader]:
        size = self.descriptor.size

        def open_body() -> LimitedReader:
            return _OwningReader(self.source.open(offset), size - offset, self.progress, offset)
        return open_body

    # -- small blobs: one request --------------------------------------------------------------

    def _monolithic(self, session: str | None) -> None:
        digest = self.descriptor.digest
        headers = {**OCTET, "Content-Length": str(self.descriptor.size)}
        for attempt in range(self.options.retries + 1):
            try:
                if session is None and self.transport.monolithic_post is not False:
                    response = self.transport.request("POST", self._uploads, scopes=self.repository.push,
                                                      params={"digest": digest}, headers=headers, body=self._body(),
                                                      expect=(201, 202))
                    response.close()
                    if response.status_code == 201:
                        self.transport.monolithic_post = True
                        return
                    self.transport.monolithic_post = False  # the body was ignored; remember, and PUT it
                    session = self._location(response)
                if session is None:
                    session = self._start_session()[0]
                response = self.transport.request("PUT", session, scopes=self.repository.push,
                                                  params={"digest": digest}, headers=headers, body=self._body(),
                                                  expect=(201, 204), retries=0)
                response.close()
                return
            except (TransportError, RegistryError) as exc:
                if not _retryable(exc) or attempt >= self.options.retries:
                    raise
                log.debug("monolithic upload of %s failed (%s); starting over", digest, exc)
                session = None
                self._sleep(backoff_delay(attempt, self.options))

    # -- large blobs: chunks, resumable --------------------------------------------------------

    def _chunked(self, session: str | None) -> None:
        size = self.descriptor.size
        minimum = 0
        if session is None:
            session, minimum = self._start_session()
        chunk = max(self.options.chunk_size, minimum)
        offset = 0
        failures = 0
        stream = None
        try:
            while offset < size:
                if stream is None:
                    stream = self.source.open(offset)
                length = min(chunk, size - offset)
                try:
                    session, offset = self._patch(session, stream, offset, length)
                    failures = 0
                except (TransportError, RegistryError, RangeMismatch) as exc:
                    failures += 1
                    if not _retryable(exc) or failures > self.options.retries or self.resumes >= MAX_RESUMES:
                        raise
                    # The stream is positioned after the bytes sent; the registry decides where to go on.
                    stream.close()
                    stream = None
                    self._sleep(backoff_delay(failures - 1, self.options))
                    session, offset = self._resume_point(session)
                    self.resumes += 1
                    log.info("upload of %s resumes at byte %d of %d after: %s", self.descriptor.digest, offset,
                             size, exc)
        finally:
            if stream is not None:
                stream.close()
        self._commit(session)

    def _patch(self, session: str, stream: object, offset: int, length: int) -> tuple[str, int]:
        headers = {**OCTET, "Content-Length": str(length), "Content-Range": f"{offset}-{offset + length - 1}"}
        body = LimitedReader(stream, length, self.progress, offset)  # type: ignore[arg-type]
        used = [False]

        def once() -> LimitedReader:
            # A re-authentication resend cannot rewind the shared stream; fail into the resume path instead.
            if used[0]:
                raise TransportError("chunk must be resent from the registry's offset")
            used[0] = True
            return body
        response = self.transport.request("PATCH", session, scopes=self.repository.push, headers=headers,
                                          body=once, expect=(202, 204), retries=0)
        response.close()
        location = self.transport.resolve(response, response.headers.get("Location") or session)
        have = received_bytes(response.headers.get("Range"))
        if have is not None and have != offset + length:
            # Going on would send the next bytes labelled with an offset the registry does not hold.
            raise RangeMismatch(f"{where(response)}: the registry holds {have} bytes after receiving bytes "
                                f"{offset}-{offset + length - 1} of {self.descriptor.digest}")
        return location, offset + length

    def _resume_point(self, session: str) -> tuple[str, int]:
        """Where the registry's copy of the session ends; a new session from 0 if it lost it."""
        try:
            response = self.transport.request("GET", session, scopes=self.repository.push, expect=(204, 200))
        except RegistryError as err:
            if err.status not in (400, 404):
                raise
            log.info("upload session lost (%s); starting again from 0", err.code or err.status)
            return self._start_session()[0], 0
        response.close()
        have = received_bytes(response.headers.get("Range")) or 0
        if have > self.descriptor.size:
            raise ProtocolError(f"{where(response)}: the registry claims {have} bytes of a "
                                f"{self.descriptor.size} byte blob")
        location = self.transport.resolve(response, response.headers.get("Location") or session)
        return location, have

    def _commit(self, session: str) -> None:
        digest = self.descriptor.digest
        for attempt in range(self.options.retries + 1):
            try:
                response = self.transport.request("PUT", session, scopes=self.repository.push,
                                                  params={"digest": digest}, headers={"Content-Length": "0"},
                                                  expect=(201, 204), retries=0)
                response.close()
                return
            except (TransportError, RegistryError) as exc:
                if not _retryable(exc) or attempt >= self.options.retries:
                    raise
                # The commit may have happened before the connection dropped.
                if self.repository.blob_size(digest, self.repository.push) is not None:
                    return
                self._sleep(backoff_delay(attempt, self.options))


class _OwningReader(LimitedReader):
    """A LimitedReader that owns its stream: a monolithic body opened for one request."""

    def __init__(self, stream: object, length: int, on_read: Callable[[int], None], start: int) -> None:
        super().__init__(stream, length, on_read, start)  # type: ignore[arg-type]
        self._owned = stream

    def close(self) -> None:
        closer = getattr(self._owned, "close", None)
        if callable(closer):
            closer()
        super().close()


def _retryable(exc: Exception) -> bool:
    if isinstance(exc, TransportError | RangeMismatch):
        return True
    return isinstance(exc, RegistryError) and (exc.status in (408, 416, 429) or exc.status >= 500)


def push_blob(repository: Repository, source: BlobSource, *, mount_from: Sequence[str] = (),
              check_exists: bool = True, progress: Callable[[int], None] | None = None) -> Outcome:
    """Makes ``repository`` hold ``source``'s blob; returns how (already there, mounted, uploaded)."""
    return Uploader(repository, source, progress).run(mount_from, check_exists)
