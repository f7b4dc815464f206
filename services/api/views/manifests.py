"""GET/HEAD/PUT/DELETE /v2/<name>/manifests/<reference>."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

from flask import Response, g, request

from services.api import manifest_rules
from services.api.admission import Candidate
from services.api.mounts import mountable_sizes
from services.api.read_cache import Manifest
from services.api.request_input import read_body
from services.api.responses import empty, unchanged
from services.common import digests, mediatypes
from services.common.errors import (
    BLOB_UNKNOWN,
    DENIED,
    DIGEST_INVALID,
    MANIFEST_BLOB_UNKNOWN,
    MANIFEST_INVALID,
    MANIFEST_UNKNOWN,
    MISSING_LISTED,
    NAME_UNKNOWN,
    RegistryError,
)
from services.common.names import validate_tag
from services.gen.wharf.metadata.v1 import metadata_pb2 as mpb

if TYPE_CHECKING:
    from services.api.context import Context

# How many times a manifest PUT mounts the blobs a refusal lists and tries again; the last time, it
# looks up and mounts every blob still missing.
MOUNT_ROUNDS = 4


# A weight as RFC 9110 (12.4.2) writes it: 0 to 1 with at most three decimals. Anything else
# ("nan", "-1", "1e-9") is ignored, as an unparseable one always was, rather than read by float().
_QVALUE = re.compile(r"0(?:\.[0-9]{0,3})?|1(?:\.0{0,3})?")


def offered_types(values: list[str]) -> tuple[set[str], set[str]]:
    """(types the client accepts, types it explicitly refuses with q=0) from Accept headers, in
    lower case: media types are case-insensitive (RFC 9110, 8.3.1), and an ``Accept`` naming one in
    capitals, q=0 included, was read as naming no manifest type at all (any type served)."""
    accepted: set[str] = set()
    refused: set[str] = set()
    for value in values:
        for part in value.split(","):
            media_type, _, params = part.partition(";")
            media_type = media_type.strip().lower()
            if not media_type:
                continue
            refuses = False
            for param in params.split(";"):
                key, _, raw = param.partition("=")
                if key.strip().lower() == "q" and _QVALUE.fullmatch(raw.strip()):
                    refuses = float(raw.strip()) == 0
            (refused if refuses else accepted).add(media_type)
    return accepted, refused


def accepts(values: list[str], media_type: str) -> bool:
    """Whether a manifest of ``media_type`` may be served. Clients that send no Accept (or a
    wildcard) get whatever was pushed."""
    accepted, refused = offered_types(values)
    media_type = media_type.lower()
    # The most specific range naming the type decides (RFC 9110, 12.5.1): "*/*;q=0" refuses it,
    # unless the type itself (or "application/*") is accepted.
    for media_range in (media_type, media_type.split("/", 1)[0] + "/*", "*/*"):
        if media_range in refused:
            return False
        if media_range in accepted:
            return True
    # A client that names no manifest type at all did not mean to negotiate.
    return not (accepted & mediatypes.MANIFESTS)


def manifest_headers(manifest: Manifest) -> dict[str, str]:
    """What a manifest GET or HEAD carries besides its length (the view and the hot-read path share it)."""
    headers = {"Docker-Content-Digest": manifest.digest, "ETag": f'"{manifest.digest}"',
               "Content-Type": manifest.media_type}
    if manifest.subject:
        headers["OCI-Subject"] = manifest.subject
    return headers


def get(ctx: Context, name: str, reference: str) -> Response:
    mirrored = ctx.mirror.route(name)
    warning = ""
    if mirrored is not None:
        manifest, warning = ctx.mirror.manifest(name, reference, *mirrored)
    else:
        try:
            manifest = ctx.clients.cache.get(name, reference)
        except RegistryError as err:
            # Not stored here: the default upstream's, if one is configured (registry-mirrors).
            alias = ctx.mirror.default_alias(name) if err.error in (MANIFEST_UNKNOWN, NAME_UNKNOWN) else None
            if alias is None:
                raise
            manifest, warning = ctx.mirror.manifest(alias[0], reference, alias[1], alias[2])
    if not accepts(request.headers.getlist("Accept"), manifest.media_type):
        raise RegistryError(MANIFEST_UNKNOWN, f"manifest is {manifest.media_type}, which the Accept header "
                                              "does not list")
    headers = manifest_headers(manifest)
    if warning:
        headers["Warning"] = warning
    cached = unchanged(headers)
    if cached is not None:
        return cached
    if request.method == "HEAD":
        response = Response(b"", status=200, headers=headers)
        response.headers["Content-Length"] = str(len(manifest.content))
        return response
    ctx.pull_events.note_request(name, manifest.digest, manifest.media_type, len(manifest.content),
                                 "" if digests.looks_like_digest(reference) else reference)
    return Response(manifest.content, status=200, headers=headers)


def _tags_to_apply(reference: str, is_digest: bool) -> list[str]:
    tags = [] if is_digest else [reference]
    tags += request.args.getlist("tag")
    return list(dict.fromkeys(validate_tag(t, for_manifest_put=True) for t in tags))


def _link_mountable(ctx: Context, name: str, missing: list[str], declared: dict[str, int]) -> bool:
    """Mounts referenced blobs the caller may pull from other repositories; False if any is out of
    reach. A blob whose descriptor gives another size than the one stored is refused before anything
    is linked, as the put would refuse it after: the links (and the repository they create) would
    outlive the refused manifest."""
    sizes = mountable_sizes(ctx, missing)
    if any(size is None for size in sizes):
        return False
    for digest, size in zip(missing, sizes, strict=True):
        if size is not None and digest in declared and declared[digest] != size:
            raise RegistryError(MANIFEST_INVALID, f"a descriptor gives {digest} a size of {declared[digest]} bytes; "
                                                  f"the registry holds {size} bytes",
                                detail={"digest": digest, "declared": declared[digest], "stored": size})
    # Each link is made only if some repository still links the blob when it is written.
    return all(ctx.clients.metadata.link_blob(name, digest, int(size or 0), source="*")
               for digest, size in zip(missing, sizes, strict=True))


def _linked(ctx: Context, name: str, digest: str) -> bool:
    try:
        ctx.clients.metadata.blob_size(name, digest)
    except RegistryError as err:
        if err.error is not BLOB_UNKNOWN:
            raise
        return False
    return True


def _mount_missing(ctx: Context, name: str, parsed: manifest_rules.ParsedManifest, refusal: RegistryError,
                   every: bool) -> bool:
    """Mounts the blobs a put was refused for (MANIFEST_BLOB_UNKNOWN) when the caller may pull every
    one of them from another repository; False when it may not, or the refusal was another.

    A refusal names at most MISSING_LISTED of them; with ``every``, when it names that many, the
    blobs this repository does not link are looked up here, all at once. Mounting 50 and putting
    the manifest again until none was missing read and checked the whole manifest once per 50
    missing blobs: a manifest of 3,000 layers stored in another repository of the caller's held a
    gateway worker for 20 s, growing with the square of their number."""
    missing = (refusal.detail or {}).get("missing", []) if isinstance(refusal.detail, dict) else []
    blob_refs = set(parsed.blob_refs)
    if refusal.error is not MANIFEST_BLOB_UNKNOWN or not missing or any(d not in blob_refs for d in missing):
        return False
    if every and len(missing) >= MISSING_LISTED:
        missing = [digest for digest in parsed.blob_refs if not _linked(ctx, name, digest)]
    return bool(missing) and _link_mountable(ctx, name, missing,
                                             dict(zip(parsed.blob_refs, parsed.blob_sizes, strict=True)))


def _put_request(name: str, digest: str, content: bytes, parsed: manifest_rules.ParsedManifest, tags: list[str],
                 sparse: bool) -> mpb.PutManifestRequest:
    descriptor = mpb.Descriptor(media_type=parsed.media_type, digest=digest, size=len(content),
                                artifact_type=parsed.artifact_type, annotations=parsed.annotations)
    return mpb.PutManifestRequest(
        repository=name, digest=digest, media_type=parsed.media_type, content=content, tags=tags,
        blob_references=[] if sparse else parsed.blob_refs,
        manifest_references=[] if sparse else parsed.manifest_refs, subject=parsed.subject,
        descriptor=descriptor, blob_reference_sizes=[] if sparse else parsed.blob_sizes,
        manifest_reference_sizes=[] if sparse else parsed.manifest_sizes)


def mirrored_put_request(name: str, digest: str, content: bytes, media_type: str,
                         tags: list[str]) -> mpb.PutManifestRequest:
    """The metadata request that stores a mirror's fetched manifest: its references counted (so
    garbage collection keeps what it names once filled), not required (filled when pulled)."""
    request = _put_request(name, digest, content, manifest_rules.parse(content, media_type), tags, sparse=False)
    request.count_only_references = True
    del request.blob_reference_sizes[:]
    del request.manifest_reference_sizes[:]
    return request


def _admit(ctx: Context, name: str, digest: str, content: bytes, parsed: manifest_rules.ParsedManifest,
           tags: list[str]) -> None:
    """Asks the admission policies (services/api/admission.py); a refusal is DENIED, nothing stored."""
    claims = g.get("claims")
    refusal = ctx.admission.refusal(Candidate(
        repository=name, digest=digest, media_type=parsed.media_type, artifact_type=parsed.artifact_type,
        size=len(content), tags=tuple(tags), annotations=dict(parsed.annotations),
        referenced_bytes=sum(parsed.blob_sizes) + sum(parsed.manifest_sizes), subject=parsed.subject,
        account=claims.subject if claims else ""))
    if refusal is not None:
        raise RegistryError(DENIED, refusal)


def put(ctx: Context, name: str, reference: str) -> Response:
    ctx.mirror.refuse_push(name)
    is_digest = digests.looks_like_digest(reference)
    tags = _tags_to_apply(reference, is_digest)
    content = read_body(ctx.settings.max_manifest_bytes, MANIFEST_INVALID)
    if content is None:
        raise RegistryError(MANIFEST_INVALID, f"manifest exceeds {ctx.settings.max_manifest_bytes} bytes",
                            http_status=413)
    algorithm = digests.parse(reference)[0] if is_digest else "sha256"
    digest = digests.of(content, algorithm)
    if is_digest and digest != reference:
        raise RegistryError(DIGEST_INVALID, f"manifest digest is {digest}, not {reference}")
    # The type's case does not matter (RFC 9110, 8.3.1); the body's mediaType, JSON, must be exact.
    parsed = manifest_rules.parse(content, request.headers.get("Content-Type", "").lower())
    if ctx.admission.enabled:
        _admit(ctx, name, digest, content, parsed, tags)
    put_request = _put_request(name, digest, content, parsed, tags, ctx.settings.allow_sparse_manifests)
    # Blobs the caller may pull from other repositories are mounted and the manifest put again:
    # as many times as refusals list them, but the last, which mounts every one still missing.
    for attempt in range(MOUNT_ROUNDS + 1):
        try:
            ctx.clients.metadata.put_manifest(put_request)
            break
        except RegistryError as err:
            if attempt == MOUNT_ROUNDS or not _mount_missing(ctx, name, parsed, err, attempt == MOUNT_ROUNDS - 1):
                raise
    headers = {"Location": f"/v2/{name}/manifests/{digest}", "Docker-Content-Digest": digest}
    if parsed.subject:
        headers["OCI-Subject"] = parsed.subject
    response = empty(201, headers)
    for tag in tags:
        response.headers.add("OCI-Tag", tag)
    return response


def delete(ctx: Context, name: str, reference: str) -> Response:
    if digests.looks_like_digest(reference):
        ctx.clients.metadata.delete_manifest(name, digests.validate(reference))
    else:
        ctx.clients.metadata.delete_tag(name, validate_tag(reference))
    return empty(202)
