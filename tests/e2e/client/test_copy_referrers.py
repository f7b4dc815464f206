"""``wharf copy -r``: an image's referrers (a chain of them) follow it, and ``--chunk-size`` uploads.

Against Wharf (referrers API) and Distribution 2.8 (the ``sha256-<hex>`` tag
schema), and from one to the other, where the target's listing is rebuilt.
"""

from __future__ import annotations

import pathlib
from collections.abc import Callable

import pytest
import requests

from tests.e2e.client.conftest import Registry, Result
from tests.unit.client.builders import oci_layout, sha256

pytestmark = pytest.mark.e2e
Cli = Callable[..., Result]
SIGNATURE = "application/vnd.example.signature"
ATTESTATION = "application/vnd.example.attestation+json"


def referrer_digests(wharf_cli: Cli, reference: str) -> set[str]:
    return {entry["digest"] for entry in wharf_cli("referrers", reference, "--json").json()["referrers"]}


def push_with_chain(wharf_cli: Cli, repo: str, tmp_path: pathlib.Path) -> tuple[str, str, str]:
    """An image with a signature, and an attestation of that signature: (image, signature, attestation)."""
    built = oci_layout(tmp_path / "image", platforms=("linux/amd64", "linux/arm64"))
    wharf_cli("push", str(built.path), repo + ":v1")
    (tmp_path / "sig.txt").write_text("signed\n")
    (tmp_path / "att.json").write_text('{"predicate": "tested"}')
    signature = wharf_cli("artifact", "push", repo, str(tmp_path / "sig.txt"), "--artifact-type", SIGNATURE,
                          "--subject", "@" + built.digest, "--json").json()["digest"]
    attestation = wharf_cli("artifact", "push", repo, f"{tmp_path / 'att.json'}:application/json",
                            "--artifact-type", ATTESTATION, "--subject", "@" + signature, "--json").json()["digest"]
    return built.digest, signature, attestation


def test_copy_with_referrers_brings_the_chain(registry: Registry, wharf_cli: Cli, tmp_path: pathlib.Path) -> None:
    source, target = registry.repo(), registry.repo()
    image, signature, attestation = push_with_chain(wharf_cli, source, tmp_path)

    copied = wharf_cli("copy", "-r", source + ":v1", target, "--json").json()

    assert copied["digest"] == image and copied["referrers"] == [signature, attestation]
    assert referrer_digests(wharf_cli, target + ":v1") == {signature}
    assert referrer_digests(wharf_cli, f"{target}@{signature}") == {attestation}
    for digest in (signature, attestation):
        raw = wharf_cli("inspect", f"{target}@{digest}", "--raw").out
        assert sha256(raw) == digest and raw == wharf_cli("inspect", f"{source}@{digest}", "--raw").out
    if registry.kind == "wharf":
        # Wharf's own referrers API lists them, not only the client's fallback reading.
        name = target.split("/", 1)[1]
        answer = requests.get(f"http://{registry.host}/v2/{name}/referrers/{image}", timeout=30)
        assert answer.status_code == 200
        assert [entry["digest"] for entry in answer.json()["manifests"]] == [signature]
        answer = requests.get(f"http://{registry.host}/v2/{name}/referrers/{signature}", timeout=30)
        assert [entry["digest"] for entry in answer.json()["manifests"]] == [attestation]
    else:
        assert "sha256-" + image.split(":")[1] in wharf_cli("tags", target).text.split()


def test_copy_without_the_flag_leaves_referrers_behind(registry: Registry, wharf_cli: Cli,
                                                      tmp_path: pathlib.Path) -> None:
    source, target = registry.repo(), registry.repo()
    image, _, _ = push_with_chain(wharf_cli, source, tmp_path)
    copied = wharf_cli("copy", source + ":v1", target, "--json").json()
    assert copied["digest"] == image and copied["referrers"] == []
    assert referrer_digests(wharf_cli, target + ":v1") == set()


def test_copy_referrers_from_wharf_to_distribution(wharf: Registry, distribution: Registry, wharf_cli: Cli,
                                                   tmp_path: pathlib.Path) -> None:
    source, target = wharf.repo(), distribution.repo()
    image, signature, attestation = push_with_chain(wharf_cli, source, tmp_path)
    copied = wharf_cli("copy", "--referrers", source + ":v1", target + ":v1", "--json").json()
    assert copied["referrers"] == [signature, attestation]
    assert referrer_digests(wharf_cli, f"{target}@{image}") == {signature}
    assert referrer_digests(wharf_cli, f"{target}@{signature}") == {attestation}


def test_uploads_with_a_chunk_size(registry: Registry, wharf_cli: Cli, tmp_path: pathlib.Path) -> None:
    built = oci_layout(tmp_path / "image", platforms=("linux/amd64",), layer_sizes=(300_000,))
    repo = registry.repo()
    pushed = wharf_cli("push", str(built.path), repo + ":v1", "--chunk-size", "64KiB", "--json").json()
    assert pushed["digest"] == built.digest
    copied = wharf_cli("copy", repo + ":v1", registry.repo() + ":v1", "--chunk-size", "100k", "--json").json()
    assert copied["digest"] == built.digest
    data = (tmp_path / "blob.bin")
    data.write_bytes(bytes(range(256)) * 1000)
    digest = wharf_cli("blob", "put", repo, str(data), "--chunk-size", "65536").text.strip()
    assert digest == sha256(data.read_bytes())
    assert wharf_cli("blob", "get", f"{repo}@{digest}").out == data.read_bytes()
    wharf_cli("pull", repo + ":v1", str(tmp_path / "out"))
    assert {"sha256:" + p.name: p.read_bytes() for p in (tmp_path / "out" / "blobs" / "sha256").iterdir()} \
        == built.objects


def test_bad_chunk_size_is_a_usage_error(wharf: Registry, wharf_cli: Cli, tmp_path: pathlib.Path) -> None:
    result = wharf_cli("push", str(tmp_path), wharf.repo() + ":v1", "--chunk-size", "16 parsecs", expect=2)
    assert "argument --chunk-size" in result.err and "is not a size" in result.err
