"""The metadata service's and the blob store's gRPC calls that the operator tools make
(`wharf-admin check`, `export`, `import`, and `wharf-gc`).

Every call carries the stack's internal secret (an authenticated channel) and a deadline; a
service that cannot be reached (or refuses the secret) raises :class:`Unreachable`, any other
refusal the service's :class:`RegistryError`.
"""

from __future__ import annotations

import collections
from collections.abc import Iterator
from typing import Any

import grpc

from services.common.errors import (
    BLOB_UNKNOWN,
    ERROR_CODE_KEY,
    MANIFEST_UNKNOWN,
    NAME_UNKNOWN,
    RegistryError,
    from_rpc_error,
)
from services.common.internal_auth import authenticated_channel
from services.common.rpc import MAX_MESSAGE_BYTES
from services.gen.wharf.blobstore.v1 import blobstore_pb2 as bpb
from services.gen.wharf.blobstore.v1 import blobstore_pb2_grpc as bpb_grpc
from services.gen.wharf.governance.v1 import governance_pb2_grpc as gpb_grpc
from services.gen.wharf.metadata.v1 import metadata_pb2 as mpb
from services.gen.wharf.metadata.v1 import metadata_pb2_grpc as mpb_grpc
from services.maintenance.targets import Targets

# A unary call's deadline. A blob read's grows with the blob: READ_BASE + size / READ_RATE.
# Garbage collection's calls: a repository's collection (one script per candidate), a blob delete.
TIMEOUT = 30.0
COLLECT_TIMEOUT = 300.0
DELETE_TIMEOUT = 60.0
READ_BASE = 60.0
READ_RATE = 5 * 1024 * 1024
_OPTIONS = [("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
            ("grpc.max_send_message_length", MAX_MESSAGE_BYTES)]
_NAMES = {"metadata": "metadata service", "governance": "metadata service", "blobstore": "blob store"}
# Transport failures: the service never answered with a registry error of its own.
_TRANSPORT = {grpc.StatusCode.UNAVAILABLE: "is not reachable", grpc.StatusCode.DEADLINE_EXCEEDED: "did not answer "
              "in time", grpc.StatusCode.UNAUTHENTICATED: "refused the internal secret (not this stack's?)",
              grpc.StatusCode.UNIMPLEMENTED: "does not know this call (an older Wharf?)"}


class Unreachable(RuntimeError):
    """A service could not be reached, did not answer in time, or refused the internal secret."""


# How many blob lookups a BoundedCache remembers: a blob shared by many repositories is looked
# up once while it stays in the cache.
CACHE_ENTRIES = 100_000


class BoundedCache:
    """What was last looked up, at most ``capacity`` entries (the least recently used go first)."""

    def __init__(self, capacity: int) -> None:
        self._items: collections.OrderedDict[str, int | None] = collections.OrderedDict()
        self._capacity = capacity

    def get(self, key: str) -> tuple[bool, int | None]:
        if key not in self._items:
            return False, None
        self._items.move_to_end(key)
        return True, self._items[key]

    def put(self, key: str, value: int | None) -> None:
        self._items[key] = value
        self._items.move_to_end(key)
        while len(self._items) > self._capacity:
            self._items.popitem(last=False)


class RegistryCalls:
    """Channels are opened at the first call and closed by :meth:`close` (or ``with``)."""

    def __init__(self, targets: Targets, token: str) -> None:
        self._targets = targets
        self._token = token
        self._channels: list[grpc.Channel] = []
        self._metadata: Any = None
        self._blobstore: Any = None
        self._governance: Any = None

    def __enter__(self) -> RegistryCalls:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        for channel in self._channels:
            channel.close()
        self._channels.clear()
        self._metadata = self._blobstore = self._governance = None

    def _channel(self, address: str) -> grpc.Channel:
        channel = grpc.insecure_channel(address, options=_OPTIONS)
        self._channels.append(channel)
        return authenticated_channel(channel, self._token)

    def _call(self, service: str, method: str, request: Any, timeout: float = TIMEOUT) -> Any:
        if service == "metadata":
            if self._metadata is None:
                self._metadata = mpb_grpc.MetadataStub(self._channel(self._targets.metadata_addr))
            stub, address = self._metadata, self._targets.metadata_addr
        elif service == "governance":
            if self._governance is None:
                self._governance = gpb_grpc.GovernanceStub(self._channel(self._targets.metadata_addr))
            stub, address = self._governance, self._targets.metadata_addr
        else:
            if self._blobstore is None:
                self._blobstore = bpb_grpc.BlobStoreStub(self._channel(self._targets.blobstore_addr))
            stub, address = self._blobstore, self._targets.blobstore_addr
        try:
            return getattr(stub, method)(request, timeout=timeout)
        except grpc.RpcError as err:
            raise _translated(err, f"the {_NAMES[service]} at {address}") from None

    def governance(self, method: str, request: Any, timeout: float = TIMEOUT) -> Any:
        """A call of the Governance API (protos/wharf/governance/v1), served by the metadata service."""
        return self._call("governance", method, request, timeout)

    # -- metadata ----------------------------------------------------------

    def pin_blob(self, digest: str) -> str:
        """A pin that holds the blob against garbage collection until the link naming it."""
        return str(self._call("metadata", "PinBlob", mpb.BlobRef(digest=digest)).pin)

    def link_blob(self, repository: str, digest: str, size: int, pin: str = "") -> None:
        self._call("metadata", "LinkBlob", mpb.LinkBlobRequest(repository=repository, digest=digest, size=size,
                                                               pin=pin))

    def link_stored(self, repository: str, digest: str) -> int | None:
        """Links a blob the storage holds, with its stored size, as an upload does: pinned first, so
        that garbage collection cannot delete the bytes between the look and the link. Returns
        the size, or None (nothing linked) when the storage does not hold the blob."""
        pin = self.pin_blob(digest)
        size = self.stored_size(digest)
        if size is not None:
            self.link_blob(repository, digest, size, pin)
        return size

    def unlink_blob(self, repository: str, digest: str) -> bool:
        """False when the repository did not link the blob."""
        try:
            self._call("metadata", "UnlinkBlob", mpb.BlobRef(repository=repository, digest=digest))
        except RegistryError as err:
            if err.error is BLOB_UNKNOWN:
                return False
            raise
        return True

    def delete_tag(self, repository: str, tag: str, only_dangling: bool = False) -> bool:
        """False when the tag did not exist (with ``only_dangling``: or names a stored manifest)."""
        try:
            self._call("metadata", "DeleteTag", mpb.ManifestRef(repository=repository, reference=tag,
                                                                only_dangling=only_dangling))
        except RegistryError as err:
            if err.error is MANIFEST_UNKNOWN:
                return False
            raise
        return True

    def put_manifest(self, request: mpb.PutManifestRequest) -> None:
        self._call("metadata", "PutManifest", request)

    def manifest_digest(self, repository: str, reference: str) -> str | None:
        """The digest a tag (or digest) resolves to in the repository; None when it does not."""
        try:
            found = self._call("metadata", "GetManifest", mpb.ManifestRef(repository=repository, reference=reference))
        except RegistryError as err:
            if err.error in (MANIFEST_UNKNOWN, NAME_UNKNOWN):
                return None
            raise
        return str(found.digest)

    # -- garbage collection (wharf-gc: services/gc/collector.py's MetadataCalls) ---------------

    def collect(self, repository: str, grace_ms: int, delete_untagged: bool,
                dry_run: bool) -> tuple[list[str], list[str]]:
        answer = self._call("metadata", "CollectRepository", mpb.CollectRequest(
            repository=repository, grace_ms=grace_ms, delete_untagged=delete_untagged, dry_run=dry_run),
            COLLECT_TIMEOUT)
        return list(answer.unlinked), list(answer.removed_manifests)

    def begin_delete(self, digest: str) -> tuple[str, str]:
        answer = self._call("metadata", "BeginBlobDelete", mpb.BlobDeleteRequest(digest=digest))
        return answer.fence, answer.refused

    def end_delete(self, digest: str, fence: str) -> None:
        self._call("metadata", "EndBlobDelete", mpb.BlobDeleteRequest(digest=digest, fence=fence))

    def delete_manifest(self, repository: str, digest: str) -> None:
        """Deletes a manifest; one deleted meanwhile by someone else is as good."""
        try:
            self._call("metadata", "DeleteManifest", mpb.ManifestRef(repository=repository, reference=digest))
        except RegistryError as err:
            if err.error is not MANIFEST_UNKNOWN:
                raise

    def delete_blob(self, digest: str) -> bool:
        """Deletes a blob's bytes through the blob store (under the collector's fence)."""
        return bool(self._call("blobstore", "Delete", bpb.DeleteRequest(digest=digest), DELETE_TIMEOUT).deleted)

    # -- blob store --------------------------------------------------------

    def stored_size(self, digest: str) -> int | None:
        """The size of the stored blob; None when the storage does not hold it."""
        try:
            return int(self._call("blobstore", "Stat", bpb.StatRequest(digest=digest)).size)
        except RegistryError as err:
            if err.error is BLOB_UNKNOWN:
                return None
            raise

    def read_blob(self, digest: str, size: int) -> Iterator[bytes]:
        """The stored bytes, streamed in the blob store's chunks (bounded memory)."""
        stream = self._call("blobstore", "Read", bpb.ReadRequest(digest=digest), READ_BASE + size / READ_RATE)
        try:
            for chunk in stream:
                yield chunk.data
        except grpc.RpcError as err:
            raise _translated(err, f"the blob store at {self._targets.blobstore_addr}") from None
        finally:
            stream.cancel()


def _translated(err: grpc.RpcError, who: str) -> Exception:
    trailing = dict(err.trailing_metadata() or ())  # type: ignore[attr-defined]
    code = err.code()  # type: ignore[attr-defined]
    if ERROR_CODE_KEY not in trailing and code in _TRANSPORT:
        return Unreachable(f"{who} {_TRANSPORT[code]}")
    return from_rpc_error(err)
