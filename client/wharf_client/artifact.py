"""OCI artifacts: files pushed as the layers of a manifest with an ``artifactType``, and their referrers.

An artifact's manifest may name a ``subject`` (the image it signs, describes or
attests). Registries with the referrers API index it themselves and say so with
an ``OCI-Subject`` header; for the others (Distribution 2.8) the client keeps
the index under the ``sha256-<hex>`` tag, as the distribution spec's fallback
asks, so ``referrers`` works the same everywhere.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import os
import pathlib
from collections.abc import Callable, Mapping, Sequence

from wharf_client import digest as digests
from wharf_client import mediatypes
from wharf_client.blobio import BytesSource, FileSource, copy_stream, new_partial
from wharf_client.errors import FormatError, UnsupportedOperation
from wharf_client.manifest import Descriptor, Manifest, image_manifest, index
from wharf_client.registry import Repository, referrers_tag
from wharf_client.untrusted import printable
from wharf_client.upload import push_blob

EMPTY_CONFIG = b"{}"
EMPTY_DESCRIPTOR = Descriptor(mediatypes.OCI_EMPTY, digests.of(EMPTY_CONFIG), len(EMPTY_CONFIG))
DEFAULT_FILE_TYPE = "application/vnd.oci.image.layer.v1.tar"


@dataclasses.dataclass(frozen=True)
class ArtifactFile:
    """A file to push: its path, the layer media type, and the name it is pulled back as."""

    path: pathlib.Path
    media_type: str = DEFAULT_FILE_TYPE
    title: str = ""

    @property
    def name(self) -> str:
        return self.title or self.path.name


def parse_file_argument(text: str) -> ArtifactFile:
    """``path`` or ``path:media/type`` (oras' syntax)."""
    path, sep, media_type = text.rpartition(":") if ":" in text else (text, "", "")
    if sep and "/" in media_type and not pathlib.Path(text).exists():
        return ArtifactFile(pathlib.Path(path), media_type)
    return ArtifactFile(pathlib.Path(text))


def push_artifact(repository: Repository, files: Sequence[ArtifactFile], *, artifact_type: str,
                  tag: str | None = None, annotations: Mapping[str, str] | None = None,
                  subject: Descriptor | None = None, config: bytes | None = None,
                  config_media_type: str = mediatypes.OCI_EMPTY,
                  progress: Callable[[int], None] | None = None,
                  progress_for: Callable[[str, int], Callable[[int], None]] | None = None) -> Manifest:
    """Uploads the files and the manifest; returns the manifest (its digest is the artifact's).
    ``progress_for(name, size)`` gives each file's own progress callback (a bar per file)."""
    if not artifact_type:
        raise FormatError("an artifact needs an artifact type (a media type such as application/vnd.example+json)")
    layers = []
    names: set[str] = set()
    for item in files:
        if not item.path.is_file():
            raise FormatError(f"{item.path}: no such file")
        if item.name in names:
            raise FormatError(f"two files would be pulled back as {item.name!r}")
        names.add(item.name)
        descriptor = Descriptor(item.media_type, _file_digest(item.path), item.path.stat().st_size,
                                annotations={mediatypes.TITLE_ANNOTATION: item.name})
        push_blob(repository, FileSource(item.path, descriptor),
                  progress=progress_for(item.name, descriptor.size) if progress_for else progress)
        layers.append(descriptor)
    config_data = EMPTY_CONFIG if config is None else config
    config_desc = Descriptor(config_media_type, digests.of(config_data), len(config_data))
    push_blob(repository, BytesSource(config_data, config_desc))
    if not layers:
        # The image spec asks for at least one layer; the empty descriptor stands in.
        layers.append(EMPTY_DESCRIPTOR)
    manifest = image_manifest(config_desc, layers, artifact_type=artifact_type, subject=subject,
                              annotations=annotations)
    put_referrer(repository, manifest, tag)
    return manifest


def put_referrer(repository: Repository, manifest: Manifest, tag: str | None = None) -> None:
    """PUTs a manifest; when it has a subject the registry did not index, updates the fallback tag index."""
    result = repository.put_manifest(manifest, tag)
    subject = manifest.subject
    if subject is None or result.subject_indexed:
        return
    fallback_tag = referrers_tag(subject.digest)
    existing = repository.referrers_tag_index(subject.digest)
    children = existing.children if existing else []
    if any(child.digest == manifest.digest for child in children):
        return
    entry = Descriptor(manifest.media_type, manifest.digest, len(manifest.content),
                       annotations=manifest.annotations, artifact_type=manifest.artifact_type)
    repository.put_manifest(index([*children, entry]), fallback_tag)


def pull_artifact(repository: Repository, reference: str, output: pathlib.Path,
                  progress: Callable[[int], None] | None = None) -> list[pathlib.Path]:
    """Writes every titled layer of the artifact into ``output``; returns the files written."""
    manifest = repository.get_manifest(reference)
    if manifest.is_index:
        raise FormatError(f"{reference} is an index, not an artifact manifest")
    output.mkdir(parents=True, exist_ok=True)
    written = []
    titled = [layer for layer in manifest.layers if layer.annotations.get(mediatypes.TITLE_ANNOTATION)]
    if not titled:
        raise UnsupportedOperation(f"{reference} has no files to pull (no layer has a title): an image, not an "
                                   "artifact? `wharf pull` fetches images")
    for layer in titled:
        title = layer.annotations[mediatypes.TITLE_ANNOTATION]
        target = safe_path(output, title)
        inside(output, target, title)  # before mkdir: it would make the directories through the link
        target.parent.mkdir(parents=True, exist_ok=True)
        handle, partial = new_partial(target)
        try:
            with os.fdopen(handle, "wb") as out, repository.open_blob(layer) as reader:
                copy_stream(reader, out, progress)  # type: ignore[arg-type]
            os.replace(partial, target)
        except BaseException:
            # Unverified bytes (a digest mismatch, a broken download) must not stay behind.
            with contextlib.suppress(FileNotFoundError):
                os.unlink(partial)
            raise
        written.append(target)
    return written


def safe_path(root: pathlib.Path, title: object) -> pathlib.Path:
    """``root/title``, refusing titles that climb out of ``root`` (absolute paths, ``..``) or name no file."""
    if not isinstance(title, str) or "\0" in title:
        raise FormatError(f"refusing to write {printable(repr(title)[:200])}: the title is not a file name")
    relative = pathlib.PurePosixPath(title)
    if relative.is_absolute() or ".." in relative.parts or not relative.parts:
        raise FormatError(f"refusing to write {printable(repr(title)[:200])}: the title leaves the output directory")
    return root.joinpath(*relative.parts)


def inside(root: pathlib.Path, target: pathlib.Path, title: str) -> None:
    """Refuses ``target`` when its directory, once symbolic links are followed, is not under ``root``.

    A title such as ``link/file`` is harmless as text, but a ``link`` already in the output
    directory that points elsewhere would carry the file out of it.
    """
    if not target.parent.resolve().is_relative_to(root.resolve()):
        raise FormatError(f"refusing to write {printable(repr(title)[:200])}: a symbolic link in {root} leads "
                          "out of the output directory")


def _file_digest(path: pathlib.Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(1024 * 1024):
            digest.update(chunk)
    return "sha256:" + digest.hexdigest()
