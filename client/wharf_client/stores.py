"""Where images come from and go to: a registry repository or an OCI layout (docker tarballs: dockerarchive).

The copy engine only sees these two small interfaces, so push (layout -> registry),
pull (registry -> layout) and copy (registry -> registry) are one algorithm.
Registries also list and accept referrers (:class:`ReferrerSource`,
:class:`ReferrerTarget`); a copy with referrers needs both ends to.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from typing import Protocol, runtime_checkable

from wharf_client.artifact import put_referrer
from wharf_client.blobio import BlobSource, RegistrySource
from wharf_client.layout import OciLayout
from wharf_client.manifest import Descriptor, Manifest
from wharf_client.registry import Repository
from wharf_client.upload import Outcome, push_blob

Progress = Callable[[int], None]


class ImageSource(Protocol):
    """Reads manifests and blobs by descriptor; ``root`` is what the user named (tag, digest, layout entry)."""

    label: str

    def root(self) -> Manifest: ...
    def manifest(self, descriptor: Descriptor) -> Manifest: ...
    def blob(self, descriptor: Descriptor) -> BlobSource: ...
    def close(self) -> None: ...


class ImageTarget(Protocol):
    """Receives blobs first, then manifests, children before the index that lists them."""

    label: str

    def put_blob(self, source: BlobSource, progress: Progress) -> Outcome: ...
    def has_manifest(self, descriptor: Descriptor) -> bool: ...
    def put_manifest(self, manifest: Manifest, tag: str | None, root: bool) -> None: ...
    def close(self) -> None: ...


@runtime_checkable
class ReferrerSource(Protocol):
    """A source that can list the manifests whose subject is a digest."""

    def referrers(self, digest: str) -> list[Descriptor]: ...


@runtime_checkable
class ReferrerTarget(Protocol):
    """A target that can store a manifest with a subject so its subject's referrers list it."""

    def put_referrer(self, manifest: Manifest) -> None: ...


class RegistryImageSource:
    def __init__(self, repository: Repository, identifier: str) -> None:
        self.repository = repository
        self.identifier = identifier
        self.label = str(repository.reference(identifier))

    def root(self) -> Manifest:
        return self.repository.get_manifest(self.identifier)

    def manifest(self, descriptor: Descriptor) -> Manifest:
        return self.repository.get_manifest(descriptor.digest)

    def blob(self, descriptor: Descriptor) -> BlobSource:
        return RegistrySource(self.repository, descriptor)

    def referrers(self, digest: str) -> list[Descriptor]:
        return self.repository.referrers(digest)

    def close(self) -> None:
        """The client belongs to the caller."""


class RegistryImageTarget:
    """Pushes into a repository, mounting from ``mount_from`` (same registry) before uploading."""

    def __init__(self, repository: Repository, mount_from: Sequence[str] = ()) -> None:
        self.repository = repository
        self.mount_from = list(mount_from)
        self.label = f"{repository.registry}/{repository.name}"

    def put_blob(self, source: BlobSource, progress: Progress) -> Outcome:
        return push_blob(self.repository, source, mount_from=self.mount_from, progress=progress)

    def has_manifest(self, descriptor: Descriptor) -> bool:
        found = self.repository.head_manifest(descriptor.digest)
        return found is not None and found.digest == descriptor.digest

    def put_manifest(self, manifest: Manifest, tag: str | None, root: bool) -> None:
        self.repository.put_manifest(manifest, tag)

    def put_referrer(self, manifest: Manifest) -> None:
        """By digest; on a registry without the referrers API, also listed under the subject's fallback tag."""
        put_referrer(self.repository, manifest)

    def close(self) -> None:
        """The client belongs to the caller."""


class LayoutImageSource:
    def __init__(self, layout: OciLayout, name: str | None = None) -> None:
        self.layout = layout
        self.name = name
        self.label = f"{layout.path}" + (f":{name}" if name else "")

    def root(self) -> Manifest:
        return self.layout.read_manifest(self.layout.resolve(self.name))

    def manifest(self, descriptor: Descriptor) -> Manifest:
        return self.layout.read_manifest(descriptor)

    def blob(self, descriptor: Descriptor) -> BlobSource:
        return self.layout.source(descriptor)

    def close(self) -> None:
        """Nothing held open."""


class LayoutImageTarget:
    """Writes into an OCI layout; the root manifest is listed in index.json under ``name``."""

    def __init__(self, layout: OciLayout) -> None:
        self.layout = layout
        self.label = str(layout.path)
        self._lock = threading.Lock()

    def put_blob(self, source: BlobSource, progress: Progress) -> Outcome:
        descriptor = source.descriptor
        if self.layout.has_blob(descriptor.digest):
            progress(descriptor.size)
            return Outcome.EXISTS
        with source.open() as stream:
            self.layout.write_blob(descriptor, stream, progress)
        return Outcome.UPLOADED

    def has_manifest(self, descriptor: Descriptor) -> bool:
        return self.layout.has_blob(descriptor.digest)

    def put_manifest(self, manifest: Manifest, tag: str | None, root: bool) -> None:
        self.layout.write_bytes(manifest.content, manifest.descriptor())
        if root:
            self.layout.add(manifest.descriptor(), tag)

    def close(self) -> None:
        """Nothing held open."""
