"""Pull-through for repositories under a configured upstream's prefix (services/mirror/config.py).

The gateway decides *when* to ask the upstream; the blob store does the asking (it owns the
upstream connections and fetches each blob once: services/blobstore/fills.py), and the metadata
service keeps what was fetched like any pushed content (manifests stored with their references
counted but not required: their blobs are filled when first pulled, and garbage collection
keeps the links a stored manifest names).

- **By digest**, content never changes: what is stored is served with no upstream request.
- **By tag**, the stored answer is trusted for the upstream's ``tag_ttl``; after it, a HEAD to the
  upstream revalidates it (HEADs do not spend Docker Hub's pull limit), and a changed digest is
  fetched and stored under the tag.
- **Upstream down** (unreachable, timing out, 5xx, 429): what is stored is served, with a
  ``Warning: 110`` header saying it may be stale; only what was never stored fails (503/502,
  naming the upstream).
- **Pushes** to a mirrored prefix are refused (DENIED); deletes are allowed like anywhere.
"""

from __future__ import annotations

import collections
import contextlib
import json
import logging
import threading
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from services.api.batching import Batcher
from services.api.read_cache import Manifest
from services.common import digests, metrics
from services.common.errors import DENIED, MANIFEST_INVALID, MANIFEST_UNKNOWN, UNAVAILABLE, RegistryError
from services.common.names import is_valid_name
from services.gen.wharf.metadata.v1 import metadata_pb2 as mpb
from services.mirror.config import Mirrors, Upstream

if TYPE_CHECKING:
    from services.api.clients import Clients, MetadataClient

log = logging.getLogger("wharf.gateway.mirror")
# Tags whose upstream answer this process checked recently: (repository, tag) -> when.
_VALIDATED_MAX = 100_000
# Pulls kept between flushes (beyond it, a pull is not recorded until the next flush), and how
# often they are sent.
_PULLS_MAX = 50_000
_FLUSH_EVERY = 5.0


class Mirror:
    def __init__(self, mirrors: Mirrors, clients: Clients) -> None:
        self._mirrors = mirrors
        self._clients = clients
        self._validated: collections.OrderedDict[tuple[str, str], float] = collections.OrderedDict()
        self._lock = threading.Lock()
        # Pulls of mirrored manifests not yet sent: (prefix, repository, digest) -> when (ms).
        self._pulls: Batcher[tuple[str, str, str], int] = Batcher("mirror-pulls", self._record_pulls,
                                                                  _FLUSH_EVERY, _PULLS_MAX)

    # -- pull times (for eviction), batched off the request's path --------------------------

    def note_pull(self, name: str, digest: str) -> None:
        """Remembers that a mirrored manifest was pulled; a background flush sends these to the
        metadata service every few seconds (never a call on the request's path)."""
        found = self.route(name)
        if found is not None:
            self._pulls.add((found[0].prefix, name, digest), int(time.time() * 1000))

    def flush(self) -> None:
        self._pulls.flush()

    def _record_pulls(self, batch: dict[tuple[str, str, str], int]) -> None:
        self._clients.metadata.record_pulls([mpb.Pull(upstream=prefix, repository=name, digest=digest, at_ms=at)
                                             for (prefix, name, digest), at in batch.items()])

    @property
    def enabled(self) -> bool:
        return self._mirrors.enabled

    def route(self, name: str) -> tuple[Upstream, str] | None:
        return self._mirrors.route(name) if self._mirrors.enabled else None

    def default_alias(self, name: str) -> tuple[str, Upstream, str] | None:
        """For a name under no prefix that is not stored here (the caller found nothing), the
        default upstream's: (the name it is kept under here, ``<prefix>/<remote>``, the upstream,
        the remote name). Docker's ``registry-mirrors`` sends such names (``library/alpine``)."""
        if not self._mirrors.enabled or self.route(name) is not None:
            return None
        found = self._mirrors.route_default(name)
        if found is None:
            return None
        kept = f"{found[0].prefix}/{found[1]}"
        return (kept, *found) if is_valid_name(kept) else None

    def read_route(self, name: str) -> tuple[str, Upstream, str] | None:
        """Where a read of ``name`` that found nothing stored goes: (the name kept here, the
        upstream, the remote name) for a mirrored prefix or the default upstream; None otherwise."""
        found = self.route(name)
        return (name, *found) if found is not None else self.default_alias(name)

    def refuse_push(self, name: str) -> None:
        found = self.route(name)
        if found is not None:
            raise RegistryError(DENIED, f"{name} mirrors {found[0].url}: pushes to a mirrored repository are refused")

    def is_fresh_tag(self, name: str, reference: str) -> bool:
        """False for a tag of a mirrored repository that must be revalidated now (the hot-read path
        then leaves the request to the view)."""
        found = self.route(name)
        if found is None or digests.looks_like_digest(reference):
            return True
        with self._lock:
            checked = self._validated.get((name, reference))
        return checked is not None and time.monotonic() - checked < found[0].tag_ttl

    def _mark(self, name: str, tag: str) -> None:
        with self._lock:
            self._validated[(name, tag)] = time.monotonic()
            self._validated.move_to_end((name, tag))
            while len(self._validated) > _VALIDATED_MAX:
                self._validated.popitem(last=False)

    # -- manifests ---------------------------------------------------------------------------

    def manifest(self, name: str, reference: str, upstream: Upstream, remote: str) -> tuple[Manifest, str]:
        """(manifest, Warning header or "") for a mirrored repository."""
        manifest, warning, answer = self._manifest(name, reference, upstream, remote)
        metrics.MIRROR_READS.labels(upstream.prefix, "manifest", answer).inc()
        self.note_pull(name, manifest.digest)
        return manifest, warning

    def _stored(self, name: str, reference: str) -> Manifest | None:
        """What is stored here under the reference; None when nothing is."""
        try:
            return self._clients.cache.get(name, reference)
        except RegistryError as err:
            if err.error is not MANIFEST_UNKNOWN:
                raise
            return None

    def _manifest(self, name: str, reference: str, upstream: Upstream,
                  remote: str) -> tuple[Manifest, str, str]:
        if digests.looks_like_digest(reference):
            stored = self._stored(name, reference)
            if stored is not None:
                return stored, "", "stored"
            return self._fetch(name, reference, upstream, remote, tags=[]), "", "fetched"
        if self.is_fresh_tag(name, reference) and (stored := self._stored(name, reference)) is not None:
            return stored, "", "stored"
        try:
            head = self._clients.blobs.fetch_manifest(upstream.prefix, remote, reference, head=True)
        except RegistryError as err:
            if err.error is not UNAVAILABLE:
                raise
            try:
                stale = self._stored(name, reference)
            except RegistryError:
                stale = None
            if stale is None:
                raise err from None
            log.warning("serving a mirrored tag the upstream could not confirm",
                        extra={"fields": {"repository": name, "tag": reference, "error": err.message[:200]}})
            return stale, f'110 - "stale: {err.message[:150]}"', "stale"
        stored = self._stored(name, reference)
        if stored is not None and stored.digest == head.digest:
            self._mark(name, reference)
            return stored, "", "revalidated"
        manifest = self._fetch(name, head.digest, upstream, remote, tags=[reference])
        self._mark(name, reference)
        return manifest, "", "fetched"

    def _fetch(self, name: str, digest: str, upstream: Upstream, remote: str, tags: list[str]) -> Manifest:
        from services.api.views.manifests import mirrored_put_request

        fetched = self._clients.blobs.fetch_manifest(upstream.prefix, remote, digest, head=False)
        if fetched.digest != digest:
            raise RegistryError(UNAVAILABLE, f"upstream {upstream.url} answered {fetched.digest} for {digest}",
                                http_status=502)
        try:
            request = mirrored_put_request(name, fetched.digest, fetched.content, fetched.media_type, tags)
            self._clients.metadata.put_manifest(request)
        except RegistryError as err:
            if err.error is not MANIFEST_INVALID:
                raise
            # The upstream's fault, not the puller's: a 400 MANIFEST_INVALID (a push's error) told
            # a client its pull was malformed. A wrong answer from the upstream is 502.
            host = upstream.url.split("://", 1)[-1]
            raise RegistryError(UNAVAILABLE, f"upstream {host} sent an invalid manifest for {digest}: "
                                             f"{err.message[:200]}", detail={"upstream": host},
                                http_status=502) from None
        return Manifest(fetched.digest, request.media_type, fetched.content, request.subject)

    def referrers(self, digest: str, artifact_type: str, upstream: Upstream,
                  remote: str) -> tuple[list[dict[str, Any]], str]:
        """The upstream's referrers of a manifest as descriptors (only well-formed ones: the index
        comes from another registry), and a Warning header when the upstream could not be asked
        (the caller then lists what is stored here)."""
        try:
            raw = self._clients.blobs.fetch_referrers(upstream.prefix, remote, digest, artifact_type)
        except RegistryError as err:
            if err.error is not UNAVAILABLE:
                raise
            metrics.MIRROR_READS.labels(upstream.prefix, "referrers", "stale").inc()
            return [], f'110 - "stale: {err.message[:150]}"'
        try:
            index = json.loads(raw) if raw else {}
        except ValueError:
            index = {}
        found = []
        for entry in (index.get("manifests") if isinstance(index, dict) else None) or []:
            if isinstance(entry, dict) and isinstance(entry.get("mediaType"), str) \
                    and isinstance(entry.get("digest"), str) and digests.looks_like_digest(entry["digest"]) \
                    and isinstance(entry.get("size"), int) and entry["size"] >= 0:
                found.append({k: entry[k] for k in ("mediaType", "digest", "size", "artifactType", "annotations")
                              if k in entry and (k != "annotations" or isinstance(entry[k], dict))})
        return found, ""

    # -- blobs -------------------------------------------------------------------------------

    def fill(self, name: str, digest: str, upstream: Upstream, remote: str) -> tuple[int, Iterator[bytes]] | None:
        """(size or 0, chunks) of a blob the repository does not link yet, streamed from the blob
        store's fill and linked once the whole of it arrived verified, before its last chunk is
        sent; None when the blob store has it stored (then it is linked at once and served the
        usual way). The pin holds the blob against garbage collection from before the fill stores
        it until the link. Iterate the chunks within the request's context
        (flask.stream_with_context): the link is a call."""
        metadata = self._clients.metadata
        verify = not self._delivered_before(upstream, digest)
        pin = metadata.pin_blob(digest)
        try:
            total, stored, first, rest, cancel = self._clients.blobs.fill(upstream.prefix, remote, digest, verify)
        except BaseException:
            _unpin(metadata, digest, pin)
            raise
        if stored:
            metadata.link_blob(name, digest, total, pin=pin, mirror_fill=True)
            metrics.MIRROR_READS.labels(upstream.prefix, "blob", "stored").inc()
            return None
        metrics.MIRROR_READS.labels(upstream.prefix, "blob", "fetched").inc()

        def chunks() -> Iterator[bytes]:
            # Each chunk is held until the next arrives, so the last one leaves only once the blob
            # is linked: a client that has the whole blob can count on the repository linking it.
            size, whole, held = len(first), False, first
            try:
                for data in rest:
                    size += len(data)
                    if held:
                        yield held
                    held = data
                whole = True
                metadata.link_blob(name, digest, size, pin=pin, mirror_fill=True)
                if held:
                    yield held
            finally:
                if not whole:
                    cancel()
                    _unpin(metadata, digest, pin)
        return total, chunks()

    def _delivered_before(self, upstream: Upstream, digest: str) -> bool:
        """Whether a repository of this upstream links the blob: only fills link blobs there (pushes
        and mounts into mirrored repositories are refused), so the upstream delivered it once. A
        blob stored for any other reason is fetched from the upstream and checked before it is
        linked: its digest alone is no proof the caller may read it (a private repository's)."""
        within = upstream.prefix + "/"
        holders = self._clients.metadata.blob_repositories(digest)
        return any(name.startswith(within) for name in holders.repositories)

    def fill_and_link(self, name: str, digest: str, upstream: Upstream, remote: str) -> None:
        """The whole fill, for a request that is then answered from storage (a HEAD, a Range)."""
        filled = self.fill(name, digest, upstream, remote)
        if filled is not None:
            for _ in filled[1]:
                pass


def _unpin(metadata: MetadataClient, digest: str, pin: str) -> None:
    with contextlib.suppress(RegistryError):  # else it lapses on its own
        metadata.unpin_blob(digest, pin)
