"""Artifacts with a subject, and the referrers listing: Wharf's API and Distribution's tag-schema fallback."""

from __future__ import annotations

import pathlib
from collections.abc import Callable

import pytest

from tests.e2e.client.conftest import Registry, Result
from tests.unit.client.builders import oci_layout, sha256

pytestmark = pytest.mark.e2e
Cli = Callable[..., Result]
SBOM = "application/vnd.example.sbom+json"
SIGNATURE = "application/vnd.example.signature"


def test_artifacts_refer_to_an_image_and_are_listed(registry: Registry, wharf_cli: Cli,
                                                    tmp_path: pathlib.Path) -> None:
    built = oci_layout(tmp_path / "image", platforms=("linux/amd64",))
    repo = registry.repo()
    wharf_cli("push", str(built.path), repo + ":v1")
    (tmp_path / "sbom.json").write_text('{"packages": []}')
    (tmp_path / "notes.txt").write_text("built by the tests\n")
    sbom_file = f"{tmp_path / 'sbom.json'}:application/json"
    sbom = wharf_cli("artifact", "push", repo, sbom_file, str(tmp_path / "notes.txt"), "--artifact-type", SBOM,
                     "--subject", repo + ":v1", "-a", "org.example.stage=test", "--json").json()
    assert sbom["subject"] == built.digest
    signature = wharf_cli("artifact", "push", repo + ":sig", str(tmp_path / "notes.txt"),
                          "--artifact-type", SIGNATURE, "--subject", "@" + built.digest, "--json").json()

    listed = wharf_cli("referrers", repo + ":v1", "--json").json()
    by_digest = {entry["digest"]: entry for entry in listed["referrers"]}
    assert set(by_digest) == {sbom["digest"], signature["digest"]}
    assert by_digest[sbom["digest"]]["artifactType"] == SBOM
    assert by_digest[sbom["digest"]]["annotations"]["org.example.stage"] == "test"
    only = wharf_cli("referrers", f"{repo}@{built.digest}", "--artifact-type", SIGNATURE, "--json").json()
    assert [entry["digest"] for entry in only["referrers"]] == [signature["digest"]]
    if registry.kind == "distribution":
        # No referrers API in Distribution 2.8: the client kept the index under the fallback tag.
        assert "sha256-" + built.digest.split(":")[1] in wharf_cli("tags", repo).text.split()

    manifest = wharf_cli("inspect", f"{repo}@{sbom['digest']}", "--json").json()["manifest"]
    assert manifest["artifactType"] == SBOM and manifest["subject"]["digest"] == built.digest
    assert manifest["config"]["mediaType"] == "application/vnd.oci.empty.v1+json"
    assert [layer["mediaType"] for layer in manifest["layers"]] == ["application/json",
                                                                   "application/vnd.oci.image.layer.v1.tar"]
    pulled = wharf_cli("artifact", "pull", f"{repo}@{sbom['digest']}", "-o", str(tmp_path / "out"), "--json").json()
    assert sorted(pathlib.Path(p).name for p in pulled["files"]) == ["notes.txt", "sbom.json"]
    assert (tmp_path / "out" / "sbom.json").read_text() == '{"packages": []}'
    assert sha256((tmp_path / "out" / "notes.txt").read_bytes()) == sha256(b"built by the tests\n")


def test_subject_in_another_repository_is_refused(registry: Registry, wharf_cli: Cli,
                                                  tmp_path: pathlib.Path) -> None:
    (tmp_path / "f").write_text("x")
    result = wharf_cli("artifact", "push", registry.repo(), str(tmp_path / "f"), "--artifact-type", SBOM,
                       "--subject", registry.repo() + ":v1", expect=2)
    assert "must be in the artifact's repository" in result.err


def test_referrers_of_an_image_without_any(registry: Registry, wharf_cli: Cli, tmp_path: pathlib.Path) -> None:
    built = oci_layout(tmp_path / "image", platforms=("linux/amd64",))
    repo = registry.repo()
    wharf_cli("push", str(built.path), repo + ":v1")
    assert wharf_cli("referrers", repo + ":v1", "--json").json()["referrers"] == []
