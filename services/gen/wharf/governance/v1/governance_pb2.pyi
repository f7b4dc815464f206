from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Actor(_message.Message):
    __slots__ = ("account", "address", "via")
    ACCOUNT_FIELD_NUMBER: _ClassVar[int]
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    VIA_FIELD_NUMBER: _ClassVar[int]
    account: str
    address: str
    via: str
    def __init__(self, account: _Optional[str] = ..., address: _Optional[str] = ..., via: _Optional[str] = ...) -> None: ...

class GetPolicyRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class Policy(_message.Message):
    __slots__ = ("document", "version", "file_document")
    DOCUMENT_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    FILE_DOCUMENT_FIELD_NUMBER: _ClassVar[int]
    document: str
    version: int
    file_document: str
    def __init__(self, document: _Optional[str] = ..., version: _Optional[int] = ..., file_document: _Optional[str] = ...) -> None: ...

class SetRuleRequest(_message.Message):
    __slots__ = ("kind", "rule", "actor")
    KIND_FIELD_NUMBER: _ClassVar[int]
    RULE_FIELD_NUMBER: _ClassVar[int]
    ACTOR_FIELD_NUMBER: _ClassVar[int]
    kind: str
    rule: str
    actor: Actor
    def __init__(self, kind: _Optional[str] = ..., rule: _Optional[str] = ..., actor: _Optional[_Union[Actor, _Mapping]] = ...) -> None: ...

class RemoveRuleRequest(_message.Message):
    __slots__ = ("kind", "key", "actor")
    KIND_FIELD_NUMBER: _ClassVar[int]
    KEY_FIELD_NUMBER: _ClassVar[int]
    ACTOR_FIELD_NUMBER: _ClassVar[int]
    kind: str
    key: str
    actor: Actor
    def __init__(self, kind: _Optional[str] = ..., key: _Optional[str] = ..., actor: _Optional[_Union[Actor, _Mapping]] = ...) -> None: ...

class UsageRequest(_message.Message):
    __slots__ = ("namespace", "repositories")
    NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    REPOSITORIES_FIELD_NUMBER: _ClassVar[int]
    namespace: str
    repositories: bool
    def __init__(self, namespace: _Optional[str] = ..., repositories: _Optional[bool] = ...) -> None: ...

class RepositoryUsage(_message.Message):
    __slots__ = ("name", "bytes")
    NAME_FIELD_NUMBER: _ClassVar[int]
    BYTES_FIELD_NUMBER: _ClassVar[int]
    name: str
    bytes: int
    def __init__(self, name: _Optional[str] = ..., bytes: _Optional[int] = ...) -> None: ...

class NamespaceUsage(_message.Message):
    __slots__ = ("namespace", "bytes", "reserved", "limit", "repositories")
    NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    BYTES_FIELD_NUMBER: _ClassVar[int]
    RESERVED_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    REPOSITORIES_FIELD_NUMBER: _ClassVar[int]
    namespace: str
    bytes: int
    reserved: int
    limit: int
    repositories: _containers.RepeatedCompositeFieldContainer[RepositoryUsage]
    def __init__(self, namespace: _Optional[str] = ..., bytes: _Optional[int] = ..., reserved: _Optional[int] = ..., limit: _Optional[int] = ..., repositories: _Optional[_Iterable[_Union[RepositoryUsage, _Mapping]]] = ...) -> None: ...

class UsageResponse(_message.Message):
    __slots__ = ("namespaces",)
    NAMESPACES_FIELD_NUMBER: _ClassVar[int]
    namespaces: _containers.RepeatedCompositeFieldContainer[NamespaceUsage]
    def __init__(self, namespaces: _Optional[_Iterable[_Union[NamespaceUsage, _Mapping]]] = ...) -> None: ...

class ReserveUploadRequest(_message.Message):
    __slots__ = ("repository", "upload_id", "bytes")
    REPOSITORY_FIELD_NUMBER: _ClassVar[int]
    UPLOAD_ID_FIELD_NUMBER: _ClassVar[int]
    BYTES_FIELD_NUMBER: _ClassVar[int]
    repository: str
    upload_id: str
    bytes: int
    def __init__(self, repository: _Optional[str] = ..., upload_id: _Optional[str] = ..., bytes: _Optional[int] = ...) -> None: ...

class ReleaseUploadRequest(_message.Message):
    __slots__ = ("repository", "upload_id", "keep")
    REPOSITORY_FIELD_NUMBER: _ClassVar[int]
    UPLOAD_ID_FIELD_NUMBER: _ClassVar[int]
    KEEP_FIELD_NUMBER: _ClassVar[int]
    repository: str
    upload_id: str
    keep: int
    def __init__(self, repository: _Optional[str] = ..., upload_id: _Optional[str] = ..., keep: _Optional[int] = ...) -> None: ...

class ReserveUploadResponse(_message.Message):
    __slots__ = ("limit",)
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    limit: int
    def __init__(self, limit: _Optional[int] = ...) -> None: ...

class RetentionRequest(_message.Message):
    __slots__ = ("dry_run", "repositories", "actor")
    DRY_RUN_FIELD_NUMBER: _ClassVar[int]
    REPOSITORIES_FIELD_NUMBER: _ClassVar[int]
    ACTOR_FIELD_NUMBER: _ClassVar[int]
    dry_run: bool
    repositories: str
    actor: Actor
    def __init__(self, dry_run: _Optional[bool] = ..., repositories: _Optional[str] = ..., actor: _Optional[_Union[Actor, _Mapping]] = ...) -> None: ...

class RetentionItem(_message.Message):
    __slots__ = ("repository", "tag", "digest", "reason", "at_ms")
    REPOSITORY_FIELD_NUMBER: _ClassVar[int]
    TAG_FIELD_NUMBER: _ClassVar[int]
    DIGEST_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    AT_MS_FIELD_NUMBER: _ClassVar[int]
    repository: str
    tag: str
    digest: str
    reason: str
    at_ms: int
    def __init__(self, repository: _Optional[str] = ..., tag: _Optional[str] = ..., digest: _Optional[str] = ..., reason: _Optional[str] = ..., at_ms: _Optional[int] = ...) -> None: ...

class RetentionReport(_message.Message):
    __slots__ = ("deleted", "kept", "deleted_more", "kept_more", "repositories")
    DELETED_FIELD_NUMBER: _ClassVar[int]
    KEPT_FIELD_NUMBER: _ClassVar[int]
    DELETED_MORE_FIELD_NUMBER: _ClassVar[int]
    KEPT_MORE_FIELD_NUMBER: _ClassVar[int]
    REPOSITORIES_FIELD_NUMBER: _ClassVar[int]
    deleted: _containers.RepeatedCompositeFieldContainer[RetentionItem]
    kept: _containers.RepeatedCompositeFieldContainer[RetentionItem]
    deleted_more: int
    kept_more: int
    repositories: int
    def __init__(self, deleted: _Optional[_Iterable[_Union[RetentionItem, _Mapping]]] = ..., kept: _Optional[_Iterable[_Union[RetentionItem, _Mapping]]] = ..., deleted_more: _Optional[int] = ..., kept_more: _Optional[int] = ..., repositories: _Optional[int] = ...) -> None: ...

class TokenBucket(_message.Message):
    __slots__ = ("key", "rate", "burst", "want", "take")
    class Take(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        UP_TO: _ClassVar[TokenBucket.Take]
        DEBT: _ClassVar[TokenBucket.Take]
        CHARGE: _ClassVar[TokenBucket.Take]
    UP_TO: TokenBucket.Take
    DEBT: TokenBucket.Take
    CHARGE: TokenBucket.Take
    KEY_FIELD_NUMBER: _ClassVar[int]
    RATE_FIELD_NUMBER: _ClassVar[int]
    BURST_FIELD_NUMBER: _ClassVar[int]
    WANT_FIELD_NUMBER: _ClassVar[int]
    TAKE_FIELD_NUMBER: _ClassVar[int]
    key: str
    rate: float
    burst: float
    want: float
    take: TokenBucket.Take
    def __init__(self, key: _Optional[str] = ..., rate: _Optional[float] = ..., burst: _Optional[float] = ..., want: _Optional[float] = ..., take: _Optional[_Union[TokenBucket.Take, str]] = ...) -> None: ...

class TokenGrant(_message.Message):
    __slots__ = ("granted", "retry_after_ms")
    GRANTED_FIELD_NUMBER: _ClassVar[int]
    RETRY_AFTER_MS_FIELD_NUMBER: _ClassVar[int]
    granted: float
    retry_after_ms: int
    def __init__(self, granted: _Optional[float] = ..., retry_after_ms: _Optional[int] = ...) -> None: ...

class TakeTokensRequest(_message.Message):
    __slots__ = ("buckets",)
    BUCKETS_FIELD_NUMBER: _ClassVar[int]
    buckets: _containers.RepeatedCompositeFieldContainer[TokenBucket]
    def __init__(self, buckets: _Optional[_Iterable[_Union[TokenBucket, _Mapping]]] = ...) -> None: ...

class TakeTokensResponse(_message.Message):
    __slots__ = ("grants",)
    GRANTS_FIELD_NUMBER: _ClassVar[int]
    grants: _containers.RepeatedCompositeFieldContainer[TokenGrant]
    def __init__(self, grants: _Optional[_Iterable[_Union[TokenGrant, _Mapping]]] = ...) -> None: ...

class AuditRecord(_message.Message):
    __slots__ = ("at_ms", "account", "account_kind", "address", "action", "repository", "reference", "result", "status", "detail", "request_id", "via", "id", "user_agent")
    AT_MS_FIELD_NUMBER: _ClassVar[int]
    ACCOUNT_FIELD_NUMBER: _ClassVar[int]
    ACCOUNT_KIND_FIELD_NUMBER: _ClassVar[int]
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    ACTION_FIELD_NUMBER: _ClassVar[int]
    REPOSITORY_FIELD_NUMBER: _ClassVar[int]
    REFERENCE_FIELD_NUMBER: _ClassVar[int]
    RESULT_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    DETAIL_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    VIA_FIELD_NUMBER: _ClassVar[int]
    ID_FIELD_NUMBER: _ClassVar[int]
    USER_AGENT_FIELD_NUMBER: _ClassVar[int]
    at_ms: int
    account: str
    account_kind: str
    address: str
    action: str
    repository: str
    reference: str
    result: str
    status: int
    detail: str
    request_id: str
    via: str
    id: str
    user_agent: str
    def __init__(self, at_ms: _Optional[int] = ..., account: _Optional[str] = ..., account_kind: _Optional[str] = ..., address: _Optional[str] = ..., action: _Optional[str] = ..., repository: _Optional[str] = ..., reference: _Optional[str] = ..., result: _Optional[str] = ..., status: _Optional[int] = ..., detail: _Optional[str] = ..., request_id: _Optional[str] = ..., via: _Optional[str] = ..., id: _Optional[str] = ..., user_agent: _Optional[str] = ...) -> None: ...

class RecordAuditRequest(_message.Message):
    __slots__ = ("records",)
    RECORDS_FIELD_NUMBER: _ClassVar[int]
    records: _containers.RepeatedCompositeFieldContainer[AuditRecord]
    def __init__(self, records: _Optional[_Iterable[_Union[AuditRecord, _Mapping]]] = ...) -> None: ...

class RecordAuditResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class QueryAuditRequest(_message.Message):
    __slots__ = ("account", "repository", "since_ms", "until_ms", "limit", "after", "action", "oldest_first")
    ACCOUNT_FIELD_NUMBER: _ClassVar[int]
    REPOSITORY_FIELD_NUMBER: _ClassVar[int]
    SINCE_MS_FIELD_NUMBER: _ClassVar[int]
    UNTIL_MS_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    AFTER_FIELD_NUMBER: _ClassVar[int]
    ACTION_FIELD_NUMBER: _ClassVar[int]
    OLDEST_FIRST_FIELD_NUMBER: _ClassVar[int]
    account: str
    repository: str
    since_ms: int
    until_ms: int
    limit: int
    after: str
    action: str
    oldest_first: bool
    def __init__(self, account: _Optional[str] = ..., repository: _Optional[str] = ..., since_ms: _Optional[int] = ..., until_ms: _Optional[int] = ..., limit: _Optional[int] = ..., after: _Optional[str] = ..., action: _Optional[str] = ..., oldest_first: _Optional[bool] = ...) -> None: ...

class QueryAuditResponse(_message.Message):
    __slots__ = ("records", "next")
    RECORDS_FIELD_NUMBER: _ClassVar[int]
    NEXT_FIELD_NUMBER: _ClassVar[int]
    records: _containers.RepeatedCompositeFieldContainer[AuditRecord]
    next: str
    def __init__(self, records: _Optional[_Iterable[_Union[AuditRecord, _Mapping]]] = ..., next: _Optional[str] = ...) -> None: ...

class DeleteRepositoryRequest(_message.Message):
    __slots__ = ("repository", "actor")
    REPOSITORY_FIELD_NUMBER: _ClassVar[int]
    ACTOR_FIELD_NUMBER: _ClassVar[int]
    repository: str
    actor: Actor
    def __init__(self, repository: _Optional[str] = ..., actor: _Optional[_Union[Actor, _Mapping]] = ...) -> None: ...

class DeleteRepositoryResponse(_message.Message):
    __slots__ = ("tags", "manifests", "blobs")
    TAGS_FIELD_NUMBER: _ClassVar[int]
    MANIFESTS_FIELD_NUMBER: _ClassVar[int]
    BLOBS_FIELD_NUMBER: _ClassVar[int]
    tags: int
    manifests: int
    blobs: int
    def __init__(self, tags: _Optional[int] = ..., manifests: _Optional[int] = ..., blobs: _Optional[int] = ...) -> None: ...
