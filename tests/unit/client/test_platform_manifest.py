"""Platform matching (containerd's rules) and manifest parsing (exact bytes, digests, media types)."""

from __future__ import annotations

import json

import pytest
from wharf_client import mediatypes
from wharf_client.digest import of
from wharf_client.errors import DigestMismatch, FormatError, InvalidReference, PlatformNotFound
from wharf_client.manifest import Descriptor, Manifest, image_manifest, index
from wharf_client.platform import Platform, parse


@pytest.mark.parametrize(("wanted", "entry", "matches"), [
    ("linux/amd64", Platform("linux", "amd64"), True),
    ("linux/x86_64", Platform("linux", "amd64"), True),
    ("linux/arm64", Platform("linux", "arm64", "v8"), True),
    ("linux/arm64/v8", Platform("linux", "arm64"), True),
    ("linux/arm", Platform("linux", "arm", "v7"), True),
    ("linux/arm", Platform("linux", "arm", "v6"), False),
    ("linux/arm/v6", Platform("linux", "arm", "v6"), True),
    ("linux/amd64", Platform("windows", "amd64"), False),
    ("linux/amd64", Platform("linux", "arm64"), False),
])
def test_platform_matching(wanted: str, entry: Platform, matches: bool) -> None:
    assert parse(wanted).matches(entry) is matches


def test_platform_parse_errors() -> None:
    with pytest.raises(InvalidReference):
        parse("linux")
    assert str(parse("windows/amd64:10.0.17763")) == "windows/amd64:10.0.17763"


def _descriptor(data: bytes, media_type: str = mediatypes.OCI_LAYER_GZIP) -> Descriptor:
    return Descriptor(media_type, of(data), len(data))


def test_manifest_keeps_exact_bytes_and_digest() -> None:
    content = b'{ "schemaVersion": 2, "mediaType": "%s", "config": %s, "layers": [] }' % (
        mediatypes.OCI_MANIFEST.encode(), json.dumps(_descriptor(b"{}", mediatypes.OCI_CONFIG).to_json()).encode())
    manifest = Manifest.parse(content)
    assert manifest.content == content and manifest.digest == of(content)
    assert manifest.media_type == mediatypes.OCI_MANIFEST and manifest.config is not None
    with pytest.raises(DigestMismatch):
        Manifest.parse(content, digest=of(b"other"))


def test_media_type_from_header_body_or_shape() -> None:
    body = json.dumps({"schemaVersion": 2, "manifests": []}).encode()
    assert Manifest.parse(body).media_type == mediatypes.OCI_INDEX
    assert Manifest.parse(body, mediatypes.DOCKER_MANIFEST_LIST + "; charset=utf-8").media_type == \
        mediatypes.DOCKER_MANIFEST_LIST
    with pytest.raises(FormatError, match="schema 1"):
        Manifest.parse(json.dumps({"schemaVersion": 1, "fsLayers": []}).encode())
    with pytest.raises(FormatError):
        Manifest.parse(b"[1, 2]")


def test_index_platform_selection() -> None:
    amd = Descriptor(mediatypes.OCI_MANIFEST, of(b"a"), 1, Platform("linux", "amd64"))
    arm = Descriptor(mediatypes.OCI_MANIFEST, of(b"b"), 1, Platform("linux", "arm64", "v8"))
    built = index([amd, arm])
    assert built.select(parse("linux/arm64")).digest == arm.digest
    with pytest.raises(PlatformNotFound, match="linux/amd64, linux/arm64/v8"):
        built.select(parse("linux/s390x"))


def test_artifact_manifest_fields() -> None:
    subject = _descriptor(b"subject", mediatypes.OCI_MANIFEST)
    config = _descriptor(b"{}", mediatypes.OCI_EMPTY)
    layer = Descriptor("text/plain", of(b"x"), 1, annotations={mediatypes.TITLE_ANNOTATION: "x.txt"})
    built = image_manifest(config, [layer], artifact_type="application/vnd.test", subject=subject,
                           annotations={"k": "v"})
    again = Manifest.parse(built.content)
    assert again.artifact_type == "application/vnd.test"
    assert again.subject == Descriptor(subject.media_type, subject.digest, subject.size)
    assert again.layers[0].annotations == {mediatypes.TITLE_ANNOTATION: "x.txt"}
    assert again.annotations == {"k": "v"}
