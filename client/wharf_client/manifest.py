"""Manifests and descriptors: parsed for what the client needs, kept as the exact bytes served.

A manifest's digest is the hash of the bytes the registry sent, so the raw bytes
travel with the parsed view and are what gets pushed, written or hashed again;
re-serializing the JSON would change the digest and break every pinned reference.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterable, Mapping
from typing import Any

from wharf_client import digest as digests
from wharf_client import mediatypes
from wharf_client import platform as platforms
from wharf_client.errors import DigestMismatch, FormatError, PlatformNotFound
from wharf_client.untrusted import parse_json

# Manifests are small; anything larger is refused before it is parsed (Distribution's limit is 4 MiB).
MAX_MANIFEST_BYTES = 4 * 1024 * 1024


@dataclasses.dataclass(frozen=True)
class Descriptor:
    """A content descriptor: what a manifest says about a blob or another manifest."""

    media_type: str
    digest: str
    size: int
    platform: platforms.Platform | None = None
    annotations: Mapping[str, str] = dataclasses.field(default_factory=dict)
    artifact_type: str = ""
    urls: tuple[str, ...] = ()

    @classmethod
    def from_json(cls, value: Any) -> Descriptor:
        if not isinstance(value, Mapping):
            raise FormatError(f"descriptor is not an object: {str(value)[:100]}")
        try:
            size = int(value["size"])
            found = cls(str(value.get("mediaType", "")), digests.validate(str(value["digest"])), size,
                        platforms.from_json(value.get("platform")), dict(value.get("annotations") or {}),
                        str(value.get("artifactType") or ""), tuple(value.get("urls") or ()))
        except (KeyError, TypeError, ValueError) as exc:
            raise FormatError(f"malformed descriptor {json.dumps(value)[:200]}: {exc}") from None
        if size < 0:
            raise FormatError(f"descriptor {found.digest} has a negative size")
        return found

    def to_json(self) -> dict[str, Any]:
        value: dict[str, Any] = {"mediaType": self.media_type, "digest": self.digest, "size": self.size}
        if self.artifact_type:
            value["artifactType"] = self.artifact_type
        if self.platform:
            value["platform"] = self.platform.to_json()
        if self.annotations:
            value["annotations"] = dict(self.annotations)
        if self.urls:
            value["urls"] = list(self.urls)
        return value

    @property
    def is_manifest(self) -> bool:
        return self.media_type in mediatypes.MANIFESTS

    @property
    def distributable(self) -> bool:
        return self.media_type not in mediatypes.NONDISTRIBUTABLE_LAYERS


def _media_type(payload: Mapping[str, Any], declared: str) -> str:
    declared = declared.split(";", 1)[0].strip()
    if declared in mediatypes.MANIFESTS:
        return declared
    inner = payload.get("mediaType")
    if isinstance(inner, str) and inner in mediatypes.MANIFESTS:
        return inner
    if payload.get("schemaVersion") == 1:
        raise FormatError("Docker schema 1 manifests are not supported (deprecated since 2017)")
    if "manifests" in payload:
        return mediatypes.OCI_INDEX
    if "config" in payload or "layers" in payload:
        return mediatypes.OCI_MANIFEST
    raise FormatError(f"not a manifest (media type {declared or inner or 'unknown'!r})")


@dataclasses.dataclass(frozen=True)
class Manifest:
    """The exact bytes of a manifest, its media type and digest, and the parsed JSON."""

    content: bytes
    media_type: str
    digest: str
    payload: Mapping[str, Any]

    @classmethod
    def parse(cls, content: bytes, media_type: str = "", digest: str | None = None) -> Manifest:
        if len(content) > MAX_MANIFEST_BYTES:
            raise FormatError(f"manifest of {len(content)} bytes is over the {MAX_MANIFEST_BYTES} byte limit")
        try:
            payload = parse_json(content)  # deep nesting included: a FormatError, not a RecursionError
        except ValueError as exc:
            raise FormatError(f"manifest is not JSON: {exc}") from None
        if not isinstance(payload, dict):
            raise FormatError("manifest is not a JSON object")
        algorithm = digests.algorithm_of(digest) if digest else "sha256"
        actual = digests.of(content, algorithm)
        if digest and actual != digest:
            raise DigestMismatch(digest, actual, "manifest")
        return cls(content, _media_type(payload, media_type), actual, payload)

    @property
    def is_index(self) -> bool:
        return self.media_type in mediatypes.INDEXES

    def descriptor(self, **extra: Any) -> Descriptor:
        return Descriptor(self.media_type, self.digest, len(self.content), artifact_type=self.artifact_type,
                          **extra)

    @property
    def children(self) -> list[Descriptor]:
        """An index's manifests ([] for an image manifest)."""
        return self._descriptors("manifests") if self.is_index else []

    @property
    def config(self) -> Descriptor | None:
        value = self.payload.get("config")
        return Descriptor.from_json(value) if value and not self.is_index else None

    @property
    def layers(self) -> list[Descriptor]:
        return self._descriptors("layers") if not self.is_index else []

    def _descriptors(self, key: str) -> list[Descriptor]:
        value = self.payload.get(key) or []
        if not isinstance(value, list):  # 5 raised TypeError (a crash), "abc" gave one error per character
            raise FormatError(f"manifest {self.digest}: {key} is not a list")
        return [Descriptor.from_json(d) for d in value]

    @property
    def blobs(self) -> list[Descriptor]:
        """Config then layers: every blob an image manifest needs."""
        config = self.config
        return ([config] if config else []) + self.layers

    @property
    def subject(self) -> Descriptor | None:
        value = self.payload.get("subject")
        return Descriptor.from_json(value) if value else None

    @property
    def artifact_type(self) -> str:
        value = self.payload.get("artifactType")
        if isinstance(value, str) and value:
            return value
        config = self.payload.get("config")
        # An artifact without artifactType is typed by its config (the OCI 1.1 guidance).
        if isinstance(config, Mapping) and config.get("mediaType") not in (*mediatypes.CONFIGS, None):
            return str(config.get("mediaType"))
        return ""

    @property
    def annotations(self) -> dict[str, str]:
        value = self.payload.get("annotations") or {}
        if not isinstance(value, Mapping):  # 5 or "ab": dict() raised TypeError/ValueError, a crash
            raise FormatError(f"manifest {self.digest}: annotations is not an object")
        return dict(value)

    def select(self, wanted: platforms.Platform) -> Descriptor:
        """The index entry for ``wanted``; the first match, as docker picks."""
        for child in self.children:
            if child.platform and wanted.matches(child.platform):
                return child
        available = ", ".join(str(c.platform) for c in self.children if c.platform) or "none"
        raise PlatformNotFound(f"no manifest for platform {wanted} in index {self.digest} (available: {available})")


def encode(payload: Mapping[str, Any]) -> bytes:
    """The bytes of a manifest this library writes: compact JSON, keys in the order given."""
    return json.dumps(payload, separators=(",", ":"), ensure_ascii=False).encode()


def image_manifest(config: Descriptor, layers: Iterable[Descriptor], *, media_type: str = mediatypes.OCI_MANIFEST,
                   artifact_type: str = "", subject: Descriptor | None = None,
                   annotations: Mapping[str, str] | None = None) -> Manifest:
    payload: dict[str, Any] = {"schemaVersion": 2, "mediaType": media_type}
    if artifact_type:
        payload["artifactType"] = artifact_type
    payload["config"] = config.to_json()
    payload["layers"] = [layer.to_json() for layer in layers]
    if subject:
        payload["subject"] = {"mediaType": subject.media_type, "digest": subject.digest, "size": subject.size}
    if annotations:
        payload["annotations"] = dict(annotations)
    return Manifest.parse(encode(payload), media_type)


def index(manifests: Iterable[Descriptor], *, media_type: str = mediatypes.OCI_INDEX,
          annotations: Mapping[str, str] | None = None) -> Manifest:
    payload: dict[str, Any] = {"schemaVersion": 2, "mediaType": media_type,
                               "manifests": [m.to_json() for m in manifests]}
    if annotations:
        payload["annotations"] = dict(annotations)
    return Manifest.parse(encode(payload), media_type)
