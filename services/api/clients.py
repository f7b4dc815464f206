"""gRPC clients the views use: deadlines, request ids and error translation in one place.

Channels are opened lazily in the process that uses them, because gunicorn
forks workers after the app is built and a gRPC channel does not survive a fork.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any, TypeVar

import grpc

from services.api.read_cache import ReadCache
from services.api.settings import GatewaySettings
from services.api.wire import why_unreadable
from services.common import data_frames, metrics, tracing, upload_ids
from services.common.errors import BLOB_UPLOAD_INVALID, RegistryError, from_rpc_error
from services.common.internal_auth import TOKEN_KEY, read_token
from services.common.rpc import MAX_MESSAGE_BYTES, REQUEST_ID_KEY
from services.gen.wharf.auth.v1 import auth_pb2 as apb
from services.gen.wharf.auth.v1 import auth_pb2_grpc as apb_grpc
from services.gen.wharf.blobstore.v1 import blobstore_pb2 as bpb
from services.gen.wharf.blobstore.v1 import blobstore_pb2_grpc as bpb_grpc
from services.gen.wharf.governance.v1 import governance_pb2 as gpb
from services.gen.wharf.governance.v1 import governance_pb2_grpc as gpb_grpc
from services.gen.wharf.metadata.v1 import metadata_pb2 as mpb
from services.gen.wharf.metadata.v1 import metadata_pb2_grpc as mpb_grpc

T = TypeVar("T")

CHANNEL_OPTIONS = [
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    ("grpc.keepalive_time_ms", 30000),
    ("grpc.service_config", json.dumps({"loadBalancingConfig": [{"round_robin": {}}]})),
    ("grpc.enable_retries", 1),
    # Each stream's receive window stays at gRPC's initial 64 KiB instead of growing with its
    # bandwidth-delay estimate, so what the gateway buffers for a download is about one message
    # however slowly its client reads: with the estimate on, 1,000 slow pulls streamed from the
    # blob store (bench/load_bench.py (a) without sendfile) took a worker to 4.9 GB.
    ("grpc.http2.bdp_probe", 0),
    ("grpc.http2.lookahead_bytes", 16384),
]


def _target(address: str) -> str:
    """A comma-separated list of host:port becomes an ipv4:/ipv6: multi-address target."""
    if "," not in address:
        return address
    return "ipv4:" + ",".join(part.strip() for part in address.split(",") if part.strip())


class _RequestStream:
    """Remembers why a streamed request body stopped, since gRPC only reports a cancellation.

    Raising is how the stream stops: gRPC then cancels the call, so the blob store never takes
    a body cut short for a whole one. gRPC also logs that as an error with its traceback
    ("Exception iterating requests!"), once per client that sent a malformed chunk or left
    mid-body, which the client is told itself (a 400); ``_ReportedToTheClient`` drops those
    lines, and only those."""

    def __init__(self, messages: Iterator[Any]) -> None:
        self._messages = messages
        self.error: BaseException | None = None

    def __iter__(self) -> Iterator[Any]:
        return self

    def __next__(self) -> Any:
        try:
            return next(self._messages)
        except StopIteration:
            raise
        except BaseException as exc:
            self.error = exc
            with contextlib.suppress(AttributeError):
                exc.wharf_reported = True  # type: ignore[attr-defined]
            raise


class _ReportedToTheClient(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.exc_info and getattr(record.exc_info[1], "wharf_reported", False))


logging.getLogger("grpc._channel").addFilter(_ReportedToTheClient())


class _Lazy:
    def __init__(self, target: str, make_stub: Callable[[grpc.Channel], Any], internal_token: str) -> None:
        self._target = _target(target)
        self._make_stub = make_stub
        self.token_pair = (TOKEN_KEY, internal_token)
        self._pid = -1
        self._stub: Any = None
        self._lock = threading.Lock()

    def stub(self) -> Any:
        if self._pid != os.getpid():
            with self._lock:
                if self._pid != os.getpid():
                    # No interceptor: the caller puts the stack's secret in each call's metadata
                    # itself (an interceptor layer costs a quarter of a small call's client CPU).
                    self._stub = self._make_stub(grpc.insecure_channel(self._target, options=CHANNEL_OPTIONS))
                    self._pid = os.getpid()
        return self._stub


class _Caller:
    """Calls a stub method with a deadline, the request id and the trace context; counts and
    times the call (``wharf_grpc_client_*``: for a call whose answer is a stream, the time
    until the stream is open); raises RegistryError."""

    def __init__(self, lazy: _Lazy, service: str, settings: GatewaySettings, request_id: Callable[[], str]) -> None:
        self._lazy = lazy
        self._service = service
        self._settings = settings
        self._request_id = request_id
        self._figures = metrics.CallFigures(metrics.GRPC_CLIENT_CALLS, metrics.GRPC_CLIENT_DURATION)

    def open_stream(self, method: str, requests: Iterator[Any], timeout: float) -> Any:
        """A call the caller manages itself (the read cache's watch stream): the stub's, with the
        stack's secret, and nothing else of this class."""
        return getattr(self._lazy.stub(), method)(requests, timeout=timeout, metadata=(self._lazy.token_pair,))

    def _invoke(self, method: str, request: Any, timeout: float) -> Any:
        started = time.perf_counter()
        code = "OK"
        try:
            with tracing.span(f"{self._service}/{method}", tracing.SpanKind.CLIENT,
                              attributes={"rpc.system": "grpc", "rpc.service": self._service, "rpc.method": method}):
                return self._call(method, request, timeout)
        except RegistryError as err:
            code = metrics.grpc_code(err.code)
            raise
        finally:
            self._figures.record(f"/{self._service}/{method}", code, time.perf_counter() - started)

    def _call(self, method: str, request: Any, timeout: float) -> Any:
        body = _RequestStream(request) if isinstance(request, Iterator) else None
        metadata = (self._lazy.token_pair, (REQUEST_ID_KEY, self._request_id()), *tracing.inject())
        try:
            return getattr(self._lazy.stub(), method)(body or request, timeout=timeout, metadata=metadata)
        except grpc.RpcError as err:
            if body is not None and body.error is not None:
                # The call was cancelled because reading the client's body failed: report that.
                if isinstance(body.error, RegistryError):
                    raise body.error from None
                raise RegistryError(BLOB_UPLOAD_INVALID, why_unreadable(body.error)) from None
            raise from_rpc_error(err) from None

    def unary(self, method: str, request: Any, timeout: float | None = None) -> Any:
        return self._invoke(method, request, timeout or self._settings.rpc_timeout)

    def streaming(self, method: str, request: Any) -> Any:
        """A call whose request or response is a stream of data, or whose work is proportional to a
        blob's size, under the longer transfer deadline."""
        return self._invoke(method, request, self._settings.transfer_timeout)


class BlobStoreClient:
    def __init__(self, caller: _Caller, upload_id_key: bytes) -> None:
        self._c = caller
        self._upload_id_key = upload_id_key

    def stat(self, digest: str, want_location: bool = False) -> bpb.BlobInfo:
        return self._c.unary("Stat", bpb.StatRequest(digest=digest, want_location=want_location))

    def _opened(self, method: str, request: Any, empty: T) -> tuple[T, Any]:
        """A streamed answer's first message (``empty`` for none), read at once so that errors
        surface before any header is sent, and the call, for the rest and its cancel."""
        call = self._c.streaming(method, request)
        try:
            return next(call, empty), call
        except grpc.RpcError as err:
            raise from_rpc_error(err) from None

    def read(self, digest: str, offset: int, length: int,
             chunk_size: int = 0) -> tuple[bytes, Iterator[bytes], Callable[[], None]]:
        """Returns the first chunk (so errors surface early), an iterator over the rest, and a
        cancel; ``chunk_size``: the most bytes per chunk wanted (0: the blob store's own size).
        The call's messages are the chunks' bytes already (``_blob_store_stub``)."""
        first, call = self._opened("Read", bpb.ReadRequest(digest=digest, offset=offset, length=length,
                                                           chunk_size=chunk_size), b"")
        return first, call, call.cancel

    def fill(self, upstream: str, repository: str, digest: str,
             verify: bool = False) -> tuple[int, bool, bytes, Iterator[bytes], Callable[[], None]]:
        """A mirrored blob (services/blobstore/fills.py): its size (0 when the upstream did not say),
        whether it is stored already (then nothing is streamed), the first chunk (so errors surface
        before any header is sent), the rest, and a cancel. An error after the first chunk (a digest
        mismatch) ends the iterator with an exception."""
        first, call = self._opened("Fill", bpb.FillRequest(upstream=upstream, repository=repository,
                                                           digest=digest, verify=verify), bpb.Chunk())

        def rest() -> Iterator[bytes]:  # a generator, not an expression: the call is iterated only once asked
            try:
                for chunk in call:
                    yield chunk.data
            except grpc.RpcError as err:  # a mismatch after the first chunk: the service's error, not a 500
                raise from_rpc_error(err) from None
        return first.total, first.stored, first.data, rest(), call.cancel

    def fetch_manifest(self, upstream: str, repository: str, reference: str, head: bool) -> bpb.FetchedManifest:
        return self._c.unary("FetchManifest", bpb.FetchManifestRequest(
            upstream=upstream, repository=repository, reference=reference, head=head))

    def fetch_referrers(self, upstream: str, repository: str, digest: str, artifact_type: str) -> bytes:
        return bytes(self._c.unary("FetchReferrers", bpb.FetchReferrersRequest(
            upstream=upstream, repository=repository, digest=digest, artifact_type=artifact_type)).index)

    def put(self, digest: str, chunks: Iterable[bytes | bytearray]) -> bpb.BlobInfo:
        def requests() -> Iterator[bpb.PutRequest | bytes | bytearray]:
            yield bpb.PutRequest(digest=digest)
            yield from chunks  # each a message with only its data (_blob_store_stub)
        return self._c.streaming("Put", requests())

    def put_whole(self, digest: str, data: bytes) -> bpb.BlobInfo:
        """A blob held whole, in one message: the blob store writes it once, with no session."""
        return self._c.streaming("Put", iter((bpb.PutRequest(digest=digest, data=data),)))

    def start_upload(self, repository: str) -> bpb.UploadStatus:
        """A new, empty session of ``repository``: an id sealed here, which the blob store takes as
        one until bytes arrive (services/common/upload_ids.py), so starting an upload costs no call."""
        return bpb.UploadStatus(upload_id=upload_ids.issue(self._upload_id_key, repository), size=0)

    def append(self, repository: str, upload_id: str, offset: int, chunks: Iterable[bytes | bytearray],
               commit_digest: str = "") -> bpb.AppendResponse:
        def requests() -> Iterator[bpb.AppendRequest | bytes | bytearray]:
            yield bpb.AppendRequest(upload=bpb.UploadRef(upload_id=upload_id, repository=repository),
                                    offset=offset, commit_digest=commit_digest)
            yield from chunks  # each a message with only its data (_blob_store_stub)
        return self._c.streaming("AppendUpload", requests())

    def append_single(self, repository: str, upload_id: str, offset: int, data: bytes,
                      commit_digest: str = "") -> bpb.AppendResponse:
        """``append`` for a body already in memory: one unary call instead of a stream."""
        return self._c.streaming("AppendUploadSingle", bpb.AppendRequest(
            upload=bpb.UploadRef(upload_id=upload_id, repository=repository), offset=offset,
            commit_digest=commit_digest, data=data))

    def get_upload(self, repository: str, upload_id: str) -> bpb.UploadStatus:
        return self._c.unary("GetUpload", bpb.UploadRef(upload_id=upload_id, repository=repository))

    def commit(self, repository: str, upload_id: str, digest: str) -> bpb.BlobInfo:
        """Under the transfer deadline: a commit hashes the whole session again when its running
        hash is not at hand (a sha512 digest, a session appended to by another blob-store replica
        or before a restart) and on S3 completes and copies the object, so it takes as long as
        the blob is large. Under the unary deadline (10 s), a sha512 push of more than ~4 GB
        failed every time, and its retry found the session ended by the commit that went on."""
        ref = bpb.UploadRef(upload_id=upload_id, repository=repository)
        return self._c.streaming("CommitUpload", bpb.CommitUploadRequest(upload=ref, digest=digest))

    def cancel(self, repository: str, upload_id: str) -> None:
        self._c.unary("CancelUpload", bpb.UploadRef(upload_id=upload_id, repository=repository))


class MetadataClient:
    """The metadata service's calls; every write carries its request's origin (for its event)."""

    def __init__(self, caller: _Caller, origin: Callable[[], mpb.Origin | None]) -> None:
        self._c = caller
        self._origin = origin
        # What the last link answered about garbage collection in this process: (collections
        # started, whether one ran); None until a link answered.
        self._collections: tuple[int, bool] | None = None

    def _link(self, request: mpb.LinkBlobRequest) -> mpb.LinkBlobResponse:
        answer = self._c.unary("LinkBlob", request)
        self._collections = (answer.collections_started, answer.collecting)
        return answer

    def link_blob(self, repository: str, digest: str, size: int, pin: str = "", source: str = "",
                  mirror_fill: bool = False, upload_id: str = "") -> bool:
        """Links an uploaded blob (with the pin taken before its commit) or mounts one (``source``:
        a repository or "*"; False when the source no longer links it). ``mirror_fill``: the blob
        was fetched for a pull from a mirrored upstream (the pull is the event, not a push)."""
        request = mpb.LinkBlobRequest(repository=repository, digest=digest, size=size, pin=pin, source=source,
                                      origin=self._origin_of(mirror_fill), upload_id=upload_id)
        return bool(self._link(request).linked)

    def collections_quiet(self) -> int | None:
        """How many collections had started when the last link answered that none ran: an upload
        whose bytes this process holds may then commit without a pin. None: one ran, or no link
        has answered yet (the upload pins)."""
        state = self._collections
        return state[0] if state is not None and not state[1] else None

    def link_unpinned(self, repository: str, digest: str, size: int, seen: int, upload_id: str = "") -> bool:
        """Links an upload committed without a pin; False (nothing linked, the quota hold kept) when
        a collection runs or started since ``seen`` (collections_quiet): the caller pins, makes sure
        the bytes are stored, and links with the pin (services/metadata/README.md, "Uploads
        without a pin")."""
        request = mpb.LinkBlobRequest(repository=repository, digest=digest, size=size, origin=self._origin_of(),
                                      upload_id=upload_id, unpinned=True, collections_seen=seen)
        return not self._link(request).collection_moved

    def _origin_of(self, mirror_fill: bool = False) -> mpb.Origin | None:
        origin = self._origin()
        if mirror_fill:
            origin = origin or mpb.Origin()
            origin.mirror_fill = True
        return origin

    def record_pull_events(self, events: list[mpb.PullEvent]) -> None:
        self._c.unary("RecordPullEvents", mpb.PullEventsRequest(events=events))

    def record_pulls(self, pulls: list[mpb.Pull]) -> None:
        self._c.unary("RecordPulls", mpb.RecordPullsRequest(pulls=pulls))

    def pin_blob(self, digest: str) -> str:
        """Holds the blob against garbage collection until the link that names the pin."""
        return str(self._c.unary("PinBlob", mpb.BlobRef(digest=digest)).pin)

    def unpin_blob(self, digest: str, pin: str) -> None:
        self._c.unary("UnpinBlob", mpb.BlobPinRef(digest=digest, pin=pin))

    def unlink_blob(self, repository: str, digest: str) -> None:
        """The registry API's blob DELETE: refused while an immutable tag's manifest names the blob."""
        self._c.unary("UnlinkBlob", mpb.BlobRef(repository=repository, digest=digest, origin=self._origin(),
                                                guard_immutable=True))

    def blob_size(self, repository: str, digest: str) -> int:
        return int(self._c.unary("GetBlobLink", mpb.BlobRef(repository=repository, digest=digest)).size)

    def blob_repositories(self, digest: str, limit: int = 100) -> mpb.BlobRepositoriesResponse:
        return self._c.unary("BlobRepositories", mpb.BlobRepositoriesRequest(digest=digest, limit=limit))

    def put_manifest(self, request: mpb.PutManifestRequest) -> None:
        origin = self._origin_of(mirror_fill=request.count_only_references)  # a mirror's manifest: a fill
        if origin is not None:
            request.origin.CopyFrom(origin)
        self._c.unary("PutManifest", request)

    def get_manifest(self, repository: str, reference: str) -> mpb.Manifest:
        return self._c.unary("GetManifest", mpb.ManifestRef(repository=repository, reference=reference))

    def delete_manifest(self, repository: str, digest: str) -> None:
        self._c.unary("DeleteManifest", mpb.ManifestRef(repository=repository, reference=digest,
                                                        origin=self._origin()))

    def delete_tag(self, repository: str, tag: str) -> None:
        self._c.unary("DeleteTag", mpb.ManifestRef(repository=repository, reference=tag, origin=self._origin()))

    def list_tags(self, repository: str, last: str, limit: int, with_details: bool = False) -> mpb.ListResponse:
        """A page of tags; ``with_details``: each one's digest and push time too (the web UI)."""
        return self._c.unary("ListTags", mpb.ListRequest(repository=repository, last=last, limit=limit,
                                                         with_details=with_details))

    def list_repositories(self, last: str, limit: int, order: str = "") -> mpb.ListResponse:
        """A page of the catalog; ``order="pushed"``: most recently pushed first, with push times."""
        return self._c.unary("ListRepositories", mpb.ListRequest(last=last, limit=limit, order=order))

    def list_referrers(self, repository: str, subject: str, artifact_type: str,
                       after: str = "") -> tuple[list[mpb.Descriptor], bool]:
        """A page of referrers in digest order, after ``after``, and whether more remain."""
        request = mpb.ListReferrersRequest(repository=repository, subject=subject, artifact_type=artifact_type,
                                           after=after)
        answer = self._c.unary("ListReferrers", request)
        return list(answer.referrers), answer.more


class AuthClient:
    def __init__(self, caller: _Caller) -> None:
        self._c = caller

    def public_keys(self) -> list[apb.PublicKey]:
        return list(self._c.unary("ListPublicKeys", apb.ListPublicKeysRequest()).keys)

    def issue_token(self, request: apb.IssueTokenRequest) -> apb.IssueTokenResponse:
        return self._c.unary("IssueToken", request)

    def pullable(self, account: str, repositories: list[str]) -> list[str]:
        request = apb.FilterRepositoriesRequest(account=account, repositories=repositories)
        return list(self._c.unary("FilterRepositories", request).repositories)

    def revoke_refresh_token(self, refresh_token: str) -> None:
        self._c.unary("RevokeRefreshToken", apb.RevokeRefreshTokenRequest(refresh_token=refresh_token))


class GovernanceClient:
    """Governance calls (protos/wharf/governance/v1), served by the metadata service."""

    def __init__(self, caller: _Caller) -> None:
        self._c = caller

    def policy(self) -> gpb.Policy:
        return self._c.unary("GetPolicy", gpb.GetPolicyRequest())

    def reserve_upload(self, repository: str, upload_id: str, size: int) -> int:
        """Holds ``size`` bytes for the upload against its namespace's quota (DENIED when over);
        the quota's limit, 0 when none applies."""
        request = gpb.ReserveUploadRequest(repository=repository, upload_id=upload_id, bytes=size)
        return int(self._c.unary("ReserveUpload", request).limit)

    def release_upload(self, repository: str, upload_id: str, keep: int = 0) -> None:
        """Gives the upload's hold back down to ``keep`` bytes (0: all of it)."""
        self._c.unary("ReleaseUpload", gpb.ReleaseUploadRequest(repository=repository, upload_id=upload_id,
                                                                keep=keep))

    def take_tokens(self, buckets: list[gpb.TokenBucket], timeout: float | None = None) -> list[gpb.TokenGrant]:
        """One grant per bucket (services/metadata/ratelimit.py); ``timeout``: a deadline shorter than
        the usual, since a request waits on this call."""
        return list(self._c.unary("TakeTokens", gpb.TakeTokensRequest(buckets=buckets), timeout).grants)

    def record_audit(self, records: list[gpb.AuditRecord]) -> None:
        self._c.unary("RecordAudit", gpb.RecordAuditRequest(records=records))

    def usage(self, namespace: str = "", repositories: bool = False) -> gpb.UsageResponse:
        return self._c.unary("Usage", gpb.UsageRequest(namespace=namespace, repositories=repositories))

    def query_audit(self, limit: int, after: str = "") -> gpb.QueryAuditResponse:
        """The newest ``limit`` audit records (older than entry ``after``: a previous answer's ``next``)."""
        return self._c.unary("QueryAudit", gpb.QueryAuditRequest(limit=limit, after=after))


def _service_name(module: Any, name: str) -> str:
    return str(module.DESCRIPTOR.services_by_name[name].full_name)


def _blob_store_stub(channel: grpc.Channel) -> bpb_grpc.BlobStoreStub:
    """The generated stub, but for the calls that stream a blob's bytes: after their first
    message, the request stream's items are the bytes themselves, each framed as a message with
    only its data field (services/common/data_frames.py), in one copy rather than two; a Read's
    messages are the chunks' bytes, taken out of their frames in one copy."""
    stub = bpb_grpc.BlobStoreStub(channel)
    service = _service_name(bpb, "BlobStore")
    stub.Read = channel.unary_stream(f"/{service}/Read", request_serializer=bpb.ReadRequest.SerializeToString,
                                     response_deserializer=data_frames.deserializer(bpb.Chunk, "data"))
    for method, message, answer in (("AppendUpload", bpb.AppendRequest, bpb.AppendResponse),
                                    ("Put", bpb.PutRequest, bpb.BlobInfo)):
        setattr(stub, method, channel.stream_unary(f"/{service}/{method}",
                                                   request_serializer=data_frames.serializer(message, "data"),
                                                   response_deserializer=answer.FromString))
    return stub


class Clients:
    """Everything the views call, built once per app."""

    def __init__(self, settings: GatewaySettings, request_id: Callable[[], str],
                 origin: Callable[[], mpb.Origin | None] = lambda: None) -> None:
        token = read_token(settings.internal_token_file)
        def caller(address: str, make_stub: Callable[[grpc.Channel], Any], service: str) -> _Caller:
            return _Caller(_Lazy(address, make_stub, token), service, settings, request_id)

        self.auth = AuthClient(caller(settings.auth_addr, apb_grpc.AuthStub, _service_name(apb, "Auth")))
        self.blobs = BlobStoreClient(caller(settings.blobstore_addr, _blob_store_stub,
                                            _service_name(bpb, "BlobStore")), upload_ids.key_from(token))
        metadata = caller(settings.metadata_addr, mpb_grpc.MetadataStub, _service_name(mpb, "Metadata"))
        self.metadata = MetadataClient(metadata, origin)
        self.cache = ReadCache(metadata.open_stream, settings.manifest_cache_bytes, self.metadata.get_manifest,
                               self.metadata.blob_size, self.metadata.list_tags, self.metadata.list_repositories)
        self.governance = GovernanceClient(caller(settings.metadata_addr, gpb_grpc.GovernanceStub,
                                                  _service_name(gpb, "Governance")))
