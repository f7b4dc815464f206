from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

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
    __slots__ = ("repository", "digest", "size")
    REPOSITORY_FIELD_NUMBER: _ClassVar[int]
    DIGEST_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    repository: str
    digest: str
    size: int
    def __init__(self, repository: _Optional[str] = ..., digest: _Optional[str] = ..., size: _Optional[int] = ...) -> None: ...

class LinkBlobResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class BlobRef(_message.Message):
    __slots__ = ("repository", "digest")
    REPOSITORY_FIELD_NUMBER: _ClassVar[int]
    DIGEST_FIELD_NUMBER: _ClassVar[int]
    repository: str
    digest: str
    def __init__(self, repository: _Optional[str] = ..., digest: _Optional[str] = ...) -> None: ...

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
    __slots__ = ("repository", "digest", "media_type", "content", "tags", "blob_references", "manifest_references", "subject", "descriptor", "blob_reference_sizes", "manifest_reference_sizes")
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
    def __init__(self, repository: _Optional[str] = ..., digest: _Optional[str] = ..., media_type: _Optional[str] = ..., content: _Optional[bytes] = ..., tags: _Optional[_Iterable[str]] = ..., blob_references: _Optional[_Iterable[str]] = ..., manifest_references: _Optional[_Iterable[str]] = ..., subject: _Optional[str] = ..., descriptor: _Optional[_Union[Descriptor, _Mapping]] = ..., blob_reference_sizes: _Optional[_Iterable[int]] = ..., manifest_reference_sizes: _Optional[_Iterable[int]] = ...) -> None: ...

class PutManifestResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ManifestRef(_message.Message):
    __slots__ = ("repository", "reference")
    REPOSITORY_FIELD_NUMBER: _ClassVar[int]
    REFERENCE_FIELD_NUMBER: _ClassVar[int]
    repository: str
    reference: str
    def __init__(self, repository: _Optional[str] = ..., reference: _Optional[str] = ...) -> None: ...

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
    __slots__ = ("repository", "last", "limit")
    REPOSITORY_FIELD_NUMBER: _ClassVar[int]
    LAST_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    repository: str
    last: str
    limit: int
    def __init__(self, repository: _Optional[str] = ..., last: _Optional[str] = ..., limit: _Optional[int] = ...) -> None: ...

class ListResponse(_message.Message):
    __slots__ = ("names", "more")
    NAMES_FIELD_NUMBER: _ClassVar[int]
    MORE_FIELD_NUMBER: _ClassVar[int]
    names: _containers.RepeatedScalarFieldContainer[str]
    more: bool
    def __init__(self, names: _Optional[_Iterable[str]] = ..., more: _Optional[bool] = ...) -> None: ...

class ListReferrersRequest(_message.Message):
    __slots__ = ("repository", "subject", "artifact_type")
    REPOSITORY_FIELD_NUMBER: _ClassVar[int]
    SUBJECT_FIELD_NUMBER: _ClassVar[int]
    ARTIFACT_TYPE_FIELD_NUMBER: _ClassVar[int]
    repository: str
    subject: str
    artifact_type: str
    def __init__(self, repository: _Optional[str] = ..., subject: _Optional[str] = ..., artifact_type: _Optional[str] = ...) -> None: ...

class ListReferrersResponse(_message.Message):
    __slots__ = ("referrers",)
    REFERRERS_FIELD_NUMBER: _ClassVar[int]
    referrers: _containers.RepeatedCompositeFieldContainer[Descriptor]
    def __init__(self, referrers: _Optional[_Iterable[_Union[Descriptor, _Mapping]]] = ...) -> None: ...
