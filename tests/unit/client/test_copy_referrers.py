"""``copy_image(..., referrers=True)``: signatures, SBOMs and attestations follow the image, chains included.

Run against the in-memory registry twice: with the referrers API, and without
it (Distribution 2.8's case), where both reading and writing go through the
``sha256-<hex>`` tag schema.
"""

from __future__ import annotations

import json
import pathlib
from collections.abc import Callable

import pytest
from wharf_client import (
    Client,
    LayoutImageTarget,
    OciLayout,
    RegistryImageSource,
    RegistryImageTarget,
    Repository,
    UnsupportedOperation,
    copy_image,
    parse_platform,
)
from wharf_client import mediatypes as mt
from wharf_client.artifact import ArtifactFile, push_artifact, put_referrer
from wharf_client.cli import build_parser
from wharf_client.manifest import Manifest, encode, index
from wharf_client.registry import referrers_tag
from wharf_client.stores import LayoutImageSource

from tests.unit.client.builders import Built, oci_layout
from tests.unit.client.fakeregistry import HOST, Behaviour, FakeRegistry

MakeClient = Callable[..., Client]
SIGNATURE = "application/vnd.example.signature"
SBOM = "application/vnd.example.sbom+json"
ATTESTATION = "application/vnd.example.attestation+json"


@pytest.fixture(params=[True, False], ids=["referrers-api", "tag-schema"])
def fake(request: pytest.FixtureRequest) -> FakeRegistry:
    return FakeRegistry(Behaviour(referrers_api=bool(request.param)))


def push_image(client: Client, tmp_path: pathlib.Path, name: str, platforms: tuple[str, ...], tag: str = "v1") -> Built:
    built = oci_layout(tmp_path / name, platforms=platforms, layer_sizes=(3000,))
    copy_image(LayoutImageSource(OciLayout.open(built.path)), RegistryImageTarget(client.repository(f"{HOST}/src")),
               tag)
    return built


def attach(repo: Repository, tmp_path: pathlib.Path, subject: str, artifact_type: str) -> str:
    """Pushes a one-file artifact whose subject is ``subject``; returns its digest."""
    path = tmp_path / f"{artifact_type.rsplit('.', 1)[-1]}-{subject[7:19]}.txt"
    path.write_text(f"{artifact_type} of {subject}\n")
    found = repo.head_manifest(subject)
    assert found is not None
    return push_artifact(repo, [ArtifactFile(path)], artifact_type=artifact_type, subject=found).digest


def listed(repo: Repository, digest: str) -> set[str]:
    return {d.digest for d in repo.referrers(digest)}


def test_referrers_of_the_index_its_children_and_each_other_are_copied(fake: FakeRegistry, make_client: MakeClient,
                                                                      tmp_path: pathlib.Path) -> None:
    client = make_client()
    built = push_image(client, tmp_path, "image", ("linux/amd64", "linux/arm64"))
    other = push_image(client, tmp_path, "other", ("linux/amd64",), tag="other")
    src = client.repository(f"{HOST}/src")
    amd64 = built.platforms["linux/amd64"]
    signature = attach(src, tmp_path, built.digest, SIGNATURE)
    sbom = attach(src, tmp_path, amd64, SBOM)
    attestation = attach(src, tmp_path, signature, ATTESTATION)  # a referrer of a referrer
    attach(src, tmp_path, other.digest, SIGNATURE)  # another image's: stays behind

    result = copy_image(RegistryImageSource(src, "v1"), RegistryImageTarget(client.repository(f"{HOST}/dst")),
                        "v1", referrers=True)

    assert result.digest == built.digest
    assert set(result.referrers) == {signature, sbom, attestation}
    assert result.referrers.index(signature) < result.referrers.index(attestation)
    dst = client.repository(f"{HOST}/dst")
    assert listed(dst, built.digest) == {signature}
    assert listed(dst, amd64) == {sbom}
    assert listed(dst, signature) == {attestation}
    assert listed(dst, built.platforms["linux/arm64"]) == set()
    for digest in (signature, sbom, attestation):
        assert fake.manifests[("dst", digest)] == fake.manifests[("src", digest)]  # byte for byte
        for blob in json.loads(fake.manifests[("dst", digest)][0])["layers"]:
            assert blob["digest"] in fake.blobs
    assert (("dst", referrers_tag(built.digest)) in fake.manifests) is not fake.behaviour.referrers_api


def test_copying_again_keeps_one_entry_per_referrer(fake: FakeRegistry, make_client: MakeClient,
                                                    tmp_path: pathlib.Path) -> None:
    client = make_client()
    built = push_image(client, tmp_path, "image", ("linux/amd64",))
    src, dst = client.repository(f"{HOST}/src"), client.repository(f"{HOST}/dst")
    signature = attach(src, tmp_path, built.digest, SIGNATURE)
    for _ in range(2):
        again = copy_image(RegistryImageSource(src, "v1"), RegistryImageTarget(dst), "v1", referrers=True)
        assert again.referrers == [signature]
    assert [d.digest for d in dst.referrers(built.digest)] == [signature]


def test_a_platform_filter_copies_the_referrers_of_what_it_kept(fake: FakeRegistry, make_client: MakeClient,
                                                                tmp_path: pathlib.Path) -> None:
    client = make_client()
    built = push_image(client, tmp_path, "image", ("linux/amd64", "linux/arm64", "linux/s390x"))
    src = client.repository(f"{HOST}/src")
    attach(src, tmp_path, built.digest, SIGNATURE)  # its subject is the full index, which is not copied
    kept = attach(src, tmp_path, built.platforms["linux/amd64"], SBOM)
    attach(src, tmp_path, built.platforms["linux/s390x"], SBOM)
    wanted = [parse_platform("linux/amd64"), parse_platform("linux/arm64")]
    result = copy_image(RegistryImageSource(src, "v1"), RegistryImageTarget(client.repository(f"{HOST}/dst")),
                        "v1", platforms=wanted, referrers=True)
    assert result.digest != built.digest
    assert result.referrers == [kept]


def test_without_the_flag_no_referrer_is_copied(fake: FakeRegistry, make_client: MakeClient,
                                                tmp_path: pathlib.Path) -> None:
    client = make_client()
    built = push_image(client, tmp_path, "image", ("linux/amd64",))
    src, dst = client.repository(f"{HOST}/src"), client.repository(f"{HOST}/dst")
    attach(src, tmp_path, built.digest, SIGNATURE)
    result = copy_image(RegistryImageSource(src, "v1"), RegistryImageTarget(dst), "v1")
    assert result.referrers == [] and dst.referrers(built.digest) == []


def test_referrers_into_a_layout_are_refused_before_anything_moves(fake: FakeRegistry, make_client: MakeClient,
                                                                   tmp_path: pathlib.Path) -> None:
    client = make_client()
    push_image(client, tmp_path, "image", ("linux/amd64",))
    layout = OciLayout.create(tmp_path / "out")
    with pytest.raises(UnsupportedOperation, match="needs a registry at both ends"):
        copy_image(RegistryImageSource(client.repository(f"{HOST}/src"), "v1"), LayoutImageTarget(layout), "v1",
                   referrers=True)
    assert {p.name for p in (tmp_path / "out").rglob("*") if p.is_file()} <= {"oci-layout", "index.json"}


def test_a_referrer_that_is_an_index_comes_with_its_children(fake: FakeRegistry, make_client: MakeClient,
                                                             tmp_path: pathlib.Path) -> None:
    client = make_client()
    built = push_image(client, tmp_path, "image", ("linux/amd64",))
    src, dst = client.repository(f"{HOST}/src"), client.repository(f"{HOST}/dst")
    member = attach(src, tmp_path, built.digest, ATTESTATION)
    member_desc, subject = src.head_manifest(member), src.head_manifest(built.digest)
    assert member_desc is not None and subject is not None
    # An attestation bundle: an index with a subject, listing a manifest that is itself a referrer.
    payload = {**json.loads(index([member_desc]).content), "artifactType": ATTESTATION,
               "subject": {"mediaType": subject.media_type, "digest": subject.digest, "size": subject.size}}
    bundle = Manifest.parse(encode(payload), mt.OCI_INDEX)
    put_referrer(src, bundle)
    result = copy_image(RegistryImageSource(src, "v1"), RegistryImageTarget(dst), "v1", referrers=True)
    assert set(result.referrers) == {member, bundle.digest}
    assert listed(dst, built.digest) == {member, bundle.digest}


def test_the_command_line_flag() -> None:
    for flag in ("-r", "--referrers"):
        assert build_parser().parse_args(["copy", "a", "b", flag]).referrers is True
    assert build_parser().parse_args(["cp", "a", "b"]).referrers is False
