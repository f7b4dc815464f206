"""`wharf-admin check` against a stack broken on purpose: a tag whose manifest record was deleted
in Redis, a layer deleted from storage, a layer whose stored bytes were changed, a link a manifest
needs removed through the API. The JSON report names each; --repair fixes what it says it fixes
(and says why not the rest); a second check no longer finds the repaired ones; following the
report's advice (push again) clears the rest."""

from __future__ import annotations

import json
import pathlib
import shutil
import subprocess
from collections.abc import Callable
from typing import Any

import pytest
import redis
import requests

from services.blobstore import layout
from services.metadata import redis_keys as keys
from tests.e2e.images import write_docker_dir, write_oci_index_layout
from tests.e2e.test_skopeo import Skopeo, layer_digests
from tests.support.stack import RunningStack
from tests.support.tools import require_tool

pytestmark = pytest.mark.e2e

Seen = set[tuple[str, str, str, str]]
REPAIRABLE = {"tag_manifest_missing": "DeleteTag", "link_blob_missing": "UnlinkBlob",
              "manifest_blob_unlinked": "LinkBlob"}


@pytest.fixture()
def skopeo(tmp_path: pathlib.Path) -> Skopeo:
    return Skopeo(require_tool("skopeo"), tmp_path / "skopeo-home")


def report(result: subprocess.CompletedProcess[str], status: int) -> dict[str, Any]:
    assert result.returncode == status, result.stdout + result.stderr
    return dict(json.loads(result.stdout))  # valid JSON whatever it found


def seen(found: dict[str, Any]) -> Seen:
    return {(f["kind"], f["repository"], f.get("digest", ""), f.get("tag", "")) for f in found["findings"]}


def blob_dir(stack: RunningStack, digest: str) -> pathlib.Path:
    return (stack.data_dir / "blobstore" / layout.blob_key(digest)).parent


def test_check_reports_and_repairs(start_stack: Callable[..., RunningStack], skopeo: Skopeo,
                                   tmp_path: pathlib.Path) -> None:
    stack = start_stack()
    multi = write_oci_index_layout(tmp_path / "multi", tag="v1")
    single = write_docker_dir(tmp_path / "single")
    other = write_docker_dir(tmp_path / "other")

    def push_all() -> None:
        skopeo.copy(f"oci:{multi.path}:v1", f"docker://{stack.host}/check/multi:v1", "--all")
        skopeo.copy(f"dir:{single.path}", f"docker://{stack.host}/check/single:v1", "--format", "v2s2")
        skopeo.copy(f"dir:{other.path}", f"docker://{stack.host}/check/other:v1", "--format", "v2s2")

    push_all()
    clean = report(stack.maintenance("check", "--verify"), 0)
    assert clean["findings"] == [] and clean["summary"]["remaining"] == 0
    assert clean["summary"]["blobs_verified"] == len(multi.blobs) + len(single.blobs) + len(other.blobs)

    client = redis.Redis.from_url((stack.data_dir / "redis" / "url").read_text().strip())
    client.delete(keys.manifest("check/single", single.digest))  # its tag now points at nothing
    gone = layer_digests(other.root)[0]
    shutil.rmtree(blob_dir(stack, gone))  # its bytes are gone; the link stays
    flipped = layer_digests(multi.objects[multi.manifests["linux/amd64"]])[0]
    data = bytearray((blob_dir(stack, flipped) / "data").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (blob_dir(stack, flipped) / "data").write_bytes(bytes(data))  # same size, other bytes
    unlinked = json.loads(multi.objects[multi.manifests["linux/arm64"]])["config"]["digest"]
    assert requests.delete(f"{stack.url}/v2/check/multi/blobs/{unlinked}", timeout=30).status_code == 202

    expected: Seen = {
        ("tag_manifest_missing", "check/single", single.digest, "v1"),
        ("manifest_record_missing", "check/single", single.digest, ""),
        ("link_blob_missing", "check/other", gone, ""),
        ("manifest_blob_missing", "check/other", gone, ""),
        ("manifest_blob_unlinked", "check/multi", unlinked, ""),
    }
    found = report(stack.maintenance("check"), 1)
    assert seen(found) == expected
    for finding in found["findings"]:
        assert not finding["repaired"] and finding["reason"] and finding["meaning"]
        if finding["kind"] in REPAIRABLE:
            assert finding["action"] == REPAIRABLE[finding["kind"]]
            assert finding["reason"] == "not asked: run with --repair"

    mismatch = ("blob_digest_mismatch", "check/multi", flipped, "")
    verified = report(stack.maintenance("check", "--verify"), 1)
    assert seen(verified) == expected | {mismatch}

    repaired = report(stack.maintenance("check", "--verify", "--repair"), 1)
    assert seen(repaired) == expected | {mismatch}
    for finding in repaired["findings"]:
        assert finding["repaired"] == (finding["kind"] in REPAIRABLE), finding
        if not finding["repaired"]:
            assert finding["reason"] and not finding["reason"].startswith("not asked"), finding
    assert (repaired["summary"]["repaired"], repaired["summary"]["remaining"]) == (3, 3)
    # What the repairs did, as clients see it:
    assert "v1" not in (requests.get(f"{stack.url}/v2/check/single/tags/list", timeout=30).json().get("tags") or [])
    assert requests.head(f"{stack.url}/v2/check/other/blobs/{gone}", timeout=30).status_code == 404
    config = requests.get(f"{stack.url}/v2/check/multi/blobs/{unlinked}", timeout=30)
    assert config.status_code == 200 and config.content == multi.blobs[unlinked]

    after = report(stack.maintenance("check", "--verify"), 1)
    assert seen(after) == {("manifest_record_missing", "check/single", single.digest, ""),
                           ("manifest_blob_missing", "check/other", gone, ""), mismatch}

    # The report's advice: remove the changed bytes and let --repair unlink them, then push again
    # (the uploads happen now that no link claims the blobs).
    shutil.rmtree(blob_dir(stack, flipped))
    report(stack.maintenance("check", "--repair"), 1)
    push_all()
    last = report(stack.maintenance("check", "--verify"), 0)
    assert last["findings"] == []  # the push stored the single image's manifest again, too
    assert requests.get(f"{stack.url}/v2/check/other/blobs/{gone}", timeout=30).content == other.blobs[gone]
