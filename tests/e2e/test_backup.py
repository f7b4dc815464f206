"""`wharf-admin export` and `import` with real clients: images pushed by skopeo (a multi-arch
index, a Docker schema2 image), an index of that index, referrers attached by oras, exported
from one stack, imported into a fresh one that got a copy of the blob storage, and pulled back
byte for byte. The commands find each stack through its data directory alone, as beside
`make run`."""

from __future__ import annotations

import base64
import gzip
import json
import pathlib
import shutil
import subprocess
from collections.abc import Callable
from typing import Any

import pytest
import requests

from tests.e2e.images import (
    OCI_INDEX,
    assert_same_objects,
    canonical_json,
    sha256,
    write_docker_dir,
    write_oci_index_layout,
)
from tests.e2e.test_oras_cli import Oras
from tests.e2e.test_skopeo import Skopeo, dir_objects, oci_layout_objects
from tests.support.stack import RunningStack
from tests.support.tools import require_tool

pytestmark = pytest.mark.e2e


@pytest.fixture()
def skopeo(tmp_path: pathlib.Path) -> Skopeo:
    return Skopeo(require_tool("skopeo"), tmp_path / "skopeo-home")


@pytest.fixture()
def oras(tmp_path: pathlib.Path) -> Oras:
    return Oras(require_tool("oras", "go install oras.land/oras/cmd/oras@v1.3.6"), tmp_path / "oras-home")


def succeeded(result: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    assert result.returncode == 0, result.stderr
    return dict(json.loads(result.stdout))


def export_records(path: pathlib.Path) -> list[dict[str, Any]]:
    with gzip.open(path, "rt", encoding="utf-8") as file:
        return [json.loads(line) for line in file]


def referrers(stack: RunningStack, name: str, subject: str) -> list[dict[str, Any]]:
    answer = requests.get(f"{stack.url}/v2/{name}/referrers/{subject}", timeout=30)
    assert answer.status_code == 200, answer.text
    return sorted(answer.json()["manifests"], key=lambda d: d["digest"])


def tags(stack: RunningStack, name: str) -> list[str]:
    return list(requests.get(f"{stack.url}/v2/{name}/tags/list", timeout=30).json()["tags"])


def catalog(stack: RunningStack) -> list[str]:
    return list(requests.get(f"{stack.url}/v2/_catalog", timeout=30).json()["repositories"])


def test_export_import_into_a_fresh_registry(start_stack: Callable[..., RunningStack], skopeo: Skopeo, oras: Oras,
                                             tmp_path: pathlib.Path) -> None:
    source = start_stack()
    multi = write_oci_index_layout(tmp_path / "multi", tag="v1")
    for tag in ("v1", "latest"):
        skopeo.copy(f"oci:{multi.path}:v1", f"docker://{source.host}/backup/multi:{tag}", "--all")
    single = write_docker_dir(tmp_path / "single")
    skopeo.copy(f"dir:{single.path}", f"docker://{source.host}/backup/single:v1", "--format", "v2s2")
    # An index of the index: the import must put children before parents, two levels deep.
    nested = canonical_json({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [
        {"mediaType": OCI_INDEX, "digest": multi.digest, "size": len(multi.root)}]})
    put = requests.put(f"{source.url}/v2/backup/multi/manifests/nested", data=nested,
                       headers={"Content-Type": OCI_INDEX}, timeout=30)
    assert put.status_code == 201, put.text
    # Referrers (an OCI 1.1 subject), on the image and on the index.
    (tmp_path / "sbom.json").write_text('{"packages": []}')
    oras.run("attach", f"{source.host}/backup/single:v1", "sbom.json:application/json",
             "--artifact-type", "application/vnd.example.sbom", cwd=tmp_path)
    oras.run("attach", f"{source.host}/backup/multi:v1", "sbom.json:application/json",
             "--artifact-type", "application/vnd.example.sbom", cwd=tmp_path)
    single_referrers = referrers(source, "backup/single", single.digest)
    multi_referrers = referrers(source, "backup/multi", multi.digest)
    assert len(single_referrers) == len(multi_referrers) == 1

    exported = tmp_path / "registry.jsonl.gz"
    summary = succeeded(source.maintenance("export", str(exported)))
    # backup/multi: 2 images, the index, the nested index, a referrer; backup/single: the image, a referrer.
    assert (summary["repositories"], summary["manifests"], summary["tags"]) == (2, 7, 4)
    assert summary["skipped_manifests"] == summary["skipped_tags"] == 0
    records = export_records(exported)
    assert (records[0]["format"], records[0]["version"]) == ("wharf-metadata", 1) and records[0]["wharf_version"]
    assert records[-1] == {"type": "end", "repositories": 2, "blobs": summary["blobs"], "manifests": 7, "tags": 4}
    seen: set[str] = set()
    for record in records[1:-1]:
        if record["type"] == "repository":
            seen = set()
        elif record["type"] == "blob":
            seen.add(record["digest"])
        else:  # every blob and child a manifest names comes before it, in its repository
            body = json.loads(base64.b64decode(record["content"]))
            named = [d["digest"] for d in [body.get("config"), *body.get("layers", []), *body.get("manifests", [])]
                     if d]
            assert set(named) <= seen, record["digest"]
            seen.add(record["digest"])
    assert not (tmp_path / "registry.jsonl.gz.partial").exists()

    target = start_stack()
    refused = target.maintenance("import", str(exported))
    assert refused.returncode == 2 and "storage does not hold" in refused.stderr, refused.stderr
    assert catalog(target) == []  # nothing was written
    shutil.copytree(source.data_dir / "blobstore" / "blobs", target.data_dir / "blobstore" / "blobs",
                    dirs_exist_ok=True)
    imported = succeeded(target.maintenance("import", str(exported)))
    counts = ("repositories", "blobs", "manifests", "tags")
    assert {k: imported[k] for k in counts} == {k: records[-1][k] for k in counts}
    succeeded(target.maintenance("import", str(exported)))  # again: changes nothing

    skopeo.copy(f"docker://{target.host}/backup/multi:v1", f"oci:{tmp_path / 'pulled-multi'}:v1", "--all")
    assert_same_objects(oci_layout_objects(tmp_path / "pulled-multi"), multi.objects)
    for tag in ("v1", "latest"):
        assert skopeo.raw(f"docker://{target.host}/backup/multi:{tag}") == multi.root
    assert skopeo.raw(f"docker://{target.host}/backup/multi:nested") == nested
    skopeo.copy(f"docker://{target.host}/backup/single:v1", f"dir:{tmp_path / 'pulled-single'}")
    assert_same_objects(dir_objects(tmp_path / "pulled-single"), single.objects)
    assert referrers(target, "backup/single", single.digest) == single_referrers
    assert referrers(target, "backup/multi", multi.digest) == multi_referrers
    for name, [referrer] in (("backup/single", single_referrers), ("backup/multi", multi_referrers)):
        manifest = target.get(f"/v2/{name}/manifests/{referrer['digest']}")
        assert manifest == source.get(f"/v2/{name}/manifests/{referrer['digest']}")
        assert sha256(manifest) == referrer["digest"]
        for blob in [json.loads(manifest)["config"], *json.loads(manifest)["layers"]]:
            assert sha256(target.get(f"/v2/{name}/blobs/{blob['digest']}")) == blob["digest"]
    assert catalog(target) == catalog(source) == ["backup/multi", "backup/single"]
    for name in catalog(source):
        assert sorted(tags(target, name)) == sorted(tags(source, name))

    clean = target.maintenance("check", "--verify")
    assert clean.returncode == 0, clean.stdout + clean.stderr
    again = tmp_path / "again.jsonl.gz"
    succeeded(target.maintenance("export", str(again)))
    assert sorted(map(json.dumps, export_records(again)[1:])) == sorted(map(json.dumps, records[1:]))


def test_import_refuses_to_move_a_tag(start_stack: Callable[..., RunningStack], skopeo: Skopeo,
                                      tmp_path: pathlib.Path) -> None:
    stack = start_stack()
    first = write_docker_dir(tmp_path / "first")
    skopeo.copy(f"dir:{first.path}", f"docker://{stack.host}/conflict/app:v1", "--format", "v2s2")
    exported = tmp_path / "registry.jsonl"
    succeeded(stack.maintenance("export", str(exported)))
    assert succeeded(stack.maintenance("import", str(exported)))["manifests"] == 1  # into itself: nothing changes

    second = write_docker_dir(tmp_path / "second")
    skopeo.copy(f"dir:{second.path}", f"docker://{stack.host}/conflict/app:v1", "--format", "v2s2")
    refused = stack.maintenance("import", str(exported))
    assert refused.returncode == 2, refused.stderr
    assert f"conflict/app:v1 already points at {second.digest}" in refused.stderr
    assert skopeo.raw(f"docker://{stack.host}/conflict/app:v1") == second.root  # the tag stayed

    truncated = tmp_path / "truncated.jsonl"
    truncated.write_text("".join(exported.read_text().splitlines(keepends=True)[:-1]))
    cut = stack.maintenance("import", "--dry-run", str(truncated))
    assert cut.returncode == 2 and "no end record" in cut.stderr, cut.stderr
