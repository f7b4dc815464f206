"""Filling a mirror: blobs and manifests fetched from an upstream registry, once.

The blob store owns the upstream connections (one :class:`UpstreamClient` per configured
upstream, services/mirror) because it is where every gateway worker of every gateway meets: a
blob missing from storage is fetched from its upstream **once**, whichever replica, process or
worker is asked.

- The first asker becomes the *leader*: it opens the storage writer of the fill's session
  ``fills/<algorithm>/<hex>/data``, exclusive across processes and replicas (flock on a
  filesystem, conditional writes on S3: the storage driver's one-writer contract), streams the
  upstream's bytes into it while handing them to its caller, and moves the object into place
  only once its digest verifies. The last chunk is held back until then, so a caller never
  receives the whole of wrong bytes: on a mismatch the stream ends with an error instead.
- Everyone else is a *follower*: it waits for the blob to be committed (a half-written S3
  multipart object cannot be read back, so followers read the committed blob, on any backend)
  and is then told it is stored, so that the gateway serves it the usual way (sendfile or a
  redirect); if the leader failed, the next asker leads a new attempt.
- Leading is decided by the claim, not by the look before it: an asker that finds no blob and
  then gets the writer looks for the blob again before fetching, because a leader may have stored
  it and let go in between (a thread preempted there on a busy machine fetched it a second time).
  The writer is opened to append, never to replace, and let go untouched when what it locked is
  no longer at the fill's key (on a filesystem: the very file a leader just moved into place).
"""

from __future__ import annotations

import collections
import contextlib
import contextvars
import logging
import threading
from collections.abc import Iterator

from services.blobstore import layout
from services.blobstore.blobs import BlobService
from services.blobstore.storage.base import FileInfo, FileWriter, StorageDriver, UploadBusyError
from services.common import digests, metrics
from services.common.errors import BLOB_UNKNOWN, MANIFEST_UNKNOWN, UNAVAILABLE, RegistryError
from services.mirror.config import Mirrors, Upstream
from services.mirror.upstream import (
    CHUNK_SIZE,
    BlobStream,
    ManifestAnswer,
    UpstreamClient,
    UpstreamDenied,
    UpstreamError,
    UpstreamInvalid,
    UpstreamNotFound,
    UpstreamUnavailable,
)

log = logging.getLogger("wharf.blobstore.fills")

# How long a follower waits for a leader's fill (a big layer over a slow link takes a while); the
# leader's writer lease is renewed while it writes, so a dead leader is noticed sooner.
FOLLOW_TIMEOUT = 1800.0
POLL = 0.1
# (upstream, digest) pairs this process filled lately, for the followers of those fills.
_VERIFIED_MAX = 4096
# A fill's first caller must not set its pace for everyone: streamed at that caller's pace, a client
# reading ~20 KB/s held every other pull of the blob waiting (up to FOLLOW_TIMEOUT, then 503), and
# one that stopped reading held them until the gateway gave up on it (60 s) and the fill started
# over. A copier thread stores the blob, handing each chunk to the caller and reading the next once
# it is taken; a caller that leaves one untaken for LAG seconds (or goes away), or whose blob
# another asker waits for (``Fills._hurry``), is left behind: the copier goes on at the upstream's
# pace, hands over at most AHEAD_BYTES more, and the caller takes the rest from the stored blob
# once the fill is done. At most COPIERS fills of a process have a
# copier (each waits on an upstream, which may trickle); past that they go at their caller's pace.
LAG = 10.0
AHEAD_BYTES = 4 * 1024 * 1024
COPIERS = 16


_KINDS = ((UpstreamNotFound, "not_found"), (UpstreamUnavailable, "unavailable"), (UpstreamDenied, "denied"),
          (UpstreamInvalid, "invalid"))


def upstream_error(err: UpstreamError, digest_or_reference: str, manifest: bool = False,
                   prefix: str = "") -> RegistryError:
    """What the gateway shows: 404 for content the upstream does not have, 503 (with Retry-After)
    when it cannot be reached, 502 for a wrong answer, all naming the upstream. Counted."""
    if prefix:
        kind = next((name for cls, name in _KINDS if isinstance(err, cls)), "invalid")
        metrics.MIRROR_UPSTREAM_ERRORS.labels(prefix, kind).inc()
    if isinstance(err, UpstreamNotFound):
        return RegistryError(MANIFEST_UNKNOWN if manifest else BLOB_UNKNOWN,
                             f"{digest_or_reference} not found upstream ({err.host})")
    if isinstance(err, UpstreamUnavailable):
        retry = int(err.retry_after) if err.retry_after else 30
        return RegistryError(UNAVAILABLE, str(err), detail={"upstream": err.host, "retry_after": retry})
    if isinstance(err, UpstreamDenied):
        return RegistryError(UNAVAILABLE, f"{err} (check the mirror's credentials)", detail={"upstream": err.host},
                             http_status=502)
    return RegistryError(UNAVAILABLE, str(err), detail={"upstream": err.host}, http_status=502)


class Fills:
    def __init__(self, blobs: BlobService, driver: StorageDriver, mirrors: Mirrors) -> None:
        self._blobs = blobs
        self._driver = driver
        self._upstreams = {u.prefix: u for u in mirrors.upstreams}
        self._clients: dict[str, UpstreamClient] = {}
        self._lock = threading.Lock()
        self._verified: collections.OrderedDict[tuple[str, str], None] = collections.OrderedDict()
        self._copiers = threading.BoundedSemaphore(COPIERS)
        # Digest -> the copier's hand-over of a fill of this process in progress (see _hurry).
        self._filling: dict[str, _Ahead] = {}

    def _client(self, prefix: str) -> UpstreamClient:
        upstream = self._upstreams.get(prefix)
        if upstream is None:
            raise RegistryError(BLOB_UNKNOWN, f"no upstream {prefix[:100]!r} is configured")
        with self._lock:
            client = self._clients.get(prefix)
            if client is None:
                client = self._clients[prefix] = _connect(upstream)
            return client

    def manifest(self, prefix: str, repository: str, reference: str, head: bool) -> ManifestAnswer:
        client = self._client(prefix)
        try:
            return client.manifest(repository, reference, head=head)
        except UpstreamError as err:
            raise upstream_error(err, reference, manifest=True, prefix=prefix) from None

    def referrers(self, prefix: str, repository: str, digest: str, artifact_type: str) -> bytes:
        client = self._client(prefix)
        try:
            return client.referrers(repository, digest, artifact_type) or b""
        except UpstreamError as err:
            raise upstream_error(err, digest, manifest=True, prefix=prefix) from None

    def fill(self, prefix: str, repository: str, digest: str,
             verify: bool = False) -> tuple[int, Iterator[bytes] | None] | None:
        """(size, chunks) of a blob fetched now, (size, None) when it is stored (the caller then
        reads it the usual way), or None while another fetcher fills it: one short look, never a
        wait, so that a follower holds no storage thread (the caller waits on its event loop and
        asks again).

        With ``verify``, a stored blob counts only once this upstream delivered it (this process
        filled it from there lately): the caller has no other proof that the upstream has it, and
        a digest is no proof of access. Without it, a mirror linked any blob stored anywhere in
        the registry (a private one's, by its digest) into the mirrored repository."""
        digests.validate(digest)
        client = self._client(prefix)
        stored = self._serving(self._driver.stat(layout.blob_key(digest)), prefix, digest, verify)
        if stored is not None:
            return stored.size, None
        writer = self._claim(digest)
        if writer is None:
            self._hurry(digest)
            return None  # a leader elsewhere, or one that has just finished: asked again shortly
        try:
            # Looked at again now that the fill is ours: a leader may have stored the blob and let
            # go between the look above and the claim (a thread preempted on a busy machine). A
            # blob stored but not shown to come from this upstream is fetched and checked.
            stored = self._serving(self._driver.stat(layout.blob_key(digest)), prefix, digest, verify)
            stream = None if stored is not None or writer.size else client.blob(repository, digest)
        except UpstreamError as err:
            self._drop(writer, digest)
            metrics.MIRROR_FILLS.labels(prefix, "failed").inc()
            raise upstream_error(err, digest, prefix=prefix) from None
        except BaseException:
            self._drop(writer, digest)
            raise
        if stream is None:
            self._drop(writer, digest)  # nothing half-done left behind, nor what a dead leader wrote
            return (stored.size, None) if stored is not None else None  # None: the next ask leads
        lead = self._lead(prefix, client, stream, writer, digest)
        if not self._copiers.acquire(blocking=False):
            return stream.size or 0, lead  # every copier busy: at the caller's pace
        return stream.size or 0, self._apart(lead, digest)

    def _apart(self, lead: Iterator[bytes], digest: str) -> Iterator[bytes]:
        """``lead`` run to its end by a copier thread of its own (holding one of ``_copiers``),
        whatever the caller's pace; the caller gets what the copier hands over, then (had it fallen
        behind) the rest from the stored blob, verified like the rest. A caller that goes away
        leaves the fill running for the blob's next askers."""
        ahead = _Ahead(AHEAD_BYTES)
        with self._lock:
            self._filling[digest] = ahead

        def copy() -> None:
            error: BaseException | None = None
            try:
                for chunk in lead:
                    ahead.offer(chunk)
                    ahead.wait_taken(LAG)
            except BaseException as exc:  # handed to the caller, raised there
                error = exc
            finally:
                with self._lock:
                    if self._filling.get(digest) is ahead:
                        del self._filling[digest]
                self._copiers.release()
                ahead.end(error)

        context = contextvars.copy_context()
        try:
            threading.Thread(target=context.run, args=(copy,), name=f"fill-{digest[7:19]}", daemon=True).start()
        except RuntimeError:  # no thread to be had: at the caller's pace
            self._copiers.release()
            return lead
        return self._follow(ahead, digest)

    def _hurry(self, digest: str) -> None:
        """Another asker waits for this process's fill of ``digest``: its copier stops keeping to
        the first caller's pace. A caller reading at 256 KiB/s took each chunk within ``LAG``, so the
        fill of a 16 MiB layer took 64 s, and 100 clients of a scale-up pulling it through the mirror
        all waited for it (90 s in all where 64 s is each client's own pace): now the fill goes at
        the upstream's pace as soon as anyone else wants the blob, and the first caller gets what
        the buffer holds, then the rest from the stored blob."""
        with self._lock:
            ahead = self._filling.get(digest)
        if ahead is not None:
            ahead.hurry()

    def _follow(self, ahead: _Ahead, digest: str) -> Iterator[bytes]:
        sent = 0
        try:
            while (chunk := ahead.take()) is not None:
                sent += len(chunk)
                yield chunk
            if ahead.error is not None:
                raise ahead.error
            if sent < ahead.offered:  # fell behind: the rest is stored (the fill ended well)
                yield from self._blobs.read(digest, sent, ahead.offered - sent, CHUNK_SIZE)
        finally:
            ahead.abandon()  # what the copier still hands over is dropped, not held

    def _serving(self, stored: FileInfo | None, prefix: str, digest: str, verify: bool) -> FileInfo | None:
        """The stored blob when it answers the fill: it is there and, with ``verify``, this
        upstream delivered it lately; else None."""
        if stored is None or not verify:
            return stored
        with self._lock:
            return stored if (prefix, digest) in self._verified else None

    def _note_delivered(self, prefix: str, digest: str) -> None:
        """Remembers that ``prefix`` delivered ``digest`` verified: the followers of a fill, asking
        with ``verify``, take the stored blob instead of fetching it again (bounded, oldest out)."""
        with self._lock:
            self._verified[(prefix, digest)] = None
            self._verified.move_to_end((prefix, digest))
            while len(self._verified) > _VERIFIED_MAX:
                self._verified.popitem(last=False)

    def _claim(self, digest: str) -> FileWriter | None:
        """The fill's writer, held; None when another fetcher holds it or it changed under the claim.

        Opened to append, never to replace: on a filesystem the open finds the file at the fill's
        key and locks it a moment later, and in between a leader may have moved that very file to
        the blob's key and let go of it; replacing would empty the stored blob. A writer that ends
        up holding a file no longer at the fill's key is let go untouched."""
        try:
            writer = self._driver.writer(layout.fill_data_key(digest), append=True)
        except UploadBusyError:
            return None
        except FileNotFoundError:
            return None  # the fill's directory was removed during the open: a fetcher finished
        if not writer.still_at_key():
            self._let_go(writer)  # nothing written: what it holds stays as it is
            return None
        return writer

    def _drop(self, writer: FileWriter, digest: str) -> None:
        """Lets go of a claimed writer that wrote nothing. The fill's directory goes while the writer
        still holds it (so only this writer's object is there, and nothing a dead leader left in
        the directory stays), and only then does the writer close."""
        try:
            if writer.still_at_key():
                self._driver.delete(layout.fill_dir(digest))
        finally:
            self._let_go(writer)

    @staticmethod
    def _let_go(writer: FileWriter) -> None:
        """Closes a writer whose object is thrown away: on S3 its session may be gone already
        (UploadBusyError), on a filesystem what it flushes goes to a file no longer at the key."""
        with contextlib.suppress(UploadBusyError, OSError):
            writer.close()

    def _lead(self, prefix: str, client: UpstreamClient, stream: BlobStream, writer: FileWriter,
              digest: str) -> Iterator[bytes]:
        hasher = digests.hasher(digests.parse(digest)[0])
        held = b""
        done = False
        received = metrics.MIRROR_UPSTREAM_BYTES.labels(prefix)
        result = "failed"
        try:
            with stream:
                for chunk in stream:
                    writer.write(chunk)
                    hasher.update(chunk)
                    received.inc(len(chunk))
                    if held:
                        yield held
                    held = chunk
            actual = f"{digests.parse(digest)[0]}:{hasher.hexdigest()}"
            if actual != digest:
                result = "mismatch"
                raise upstream_error(UpstreamInvalid(client.host, f"sent {actual} for {digest}"), digest,
                                     prefix=prefix)
            writer.commit()
            if self._driver.stat(layout.blob_key(digest)) is None:
                if not writer.still_at_key():
                    # What was verified is no longer the object at the fill's key (a cleanup took it
                    # away, another asker leads now): moving the key would store someone else's bytes.
                    raise RegistryError(UNAVAILABLE, f"the fill of {digest} from {client.host} lost its claim; "
                                                     "try again", detail={"retry_after": 1})
                self._driver.move(layout.fill_data_key(digest), layout.blob_key(digest))
            done = True
            result = "stored"
            self._note_delivered(prefix, digest)
            log.info("filled", extra={"fields": {"digest": digest, "upstream": client.host, "size": writer.size}})
        except UpstreamError as err:
            raise upstream_error(err, digest, prefix=prefix) from None
        finally:
            metrics.MIRROR_FILLS.labels(prefix, result).inc()
            if done:
                try:
                    self._driver.delete(layout.fill_dir(digest))  # what the move left, while still held
                finally:
                    writer.close()
            else:
                # Not followed by deleting the fill's directory: the writer has let go by then, and
                # the next asker's fill may already be there (nor cancelled once it lost the key).
                if writer.still_at_key():
                    writer.cancel()
                self._let_go(writer)
        if held:
            yield held


class _Ahead:
    """What a fill's copier has handed over and its caller not taken yet: at most ``limit`` bytes.
    A chunk that does not fit is not kept (the caller is then ``behind`` for good and reads the
    rest from the stored blob); ``offered`` counts every byte the copier handed over. The copier
    keeps to the caller's pace (``wait_taken``) until the caller is ``late``."""

    def __init__(self, limit: int) -> None:
        self._limit = limit
        self._changed = threading.Condition()
        self._chunks: collections.deque[bytes] = collections.deque()
        self._held = 0
        self.offered = 0
        self.behind = False
        self.ended = False
        self.abandoned = False
        self.late = False
        self.error: BaseException | None = None

    def offer(self, chunk: bytes) -> None:
        with self._changed:
            self.offered += len(chunk)
            if self.behind or self.abandoned or self._held + len(chunk) > self._limit:
                self.behind = True
                return
            self._chunks.append(chunk)
            self._held += len(chunk)
            self._changed.notify_all()

    def wait_taken(self, lag: float) -> None:
        """Returns once the caller took every chunk handed over, or at once for good after it left
        one untaken for ``lag`` seconds or went away."""
        with self._changed:
            if not self.late and not self._changed.wait_for(
                    lambda: not self._chunks or self.abandoned or self.late, lag):
                self.late = True

    def hurry(self) -> None:
        """Late for good from now on: others wait for the fill (the copier waiting now goes on)."""
        with self._changed:
            self.late = True
            self._changed.notify_all()

    def end(self, error: BaseException | None) -> None:
        with self._changed:
            self.ended, self.error = True, error
            self._changed.notify_all()

    def take(self) -> bytes | None:
        """The next chunk handed over (waiting for it); None once nothing more will be."""
        with self._changed:
            while not self._chunks and not self.ended:
                self._changed.wait()
            if not self._chunks:
                return None
            chunk = self._chunks.popleft()
            self._held -= len(chunk)
            self._changed.notify_all()
            return chunk

    def abandon(self) -> None:
        with self._changed:
            self.abandoned = True
            self._chunks.clear()
            self._held = 0
            self._changed.notify_all()


def _connect(upstream: Upstream) -> UpstreamClient:
    return UpstreamClient(upstream.url, upstream.username or "", upstream.password or "", upstream.insecure)
