"""push, pull, copy, inspect, tag, delete, blobs and tags against Wharf and CNCF Distribution."""

from __future__ import annotations

import concurrent.futures
import pathlib
from collections.abc import Callable

import pytest
from wharf_client import Client, ClientOptions, RegistryOptions, StaticCredentials, parse_reference
from wharf_client.blobio import BytesSource
from wharf_client.manifest import Descriptor, image_manifest
from wharf_client.upload import push_blob

from tests.e2e.client.conftest import Registry, Result
from tests.unit.client.builders import docker_save, oci_layout, read_docker_tarball, sha256

pytestmark = pytest.mark.e2e
Cli = Callable[..., Result]


def layout_blobs(path: pathlib.Path) -> dict[str, bytes]:
    return {"sha256:" + p.name: p.read_bytes() for p in (path / "blobs" / "sha256").iterdir()}


def test_oci_layout_push_then_pull_is_byte_identical(registry: Registry, wharf_cli: Cli,
                                                    tmp_path: pathlib.Path) -> None:
    built = oci_layout(tmp_path / "src")
    ref = registry.repo() + ":v1"
    pushed = wharf_cli("push", str(built.path), ref, "--json").json()
    assert pushed["digest"] == built.digest and pushed["blobs"] == {"uploaded": built.blob_count}
    assert wharf_cli("digest", ref).text.strip() == built.digest
    pulled = wharf_cli("pull", ref, str(tmp_path / "out"), "--json").json()
    assert pulled["digest"] == built.digest
    assert layout_blobs(tmp_path / "out") == built.objects
    # Pushing again moves nothing: every blob is found by HEAD.
    again = wharf_cli("push", str(built.path), ref, "--json").json()
    assert again["blobs"] == {"exists": built.blob_count} and again["bytes"] == 0


def test_docker_tarball_push_then_pull_is_byte_identical(registry: Registry, wharf_cli: Cli,
                                                        tmp_path: pathlib.Path) -> None:
    saved = docker_save(tmp_path / "saved.tar")
    ref = registry.repo() + ":v1"
    pushed = wharf_cli("push", str(saved.path), ref, "--json").json()
    raw = wharf_cli("inspect", ref, "--raw").out
    assert sha256(raw) == pushed["digest"]
    assert wharf_cli("inspect", ref, "--config").out == saved.config
    wharf_cli("pull", ref, str(tmp_path / "pulled.tar"))
    tags, config, layers = read_docker_tarball(tmp_path / "pulled.tar")
    assert tags == [parse_reference(ref).familiar()]
    assert config == saved.config and layers == saved.layers


def test_pull_one_platform_as_layout_and_tarball(registry: Registry, wharf_cli: Cli, tmp_path: pathlib.Path) -> None:
    built = oci_layout(tmp_path / "src")
    ref = registry.repo() + ":multi"
    wharf_cli("push", str(built.path), ref)
    one = wharf_cli("pull", ref, str(tmp_path / "arm"), "--platform", "linux/arm64", "--json").json()
    assert one["digest"] == built.platforms["linux/arm64"]
    assert wharf_cli("digest", ref, "--platform", "linux/arm64").text.strip() == built.platforms["linux/arm64"]
    wharf_cli("pull", ref, str(tmp_path / "amd.tar"), "--platform", "linux/amd64")
    _, config, _ = read_docker_tarball(tmp_path / "amd.tar")
    assert b'"architecture":"amd64"' in config
    missing = wharf_cli("pull", ref, str(tmp_path / "x"), "--platform", "linux/s390x", expect=4)
    assert "no manifest for platform linux/s390x" in missing.err


def test_copy_every_platform_to_the_other_registry_and_back(wharf: Registry, distribution: Registry, wharf_cli: Cli,
                                                            tmp_path: pathlib.Path) -> None:
    built = oci_layout(tmp_path / "src", platforms=("linux/amd64", "linux/arm64", "linux/arm/v7"))
    origin = wharf.repo() + ":v1"
    wharf_cli("push", str(built.path), origin)
    there = distribution.repo()
    copied = wharf_cli("copy", origin, there, "--json").json()
    assert copied["digest"] == built.digest and copied["reference"] == there + ":v1"
    assert len(copied["platforms"]) == 3 and copied["blobs"] == {"uploaded": built.blob_count}
    back = wharf.repo() + ":back"
    assert wharf_cli("copy", there + ":v1", back, "--json").json()["digest"] == built.digest
    for ref in (origin, there + ":v1", back):
        assert wharf_cli("inspect", ref, "--raw").out == built.objects[built.digest]
    wharf_cli("pull", back, str(tmp_path / "back"))
    assert layout_blobs(tmp_path / "back") == built.objects
    # A second copy finds every blob already there.
    assert wharf_cli("copy", origin, there, "--json").json()["blobs"] == {"exists": built.blob_count}


def test_copy_inside_a_registry_mounts(registry: Registry, wharf_cli: Cli, tmp_path: pathlib.Path) -> None:
    built = oci_layout(tmp_path / "src")
    source = registry.repo() + ":v1"
    wharf_cli("push", str(built.path), source)
    copied = wharf_cli("copy", source, registry.repo() + ":v1", "--json").json()
    assert copied["blobs"] == {"mounted": built.blob_count} and copied["bytes"] == 0


def test_copy_one_platform(registry: Registry, wharf_cli: Cli, tmp_path: pathlib.Path) -> None:
    built = oci_layout(tmp_path / "src")
    source = registry.repo() + ":v1"
    wharf_cli("push", str(built.path), source)
    target = registry.repo() + ":amd"
    copied = wharf_cli("copy", source, target, "--platform", "linux/amd64", "--json").json()
    assert copied["digest"] == built.platforms["linux/amd64"]


def test_tag_inspect_delete(registry: Registry, wharf_cli: Cli, tmp_path: pathlib.Path) -> None:
    built = oci_layout(tmp_path / "src", platforms=("linux/amd64",))
    repo = registry.repo()
    wharf_cli("push", str(built.path), repo + ":v1")
    tagged = wharf_cli("tag", repo + ":v1", "v2", "v3", "--json").json()
    assert tagged["tags"] == ["v2", "v3"] and tagged["references"] == [f"{repo}:v2", f"{repo}:v3"]
    assert wharf_cli("tags", repo, "--json").json()["tags"] == ["v1", "v2", "v3"]  # the same meaning of "tags"
    assert wharf_cli("tags", repo).text.split() == ["v1", "v2", "v3"]
    shown = wharf_cli("inspect", repo + ":v2", "--json").json()
    assert shown["digest"] == built.digest and shown["config"]["architecture"] == "amd64"
    assert "Layers:     2" in wharf_cli("inspect", repo + ":v2").text
    # Removing a tag removes that tag; the manifest and its other tags stay. Distribution deletes
    # manifests by digest only: there it is an operation the registry cannot do (exit 2), and says so.
    if registry.kind == "wharf":
        assert wharf_cli("rm", repo + ":v3", "--json").json() == {"untagged": repo.split("/", 1)[1] + ":v3"}
        left = ["v1", "v2"]
    else:
        assert "cannot remove a tag alone" in wharf_cli("rm", repo + ":v3", expect=2).err
        left = ["v1", "v2", "v3"]
    assert wharf_cli("tags", repo).text.split() == left
    # Deleting the manifest takes every tag on it: never without a yes (no terminal here: refused).
    refused = wharf_cli("rm", repo + ":v1", "--manifest", expect=2)
    assert f"also carries {', '.join(left[1:])}" in refused.err
    assert wharf_cli("tags", repo).text.split() == left
    wharf_cli("rm", repo + ":v1", "--manifest", "--yes")
    gone = wharf_cli("inspect", repo + ":v2", expect=4)
    assert "MANIFEST_UNKNOWN" in gone.err and "/manifests/v2" in gone.err


def test_blob_put_and_get(registry: Registry, wharf_cli: Cli, tmp_path: pathlib.Path) -> None:
    data = b"hello wharf\n" * 50_000
    (tmp_path / "data.bin").write_bytes(data)
    repo = registry.repo()
    put = wharf_cli("blob", "put", repo, str(tmp_path / "data.bin"), "--json").json()
    assert put["digest"] == sha256(data) and put["size"] == len(data)
    assert wharf_cli("blob", "get", f"{repo}@{put['digest']}").out == data
    wharf_cli("blob", "get", f"{repo}@{put['digest']}", "-o", str(tmp_path / "copy.bin"))
    assert (tmp_path / "copy.bin").read_bytes() == data
    missing = wharf_cli("blob", "get", f"{repo}@{sha256(b'nope')}", expect=4)
    assert "blob unknown" in missing.err


def test_tags_pagination_over_a_thousand_tags(registry: Registry, wharf_cli: Cli) -> None:
    ref = parse_reference(registry.repo())
    options = ClientOptions(default_registry_options=RegistryOptions(plain_http=True), concurrency=8)
    with Client(options, StaticCredentials()) as client:
        repo = client.repository(ref)
        config = BytesSource(b"{}", Descriptor("application/vnd.oci.image.config.v1+json", sha256(b"{}"), 2))
        push_blob(repo, config)
        manifest = image_manifest(config.descriptor, [])
        names = [f"t{n:04d}" for n in range(1005)]
        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            list(pool.map(lambda tag: repo.put_manifest(manifest, tag), names))
        pages: list[str] = []
        client.session.hooks["response"].append(
            lambda response, **_: pages.append(response.url) if "/tags/list" in response.url else None)
        listed = list(repo.tags(page_size=100))
        if registry.kind == "wharf":
            assert listed == names
            assert len(pages) == 11  # 10 full pages of 100 and the last 5, each found by its Link header
        else:
            assert sorted(listed) == names  # Distribution 2.8 neither sorts nor pages tags; all come at once
    from_cli = wharf_cli("tags", ref.name, "--page-size", "250", "--json").json()["tags"]
    assert sorted(from_cli) == names


def test_catalog_lists_pushed_repositories(registry: Registry, wharf_cli: Cli, tmp_path: pathlib.Path) -> None:
    built = oci_layout(tmp_path / "src", platforms=("linux/amd64",))
    repo = registry.repo("catalog")
    wharf_cli("push", str(built.path), repo + ":v1")
    names = wharf_cli("catalog", registry.host, "--page-size", "50", "--json").json()["repositories"]
    assert repo.split("/", 1)[1] in names
