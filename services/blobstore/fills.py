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
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator

from services.blobstore import layout
from services.blobstore.blobs import BlobService
from services.blobstore.storage.base import FileWriter, StorageDriver, UploadBusyError
from services.common import digests, metrics
from services.common.errors import BLOB_UNKNOWN, MANIFEST_UNKNOWN, UNAVAILABLE, RegistryError
from services.mirror.config import Mirrors, Upstream
from services.mirror.upstream import (
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

    def fill(self, prefix: str, repository: str, digest: str) -> tuple[int, Iterator[bytes] | None] | None:
        """(size, chunks) of a blob fetched now, (size, None) when it is stored (the caller then
        reads it the usual way), or None while another fetcher fills it: one short look, never a
        wait, so that a follower holds no storage thread (the caller waits on its event loop and
        asks again)."""
        digests.validate(digest)
        client = self._client(prefix)
        stored = self._driver.stat(layout.blob_key(digest))
        if stored is not None:
            return stored.size, None
        try:
            writer = self._driver.writer(layout.fill_data_key(digest), append=False)
        except UploadBusyError:
            return None  # a leader elsewhere
        try:
            stream = client.blob(repository, digest)
        except UpstreamError as err:
            writer.cancel()
            metrics.MIRROR_FILLS.labels(prefix, "failed").inc()
            raise upstream_error(err, digest, prefix=prefix) from None
        return stream.size or 0, self._lead(prefix, client, stream, writer, digest)

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
                self._driver.move(layout.fill_data_key(digest), layout.blob_key(digest))
            done = True
            result = "stored"
            log.info("filled", extra={"fields": {"digest": digest, "upstream": client.host, "size": writer.size}})
        except UpstreamError as err:
            raise upstream_error(err, digest, prefix=prefix) from None
        finally:
            metrics.MIRROR_FILLS.labels(prefix, result).inc()
            if not done:
                writer.cancel()
            writer.close()
            self._driver.delete(layout.fill_dir(digest))
        if held:
            yield held


def _connect(upstream: Upstream) -> UpstreamClient:
    return UpstreamClient(upstream.url, upstream.username or "", upstream.password or "", upstream.insecure)
