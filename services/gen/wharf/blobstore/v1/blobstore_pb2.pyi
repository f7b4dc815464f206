from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class FetchReferrersRequest(_message.Message):
    __slots__ = ("upstream", "repository", "digest", "artifact_type")
    UPSTREAM_FIELD_NUMBER: _ClassVar[int]
    REPOSITORY_FIELD_NUMBER: _ClassVar[int]
    DIGEST_FIELD_NUMBER: _ClassVar[int]
    ARTIFACT_TYPE_FIELD_NUMBER: _ClassVar[int]
    upstream: str
    repository: str
    digest: str
    artifact_type: str
    def __init__(self, upstream: _Optional[str] = ..., repository: _Optional[str] = ..., digest: _Optional[str] = ..., artifact_type: _Optional[str] = ...) -> None: ...

class FetchedReferrers(_message.Message):
    __slots__ = ("index",)
    INDEX_FIELD_NUMBER: _ClassVar[int]
    index: bytes
    def __init__(self, index: _Optional[bytes] = ...) -> None: ...

class FillRequest(_message.Message):
    __slots__ = ("upstream", "repository", "digest", "verify")
    UPSTREAM_FIELD_NUMBER: _ClassVar[int]
    REPOSITORY_FIELD_NUMBER: _ClassVar[int]
    DIGEST_FIELD_NUMBER: _ClassVar[int]
    VERIFY_FIELD_NUMBER: _ClassVar[int]
    upstream: str
    repository: str
    digest: str
    verify: bool
    def __init__(self, upstream: _Optional[str] = ..., repository: _Optional[str] = ..., digest: _Optional[str] = ..., verify: _Optional[bool] = ...) -> None: ...

class FetchManifestRequest(_message.Message):
    __slots__ = ("upstream", "repository", "reference", "head")
    UPSTREAM_FIELD_NUMBER: _ClassVar[int]
    REPOSITORY_FIELD_NUMBER: _ClassVar[int]
    REFERENCE_FIELD_NUMBER: _ClassVar[int]
    HEAD_FIELD_NUMBER: _ClassVar[int]
    upstream: str
    repository: str
    reference: str
    head: bool
    def __init__(self, upstream: _Optional[str] = ..., repository: _Optional[str] = ..., reference: _Optional[str] = ..., head: _Optional[bool] = ...) -> None: ...

class FetchedManifest(_message.Message):
    __slots__ = ("digest", "media_type", "size", "content")
    DIGEST_FIELD_NUMBER: _ClassVar[int]
    MEDIA_TYPE_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    CONTENT_FIELD_NUMBER: _ClassVar[int]
    digest: str
    media_type: str
    size: int
    content: bytes
    def __init__(self, digest: _Optional[str] = ..., media_type: _Optional[str] = ..., size: _Optional[int] = ..., content: _Optional[bytes] = ...) -> None: ...

class StatRequest(_message.Message):
    __slots__ = ("digest", "want_location")
    DIGEST_FIELD_NUMBER: _ClassVar[int]
    WANT_LOCATION_FIELD_NUMBER: _ClassVar[int]
    digest: str
    want_location: bool
    def __init__(self, digest: _Optional[str] = ..., want_location: _Optional[bool] = ...) -> None: ...

class BlobInfo(_message.Message):
    __slots__ = ("digest", "size", "local_path", "redirect_url")
    DIGEST_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    LOCAL_PATH_FIELD_NUMBER: _ClassVar[int]
    REDIRECT_URL_FIELD_NUMBER: _ClassVar[int]
    digest: str
    size: int
    local_path: str
    redirect_url: str
    def __init__(self, digest: _Optional[str] = ..., size: _Optional[int] = ..., local_path: _Optional[str] = ..., redirect_url: _Optional[str] = ...) -> None: ...

class ReadRequest(_message.Message):
    __slots__ = ("digest", "offset", "length", "chunk_size")
    DIGEST_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    LENGTH_FIELD_NUMBER: _ClassVar[int]
    CHUNK_SIZE_FIELD_NUMBER: _ClassVar[int]
    digest: str
    offset: int
    length: int
    chunk_size: int
    def __init__(self, digest: _Optional[str] = ..., offset: _Optional[int] = ..., length: _Optional[int] = ..., chunk_size: _Optional[int] = ...) -> None: ...

class Chunk(_message.Message):
    __slots__ = ("data", "total", "stored")
    DATA_FIELD_NUMBER: _ClassVar[int]
    TOTAL_FIELD_NUMBER: _ClassVar[int]
    STORED_FIELD_NUMBER: _ClassVar[int]
    data: bytes
    total: int
    stored: bool
    def __init__(self, data: _Optional[bytes] = ..., total: _Optional[int] = ..., stored: _Optional[bool] = ...) -> None: ...

class DeleteRequest(_message.Message):
    __slots__ = ("digest",)
    DIGEST_FIELD_NUMBER: _ClassVar[int]
    digest: str
    def __init__(self, digest: _Optional[str] = ...) -> None: ...

class DeleteResponse(_message.Message):
    __slots__ = ("deleted",)
    DELETED_FIELD_NUMBER: _ClassVar[int]
    deleted: bool
    def __init__(self, deleted: _Optional[bool] = ...) -> None: ...

class PutRequest(_message.Message):
    __slots__ = ("digest", "data")
    DIGEST_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    digest: str
    data: bytes
    def __init__(self, digest: _Optional[str] = ..., data: _Optional[bytes] = ...) -> None: ...

class CreateUploadRequest(_message.Message):
    __slots__ = ("repository",)
    REPOSITORY_FIELD_NUMBER: _ClassVar[int]
    repository: str
    def __init__(self, repository: _Optional[str] = ...) -> None: ...

class UploadRef(_message.Message):
    __slots__ = ("upload_id", "repository")
    UPLOAD_ID_FIELD_NUMBER: _ClassVar[int]
    REPOSITORY_FIELD_NUMBER: _ClassVar[int]
    upload_id: str
    repository: str
    def __init__(self, upload_id: _Optional[str] = ..., repository: _Optional[str] = ...) -> None: ...

class UploadStatus(_message.Message):
    __slots__ = ("upload_id", "repository", "size", "started_at")
    UPLOAD_ID_FIELD_NUMBER: _ClassVar[int]
    REPOSITORY_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    STARTED_AT_FIELD_NUMBER: _ClassVar[int]
    upload_id: str
    repository: str
    size: int
    started_at: int
    def __init__(self, upload_id: _Optional[str] = ..., repository: _Optional[str] = ..., size: _Optional[int] = ..., started_at: _Optional[int] = ...) -> None: ...

class AppendRequest(_message.Message):
    __slots__ = ("upload", "offset", "commit_digest", "data")
    UPLOAD_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    COMMIT_DIGEST_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    upload: UploadRef
    offset: int
    commit_digest: str
    data: bytes
    def __init__(self, upload: _Optional[_Union[UploadRef, _Mapping]] = ..., offset: _Optional[int] = ..., commit_digest: _Optional[str] = ..., data: _Optional[bytes] = ...) -> None: ...

class AppendResponse(_message.Message):
    __slots__ = ("status", "blob")
    STATUS_FIELD_NUMBER: _ClassVar[int]
    BLOB_FIELD_NUMBER: _ClassVar[int]
    status: UploadStatus
    blob: BlobInfo
    def __init__(self, status: _Optional[_Union[UploadStatus, _Mapping]] = ..., blob: _Optional[_Union[BlobInfo, _Mapping]] = ...) -> None: ...

class CommitUploadRequest(_message.Message):
    __slots__ = ("upload", "digest")
    UPLOAD_FIELD_NUMBER: _ClassVar[int]
    DIGEST_FIELD_NUMBER: _ClassVar[int]
    upload: UploadRef
    digest: str
    def __init__(self, upload: _Optional[_Union[UploadRef, _Mapping]] = ..., digest: _Optional[str] = ...) -> None: ...

class CancelUploadResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...
