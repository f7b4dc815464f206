"""The reusable parts of the OpenAPI document (scripts/gen_openapi.py): its description, and its
components: schemas, parameters, headers and responses. Patterns and error codes are read from
services/common, the code that enforces them."""

from __future__ import annotations

from typing import Any

from services.common import mediatypes, upload_ids
from services.common.errors import INTERNAL, OCI_CODES, UNAVAILABLE
from services.common.names import MAX_NAME_LENGTH, TAG_RE

# Name depths written out as path templates; deeper names work the same way (see info()).
MAX_COMPONENTS = 4
COMPONENT = r"[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*"
NAME = rf"^{COMPONENT}(?:/{COMPONENT})*$"
# The digests Wharf verifies (services/common/digests.py); any other algorithm is DIGEST_INVALID.
DIGEST = r"^(?:sha256:[a-f0-9]{64}|sha512:[a-f0-9]{128})$"
TAG = "^" + TAG_RE.pattern.removeprefix("^").removesuffix(r"\Z") + "$"
UPLOAD_ID = rf"^{upload_ids.ANY_ID}$"
INT64_MAX = 2**63 - 1

DESCRIPTION = f"""\
Wharf serves the OCI Distribution 1.1 API under `/v2/` (pull, push, content discovery,
content management and the `_catalog` listing), `/token` when it issues tokens, and this
document. docs/api.md says the same in prose, with the reasons; where they differ, it is a bug.

## Repository names in paths

A repository name is one or more components joined by `/` (`library/alpine`,
`team/app/cache`), and an OpenAPI path parameter cannot hold a `/`. So every
`/v2/<name>/...` operation is written out once per number of name components, from 1 to
{MAX_COMPONENTS}: `/v2/{{c1}}/manifests/{{reference}}`, `/v2/{{c1}}/{{c2}}/manifests/{{reference}}`,
and so on, where each `{{cN}}` is one component. Read them as one operation on
`/v2/<name>/manifests/<reference>` with `<name>` = `c1/c2/...`: the registry serves names of
any depth the same way (at most {MAX_NAME_LENGTH} characters in all), and a client builds the
path by joining the components with a literal `/`. Each operation's `x-wharf-route` names the
one route (services/api/routes.py) all its copies are. A component must not contain an encoded
slash: `%2F` anywhere in the path is refused with `400 NAME_INVALID`, never decoded into a
separator.

## Authentication

With `WHARF_AUTH=none` (the default) no operation needs credentials. With
`WHARF_AUTH=token`, every `/v2/` operation needs `Authorization: Bearer <token>`; a request
without one (or with one that lacks the needed access) gets `401` with a
`WWW-Authenticate: Bearer realm="<registry>/token",service="...",scope="..."` challenge, and
the client fetches a token from `/token` (the Docker token specification). A token that
asked for an access and was refused it gets `403 DENIED`. `/token` and this document are
public.

## Errors

Every error answer with a body is the OCI envelope `{{"errors": [{{"code", "message",
"detail"?}}]}}` with one of the spec's codes, or `UNAVAILABLE`/`INTERNAL` for failures
the spec has no code for. An error answer to `HEAD` has no body.
"""


def info() -> dict[str, Any]:
    return {"title": "Wharf registry HTTP API", "version": "0.1.0", "description": DESCRIPTION,
            "license": {"name": "Apache-2.0", "identifier": "Apache-2.0"},
            "x-wharf-name-components": {"templated": MAX_COMPONENTS, "separator": "/",
                                        "component-pattern": f"^{COMPONENT}$", "name-pattern": NAME,
                                        "max-name-length": MAX_NAME_LENGTH}}


def ref(kind: str, name: str) -> dict[str, str]:
    return {"$ref": f"#/components/{kind}/{name}"}


def _string(pattern: str | None = None, **extra: Any) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": "string", **extra}
    if pattern:
        schema["pattern"] = pattern
    return schema


def _descriptor() -> dict[str, Any]:
    return {"type": "object", "required": ["mediaType", "digest", "size"],
            "description": "A content descriptor; fields other than these are passed through unchecked.",
            "properties": {
                "mediaType": _string(minLength=1),
                "digest": ref("schemas", "Digest"),
                "size": {"type": "integer", "minimum": 0, "maximum": INT64_MAX},
                "data": _string(contentEncoding="base64",
                                description="when present, decodes to exactly `size` bytes that hash to `digest`"),
                "annotations": ref("schemas", "Annotations"),
                "artifactType": {"type": "string"}}}


def _manifest(kind: str, media_types: list[str]) -> dict[str, Any]:
    common: dict[str, Any] = {
        "schemaVersion": {"const": 2},
        "mediaType": {"enum": [*media_types, ""],
                      "description": "when not empty, the manifest's media type (it must match Content-Type)"},
        "artifactType": {"type": ["string", "null"]},
        "subject": {"oneOf": [ref("schemas", "Descriptor"), {"type": "null"}]},
        "annotations": {"oneOf": [ref("schemas", "Annotations"), {"type": "null"}]}}
    if kind == "image":
        return {"type": "object", "required": ["schemaVersion", "config"],
                "properties": {**common, "config": ref("schemas", "Descriptor"),
                               "layers": {"type": "array", "items": ref("schemas", "Descriptor")}}}
    return {"type": "object", "required": ["schemaVersion", "manifests"],
            "properties": {**common, "manifests": {"type": "array", "items": ref("schemas", "Descriptor")}}}


def _schemas() -> dict[str, Any]:
    codes = sorted(OCI_CODES | {UNAVAILABLE.code, INTERNAL.code})
    images = [mediatypes.OCI_MANIFEST, mediatypes.DOCKER_MANIFEST]
    indexes = [mediatypes.OCI_INDEX, mediatypes.DOCKER_MANIFEST_LIST]
    return {
        "RepositoryName": _string(NAME, maxLength=MAX_NAME_LENGTH),
        "Component": _string(f"^{COMPONENT}$", maxLength=MAX_NAME_LENGTH,
                             description="one component of a repository name"),
        "Digest": _string(DIGEST, description="sha256 (64 hex digits) or sha512 (128), lowercase"),
        "Tag": _string(TAG),
        "Reference": {"anyOf": [ref("schemas", "Tag"), ref("schemas", "Digest")],
                      "description": "a tag, or a digest (a value of the digest shape `alg:value` counts as one)"},
        "Annotations": {"type": "object", "additionalProperties": {"type": "string"}},
        "Descriptor": _descriptor(),
        "ImageManifest": _manifest("image", images),
        "ImageIndex": _manifest("index", indexes),
        "AnyManifest": {"anyOf": [ref("schemas", "ImageManifest"), ref("schemas", "ImageIndex")],
                        "description": "without a manifest Content-Type, a body with `manifests` is an OCI index "
                                       "and one with `config` an OCI image manifest"},
        "ErrorCode": {"enum": codes},
        "ErrorEnvelope": {
            "type": "object", "required": ["errors"], "additionalProperties": False,
            "properties": {"errors": {"type": "array", "minItems": 1, "items": {
                "type": "object", "required": ["code", "message"], "additionalProperties": False,
                "properties": {"code": ref("schemas", "ErrorCode"), "message": {"type": "string"},
                               "detail": {"description": "more about the error, e.g. `missing` digests of "
                                                         "MANIFEST_BLOB_UNKNOWN or the access a 401 needs"}}}}}},
        "Empty": {"type": "object", "maxProperties": 0},
        "Catalog": {"type": "object", "required": ["repositories"], "additionalProperties": False,
                    "properties": {"repositories": {"type": "array", "items": ref("schemas", "RepositoryName")}}},
        "TagList": {"type": "object", "required": ["name", "tags"], "additionalProperties": False,
                    "properties": {"name": ref("schemas", "RepositoryName"),
                                   "tags": {"type": "array", "items": ref("schemas", "Tag")}}},
        "ReferrersIndex": {
            "type": "object", "required": ["schemaVersion", "mediaType", "manifests"], "additionalProperties": False,
            "properties": {"schemaVersion": {"const": 2}, "mediaType": {"const": mediatypes.OCI_INDEX},
                           "manifests": {"type": "array", "items": {
                               "type": "object", "required": ["mediaType", "digest", "size"],
                               "additionalProperties": False,
                               "properties": {"mediaType": {"type": "string"}, "digest": ref("schemas", "Digest"),
                                              "size": {"type": "integer", "minimum": 0},
                                              "artifactType": {"type": "string", "minLength": 1},
                                              "annotations": ref("schemas", "Annotations")}}}}},
        "Token": {
            "type": "object", "required": ["token", "access_token", "expires_in", "issued_at"],
            "additionalProperties": False,
            "properties": {"token": {"type": "string", "description": "an ES256 JWT"},
                           "access_token": {"type": "string", "description": "the same token (OAuth2 name)"},
                           "expires_in": {"type": "integer", "minimum": 1},
                           "issued_at": {"type": "string", "format": "date-time"},
                           "refresh_token": {"type": "string"},
                           "scope": {"type": "string", "description": "POST only: the scopes asked for"}}},
        "TokenForm": {
            "type": "object", "required": ["grant_type"],
            "properties": {"grant_type": {"enum": ["password", "refresh_token"]},
                           "username": {"type": "string"}, "password": {"type": "string"},
                           "refresh_token": {"type": "string"}, "service": {"type": "string"},
                           "scope": {"type": "string", "description": "space-separated scopes"},
                           "access_type": {"enum": ["offline", "online"]}, "client_id": {"type": "string"}}},
    }


def _parameters() -> dict[str, Any]:
    params: dict[str, Any] = {
        f"c{i}": {"name": f"c{i}", "in": "path", "required": True,
                  "description": f"component {i} of the repository name", "schema": ref("schemas", "Component")}
        for i in range(1, MAX_COMPONENTS + 1)}
    params.update({
        "digest": {"name": "digest", "in": "path", "required": True, "schema": ref("schemas", "Digest")},
        "reference": {"name": "reference", "in": "path", "required": True, "schema": ref("schemas", "Reference")},
        "upload_id": {"name": "upload_id", "in": "path", "required": True,
                      "description": "the session id of the upload's Location", "schema": _string(UPLOAD_ID)},
        "n": {"name": "n", "in": "query", "required": False,
              "description": "page size: absent means 10000, larger values are cut to 10000, 0 gives an empty page",
              "schema": {"type": "integer", "minimum": 0}},
        "last": {"name": "last", "in": "query", "required": False,
                 "description": "only entries strictly after this one (printable, at most 255 characters)",
                 "schema": _string(maxLength=MAX_NAME_LENGTH)},
        "digestQuery": {"name": "digest", "in": "query", "required": True,
                        "description": "the digest of the whole blob", "schema": ref("schemas", "Digest")},
        "Range": {"name": "Range", "in": "header", "required": False,
                  "description": "one byte range; a malformed or multi-range value is ignored (200)",
                  "schema": _string(r"^bytes=(?:\d+-\d*|-\d+)$")},
        "ContentRange": {"name": "Content-Range", "in": "header", "required": False,
                         "description": "the chunk's place in the blob; its start must be the session's size",
                         "schema": _string(r"^(?:bytes[ =])?\d+-\d+(?:/(?:\d+|\*))?$")},
    })
    return params


def _header(schema: dict[str, Any], description: str, required: bool = False) -> dict[str, Any]:
    return {"description": description, "required": required, "schema": schema}


def _headers() -> dict[str, Any]:
    return {
        "ApiVersion": _header({"const": "registry/2.0"}, "on every answer", required=True),
        "RequestId": _header(_string(r"^[A-Za-z0-9._-]{1,128}$"), "the request's id (the client's X-Request-Id "
                             "when it is safe to echo); on every answer but those of the HTTP server itself (a "
                             "request it cannot parse: 400, 414, 431)"),
        "DockerContentDigest": _header(ref("schemas", "Digest"), "the content's digest", required=True),
        "ETag": _header(_string(r'^"(?:sha256:[a-f0-9]{64}|sha512:[a-f0-9]{128})"$'), "the digest, quoted",
                        required=True),
        "Location": _header(_string(minLength=1), "where the resource is (a path relative to the registry)",
                            required=True),
        "UploadRange": _header(_string(r"^0-\d+$"), "bytes the session holds: 0-<last byte>, 0-0 when empty",
                               required=True),
        "UploadUUID": _header(_string(UPLOAD_ID), "the session id", required=True),
        "ChunkMinLength": _header({"type": "integer", "const": 0}, "chunks may have any size", required=True),
        "ContentRange": _header(_string(r"^bytes \d+-\d+/\d+$"), "the range sent, and the blob's size",
                                required=True),
        "UnsatisfiedRange": _header(_string(r"^bytes \*/\d+$"), "the blob's size", required=True),
        "Link": _header(_string(r'^<[^>]+>; rel="next"$'), "the next page, when there is one"),
        "Challenge": _header(_string(r'^Bearer realm="[^"]*",service="[^"]*"(?:,scope="[^"]*")?'
                                     r'(?:,error="(?:invalid_token|insufficient_scope)")?$'),
                             "token mode: where to get a token, and the access it needs", required=True),
        "LoginChallenge": _header(_string(r'^Basic realm="[^"]*", charset="UTF-8"$'),
                                  "the credentials were refused: log in with Basic", required=True),
        "RetryAfter": _header({"type": "integer", "minimum": 0}, "seconds to wait before retrying"),
        "OCISubject": _header(ref("schemas", "Digest"), "the subject's digest, when the manifest has one"),
        "OCITag": _header(ref("schemas", "Tag"), "a tag applied (one header per tag)"),
        "FiltersApplied": _header({"const": "artifactType"}, "present when the list was filtered"),
        "ContentLength": _header({"type": "integer", "minimum": 0}, "the length of the body (of the whole "
                                 "content on HEAD)"),
        "AcceptRanges": _header({"const": "bytes"}, "ranges are served"),
    }


COMMON_HEADERS = {"Docker-Distribution-API-Version": ref("headers", "ApiVersion"),
                  "X-Request-Id": ref("headers", "RequestId")}
# (status, description, extra headers) of each error answer.
ERRORS: dict[str, tuple[str, dict[str, Any]]] = {
    "400": ("The request is invalid: NAME_INVALID, DIGEST_INVALID, MANIFEST_INVALID, SIZE_INVALID, "
            "BLOB_UPLOAD_INVALID, MANIFEST_BLOB_UNKNOWN, or UNSUPPORTED for a malformed n, last or /token "
            "request.", {}),
    "401": ("Token mode: no token, an invalid one, or one without the needed access (UNAUTHORIZED).",
            {"WWW-Authenticate": ref("headers", "Challenge")}),
    "403": ("DENIED: a needed access the token request asked for and was refused; an anonymous catalog "
            "request; a governance rule (immutable tag, quota, admission policy, a mirrored repository).", {}),
    "404": ("Unknown: BLOB_UNKNOWN, BLOB_UPLOAD_UNKNOWN, MANIFEST_UNKNOWN or NAME_UNKNOWN.", {}),
    "413": ("The body is over the limit: MANIFEST_INVALID for a manifest, SIZE_INVALID for any other body.", {}),
    "414": ("The request line is too long (NAME_INVALID), answered by the HTTP server: no X-Request-Id.", {}),
    "431": ("A header is too long (UNSUPPORTED), answered by the HTTP server: no X-Request-Id.", {}),
    "416": ("BLOB_UPLOAD_INVALID: the chunk does not start at the session's size, or contradicts its "
            "Content-Length; the session headers say where to resume.", {}),
    "429": ("TOOMANYREQUESTS: a rate limit, or too many failed logins.", {"Retry-After": ref("headers",
                                                                                            "RetryAfter")}),
    "501": ("UNSUPPORTED: the body is sent in a transfer coding other than chunked (gzip, deflate, "
            "compress), which the registry does not decode.", {}),
    "500": ("INTERNAL: an unexpected failure (the details are logged, never sent).", {}),
    "503": ("UNAVAILABLE: a backend service is down or too slow, or the registry is read-only for maintenance "
            "(then with Retry-After).", {"Retry-After": ref("headers", "RetryAfter")}),
}
SESSION_HEADERS = {"Location": ref("headers", "Location"), "Range": ref("headers", "UploadRange"),
                   "Docker-Upload-UUID": ref("headers", "UploadUUID"),
                   "OCI-Chunk-Min-Length": ref("headers", "ChunkMinLength")}


def _responses() -> dict[str, Any]:
    responses: dict[str, Any] = {}
    login = ("/token: the credentials (Basic, or the form's password or refresh token) were refused.",
             {"WWW-Authenticate": ref("headers", "LoginChallenge")})
    for status, (description, extra) in [*ERRORS.items(), ("401Login", login)]:
        headers = {**COMMON_HEADERS, **extra}
        if status == "416":
            headers.update(SESSION_HEADERS)
        envelope = {"application/json": {"schema": ref("schemas", "ErrorEnvelope")}}
        responses[f"Error{status}"] = {"description": description, "headers": headers, "content": envelope}
        responses[f"HeadError{status}"] = {
            "description": description + " No body (HEAD); Content-Length is the length the body would have.",
            "headers": headers}
    return responses


def components() -> dict[str, Any]:
    return {
        "securitySchemes": {
            "registryToken": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT",
                              "description": "WHARF_AUTH=token: a token from GET or POST /token, as the 401 "
                                             "challenge's realm, service and scope say"},
            "tokenCredentials": {"type": "http", "scheme": "basic",
                                 "description": "an account's name and password, for GET /token"}},
        "schemas": _schemas(),
        "parameters": _parameters(),
        "headers": _headers(),
        "responses": _responses(),
    }
