"""gRPC face of the blob store: translates messages to :class:`BlobService` calls."""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable, Iterator

import grpc
from minio.error import MinioException

from services.blobstore.blobs import Blob, BlobService, Upload
from services.blobstore.settings import BlobStoreSettings
from services.blobstore.storage import create_driver
from services.blobstore.storage.base import StorageError
from services.common.errors import BLOB_UPLOAD_INVALID, RegistryError
from services.common.grpcserver import create_server
from services.common.internal_auth import read_token
from services.gen.wharf.blobstore.v1 import blobstore_pb2 as pb
from services.gen.wharf.blobstore.v1 import blobstore_pb2_grpc as pb_grpc

log = logging.getLogger("wharf.blobstore")


def _blob(blob: Blob) -> pb.BlobInfo:
    return pb.BlobInfo(digest=blob.digest, size=blob.size, local_path=blob.local_path,
                       redirect_url=blob.redirect_url)


def _status(upload: Upload) -> pb.UploadStatus:
    return pb.UploadStatus(upload_id=upload.upload_id, repository=upload.repository, size=upload.size,
                           started_at=upload.started_at)


def _first(requests: Iterator[pb.AppendRequest] | Iterator[pb.PutRequest]):  # type: ignore[no-untyped-def]
    first = next(requests, None)
    if first is None:
        raise RegistryError(BLOB_UPLOAD_INVALID, "empty request stream")
    return first


def _data(first: pb.AppendRequest | pb.PutRequest, rest: Iterable[pb.AppendRequest | pb.PutRequest]) -> Iterator[bytes]:
    yield first.data
    for message in rest:
        yield message.data


class BlobStoreServicer(pb_grpc.BlobStoreServicer):
    def __init__(self, blobs: BlobService, chunk_size: int) -> None:
        self._blobs = blobs
        self._chunk_size = chunk_size

    def Stat(self, request: pb.StatRequest, context: grpc.ServicerContext) -> pb.BlobInfo:
        return _blob(self._blobs.stat(request.digest, request.want_location))

    def Read(self, request: pb.ReadRequest, context: grpc.ServicerContext) -> Iterator[pb.Chunk]:
        for data in self._blobs.read(request.digest, request.offset, request.length, self._chunk_size):
            yield pb.Chunk(data=data)

    def Delete(self, request: pb.DeleteRequest, context: grpc.ServicerContext) -> pb.DeleteResponse:
        return pb.DeleteResponse(deleted=self._blobs.delete(request.digest))

    def Put(self, request_iterator: Iterator[pb.PutRequest], context: grpc.ServicerContext) -> pb.BlobInfo:
        first = _first(request_iterator)
        return _blob(self._blobs.put("", first.digest, _data(first, request_iterator)))

    def CreateUpload(self, request: pb.CreateUploadRequest, context: grpc.ServicerContext) -> pb.UploadStatus:
        return _status(self._blobs.create_upload(request.repository))

    def AppendUpload(self, request_iterator: Iterator[pb.AppendRequest],
                     context: grpc.ServicerContext) -> pb.AppendResponse:
        first = _first(request_iterator)
        ref = first.upload
        upload = self._blobs.append(ref.upload_id, ref.repository, first.offset, _data(first, request_iterator))
        if not first.commit_digest:
            return pb.AppendResponse(status=_status(upload))
        blob = self._blobs.commit(ref.upload_id, ref.repository, first.commit_digest)
        return pb.AppendResponse(status=_status(upload), blob=_blob(blob))

    def GetUpload(self, request: pb.UploadRef, context: grpc.ServicerContext) -> pb.UploadStatus:
        return _status(self._blobs.get_upload(request.upload_id, request.repository))

    def CommitUpload(self, request: pb.CommitUploadRequest, context: grpc.ServicerContext) -> pb.BlobInfo:
        return _blob(self._blobs.commit(request.upload.upload_id, request.upload.repository, request.digest))

    def CancelUpload(self, request: pb.UploadRef, context: grpc.ServicerContext) -> pb.CancelUploadResponse:
        self._blobs.cancel(request.upload_id, request.repository)
        return pb.CancelUploadResponse()


def _janitor(blobs: BlobService, interval: int, stop: threading.Event) -> None:
    while not stop.wait(interval):
        try:
            blobs.expire_uploads()
        except Exception:
            log.exception("upload sweep failed")


def build(settings: BlobStoreSettings, address: str | None = None):  # type: ignore[no-untyped-def]
    """Returns (server, port, health, stop_event); the janitor stops when stop_event is set."""
    blobs = BlobService(create_driver(settings), settings.upload_ttl)
    blobs.expire_uploads()

    def register(server: grpc.Server) -> list[str]:
        pb_grpc.add_BlobStoreServicer_to_server(BlobStoreServicer(blobs, settings.chunk_size), server)
        return [pb.DESCRIPTOR.services_by_name["BlobStore"].full_name]

    server, port, health = create_server("blobstore", address or settings.listen, register, settings.workers,
                                         backend_errors=(StorageError, MinioException, OSError),
                                         internal_token=read_token(settings.internal_token_file))
    stop = threading.Event()
    threading.Thread(target=_janitor, args=(blobs, settings.janitor_interval, stop), daemon=True,
                     name="upload-janitor").start()
    return server, port, health, stop
