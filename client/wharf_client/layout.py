"""OCI image layouts on disk: ``oci-layout``, ``index.json`` and ``blobs/<alg>/<hex>``.

Blobs are written to a temporary file in the same directory, verified, then
renamed into place, so a layout never holds a file whose name is not the hash
of its bytes, even after a crash or a failed download. ``index.json`` names
manifests with the ``org.opencontainers.image.ref.name`` annotation, which is
what skopeo, oras, buildkit and containerd read as the tag.
"""

from __future__ import annotations

import contextlib
import json
import os
import pathlib
import tempfile
import threading
from collections.abc import Callable
from typing import IO, Any

from wharf_client import digest as digests
from wharf_client import mediatypes
from wharf_client.blobio import IO_CHUNK, FileSource
from wharf_client.digest import Verifier
from wharf_client.errors import AmbiguousImage, FormatError, ImageNotFound
from wharf_client.manifest import Descriptor, Manifest, encode

LAYOUT_FILE = "oci-layout"
LAYOUT_VERSION = "1.0.0"


class OciLayout:
    """One image layout directory. Safe to use from several threads (index updates are locked)."""

    def __init__(self, path: pathlib.Path | str) -> None:
        self.path = pathlib.Path(path)
        self._lock = threading.Lock()

    @classmethod
    def create(cls, path: pathlib.Path | str) -> OciLayout:
        """Opens ``path`` as a layout, initializing an empty one if the directory is new or empty."""
        layout = cls(path)
        layout.path.mkdir(parents=True, exist_ok=True)
        marker = layout.path / LAYOUT_FILE
        if not marker.exists():
            if any(p.name not in ("blobs", "index.json") for p in layout.path.iterdir()):
                raise FormatError(f"{layout.path} is not empty and not an OCI layout")
            marker.write_bytes(encode({"imageLayoutVersion": LAYOUT_VERSION}))
        if not (layout.path / "index.json").exists():
            layout._write_index({"schemaVersion": 2, "mediaType": mediatypes.OCI_INDEX, "manifests": []})
        return layout

    @classmethod
    def open(cls, path: pathlib.Path | str) -> OciLayout:
        layout = cls(path)
        try:
            marker = json.loads((layout.path / LAYOUT_FILE).read_bytes())
        except FileNotFoundError:
            raise FormatError(f"{layout.path} is not an OCI image layout (no {LAYOUT_FILE} file)") from None
        except ValueError:
            raise FormatError(f"{layout.path / LAYOUT_FILE} is not JSON") from None
        if not isinstance(marker, dict) or not str(marker.get("imageLayoutVersion", "")).startswith("1."):
            raise FormatError(f"{layout.path}: unsupported imageLayoutVersion {marker!r}")
        return layout

    @staticmethod
    def is_layout(path: pathlib.Path | str) -> bool:
        return (pathlib.Path(path) / LAYOUT_FILE).is_file()

    # -- index.json ------------------------------------------------------------------------------

    def _read_index(self) -> dict[str, Any]:
        try:
            payload = json.loads((self.path / "index.json").read_bytes())
        except FileNotFoundError:
            raise FormatError(f"{self.path} has no index.json") from None
        except ValueError as exc:
            raise FormatError(f"{self.path / 'index.json'} is not JSON: {exc}") from None
        if not isinstance(payload, dict) or not isinstance(payload.get("manifests", []), list):
            raise FormatError(f"{self.path / 'index.json'} is not an image index")
        return payload

    def _write_index(self, payload: dict[str, Any]) -> None:
        _atomic_write(self.path / "index.json", json.dumps(payload, indent=2).encode() + b"\n")

    def entries(self) -> list[Descriptor]:
        """The descriptors listed in index.json."""
        return [Descriptor.from_json(d) for d in self._read_index().get("manifests", [])]

    def resolve(self, name: str | None = None) -> Descriptor:
        """The entry named ``name`` (by ref.name annotation, or a digest); the only entry when None."""
        entries = self.entries()
        if name and digests.is_digest(name):
            for entry in entries:
                if entry.digest == name:
                    return entry
            if self.has_blob(name):
                return self.read_manifest_by_digest(name).descriptor()
            raise ImageNotFound(f"{self.path}: no manifest {name}")
        if name:
            matches = [e for e in entries if _ref_name(e) in (name, *_ref_suffixes(name))]
            if matches:
                return matches[-1]
            raise ImageNotFound(f"{self.path}: no manifest named {name!r} (names: {self._names(entries)})")
        if len(entries) == 1:
            return entries[0]
        if not entries:
            raise FormatError(f"{self.path}: index.json lists no manifests")
        raise AmbiguousImage(f"{self.path} holds {len(entries)} manifests; choose one by name "
                          f"(names: {self._names(entries)})")

    @staticmethod
    def _names(entries: list[Descriptor]) -> str:
        return ", ".join(_ref_name(e) or e.digest for e in entries)

    def add(self, descriptor: Descriptor, name: str | None = None) -> None:
        """Lists ``descriptor`` in index.json, under ``name`` if given (replacing what had that name)."""
        with self._lock:
            payload = self._read_index()
            kept = []
            for entry in payload.get("manifests", []):
                annotations = entry.get("annotations") or {}
                same_name = name is not None and annotations.get(mediatypes.REF_NAME_ANNOTATION) == name
                same_unnamed = name is None and not annotations and entry.get("digest") == descriptor.digest
                if not (same_name or same_unnamed):
                    kept.append(entry)
            value = descriptor.to_json()
            annotations = dict(value.get("annotations") or {})
            if name:
                annotations[mediatypes.REF_NAME_ANNOTATION] = name
            if annotations:
                value["annotations"] = annotations
            kept.append(value)
            payload["manifests"] = kept
            self._write_index(payload)

    # -- blobs -----------------------------------------------------------------------------------

    def blob_path(self, digest: str) -> pathlib.Path:
        algorithm, _, hex_part = digests.validate(digest).partition(":")
        return self.path / "blobs" / algorithm / hex_part

    def has_blob(self, digest: str) -> bool:
        return self.blob_path(digest).is_file()

    def source(self, descriptor: Descriptor) -> FileSource:
        path = self.blob_path(descriptor.digest)
        if not path.is_file():
            raise FormatError(f"{self.path}: blob {descriptor.digest} is missing")
        return FileSource(path, descriptor)

    def read_blob(self, descriptor: Descriptor) -> bytes:
        path = self.blob_path(descriptor.digest)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            raise FormatError(f"{self.path}: blob {descriptor.digest} is missing") from None
        verifier = Verifier(descriptor.digest, descriptor.size, f"{path}")
        verifier.update(data)
        verifier.check()
        return data

    def read_manifest(self, descriptor: Descriptor) -> Manifest:
        return Manifest.parse(self.read_blob(descriptor), descriptor.media_type, descriptor.digest)

    def read_manifest_by_digest(self, digest: str) -> Manifest:
        data = self.blob_path(digest).read_bytes()
        return Manifest.parse(data, "", digest)

    def write_blob(self, descriptor: Descriptor, stream: IO[bytes],
                   progress: Callable[[int], None] | None = None) -> None:
        """Streams a blob in, verifying it before it takes its content-addressed name."""
        target = self.blob_path(descriptor.digest)
        target.parent.mkdir(parents=True, exist_ok=True)
        verifier = Verifier(descriptor.digest, descriptor.size, f"blob {descriptor.digest}")
        handle, temp = tempfile.mkstemp(prefix=".partial-", dir=target.parent)
        try:
            with os.fdopen(handle, "wb") as out:
                while chunk := stream.read(IO_CHUNK):
                    verifier.update(chunk)
                    out.write(chunk)
                    if progress:
                        progress(verifier.received)
            verifier.check()
            os.chmod(temp, 0o644)
            os.replace(temp, target)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(temp)
            raise

    def write_bytes(self, data: bytes, descriptor: Descriptor) -> None:
        target = self.blob_path(descriptor.digest)
        verifier = Verifier(descriptor.digest, descriptor.size, f"blob {descriptor.digest}")
        verifier.update(data)
        verifier.check()
        target.parent.mkdir(parents=True, exist_ok=True)
        _atomic_write(target, data)


def _ref_name(entry: Descriptor) -> str:
    return entry.annotations.get(mediatypes.REF_NAME_ANNOTATION, "")


def _ref_suffixes(name: str) -> list[str]:
    """``repo:tag`` may be looked up as ``tag`` too (skopeo writes bare tags, containerd full names)."""
    return [name.rsplit(":", 1)[1]] if ":" in name and "/" not in name.rsplit(":", 1)[1] else []


def _atomic_write(path: pathlib.Path, data: bytes) -> None:
    handle, temp = tempfile.mkstemp(prefix=".partial-", dir=path.parent)
    try:
        with os.fdopen(handle, "wb") as out:
            out.write(data)
        os.chmod(temp, 0o644)
        os.replace(temp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temp)
        raise
