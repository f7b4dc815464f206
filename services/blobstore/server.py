"""gRPC face of the blob store: translates messages to :class:`BlobService` calls."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import contextvars
import logging
import threading
from collections.abc import AsyncIterator, Callable
from typing import Any, TypeVar

import grpc
from minio.error import MinioException

from services.blobstore import fills
from services.blobstore.blobs import AppendSession, Blob, BlobReader, BlobService, Upload
from services.blobstore.fills import Fills
from services.blobstore.settings import BlobStoreSettings
from services.blobstore.storage import create_driver
from services.blobstore.storage.base import StorageError
from services.common import data_frames, digests, grpcserver, metrics, plugins, upload_ids
from services.common.errors import BLOB_UPLOAD_INVALID, UNAVAILABLE, RegistryError
from services.common.internal_auth import read_token
from services.gen.wharf.blobstore.v1 import blobstore_pb2 as pb
from services.gen.wharf.blobstore.v1 import blobstore_pb2_grpc as pb_grpc
from services.mirror.config import Mirrors

log = logging.getLogger("wharf.blobstore")
T = TypeVar("T")


# The smallest chunk a Read sends: below it, per-message costs dominate.
MIN_READ_CHUNK = 64 * 1024
# What the chunks of all streamed reads in this process may hold at once while they wait to be
# sent (a slow or stalled reader's window is full), give or take MIN_READ_CHUNK per read: each
# read's next chunk is its share of what the others do not hold. A lone fast download reads in
# large chunks; a thousand stalled ones hold a thousand small chunks, not a thousand of the size
# the first of them read in before the rest arrived.
READ_BUDGET = 32 * 1024 * 1024
# The longest a status or an append waits for a cut-off append of the same session to settle.
SETTLE_SECONDS = 10.0


def _blob(blob: Blob) -> pb.BlobInfo:
    return pb.BlobInfo(digest=blob.digest, size=blob.size, local_path=blob.local_path,
                       redirect_url=blob.redirect_url)


def _status(upload: Upload) -> pb.UploadStatus:
    return pb.UploadStatus(upload_id=upload.upload_id, repository=upload.repository, size=upload.size,
                           started_at=upload.started_at)


_frame_chunk = data_frames.framer(pb.Chunk, "data")


def _next_framed(reader: BlobReader, size: int) -> bytes:
    """A Read's next chunk serialized as a Chunk message where it was read (the unframed bytes go
    before the chunk waits for its reader); empty at the end."""
    return _frame_chunk(reader.next_chunk(size))


def _next_framed_cached(reader: BlobReader, size: int) -> bytes | None:
    """``_next_framed`` from the page cache, on the event loop; None when it would wait for the disk."""
    data = reader.next_cached(size)
    return None if data is None else _frame_chunk(data)


def add_servicer(servicer: BlobStoreServicer, server: grpc.aio.Server) -> None:
    """The generated registration, except that Read's messages come from the servicer already
    serialized (services/common/data_frames.py): a chunk waiting for a slow reader is then held
    as its frame and gRPC's copy only; and a push's pieces after the first arrive as their bytes
    (data_frames.DataOnly), each held once while it is written."""
    captured = _Registration()
    pb_grpc.add_BlobStoreServicer_to_server(servicer, captured)
    methods = dict(captured.methods)
    methods["Read"] = methods["Read"]._replace(response_serializer=None)
    for name, message in (("AppendUpload", pb.AppendRequest), ("Put", pb.PutRequest)):
        methods[name] = methods[name]._replace(request_deserializer=data_frames.request_deserializer(message))
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(captured.service, methods),))
    server.add_registered_method_handlers(captured.service, methods)


class _Registration:
    """Stands in for a server to catch the method handlers the generated code registers."""

    def __init__(self) -> None:
        self.service = ""
        self.methods: dict[str, grpc.RpcMethodHandler] = {}

    def add_generic_rpc_handlers(self, handlers: Any) -> None:
        pass

    def add_registered_method_handlers(self, service: str, methods: dict[str, grpc.RpcMethodHandler]) -> None:
        self.service, self.methods = service, methods


async def _nothing() -> AsyncIterator[Any]:
    return
    yield  # an async generator that yields nothing: the rest of a single-message append


async def _next(requests: AsyncIterator[Any]) -> Any:
    """The stream's next message; None at its end."""
    async for message in requests:
        return message
    return None


async def _first(requests: AsyncIterator[Any], message_class: type[Any]) -> Any:
    """The stream's first message, as ``message_class`` even when it carried data alone."""
    message = await _next(requests)
    if message is None:
        raise RegistryError(BLOB_UPLOAD_INVALID, "empty request stream")
    if isinstance(message, data_frames.DataOnly):
        return message_class(data=message.data)
    return message


async def _then(message: Any, requests: AsyncIterator[Any]) -> AsyncIterator[Any]:
    yield message
    async for rest in requests:
        yield rest


class BlobStoreServicer(pb_grpc.BlobStoreServicer):
    """asyncio servicer: waiting for a peer (the next chunk of a slow upload, room in a slow
    download's window) happens on the event loop and holds no thread; each storage step (a
    write, a read, a stat) runs in a bounded thread pool and returns at once."""

    def __init__(self, blobs: BlobService, chunk_size: int, pool: concurrent.futures.ThreadPoolExecutor,
                 fills: Fills, upstream_pool: concurrent.futures.ThreadPoolExecutor | None = None) -> None:
        self._blobs = blobs
        self._fills = fills
        self._chunk_size = chunk_size
        self._pool = pool
        # Mirror fills and fetches wait on upstream registries, which may be slow or hostile (an
        # upstream trickling a blob held a storage thread per fill: 32 such fills stopped every
        # push and pull of the registry). They run in a pool of their own, so storage steps
        # always find a thread; past its size, more fills wait on the event loop.
        self._upstream_pool = upstream_pool or pool
        self._reading = 0  # streamed reads in progress
        self._held = 0  # bytes of their chunks waiting to be sent
        # Sessions whose append was cut off (its caller's body broke, the call was cancelled) and
        # is still writing what it had received: a status or another append waits for it to end.
        self._settling: dict[str, asyncio.Event] = {}

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.wrap_future(self._submit(fn, *args))

    async def _run_upstream(self, fn: Callable[..., T], *args: Any) -> T:
        """``_run`` for a step that waits on an upstream registry (its own pool)."""
        return await asyncio.wrap_future(self._submit(fn, *args, pool=self._upstream_pool))

    def _submit(self, fn: Callable[..., T], *args: Any,
                pool: concurrent.futures.ThreadPoolExecutor | None = None) -> concurrent.futures.Future[T]:
        """A storage step started in the pool without waiting for it. In the call's context, so
        the step's storage span and log lines belong to the call."""
        return (pool or self._pool).submit(contextvars.copy_context().run, fn, *args)

    async def Stat(self, request: pb.StatRequest, context: grpc.aio.ServicerContext) -> pb.BlobInfo:
        return _blob(await self._run(self._blobs.stat, request.digest, request.want_location))

    async def Read(self, request: pb.ReadRequest, context: grpc.aio.ServicerContext) -> AsyncIterator[bytes]:
        """Yields each chunk already framed as a serialized Chunk (``add_servicer``)."""
        reader = await self._run(self._blobs.open_read, request.digest, request.offset, request.length)
        size = self._chunk_size
        if request.chunk_size:
            size = max(MIN_READ_CHUNK, min(size, request.chunk_size))
        self._reading += 1
        try:
            while True:
                share = max(0, READ_BUDGET - self._held) // self._reading
                step = max(MIN_READ_CHUNK, min(size, share - share % MIN_READ_CHUNK))
                framed = _next_framed_cached(reader, step)
                if framed is None:
                    framed = await self._run(_next_framed, reader, step)
                if not framed:
                    break
                self._held += len(framed)
                try:
                    yield framed  # returns once gRPC has sent it on
                finally:
                    self._held -= len(framed)
        finally:
            self._reading -= 1
            await self._run(reader.close)

    async def Fill(self, request: pb.FillRequest, context: grpc.aio.ServicerContext) -> AsyncIterator[pb.Chunk]:
        loop = asyncio.get_running_loop()
        started, waited = loop.time(), False
        # A follower of another fetcher's fill waits here, on the event loop, holding no thread.
        while (found := await self._run_upstream(self._fills.fill, request.upstream, request.repository,
                                                 request.digest, request.verify)) is None:
            if not waited:
                metrics.MIRROR_FILL_WAITS.labels(request.upstream).inc()
                waited = True
            if loop.time() - started >= fills.FOLLOW_TIMEOUT:
                raise RegistryError(UNAVAILABLE, f"the fill of {request.digest} from {request.upstream} takes too "
                                                 "long", detail={"retry_after": 30})
            await asyncio.sleep(fills.POLL)
        total, chunks = found
        if chunks is None:
            yield pb.Chunk(total=total, stored=True)
            return
        first = True
        try:
            while (data := await self._run_upstream(next, chunks, b"")) or first:
                yield pb.Chunk(data=data, total=total if first else 0)
                first = False
                if not data:
                    break
        finally:
            close = getattr(chunks, "close", None)
            if close is not None:
                await grpcserver.shielded(self._run_upstream(close))

    async def FetchManifest(self, request: pb.FetchManifestRequest,
                            context: grpc.aio.ServicerContext) -> pb.FetchedManifest:
        answer = await self._run_upstream(self._fills.manifest, request.upstream, request.repository,
                                          request.reference, request.head)
        return pb.FetchedManifest(digest=answer.digest, media_type=answer.media_type, size=answer.size,
                                  content=answer.body or b"")

    async def FetchReferrers(self, request: pb.FetchReferrersRequest,
                             context: grpc.aio.ServicerContext) -> pb.FetchedReferrers:
        return pb.FetchedReferrers(index=await self._run_upstream(self._fills.referrers, request.upstream,
                                                                  request.repository, request.digest,
                                                                  request.artifact_type))

    async def Delete(self, request: pb.DeleteRequest, context: grpc.aio.ServicerContext) -> pb.DeleteResponse:
        return pb.DeleteResponse(deleted=await self._run(self._blobs.delete, request.digest))

    async def _append(self, upload_id: str, repository: str, offset: int, first: Any,
                      rest: AsyncIterator[Any], commit_digest: str = "") -> tuple[Upload, Blob | None]:
        """Appends the stream, then commits when asked. The opening and the first piece, and the
        finish and the commit, each share one executor hop: a small blob's whole body is usually
        the first piece, and every hop costs a thread hand-off under the GIL."""
        def open_and_write() -> AppendSession:
            session = self._blobs.open_append(upload_id, repository, offset)
            try:
                session.write(first.data)
            except BaseException as exc:
                session.abort(exc)
                raise
            return session

        def finish_and_commit() -> tuple[Upload, Blob | None]:
            if commit_digest:
                return session.finish_and_commit(commit_digest)
            return session.finish(), None

        # One write in flight while the next message is received: the event loop's share of a
        # message (gRPC's) and the writer's (hashing, the direct write; both without the GIL)
        # overlap instead of taking turns. Writes stay one at a time, in order.
        writing: concurrent.futures.Future[None] | None = None

        def abort(exc: BaseException) -> None:
            if writing is not None:
                concurrent.futures.wait([writing])  # never closes the writer under a write still running
            session.abort(exc)

        await self._settled(upload_id)
        session = await self._run(open_and_write)
        try:
            async for message in rest:
                if writing is not None:
                    await asyncio.wrap_future(writing)
                writing = self._submit(session.write, message.data)
            if writing is not None:
                await asyncio.wrap_future(writing)
        except BaseException as exc:
            # Marked before the first await: the gateway answers its client once it cancels the
            # call, and that client's status request may come in while the last piece is still
            # being written; it must see the offset the session ends at, not one before it.
            settled = self._settling[upload_id] = asyncio.Event()
            try:
                await grpcserver.shielded(self._run(abort, exc))
            finally:
                if self._settling.get(upload_id) is settled:
                    del self._settling[upload_id]
                settled.set()
            raise
        return await grpcserver.shielded(self._run(finish_and_commit))

    async def Put(self, request_iterator: AsyncIterator[pb.PutRequest],
                  context: grpc.aio.ServicerContext) -> pb.BlobInfo:
        first = await _first(request_iterator, pb.PutRequest)
        digests.parse(first.digest)
        second = await _next(request_iterator)
        if second is None:
            # The whole blob in one message (a small monolithic push): checked in memory, written
            # once at its key, no session.
            return _blob(await grpcserver.shielded(self._run(self._blobs.put_whole, first.digest, first.data)))
        upload = await self._run(self._blobs.create_upload, "")
        try:
            _, blob = await self._append(upload.upload_id, "", 0, first, _then(second, request_iterator),
                                         first.digest)
            assert blob is not None
            return _blob(blob)
        except BaseException:
            await grpcserver.shielded(self._run(self._blobs.discard, upload.upload_id))
            raise

    async def CreateUpload(self, request: pb.CreateUploadRequest,
                           context: grpc.aio.ServicerContext) -> pb.UploadStatus:
        return _status(await self._run(self._blobs.create_upload, request.repository))

    async def AppendUpload(self, request_iterator: AsyncIterator[pb.AppendRequest],
                           context: grpc.aio.ServicerContext) -> pb.AppendResponse:
        return await self._append_response(await _first(request_iterator, pb.AppendRequest), request_iterator)

    async def AppendUploadSingle(self, request: pb.AppendRequest,
                                 context: grpc.aio.ServicerContext) -> pb.AppendResponse:
        if request.commit_digest:
            ref = request.upload
            whole = await grpcserver.shielded(self._run(self._blobs.commit_whole, ref.upload_id, ref.repository,
                                                   request.offset, request.data, request.commit_digest))
            if whole is not None:
                return pb.AppendResponse(status=_status(whole[0]), blob=_blob(whole[1]))
        return await self._append_response(request, _nothing())

    async def _append_response(self, first: pb.AppendRequest, rest: AsyncIterator[Any]) -> pb.AppendResponse:
        ref = first.upload
        upload, blob = await self._append(ref.upload_id, ref.repository, first.offset, first, rest,
                                          first.commit_digest)
        if blob is None:
            return pb.AppendResponse(status=_status(upload))
        return pb.AppendResponse(status=_status(upload), blob=_blob(blob))

    async def _settled(self, upload_id: str) -> None:
        """Waits (bounded) for a cut-off append of this session in this process to end."""
        settling = self._settling.get(upload_id)
        if settling is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(settling.wait(), SETTLE_SECONDS)

    async def GetUpload(self, request: pb.UploadRef, context: grpc.aio.ServicerContext) -> pb.UploadStatus:
        await self._settled(request.upload_id)
        return _status(await self._run(self._blobs.get_upload, request.upload_id, request.repository))

    async def CommitUpload(self, request: pb.CommitUploadRequest, context: grpc.aio.ServicerContext) -> pb.BlobInfo:
        ref = request.upload
        return _blob(await self._run(self._blobs.commit, ref.upload_id, ref.repository, request.digest))

    async def CancelUpload(self, request: pb.UploadRef,
                           context: grpc.aio.ServicerContext) -> pb.CancelUploadResponse:
        await self._run(self._blobs.cancel, request.upload_id, request.repository)
        return pb.CancelUploadResponse()


# A scrape counts the upload sessions in the storage (a listing), up to this many.
UPLOADS_COUNTED = 100_000
# The storage census behind wharf_storage_blob_bytes (every 5 minutes, in the background) stops here.
BLOBS_COUNTED = 1_000_000


def _janitor(blobs: BlobService, interval: int, stop: threading.Event) -> None:
    while not stop.wait(interval):
        try:
            blobs.expire_uploads()
        except Exception:
            log.exception("upload sweep failed")


async def serve(settings: BlobStoreSettings, address: str | None = None,
                on_port: Callable[[int], None] | None = None, mirrors: Mirrors | None = None) -> None:
    """Runs the blob store until SIGTERM; the janitor thread stops with it."""
    token = read_token(settings.internal_token_file)  # before anything starts: a bad file stops the service
    try:
        driver = create_driver(settings)
    except ValueError as exc:  # a driver's options refused (an extension's, say): name it and stop
        raise SystemExit(f"wharf-blobstore: WHARF_STORAGE={settings.storage}: {exc}") from None
    except plugins.PluginError as exc:  # a driver that failed otherwise, or built no driver
        raise SystemExit(f"wharf-blobstore: {exc}") from None
    blobs = BlobService(driver, settings.upload_ttl, id_key=upload_ids.key_from(token))
    fills = Fills(blobs, driver, mirrors or Mirrors())
    blobs.expire_uploads()
    pool = concurrent.futures.ThreadPoolExecutor(max_workers=settings.workers, thread_name_prefix="storage")
    upstream_pool = concurrent.futures.ThreadPoolExecutor(max_workers=settings.upstream_workers,
                                                          thread_name_prefix="upstream")

    def register(server: grpc.aio.Server) -> list[str]:
        add_servicer(BlobStoreServicer(blobs, settings.chunk_size, pool, fills, upstream_pool), server)
        return [pb.DESCRIPTOR.services_by_name["BlobStore"].full_name]

    stop = threading.Event()
    threading.Thread(target=_janitor, args=(blobs, settings.janitor_interval, stop), daemon=True,
                     name="upload-janitor").start()
    try:
        await grpcserver.serve("blobstore", address or settings.listen, register, internal_token=token,
                        backend_errors=(StorageError, MinioException, OSError), on_port=on_port,
                               metrics_address=settings.metrics_addr, otlp_endpoint=settings.otlp_endpoint,
                               collectors=[metrics.UploadSessions(lambda: blobs.count_uploads(UPLOADS_COUNTED)),
                                           metrics.StorageUsage(lambda: blobs.census(BLOBS_COUNTED))])
    finally:
        stop.set()
        pool.shutdown(wait=False, cancel_futures=True)
        upstream_pool.shutdown(wait=False, cancel_futures=True)


def run(settings: BlobStoreSettings, on_port: Callable[[int], None] | None = None,
        mirrors: Mirrors | None = None) -> None:
    asyncio.run(serve(settings, on_port=on_port, mirrors=mirrors))
