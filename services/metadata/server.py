"""gRPC face of the metadata service."""

from __future__ import annotations

import grpc
import redis

from services.common.grpcserver import create_server
from services.gen.wharf.metadata.v1 import metadata_pb2 as pb
from services.gen.wharf.metadata.v1 import metadata_pb2_grpc as pb_grpc
from services.metadata.settings import MetadataSettings
from services.metadata.store import Descriptor, MetadataStore


def _descriptor_pb(d: Descriptor) -> pb.Descriptor:
    return pb.Descriptor(media_type=d.media_type, digest=d.digest, size=d.size, artifact_type=d.artifact_type,
                         annotations=d.annotations)


class MetadataServicer(pb_grpc.MetadataServicer):
    def __init__(self, store: MetadataStore) -> None:
        self._store = store

    def LinkBlob(self, request: pb.LinkBlobRequest, context: grpc.ServicerContext) -> pb.LinkBlobResponse:
        self._store.link_blob(request.repository, request.digest, request.size)
        return pb.LinkBlobResponse()

    def UnlinkBlob(self, request: pb.BlobRef, context: grpc.ServicerContext) -> pb.UnlinkBlobResponse:
        self._store.unlink_blob(request.repository, request.digest)
        return pb.UnlinkBlobResponse()

    def GetBlobLink(self, request: pb.BlobRef, context: grpc.ServicerContext) -> pb.BlobLink:
        return pb.BlobLink(digest=request.digest, size=self._store.blob_size(request.repository, request.digest))

    def BlobRepositories(self, request: pb.BlobRepositoriesRequest,
                         context: grpc.ServicerContext) -> pb.BlobRepositoriesResponse:
        names, size = self._store.blob_repositories(request.digest, max(1, min(request.limit or 100, 1000)))
        return pb.BlobRepositoriesResponse(repositories=names, size=size)

    def PutManifest(self, request: pb.PutManifestRequest, context: grpc.ServicerContext) -> pb.PutManifestResponse:
        d = request.descriptor
        descriptor = Descriptor(d.media_type, d.digest, d.size, d.artifact_type, dict(d.annotations)) \
            if request.subject else None
        self._store.put_manifest(request.repository, request.digest, request.media_type, request.content,
                                 list(request.tags), list(request.blob_references),
                                 list(request.manifest_references), request.subject, descriptor)
        return pb.PutManifestResponse()

    def GetManifest(self, request: pb.ManifestRef, context: grpc.ServicerContext) -> pb.Manifest:
        m = self._store.get_manifest(request.repository, request.reference)
        return pb.Manifest(digest=m.digest, media_type=m.media_type, content=m.content, subject=m.subject)

    def DeleteManifest(self, request: pb.ManifestRef, context: grpc.ServicerContext) -> pb.DeleteManifestResponse:
        self._store.delete_manifest(request.repository, request.reference)
        return pb.DeleteManifestResponse()

    def DeleteTag(self, request: pb.ManifestRef, context: grpc.ServicerContext) -> pb.DeleteTagResponse:
        self._store.delete_tag(request.repository, request.reference)
        return pb.DeleteTagResponse()

    def ListTags(self, request: pb.ListRequest, context: grpc.ServicerContext) -> pb.ListResponse:
        names, more = self._store.list_tags(request.repository, request.last, request.limit)
        return pb.ListResponse(names=names, more=more)

    def ListRepositories(self, request: pb.ListRequest, context: grpc.ServicerContext) -> pb.ListResponse:
        names, more = self._store.list_repositories(request.last, request.limit)
        return pb.ListResponse(names=names, more=more)

    def ListReferrers(self, request: pb.ListReferrersRequest,
                      context: grpc.ServicerContext) -> pb.ListReferrersResponse:
        found = self._store.list_referrers(request.repository, request.subject, request.artifact_type)
        return pb.ListReferrersResponse(referrers=[_descriptor_pb(d) for d in found])


def build(settings: MetadataSettings, address: str | None = None):  # type: ignore[no-untyped-def]
    client = redis.Redis.from_url(settings.redis_url, socket_timeout=5, socket_connect_timeout=2,
                                  health_check_interval=30, max_connections=settings.workers + 4)
    store = MetadataStore(client)

    def register(server: grpc.Server) -> list[str]:
        pb_grpc.add_MetadataServicer_to_server(MetadataServicer(store), server)
        return [pb.DESCRIPTOR.services_by_name["Metadata"].full_name]

    return create_server("metadata", address or settings.listen, register, settings.workers,
                         backend_errors=(redis.RedisError,))
