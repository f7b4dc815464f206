"""OCI layouts and docker tarballs: reading, writing, and the copy engine between them (no registry)."""

from __future__ import annotations

import gzip
import pathlib

import pytest
from wharf_client import (
    Descriptor,
    DigestMismatch,
    DockerArchiveSource,
    DockerArchiveTarget,
    FormatError,
    LayoutImageSource,
    LayoutImageTarget,
    OciLayout,
    copy_image,
    parse_platform,
)
from wharf_client import mediatypes as mt
from wharf_client.blobio import BytesSource
from wharf_client.errors import ImageNotFound

from tests.unit.client.builders import docker_save, oci_layout, read_docker_tarball, sha256


def blobs_of(layout: pathlib.Path) -> dict[str, bytes]:
    return {"sha256:" + p.name: p.read_bytes() for p in (layout / "blobs" / "sha256").iterdir()
            if not p.name.startswith(".")}


def test_layout_to_layout_copies_every_object_byte_for_byte(tmp_path: pathlib.Path) -> None:
    built = oci_layout(tmp_path / "src")
    result = copy_image(LayoutImageSource(OciLayout.open(built.path), "v1"),
                        LayoutImageTarget(OciLayout.create(tmp_path / "dst")), "copied")
    assert result.digest == built.digest
    assert blobs_of(tmp_path / "dst") == built.objects
    entry = OciLayout.open(tmp_path / "dst").resolve("copied")
    assert entry.digest == built.digest and entry.media_type == mt.OCI_INDEX


def test_platform_subset_makes_a_new_index_or_a_single_manifest(tmp_path: pathlib.Path) -> None:
    built = oci_layout(tmp_path / "src", platforms=("linux/amd64", "linux/arm64", "linux/s390x"))
    one = copy_image(LayoutImageSource(OciLayout.open(built.path)), LayoutImageTarget(OciLayout.create(tmp_path / "a")),
                     "one", platforms=[parse_platform("linux/arm64")])
    assert one.digest == built.platforms["linux/arm64"] and one.media_type == mt.OCI_MANIFEST
    two = copy_image(LayoutImageSource(OciLayout.open(built.path)), LayoutImageTarget(OciLayout.create(tmp_path / "b")),
                     "two", platforms=[parse_platform("linux/arm64"), parse_platform("linux/amd64")])
    assert two.media_type == mt.OCI_INDEX and two.digest != built.digest
    assert sorted(two.platforms) == ["linux/amd64", "linux/arm64"]


def test_layout_names_and_errors(tmp_path: pathlib.Path) -> None:
    built = oci_layout(tmp_path / "src")
    layout = OciLayout.open(built.path)
    assert layout.resolve().digest == built.digest
    assert layout.resolve("example.com/app:v1").digest == built.digest  # full names match bare tags
    assert layout.resolve(built.digest).digest == built.digest
    with pytest.raises(ImageNotFound, match="names: v1"):  # not found (exit 4), not an integrity failure
        layout.resolve("v2")
    with pytest.raises(FormatError, match="not an OCI image layout"):
        OciLayout.open(tmp_path)


def test_layout_never_keeps_a_blob_that_does_not_match_its_name(tmp_path: pathlib.Path) -> None:
    layout = OciLayout.create(tmp_path / "l")
    wrong = Descriptor(mt.OCTET_STREAM, sha256(b"expected"), 8)
    with pytest.raises(DigestMismatch):
        layout.write_blob(wrong, BytesSource(b"tampered", wrong).open())
    assert not layout.has_blob(wrong.digest)
    assert list((tmp_path / "l" / "blobs" / "sha256").iterdir()) == []


def test_docker_tarball_push_shape_and_pull_round_trip(tmp_path: pathlib.Path) -> None:
    saved = docker_save(tmp_path / "saved.tar")
    source = DockerArchiveSource(saved.path)
    try:
        manifest = source.root()
        assert manifest.media_type == mt.DOCKER_MANIFEST
        assert manifest.config is not None and manifest.config.digest == sha256(saved.config)
        assert [layer.media_type for layer in manifest.layers] == [mt.DOCKER_LAYER_GZIP] * 2
        for layer, original in zip(manifest.layers, saved.layers, strict=True):
            with source.blob(layer).open() as stream:
                assert gzip.decompress(stream.read()) == original
        # Compression is deterministic: the same tarball always gives the same manifest.
        again = DockerArchiveSource(saved.path)
        assert again.root().digest == manifest.digest
        again.close()
        target = DockerArchiveTarget(tmp_path / "out.tar", ["example/app:v1"])
        copy_image(source, target, None)
        target.close()
    finally:
        source.close()
    tags, config, layers = read_docker_tarball(tmp_path / "out.tar")
    assert (tags, config, layers) == (["example/app:v1"], saved.config, saved.layers)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".wharf-")]  # scratch cleaned up


def test_docker_tarball_selection_and_refusals(tmp_path: pathlib.Path) -> None:
    saved = docker_save(tmp_path / "saved.tar", repo_tag="example/app:v1")
    DockerArchiveSource(saved.path, "docker.io/example/app:v1").close()  # normalized names match
    with pytest.raises(ImageNotFound, match="no image tagged"):
        DockerArchiveSource(saved.path, "example/app:v2")
    built = oci_layout(tmp_path / "multi")
    target = DockerArchiveTarget(tmp_path / "multi.tar")
    with pytest.raises(FormatError, match="--platform"):
        copy_image(LayoutImageSource(OciLayout.open(built.path)), target, None)
    target.close()


def test_gzipped_docker_tarball_is_read(tmp_path: pathlib.Path) -> None:
    saved = docker_save(tmp_path / "saved.tar")
    packed = tmp_path / "saved.tar.gz"
    packed.write_bytes(gzip.compress(saved.path.read_bytes()))
    source = DockerArchiveSource(packed)
    try:
        assert source.root().config.digest == sha256(saved.config)  # type: ignore[union-attr]
    finally:
        source.close()
