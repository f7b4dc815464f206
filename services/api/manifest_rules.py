"""What a pushed manifest must look like, and what it references.

Parses the four manifest media types Wharf accepts (OCI image manifest and
index, Docker schema2 manifest and manifest list) and returns the blobs and
manifests that must already be in the repository, the subject, and the
descriptor the referrers API lists.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import json
from typing import Any

from services.common import digests, mediatypes
from services.common.errors import MANIFEST_INVALID, RegistryError


@dataclasses.dataclass(frozen=True)
class ParsedManifest:
    media_type: str
    blob_refs: list[str]
    manifest_refs: list[str]
    # The sizes the descriptors declare, parallel to blob_refs and manifest_refs.
    blob_sizes: list[int]
    manifest_sizes: list[int]
    subject: str
    artifact_type: str
    annotations: dict[str, str]


# Descriptor sizes are int64 in the image spec.
_MAX_SIZE = 2**63 - 1


def _invalid(message: str) -> RegistryError:
    return RegistryError(MANIFEST_INVALID, message)


def _is_text(value: str) -> bool:
    """False for a string with a lone surrogate (JSON's "\\ud800"): it has no UTF-8 form, so it
    could not reach the metadata service (protobuf strings are UTF-8) or any other client."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _descriptor(value: Any, where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise _invalid(f"{where}: descriptor must be an object")
    media_type, digest, size = value.get("mediaType"), value.get("digest"), value.get("size")
    if not isinstance(media_type, str) or not media_type:
        raise _invalid(f"{where}: mediaType is required")
    if not _is_text(media_type):
        raise _invalid(f"{where}: mediaType is not valid Unicode")
    if not isinstance(digest, str):
        raise _invalid(f"{where}: digest is required")
    try:
        digests.parse(digest)
    except RegistryError:
        raise _invalid(f"{where}: invalid digest {digest[:150]!r}") from None
    if not isinstance(size, int) or isinstance(size, bool) or not 0 <= size <= _MAX_SIZE:
        raise _invalid(f"{where}: size must be an integer from 0 to 2^63-1")
    data = value.get("data")
    if data is not None:
        try:
            raw = base64.b64decode(data, validate=True)
        except (binascii.Error, TypeError, ValueError):
            raise _invalid(f"{where}: data is not base64") from None
        if len(raw) != size or digests.of(raw, digest.split(":", 1)[0]) != digest:
            raise _invalid(f"{where}: data does not match size and digest")
    artifact_type = value.get("artifactType")
    if artifact_type is not None and (not isinstance(artifact_type, str) or not _is_text(artifact_type)):
        raise _invalid(f"{where}: artifactType must be a string")
    _annotations(value.get("annotations"))
    return value


def _annotations(value: Any) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in value.items()):
        raise _invalid("annotations must map strings to strings")
    if not all(_is_text(k) and _is_text(v) for k, v in value.items()):
        raise _invalid("annotations must be valid Unicode")
    return dict(value)


_DOCKER_TYPES = frozenset({mediatypes.DOCKER_MANIFEST, mediatypes.DOCKER_MANIFEST_LIST})


def _media_type(content_type: str, body: dict[str, Any]) -> str:
    declared = body.get("mediaType")
    content_type = content_type.split(";", 1)[0].strip()
    if declared is not None and not isinstance(declared, str):
        raise _invalid("mediaType must be a string")
    if content_type in mediatypes.MANIFESTS:
        if declared and declared != content_type:
            raise _invalid(f"mediaType {declared} does not match Content-Type {content_type}")
        # Docker's formats require the field (OCI's alone may omit it): Docker's own parser, and
        # every client built on it, refuses such a manifest, so every later pull of it would fail.
        if not declared and content_type in _DOCKER_TYPES:
            raise _invalid(f"a manifest of type {content_type} must declare it in mediaType")
        return content_type
    if declared in mediatypes.MANIFESTS:
        return str(declared)
    if declared:
        raise _invalid(f"unsupported manifest media type {declared}")
    if content_type and content_type not in {"application/json", "application/octet-stream"}:
        raise _invalid(f"unsupported manifest media type {content_type}")
    # An OCI manifest may omit mediaType; tell image from index by shape.
    if "manifests" in body:
        return mediatypes.OCI_INDEX
    if "config" in body:
        return mediatypes.OCI_MANIFEST
    raise _invalid("cannot tell the manifest's media type")


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """Refuses an object with a key twice: a client that keeps the first would see a layer
    (or a config, a subject) other than the one the registry checked, which keeps the last."""
    found: dict[str, Any] = {}
    for key, value in pairs:
        if key in found:
            raise _invalid(f"manifest has the key {key[:100]!r} twice in one object")
        found[key] = value
    return found


def _sized(descriptors: list[tuple[str, int]], where: str) -> tuple[list[str], list[int]]:
    """Unique digests with their declared sizes; one digest declared with two sizes is invalid."""
    sizes: dict[str, int] = {}
    for digest, size in descriptors:
        if sizes.setdefault(digest, size) != size:
            raise _invalid(f"{where}: {digest} is declared with two different sizes")
    return list(sizes), list(sizes.values())


def _not_json(constant: str) -> Any:
    raise _invalid(f"manifest is not valid JSON ({constant} is not a JSON number)")


def parse(content: bytes, content_type: str) -> ParsedManifest:
    try:
        # UTF-8 only (RFC 8259): json.loads would also guess UTF-16/32 and skip a BOM, and
        # would take NaN and Infinity, none of which a client's JSON parser has to accept.
        body = json.loads(content.decode("utf-8"), object_pairs_hook=_unique_keys, parse_constant=_not_json)
    except RecursionError:
        raise _invalid("manifest is nested too deeply") from None
    except (ValueError, UnicodeDecodeError):
        raise _invalid("manifest is not valid JSON") from None
    if not isinstance(body, dict):
        raise _invalid("manifest must be a JSON object")
    version = body.get("schemaVersion")
    # Exactly the integer: 2.0 and true compare equal to 2 in Python, not in a Go client.
    if type(version) is not int or version != 2:
        raise _invalid("schemaVersion must be 2")
    media_type = _media_type(content_type, body)
    # null reads as absent (as a Go client decodes it); any other non-string ({}, [], 0, false) is
    # refused, falsy or not: a client could not decode it back.
    artifact_type = body.get("artifactType")
    if artifact_type is None:
        artifact_type = ""
    if not isinstance(artifact_type, str):
        raise _invalid("artifactType must be a string")
    if not _is_text(artifact_type):
        raise _invalid("artifactType is not valid Unicode")
    subject = ""
    if body.get("subject") is not None:
        subject = _descriptor(body["subject"], "subject")["digest"]
    annotations = _annotations(body.get("annotations"))
    blob_refs: list[tuple[str, int]] = []
    manifest_refs: list[tuple[str, int]] = []
    if media_type in mediatypes.IMAGE_MANIFESTS:
        config = _descriptor(body.get("config"), "config")
        blob_refs.append((config["digest"], config["size"]))
        layers = body.get("layers", [])
        if not isinstance(layers, list):
            raise _invalid("layers must be a list")
        for i, layer in enumerate(layers):
            layer = _descriptor(layer, f"layers[{i}]")
            # Non-distributable layers live elsewhere; the registry need not hold them.
            if layer["mediaType"] not in mediatypes.NONDISTRIBUTABLE_LAYERS:
                blob_refs.append((layer["digest"], layer["size"]))
        if not artifact_type and media_type == mediatypes.OCI_MANIFEST:
            artifact_type = config["mediaType"]
    else:
        children = body.get("manifests")
        if not isinstance(children, list):
            raise _invalid("manifests must be a list")
        for i, child in enumerate(children):
            child = _descriptor(child, f"manifests[{i}]")
            manifest_refs.append((child["digest"], child["size"]))
    blobs, blob_sizes = _sized(blob_refs, "blobs")
    manifests, manifest_sizes = _sized(manifest_refs, "manifests")
    return ParsedManifest(media_type, blobs, manifests, blob_sizes, manifest_sizes, subject, artifact_type,
                          annotations)
