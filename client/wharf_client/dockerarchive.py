"""``docker save`` / ``docker load`` tarballs as an image source and target.

A docker tarball holds ``manifest.json`` (config file, repo tags, layer files),
the config JSON and each layer as an *uncompressed* tar. Registries want
compressed layers, so a push gzips them (deterministically: no timestamp, no
file name, so the same tarball always gives the same digests) and a pull
gunzips them, checking each result against the config's ``rootfs.diff_ids``;
a round trip gives back the same config and layer bytes. Temporary files live
in a scratch directory next to the work, never in memory.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import gzip
import hashlib
import json
import os
import pathlib
import shutil
import tarfile
import tempfile
import threading
from collections.abc import Callable, Sequence
from typing import IO, Any, cast

from wharf_client import digest as digests
from wharf_client import mediatypes
from wharf_client import reference as references
from wharf_client.blobio import IO_CHUNK, BlobSource, BytesSource, FileSource
from wharf_client.digest import Verifier
from wharf_client.errors import AmbiguousImage, FormatError, ImageNotFound, InvalidReference
from wharf_client.manifest import Descriptor, Manifest, image_manifest
from wharf_client.untrusted import parse_json, printable
from wharf_client.upload import Outcome

_GZIP_MAGIC = b"\x1f\x8b"
_ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
MAX_CONFIG_BYTES = 64 * 1024 * 1024
GZIP_LEVEL = 6  # what docker push uses; 9 is several times slower for a few percent


def is_docker_archive(path: pathlib.Path) -> bool:
    if not path.is_file():
        return False
    try:
        with tarfile.open(path, "r:*") as tar:
            for member in tar:
                if member.name.lstrip("./") == "manifest.json":
                    return True
    except (tarfile.TarError, OSError, EOFError):
        return False
    return False


def _normal(name: str) -> str:
    return os.path.normpath(name).lstrip("/").removeprefix("./")


class _HashingWriter:
    def __init__(self, out: IO[bytes]) -> None:
        self.out = out
        self.hash = hashlib.sha256()
        self.size = 0

    def write(self, data: bytes) -> int:
        self.hash.update(data)
        self.size += len(data)
        return self.out.write(data)

    def flush(self) -> None:
        self.out.flush()


class DockerArchiveSource:
    """An image inside a docker tarball, seen as a registry would see it once pushed."""

    def __init__(self, path: pathlib.Path, name: str | None = None, *, compress: bool = True,
                 concurrency: int = 2) -> None:
        self.path = pathlib.Path(path)
        self.label = str(self.path)
        self._scratch = pathlib.Path(tempfile.mkdtemp(prefix=".wharf-", dir=self.path.parent))
        self._compress = compress
        self._blobs: dict[str, BlobSource] = {}
        try:
            self._members = self._index_members()
            entry = self._select(name)
            self._manifest = self._build(entry, concurrency)
        except BaseException:
            self.close()
            raise

    def _index_members(self) -> dict[str, tuple[pathlib.Path, int, int]]:
        """name -> (file, offset, size); members of a compressed tarball are extracted to scratch first."""
        found: dict[str, tuple[pathlib.Path, int, int]] = {}
        with open(self.path, "rb") as probe:
            compressed = probe.read(2) == _GZIP_MAGIC
        try:
            with tarfile.open(self.path, "r:*") as tar:
                for number, member in enumerate(tar):
                    if not member.isfile():
                        continue
                    if compressed:
                        target = self._scratch / f"member-{number}"
                        with tar.extractfile(member) as reader, open(target, "wb") as out:  # type: ignore[union-attr]
                            shutil.copyfileobj(reader, out, IO_CHUNK)
                        found[_normal(member.name)] = (target, 0, member.size)
                    else:
                        found[_normal(member.name)] = (self.path, member.offset_data, member.size)
        except (tarfile.TarError, EOFError) as exc:
            raise FormatError(f"{self.path} is not a readable tarball: {exc}") from None
        return found

    def _read(self, name: str, limit: int) -> bytes:
        path, offset, size = self._member(name)
        if size > limit:
            raise FormatError(f"{self.path}: {name} is larger than {limit} bytes")
        with open(path, "rb") as handle:
            handle.seek(offset)
            return handle.read(size)

    def _member(self, name: str) -> tuple[pathlib.Path, int, int]:
        found = self._members.get(_normal(name))
        if found is None:
            raise FormatError(f"{self.path}: {name} is listed in manifest.json but missing from the tarball")
        return found

    def _select(self, name: str | None) -> dict[str, Any]:
        try:
            entries = parse_json(self._read("manifest.json", 16 * 1024 * 1024))
        except ValueError as exc:
            raise FormatError(f"{self.path}: manifest.json is not JSON: {exc}") from None
        if not isinstance(entries, list) or not entries:
            raise FormatError(f"{self.path}: manifest.json lists no images")
        if name is None:
            if len(entries) == 1:
                return dict(entries[0])
            tags = [t for e in entries for t in e.get("RepoTags") or []]
            raise AmbiguousImage(f"{self.path} holds {len(entries)} images; choose one of: {', '.join(tags)}")
        wanted = _normalized_tag(name)
        for entry in entries:
            if any(_normalized_tag(t) == wanted for t in entry.get("RepoTags") or []):
                return dict(entry)
        raise ImageNotFound(f"{self.path} has no image tagged {name!r}")

    def _build(self, entry: dict[str, Any], concurrency: int) -> Manifest:
        config = self._read(str(entry.get("Config", "")), MAX_CONFIG_BYTES)
        config_desc = Descriptor(mediatypes.DOCKER_CONFIG, "sha256:" + hashlib.sha256(config).hexdigest(),
                                 len(config))
        self._blobs[config_desc.digest] = BytesSource(config, config_desc)
        layers = [str(layer) for layer in entry.get("Layers") or []]
        with concurrent.futures.ThreadPoolExecutor(max(1, concurrency)) as pool:
            descriptors = list(pool.map(self._prepare_layer, layers, range(len(layers))))
        return image_manifest(config_desc, descriptors, media_type=mediatypes.DOCKER_MANIFEST)

    def _prepare_layer(self, name: str, number: int) -> Descriptor:
        path, offset, size = self._member(name)
        with open(path, "rb") as handle:
            handle.seek(offset)
            magic = handle.read(4)
            handle.seek(offset)
            if magic.startswith(_GZIP_MAGIC) or not self._compress or magic == _ZSTD_MAGIC:
                media_type = mediatypes.DOCKER_LAYER_GZIP if magic.startswith(_GZIP_MAGIC) else (
                    mediatypes.OCI_LAYER_ZSTD if magic == _ZSTD_MAGIC else mediatypes.DOCKER_LAYER)
                digest = _hash_region(handle, size)
                descriptor = Descriptor(media_type, digest, size)
                self._blobs[digest] = FileSource(path, descriptor, offset)
                return descriptor
            target = self._scratch / f"layer-{number}.tar.gz"
            with open(target, "wb") as raw:
                writer = _HashingWriter(raw)
                with gzip.GzipFile(filename="", mode="wb", fileobj=writer, mtime=0,
                                   compresslevel=GZIP_LEVEL) as packed:
                    remaining = size
                    while remaining > 0 and (chunk := handle.read(min(IO_CHUNK, remaining))):
                        packed.write(chunk)
                        remaining -= len(chunk)
        descriptor = Descriptor(mediatypes.DOCKER_LAYER_GZIP, "sha256:" + writer.hash.hexdigest(), writer.size)
        self._blobs[descriptor.digest] = FileSource(target, descriptor)
        return descriptor

    def root(self) -> Manifest:
        return self._manifest

    def manifest(self, descriptor: Descriptor) -> Manifest:
        if descriptor.digest != self._manifest.digest:
            raise FormatError(f"{self.path} has no manifest {descriptor.digest}")
        return self._manifest

    def blob(self, descriptor: Descriptor) -> BlobSource:
        found = self._blobs.get(descriptor.digest)
        if found is None:
            raise FormatError(f"{self.path} has no blob {descriptor.digest}")
        return found

    def close(self) -> None:
        shutil.rmtree(self._scratch, ignore_errors=True)


def _hash_region(handle: IO[bytes], size: int) -> str:
    digest = hashlib.sha256()
    remaining = size
    while remaining > 0 and (chunk := handle.read(min(IO_CHUNK, remaining))):
        digest.update(chunk)
        remaining -= len(chunk)
    return "sha256:" + digest.hexdigest()


def _normalized_tag(text: str) -> str:
    try:
        return str(references.parse(text, default_tag=True))
    except InvalidReference:
        return text


class DockerArchiveTarget:
    """Collects one image's blobs (layers gunzipped to scratch files), then writes the tarball."""

    def __init__(self, path: pathlib.Path, repo_tags: Sequence[str] = ()) -> None:
        self.path = pathlib.Path(path)
        self.label = str(self.path)
        self.repo_tags = list(repo_tags)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._scratch = pathlib.Path(tempfile.mkdtemp(prefix=".wharf-", dir=self.path.parent))
        self._files: dict[str, tuple[pathlib.Path, str]] = {}  # blob digest -> (file, sha256 of what it holds)
        self._lock = threading.Lock()

    def put_blob(self, source: BlobSource, progress: Callable[[int], None]) -> Outcome:
        descriptor = source.descriptor
        target = self._scratch / descriptor.digest.replace(":", "-")
        verifier = Verifier(descriptor.digest, descriptor.size, f"blob {descriptor.digest}")
        content_hash = hashlib.sha256()
        with source.open() as stream, open(target, "wb") as out:
            reader = _Tap(stream, verifier, progress)
            gunzip = "gzip" in descriptor.media_type
            # GzipFile only calls read() on its file object; _Tap is that much of a file.
            unpacked: gzip.GzipFile | _Tap = gzip.GzipFile(fileobj=cast("IO[bytes]", reader), mode="rb") \
                if gunzip else reader
            while chunk := unpacked.read(IO_CHUNK):
                content_hash.update(chunk)
                out.write(chunk)
            while reader.read(IO_CHUNK):  # trailing bytes after the gzip stream still count for the digest
                pass
        verifier.check()
        with self._lock:
            self._files[descriptor.digest] = (target, "sha256:" + content_hash.hexdigest())
        return Outcome.UPLOADED

    def has_manifest(self, descriptor: Descriptor) -> bool:
        return False

    def put_manifest(self, manifest: Manifest, tag: str | None, root: bool) -> None:
        if not root:
            return
        if manifest.is_index:
            raise FormatError("a docker tarball holds one single-platform image: choose one with --platform")
        config_desc = manifest.config
        if config_desc is None or config_desc.digest not in self._files:
            raise FormatError(f"manifest {manifest.digest} has no config blob to write")
        config_path = self._files[config_desc.digest][0]
        if config_desc.size > MAX_CONFIG_BYTES:  # it is read whole and parsed: a registry's size must not decide
            raise FormatError(f"the image config {config_desc.digest} is {config_desc.size} bytes, over the "
                              f"{MAX_CONFIG_BYTES} byte limit")
        diff_ids = _diff_ids(config_path.read_bytes())
        layers = manifest.layers
        if len(diff_ids) != len(layers):
            raise FormatError(f"config lists {len(diff_ids)} diff_ids for {len(layers)} layers")
        entries: list[tuple[str, pathlib.Path]] = [(f"{digests.encoded(config_desc.digest)}.json", config_path)]
        layer_names = []
        for layer, diff_id in zip(layers, diff_ids, strict=True):
            path, unpacked = self._files[layer.digest]
            compressed = "zstd" in layer.media_type
            if not compressed and unpacked != diff_id:
                raise FormatError(f"layer {layer.digest} unpacks to {unpacked}, but the config says {diff_id}")
            name = f"{digests.encoded(diff_id)}/layer.tar"
            layer_names.append(name)
            entries.append((name, path))
        index = [{"Config": entries[0][0], "RepoTags": self.repo_tags, "Layers": layer_names}]
        self._write(entries, json.dumps(index, separators=(",", ":")).encode(), layer_names)

    def _write(self, entries: list[tuple[str, pathlib.Path]], index: bytes, layer_names: list[str]) -> None:
        handle, temp = tempfile.mkstemp(prefix=".partial-", dir=self.path.parent)
        os.close(handle)
        try:
            with tarfile.open(temp, "w", format=tarfile.GNU_FORMAT) as tar:
                for directory in dict.fromkeys(n.split("/", 1)[0] for n in layer_names):
                    tar.addfile(_info(directory + "/", 0, directory=True))
                for name, path in entries:
                    with open(path, "rb") as data:
                        tar.addfile(_info(name, path.stat().st_size), data)
                repositories = _repositories(self.repo_tags, layer_names)
                for name, payload in (("manifest.json", index), ("repositories", repositories)):
                    if payload:
                        tar.addfile(_info(name, len(payload)), _BytesReader(payload))
            os.chmod(temp, 0o644)
            os.replace(temp, self.path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(temp)
            raise

    def close(self) -> None:
        shutil.rmtree(self._scratch, ignore_errors=True)


def _diff_ids(config: bytes) -> list[str]:
    """The config's ``rootfs.diff_ids``, each checked to be a digest: they become member names of the tarball,
    so ``sha256:../../x`` would otherwise write outside the layer directories (zstd layers included, whose
    diff_id cannot be compared with what they unpack to)."""
    try:
        payload = parse_json(config)
        found = (payload.get("rootfs") or {}).get("diff_ids") or []
    except (ValueError, AttributeError):
        raise FormatError("the image config is not JSON with rootfs.diff_ids") from None
    if not isinstance(found, list):
        raise FormatError("rootfs.diff_ids in the image config is not a list")
    for diff_id in found:
        if not isinstance(diff_id, str) or not digests.is_digest(diff_id):
            raise FormatError(f"rootfs.diff_ids in the image config holds {printable(repr(diff_id)[:150])}, "
                              "not a digest")
    return found


def _repositories(repo_tags: Sequence[str], layer_names: list[str]) -> bytes:
    """The legacy ``repositories`` file older docker versions read: repository -> tag -> top layer id."""
    if not repo_tags or not layer_names:
        return b""
    top = layer_names[-1].split("/", 1)[0]
    found: dict[str, dict[str, str]] = {}
    for text in repo_tags:
        name, _, tag = text.rpartition(":")
        if name and "/" not in tag:
            found.setdefault(name, {})[tag] = top
    return json.dumps(found, separators=(",", ":")).encode() if found else b""


def _info(name: str, size: int, directory: bool = False) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size = 0 if directory else size
    info.type = tarfile.DIRTYPE if directory else tarfile.REGTYPE
    info.mode = 0o755 if directory else 0o644
    info.mtime = 0
    return info


class _BytesReader:
    def __init__(self, data: bytes) -> None:
        self._data = memoryview(data)
        self._position = 0

    def read(self, size: int = -1) -> bytes:
        end = len(self._data) if size < 0 else self._position + size
        chunk = self._data[self._position:end].tobytes()
        self._position += len(chunk)
        return chunk


class _Tap:
    """Reads from a blob stream while verifying and reporting progress, for the gunzip that sits on top."""

    def __init__(self, stream: IO[bytes], verifier: Verifier, progress: Callable[[int], None]) -> None:
        self._stream = stream
        self._verifier = verifier
        self._progress = progress

    def read(self, size: int = -1, /) -> bytes:
        data = self._stream.read(size if size and size > 0 else IO_CHUNK)
        if data:
            self._verifier.update(data)
            self._progress(self._verifier.received)
        return data
