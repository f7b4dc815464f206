"""Manifest parsing: media types, references, subject, artifactType."""

from __future__ import annotations

import base64
import json

import pytest

from services.api import manifest_rules
from services.common import digests, mediatypes
from services.common.errors import RegistryError


def _desc(content: bytes, media_type: str = "application/octet-stream", **extra: object) -> dict[str, object]:
    return {"mediaType": media_type, "digest": digests.of(content), "size": len(content), **extra}


def _image(**extra: object) -> dict[str, object]:
    return {"schemaVersion": 2, "mediaType": mediatypes.OCI_MANIFEST,
            "config": _desc(b"{}", mediatypes.OCI_CONFIG),
            "layers": [_desc(b"layer", "application/vnd.oci.image.layer.v1.tar+gzip")], **extra}


def test_image_manifest_references_config_and_layers() -> None:
    parsed = manifest_rules.parse(json.dumps(_image()).encode(), mediatypes.OCI_MANIFEST)
    assert parsed.blob_refs == [digests.of(b"{}"), digests.of(b"layer")]
    assert parsed.manifest_refs == [] and parsed.subject == ""
    assert parsed.artifact_type == mediatypes.OCI_CONFIG


def test_index_references_manifests_and_subject() -> None:
    child = _desc(b"child", mediatypes.OCI_MANIFEST)
    index = {"schemaVersion": 2, "mediaType": mediatypes.OCI_INDEX, "manifests": [child],
             "artifactType": "application/x.test", "subject": _desc(b"subject", mediatypes.OCI_MANIFEST),
             "annotations": {"a": "b"}}
    parsed = manifest_rules.parse(json.dumps(index).encode(), "")
    assert parsed.media_type == mediatypes.OCI_INDEX
    assert parsed.manifest_refs == [child["digest"]]
    assert parsed.subject == digests.of(b"subject")
    assert parsed.artifact_type == "application/x.test" and parsed.annotations == {"a": "b"}


def test_nondistributable_layers_are_not_required() -> None:
    manifest = _image(layers=[_desc(b"foreign", "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip",
                                    urls=["https://example.invalid/layer"])])
    parsed = manifest_rules.parse(json.dumps(manifest).encode(), mediatypes.OCI_MANIFEST)
    assert parsed.blob_refs == [digests.of(b"{}")]


def test_data_field_must_match_descriptor() -> None:
    good = _image(layers=[_desc(b"inline", data=base64.b64encode(b"inline").decode())])
    manifest_rules.parse(json.dumps(good).encode(), mediatypes.OCI_MANIFEST)
    bad = _image(layers=[_desc(b"inline", data=base64.b64encode(b"other!").decode())])
    with pytest.raises(RegistryError, match="data"):
        manifest_rules.parse(json.dumps(bad).encode(), mediatypes.OCI_MANIFEST)


@pytest.mark.parametrize("body,content_type", [
    (b"not json", mediatypes.OCI_MANIFEST),
    (b"[]", mediatypes.OCI_MANIFEST),
    (json.dumps({"schemaVersion": 1}).encode(), mediatypes.DOCKER_SCHEMA1_SIGNED),
    (json.dumps(_image(schemaVersion=3)).encode(), mediatypes.OCI_MANIFEST),
    (json.dumps(_image()).encode(), mediatypes.DOCKER_MANIFEST),  # body says OCI, header says Docker
    (json.dumps({k: v for k, v in _image().items() if k != "mediaType"}).encode(), mediatypes.DOCKER_MANIFEST),
    (json.dumps(_image(config={"mediaType": "x", "digest": "sha256:nothex", "size": 1})).encode(), ""),
    (json.dumps(_image(layers=[{"mediaType": "x", "digest": digests.of(b""), "size": -1}])).encode(), ""),
    (json.dumps({"schemaVersion": 2, "mediaType": "application/x.unknown"}).encode(), ""),
])
def test_invalid_manifests_are_refused(body: bytes, content_type: str) -> None:
    with pytest.raises(RegistryError) as info:
        manifest_rules.parse(body, content_type)
    assert info.value.code == "MANIFEST_INVALID"


def test_docker_schema2_manifest_list() -> None:
    child = _desc(b"child", mediatypes.DOCKER_MANIFEST, platform={"os": "linux", "architecture": "amd64"})
    body = {"schemaVersion": 2, "mediaType": mediatypes.DOCKER_MANIFEST_LIST, "manifests": [child]}
    parsed = manifest_rules.parse(json.dumps(body).encode(), mediatypes.DOCKER_MANIFEST_LIST)
    assert parsed.media_type == mediatypes.DOCKER_MANIFEST_LIST and parsed.manifest_refs == [child["digest"]]


@pytest.mark.parametrize("value", [{}, [], 0, False, 1, ["x"]])
def test_an_artifact_type_that_is_not_a_string_is_refused_falsy_or_not(value: object) -> None:
    with pytest.raises(RegistryError, match="artifactType must be a string") as info:
        manifest_rules.parse(json.dumps(_image(artifactType=value)).encode(), mediatypes.OCI_MANIFEST)
    assert info.value.code == "MANIFEST_INVALID"
    # In a descriptor too (an index's entry), with its annotations.
    index = {"schemaVersion": 2, "mediaType": mediatypes.OCI_INDEX,
             "manifests": [_desc(b"child", mediatypes.OCI_MANIFEST, artifactType=value)]}
    with pytest.raises(RegistryError, match="artifactType must be a string"):
        manifest_rules.parse(json.dumps(index).encode(), "")
    index["manifests"] = [_desc(b"child", mediatypes.OCI_MANIFEST, annotations={"k": value})]
    with pytest.raises(RegistryError, match="annotations"):
        manifest_rules.parse(json.dumps(index).encode(), "")


def test_a_null_artifact_type_reads_as_absent() -> None:
    parsed = manifest_rules.parse(json.dumps(_image(artifactType=None)).encode(), mediatypes.OCI_MANIFEST)
    assert parsed.artifact_type == mediatypes.OCI_CONFIG
