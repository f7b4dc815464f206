from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class PullEvent(_message.Message):
    __slots__ = ("repository", "digest", "media_type", "size", "tag", "origin", "at_ms", "blob")
    REPOSITORY_FIELD_NUMBER: _ClassVar[int]
    DIGEST_FIELD_NUMBER: _ClassVar[int]
    MEDIA_TYPE_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    TAG_FIELD_NUMBER: _ClassVar[int]
    ORIGIN_FIELD_NUMBER: _ClassVar[int]
    AT_MS_FIELD_NUMBER: _ClassVar[int]
    BLOB_FIELD_NUMBER: _ClassVar[int]
    repository: str
    digest: str
    media_type: str
    size: int
    tag: str
    origin: Origin
    at_ms: int
    blob: bool
    def __init__(self, repository: _Optional[str] = ..., digest: _Optional[str] = ..., media_type: _Optional[str] = ..., size: _Optional[int] = ..., tag: _Optional[str] = ..., origin: _Optional[_Union[Origin, _Mapping]] = ..., at_ms: _Optional[int] = ..., blob: _Optional[bool] = ...) -> None: ...

class PullEventsRequest(_message.Message):
    __slots__ = ("events",)
    EVENTS_FIELD_NUMBER: _ClassVar[int]
    events: _containers.RepeatedCompositeFieldContainer[PullEvent]
    def __init__(self, events: _Optional[_Iterable[_Union[PullEvent, _Mapping]]] = ...) -> None: ...

class PullEventsResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class Pull(_message.Message):
    __slots__ = ("upstream", "repository", "digest", "at_ms")
    UPSTREAM_FIELD_NUMBER: _ClassVar[int]
    REPOSITORY_FIELD_NUMBER: _ClassVar[int]
    DIGEST_FIELD_NUMBER: _ClassVar[int]
    AT_MS_FIELD_NUMBER: _ClassVar[int]
    upstream: str
    repository: str
    digest: str
    at_ms: int
    def __init__(self, upstream: _Optional[str] = ..., repository: _Optional[str] = ..., digest: _Optional[str] = ..., at_ms: _Optional[int] = ...) -> None: ...

class RecordPullsRequest(_message.Message):
    __slots__ = ("pulls",)
    PULLS_FIELD_NUMBER: _ClassVar[int]
    pulls: _containers.RepeatedCompositeFieldContainer[Pull]
    def __init__(self, pulls: _Optional[_Iterable[_Union[Pull, _Mapping]]] = ...) -> None: ...

class RecordPullsResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class BlobPin(_message.Message):
    __slots__ = ("pin",)
    PIN_FIELD_NUMBER: _ClassVar[int]
    pin: str
    def __init__(self, pin: _Optional[str] = ...) -> None: ...

class BlobPinRef(_message.Message):
    __slots__ = ("digest", "pin")
    DIGEST_FIELD_NUMBER: _ClassVar[int]
    PIN_FIELD_NUMBER: _ClassVar[int]
    digest: str
    pin: str
    def __init__(self, digest: _Optional[str] = ..., pin: _Optional[str] = ...) -> None: ...

class CollectRequest(_message.Message):
    __slots__ = ("repository", "grace_ms", "delete_untagged", "dry_run")
    REPOSITORY_FIELD_NUMBER: _ClassVar[int]
    GRACE_MS_FIELD_NUMBER: _ClassVar[int]
    DELETE_UNTAGGED_FIELD_NUMBER: _ClassVar[int]
    DRY_RUN_FIELD_NUMBER: _ClassVar[int]
    repository: str
    grace_ms: int
    delete_untagged: bool
    dry_run: bool
    def __init__(self, repository: _Optional[str] = ..., grace_ms: _Optional[int] = ..., delete_untagged: _Optional[bool] = ..., dry_run: _Optional[bool] = ...) -> None: ...

class CollectResponse(_message.Message):
    __slots__ = ("unlinked", "removed_manifests")
    UNLINKED_FIELD_NUMBER: _ClassVar[int]
    REMOVED_MANIFESTS_FIELD_NUMBER: _ClassVar[int]
    unlinked: _containers.RepeatedScalarFieldContainer[str]
    removed_manifests: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, unlinked: _Optional[_Iterable[str]] = ..., removed_manifests: _Optional[_Iterable[str]] = ...) -> None: ...

class BlobDeleteRequest(_message.Message):
    __slots__ = ("digest", "fence")
    DIGEST_FIELD_NUMBER: _ClassVar[int]
    FENCE_FIELD_NUMBER: _ClassVar[int]
    digest: str
    fence: str
    def __init__(self, digest: _Optional[str] = ..., fence: _Optional[str] = ...) -> None: ...

class BlobDeleteResponse(_message.Message):
    __slots__ = ("fence", "refused")
    FENCE_FIELD_NUMBER: _ClassVar[int]
    REFUSED_FIELD_NUMBER: _ClassVar[int]
    fence: str
    refused: str
    def __init__(self, fence: _Optional[str] = ..., refused: _Optional[str] = ...) -> None: ...

class WatchRequest(_message.Message):
    __slots__ = ("ping", "ack")
    PING_FIELD_NUMBER: _ClassVar[int]
    ACK_FIELD_NUMBER: _ClassVar[int]
    ping: int
    ack: int
    def __init__(self, ping: _Optional[int] = ..., ack: _Optional[int] = ...) -> None: ...

class WatchEvent(_message.Message):
    __slots__ = ("pong", "lease_ms", "seq", "repositories")
    PONG_FIELD_NUMBER: _ClassVar[int]
    LEASE_MS_FIELD_NUMBER: _ClassVar[int]
    SEQ_FIELD_NUMBER: _ClassVar[int]
    REPOSITORIES_FIELD_NUMBER: _ClassVar[int]
    pong: int
    lease_ms: int
    seq: int
    repositories: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, pong: _Optional[int] = ..., lease_ms: _Optional[int] = ..., seq: _Optional[int] = ..., repositories: _Optional[_Iterable[str]] = ...) -> None: ...

class LinkBlobRequest(_message.Message):
    __slots__ = ("repository", "digest", "size", "pin", "source", "origin", "upload_id", "unpinned", "collections_seen")
    REPOSITORY_FIELD_NUMBER: _ClassVar[int]
    DIGEST_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    PIN_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    ORIGIN_FIELD_NUMBER: _ClassVar[int]
    UPLOAD_ID_FIELD_NUMBER: _ClassVar[int]
    UNPINNED_FIELD_NUMBER: _ClassVar[int]
    COLLECTIONS_SEEN_FIELD_NUMBER: _ClassVar[int]
    repository: str
    digest: str
    size: int
    pin: str
    source: str
    origin: Origin
    upload_id: str
    unpinned: bool
    collections_seen: int
    def __init__(self, repository: _Optional[str] = ..., digest: _Optional[str] = ..., size: _Optional[int] = ..., pin: _Optional[str] = ..., source: _Optional[str] = ..., origin: _Optional[_Union[Origin, _Mapping]] = ..., upload_id: _Optional[str] = ..., unpinned: _Optional[bool] = ..., collections_seen: _Optional[int] = ...) -> None: ...

class LinkBlobResponse(_message.Message):
    __slots__ = ("linked", "collections_started", "collecting", "collection_moved")
    LINKED_FIELD_NUMBER: _ClassVar[int]
    COLLECTIONS_STARTED_FIELD_NUMBER: _ClassVar[int]
    COLLECTING_FIELD_NUMBER: _ClassVar[int]
    COLLECTION_MOVED_FIELD_NUMBER: _ClassVar[int]
    linked: bool
    collections_started: int
    collecting: bool
    collection_moved: bool
    def __init__(self, linked: _Optional[bool] = ..., collections_started: _Optional[int] = ..., collecting: _Optional[bool] = ..., collection_moved: _Optional[bool] = ...) -> None: ...

class BlobRef(_message.Message):
    __slots__ = ("repository", "digest", "origin", "guard_immutable")
    REPOSITORY_FIELD_NUMBER: _ClassVar[int]
    DIGEST_FIELD_NUMBER: _ClassVar[int]
    ORIGIN_FIELD_NUMBER: _ClassVar[int]
    GUARD_IMMUTABLE_FIELD_NUMBER: _ClassVar[int]
    repository: str
    digest: str
    origin: Origin
    guard_immutable: bool
    def __init__(self, repository: _Optional[str] = ..., digest: _Optional[str] = ..., origin: _Optional[_Union[Origin, _Mapping]] = ..., guard_immutable: _Optional[bool] = ...) -> None: ...

class Origin(_message.Message):
    __slots__ = ("account", "address", "user_agent", "request_id", "host", "method", "mirror_fill")
    ACCOUNT_FIELD_NUMBER: _ClassVar[int]
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    USER_AGENT_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    HOST_FIELD_NUMBER: _ClassVar[int]
    METHOD_FIELD_NUMBER: _ClassVar[int]
    MIRROR_FILL_FIELD_NUMBER: _ClassVar[int]
    account: str
    address: str
    user_agent: str
    request_id: str
    host: str
    method: str
    mirror_fill: bool
    def __init__(self, account: _Optional[str] = ..., address: _Optional[str] = ..., user_agent: _Optional[str] = ..., request_id: _Optional[str] = ..., host: _Optional[str] = ..., method: _Optional[str] = ..., mirror_fill: _Optional[bool] = ...) -> None: ...

class BlobLink(_message.Message):
    __slots__ = ("digest", "size")
    DIGEST_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    digest: str
    size: int
    def __init__(self, digest: _Optional[str] = ..., size: _Optional[int] = ...) -> None: ...

class UnlinkBlobResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class BlobRepositoriesRequest(_message.Message):
    __slots__ = ("digest", "limit")
    DIGEST_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    digest: str
    limit: int
    def __init__(self, digest: _Optional[str] = ..., limit: _Optional[int] = ...) -> None: ...

class BlobRepositoriesResponse(_message.Message):
    __slots__ = ("repositories", "size")
    REPOSITORIES_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    repositories: _containers.RepeatedScalarFieldContainer[str]
    size: int
    def __init__(self, repositories: _Optional[_Iterable[str]] = ..., size: _Optional[int] = ...) -> None: ...

class Descriptor(_message.Message):
    __slots__ = ("media_type", "digest", "size", "artifact_type", "annotations")
    class AnnotationsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    MEDIA_TYPE_FIELD_NUMBER: _ClassVar[int]
    DIGEST_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    ARTIFACT_TYPE_FIELD_NUMBER: _ClassVar[int]
    ANNOTATIONS_FIELD_NUMBER: _ClassVar[int]
    media_type: str
    digest: str
    size: int
    artifact_type: str
    annotations: _containers.ScalarMap[str, str]
    def __init__(self, media_type: _Optional[str] = ..., digest: _Optional[str] = ..., size: _Optional[int] = ..., artifact_type: _Optional[str] = ..., annotations: _Optional[_Mapping[str, str]] = ...) -> None: ...

class PutManifestRequest(_message.Message):
    __slots__ = ("repository", "digest", "media_type", "content", "tags", "blob_references", "manifest_references", "subject", "descriptor", "blob_reference_sizes", "manifest_reference_sizes", "count_only_references", "origin")
    REPOSITORY_FIELD_NUMBER: _ClassVar[int]
    DIGEST_FIELD_NUMBER: _ClassVar[int]
    MEDIA_TYPE_FIELD_NUMBER: _ClassVar[int]
    CONTENT_FIELD_NUMBER: _ClassVar[int]
    TAGS_FIELD_NUMBER: _ClassVar[int]
    BLOB_REFERENCES_FIELD_NUMBER: _ClassVar[int]
    MANIFEST_REFERENCES_FIELD_NUMBER: _ClassVar[int]
    SUBJECT_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTOR_FIELD_NUMBER: _ClassVar[int]
    BLOB_REFERENCE_SIZES_FIELD_NUMBER: _ClassVar[int]
    MANIFEST_REFERENCE_SIZES_FIELD_NUMBER: _ClassVar[int]
    COUNT_ONLY_REFERENCES_FIELD_NUMBER: _ClassVar[int]
    ORIGIN_FIELD_NUMBER: _ClassVar[int]
    repository: str
    digest: str
    media_type: str
    content: bytes
    tags: _containers.RepeatedScalarFieldContainer[str]
    blob_references: _containers.RepeatedScalarFieldContainer[str]
    manifest_references: _containers.RepeatedScalarFieldContainer[str]
    subject: str
    descriptor: Descriptor
    blob_reference_sizes: _containers.RepeatedScalarFieldContainer[int]
    manifest_reference_sizes: _containers.RepeatedScalarFieldContainer[int]
    count_only_references: bool
    origin: Origin
    def __init__(self, repository: _Optional[str] = ..., digest: _Optional[str] = ..., media_type: _Optional[str] = ..., content: _Optional[bytes] = ..., tags: _Optional[_Iterable[str]] = ..., blob_references: _Optional[_Iterable[str]] = ..., manifest_references: _Optional[_Iterable[str]] = ..., subject: _Optional[str] = ..., descriptor: _Optional[_Union[Descriptor, _Mapping]] = ..., blob_reference_sizes: _Optional[_Iterable[int]] = ..., manifest_reference_sizes: _Optional[_Iterable[int]] = ..., count_only_references: _Optional[bool] = ..., origin: _Optional[_Union[Origin, _Mapping]] = ...) -> None: ...

class PutManifestResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ManifestRef(_message.Message):
    __slots__ = ("repository", "reference", "origin", "only_dangling")
    REPOSITORY_FIELD_NUMBER: _ClassVar[int]
    REFERENCE_FIELD_NUMBER: _ClassVar[int]
    ORIGIN_FIELD_NUMBER: _ClassVar[int]
    ONLY_DANGLING_FIELD_NUMBER: _ClassVar[int]
    repository: str
    reference: str
    origin: Origin
    only_dangling: bool
    def __init__(self, repository: _Optional[str] = ..., reference: _Optional[str] = ..., origin: _Optional[_Union[Origin, _Mapping]] = ..., only_dangling: _Optional[bool] = ...) -> None: ...

class Manifest(_message.Message):
    __slots__ = ("digest", "media_type", "content", "subject")
    DIGEST_FIELD_NUMBER: _ClassVar[int]
    MEDIA_TYPE_FIELD_NUMBER: _ClassVar[int]
    CONTENT_FIELD_NUMBER: _ClassVar[int]
    SUBJECT_FIELD_NUMBER: _ClassVar[int]
    digest: str
    media_type: str
    content: bytes
    subject: str
    def __init__(self, digest: _Optional[str] = ..., media_type: _Optional[str] = ..., content: _Optional[bytes] = ..., subject: _Optional[str] = ...) -> None: ...

class DeleteManifestResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class DeleteTagResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListRequest(_message.Message):
    __slots__ = ("repository", "last", "limit", "order", "with_details")
    REPOSITORY_FIELD_NUMBER: _ClassVar[int]
    LAST_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    ORDER_FIELD_NUMBER: _ClassVar[int]
    WITH_DETAILS_FIELD_NUMBER: _ClassVar[int]
    repository: str
    last: str
    limit: int
    order: str
    with_details: bool
    def __init__(self, repository: _Optional[str] = ..., last: _Optional[str] = ..., limit: _Optional[int] = ..., order: _Optional[str] = ..., with_details: _Optional[bool] = ...) -> None: ...

class ListResponse(_message.Message):
    __slots__ = ("names", "more", "pushed_at_ms", "digests")
    NAMES_FIELD_NUMBER: _ClassVar[int]
    MORE_FIELD_NUMBER: _ClassVar[int]
    PUSHED_AT_MS_FIELD_NUMBER: _ClassVar[int]
    DIGESTS_FIELD_NUMBER: _ClassVar[int]
    names: _containers.RepeatedScalarFieldContainer[str]
    more: bool
    pushed_at_ms: _containers.RepeatedScalarFieldContainer[int]
    digests: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, names: _Optional[_Iterable[str]] = ..., more: _Optional[bool] = ..., pushed_at_ms: _Optional[_Iterable[int]] = ..., digests: _Optional[_Iterable[str]] = ...) -> None: ...

class ListReferrersRequest(_message.Message):
    __slots__ = ("repository", "subject", "artifact_type", "after", "max_bytes")
    REPOSITORY_FIELD_NUMBER: _ClassVar[int]
    SUBJECT_FIELD_NUMBER: _ClassVar[int]
    ARTIFACT_TYPE_FIELD_NUMBER: _ClassVar[int]
    AFTER_FIELD_NUMBER: _ClassVar[int]
    MAX_BYTES_FIELD_NUMBER: _ClassVar[int]
    repository: str
    subject: str
    artifact_type: str
    after: str
    max_bytes: int
    def __init__(self, repository: _Optional[str] = ..., subject: _Optional[str] = ..., artifact_type: _Optional[str] = ..., after: _Optional[str] = ..., max_bytes: _Optional[int] = ...) -> None: ...

class ListReferrersResponse(_message.Message):
    __slots__ = ("referrers", "more")
    REFERRERS_FIELD_NUMBER: _ClassVar[int]
    MORE_FIELD_NUMBER: _ClassVar[int]
    referrers: _containers.RepeatedCompositeFieldContainer[Descriptor]
    more: bool
    def __init__(self, referrers: _Optional[_Iterable[_Union[Descriptor, _Mapping]]] = ..., more: _Optional[bool] = ...) -> None: ...
