"""Test images built with the standard library only, so the e2e tests need no image builder.

Layers hold fresh random bytes, so a registry has never seen them before and a
client cannot skip a push because it cached a blob. Each builder writes to disk
in a format skopeo reads and returns every content-addressed object it wrote, so
tests can check byte for byte what comes back from the registry.
"""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import io
import json
import os
import pathlib
import tarfile

OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_MANIFEST_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
DOCKER_LAYER_GZIP = "application/vnd.docker.image.rootfs.diff.tar.gzip"

PLATFORMS: tuple[tuple[str, str], ...] = (("linux", "amd64"), ("linux", "arm64"))
# Three layers of a few hundred KiB each: large enough that clients stream them, small enough to stay quick.
LAYER_SIZES = (200 * 1024, 300 * 1024, 400 * 1024)


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def canonical_json(value: object) -> bytes:
    return json.dumps(value, separators=(",", ":"), sort_keys=True).encode()


def assert_same_objects(actual: dict[str, bytes], expected: dict[str, bytes]) -> None:
    """Same digests, every object byte-identical and hashing to its digest; no megabyte dumps on failure."""
    missing, extra = sorted(expected.keys() - actual.keys()), sorted(actual.keys() - expected.keys())
    assert not missing and not extra, f"missing objects: {missing}; unexpected objects: {extra}"
    different = [digest for digest, data in expected.items() if actual[digest] != data or sha256(data) != digest]
    assert not different, f"objects differ from the original: {different}"


@dataclasses.dataclass(frozen=True)
class BuiltImage:
    """What a builder wrote: the tag to push under and the digests a registry must give back."""

    path: pathlib.Path
    tag: str
    digest: str                # what the tag points at: the index / list, or the single manifest
    media_type: str
    manifests: dict[str, str]  # "os/arch" -> image manifest digest
    blobs: dict[str, bytes]    # every config and layer, by digest
    objects: dict[str, bytes]  # blobs plus every manifest and index, by digest

    @property
    def root(self) -> bytes:
        return self.objects[self.digest]


@dataclasses.dataclass(frozen=True)
class _Platform:
    manifest: bytes
    config: bytes
    layers: list[bytes]


def random_layer(size: int) -> tuple[bytes, str]:
    """A gzip'd tar holding one file of random bytes; returns (blob, diff_id)."""
    payload = os.urandom(size)
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        info = tarfile.TarInfo(f"data/{hashlib.sha256(payload).hexdigest()[:16]}.bin")
        info.size, info.mode, info.mtime = size, 0o644, 0
        tar.addfile(info, io.BytesIO(payload))
    tar_bytes = raw.getvalue()
    return gzip.compress(tar_bytes, mtime=0), sha256(tar_bytes)


def _platform(os_name: str, arch: str, manifest_type: str, config_type: str, layer_type: str) -> _Platform:
    layers, diff_ids = zip(*(random_layer(size) for size in LAYER_SIZES), strict=True)
    config = canonical_json({
        "architecture": arch, "os": os_name, "created": "2026-01-01T00:00:00Z",
        "config": {"Env": ["PATH=/usr/local/bin:/usr/bin:/bin"], "Cmd": ["/bin/sh"]},
        "rootfs": {"type": "layers", "diff_ids": list(diff_ids)},
        "history": [{"created": "2026-01-01T00:00:00Z", "created_by": "tests/e2e/images.py"}] * len(layers),
    })
    manifest = canonical_json({
        "schemaVersion": 2, "mediaType": manifest_type,
        "config": {"mediaType": config_type, "digest": sha256(config), "size": len(config)},
        "layers": [{"mediaType": layer_type, "digest": sha256(layer), "size": len(layer)} for layer in layers],
    })
    return _Platform(manifest, config, list(layers))


def _write_oci_blobs(layout: pathlib.Path, objects: dict[str, bytes]) -> None:
    blob_dir = layout / "blobs" / "sha256"
    blob_dir.mkdir(parents=True, exist_ok=True)
    for digest, data in objects.items():
        (blob_dir / digest.removeprefix("sha256:")).write_bytes(data)


def write_oci_index_layout(layout: pathlib.Path, tag: str = "multi") -> BuiltImage:
    """An OCI image layout whose tag names an image index of linux/amd64 and linux/arm64."""
    blobs: dict[str, bytes] = {}
    manifests: dict[str, bytes] = {}
    descriptors = []
    for os_name, arch in PLATFORMS:
        platform = _platform(os_name, arch, OCI_MANIFEST, OCI_CONFIG, OCI_LAYER_GZIP)
        blobs.update({sha256(b): b for b in [platform.config, *platform.layers]})
        manifests[f"{os_name}/{arch}"] = platform.manifest
        descriptors.append({"mediaType": OCI_MANIFEST, "digest": sha256(platform.manifest),
                            "size": len(platform.manifest), "platform": {"architecture": arch, "os": os_name}})
    index = canonical_json({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": descriptors})
    objects = {**blobs, **{sha256(m): m for m in manifests.values()}, sha256(index): index}
    _write_oci_blobs(layout, objects)
    (layout / "oci-layout").write_bytes(canonical_json({"imageLayoutVersion": "1.0.0"}))
    (layout / "index.json").write_bytes(canonical_json({
        "schemaVersion": 2, "mediaType": OCI_INDEX,
        "manifests": [{"mediaType": OCI_INDEX, "digest": sha256(index), "size": len(index),
                       "annotations": {"org.opencontainers.image.ref.name": tag}}],
    }))
    return BuiltImage(layout, tag, sha256(index), OCI_INDEX,
                      {name: sha256(m) for name, m in manifests.items()}, blobs, objects)


def write_docker_dir(directory: pathlib.Path, tag: str = "schema2") -> BuiltImage:
    """A single-platform Docker schema2 image in skopeo's ``dir:`` format.

    The manifest is already schema2, so ``skopeo copy --format v2s2`` pushes these
    exact bytes and the expected manifest digest is known before the push.
    """
    platform = _platform("linux", "amd64", DOCKER_MANIFEST, DOCKER_CONFIG, DOCKER_LAYER_GZIP)
    blobs = {sha256(b): b for b in [platform.config, *platform.layers]}
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "version").write_text("Directory Transport Version: 1.1\n")
    (directory / "manifest.json").write_bytes(platform.manifest)
    for digest, data in blobs.items():
        (directory / digest.removeprefix("sha256:")).write_bytes(data)
    digest = sha256(platform.manifest)
    return BuiltImage(directory, tag, digest, DOCKER_MANIFEST, {"linux/amd64": digest}, blobs,
                      {**blobs, digest: platform.manifest})
