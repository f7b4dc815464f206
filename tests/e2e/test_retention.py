"""Retention policies (issue 19) end to end: images pushed by crane, a signature attached by oras,
a dry run and a real run through `wharf-admin retention run`, and the schedule running by itself."""

from __future__ import annotations

import hashlib
import io
import json
import pathlib
import subprocess
import tarfile
import time
from collections.abc import Callable
from typing import Any

import pytest
import redis
import requests
from click.testing import CliRunner

from services.maintenance import retention_cli
from services.maintenance.targets import locate
from services.metadata import redis_keys as keys
from tests.e2e.test_oras_cli import Oras
from tests.support.stack import RunningStack
from tests.support.tools import isolated_env, require_tool

pytestmark = pytest.mark.e2e

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
ACCEPT = ", ".join([OCI_MANIFEST, "application/vnd.docker.distribution.manifest.v2+json",
                    "application/vnd.oci.image.index.v1+json"])
UNTAGGED_AFTER = 4.0  # seconds: the policy's untagged_older_than


def write_policy(directory: pathlib.Path, policy: dict[str, Any]) -> str:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "policy.json"  # JSON is YAML too
    path.write_text(json.dumps(policy))
    return str(path)


class Crane:
    def __init__(self, binary: str, home: pathlib.Path, workdir: pathlib.Path) -> None:
        self.binary = binary
        self.env = isolated_env(home)
        self.workdir = workdir
        workdir.mkdir(parents=True, exist_ok=True)

    def __call__(self, *args: str) -> str:
        result = subprocess.run([self.binary, *args, "--insecure"], env=self.env, capture_output=True, text=True,
                                timeout=120)
        assert result.returncode == 0, f"crane {' '.join(args)} failed:\n{result.stderr}"
        return result.stdout.strip()

    def push(self, reference: str) -> str:
        """A new one-layer image (its own content) tagged ``reference``; its digest."""
        layer = self.workdir / f"{reference.replace('/', '_').replace(':', '_')}.tar"
        with tarfile.open(layer, "w") as tar:
            data = f"{reference} {time.time_ns()}".encode()
            info = tarfile.TarInfo("content.txt")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        self("append", "--oci-empty-base", "-f", str(layer), "-t", reference)
        return self("digest", reference)


@pytest.fixture()
def crane(tmp_path: pathlib.Path) -> Crane:
    return Crane(require_tool("crane", "go install github.com/google/go-containerregistry/cmd/crane@v0.22.1"),
                 tmp_path / "crane-home", tmp_path / "layers")


@pytest.fixture()
def oras(tmp_path: pathlib.Path) -> Oras:
    return Oras(require_tool("oras", "go install oras.land/oras/cmd/oras@v1.3.6"), tmp_path / "oras-home")


def retention(stack: RunningStack, *args: str) -> dict[str, Any]:
    """`wharf-admin retention run --json <args>` beside the stack (found through WHARF_DATA_DIR only)."""
    told = ("WHARF_REDIS_URL", "WHARF_METADATA_ADDR", "WHARF_BLOBSTORE_ADDR", "WHARF_INTERNAL_TOKEN_FILE")
    env: dict[str, str | None] = {k: None for k in told}
    env["WHARF_DATA_DIR"] = str(stack.data_dir)
    result = CliRunner().invoke(retention_cli.run, ["--json", *args], env=env, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return json.loads(result.output)  # type: ignore[no-any-return]


def status(stack: RunningStack, repository: str, reference: str) -> int:
    return requests.get(f"{stack.url}/v2/{repository}/manifests/{reference}", headers={"Accept": ACCEPT},
                        timeout=10).status_code


def tags(stack: RunningStack, repository: str) -> set[str]:
    answer = requests.get(f"{stack.url}/v2/{repository}/tags/list", timeout=10)
    assert answer.status_code == 200, answer.text
    return set(answer.json()["tags"] or [])


def referrers(stack: RunningStack, repository: str, digest: str) -> list[str]:
    answer = requests.get(f"{stack.url}/v2/{repository}/referrers/{digest}", timeout=10)
    assert answer.status_code == 200, answer.text
    return [m["digest"] for m in answer.json()["manifests"]]


def attach(oras: Oras, stack: RunningStack, repository: str, tag: str, workdir: pathlib.Path) -> str:
    """A signature-like referrer of ``repository:tag`` (untagged, with a subject); its digest."""
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "sig.txt").write_text(f"signed {tag}")
    subject = requests.head(f"{stack.url}/v2/{repository}/manifests/{tag}", headers={"Accept": ACCEPT},
                            timeout=10).headers["Docker-Content-Digest"]
    oras.run("attach", f"{stack.host}/{repository}:{tag}", "sig.txt", "--artifact-type",
             "application/vnd.example.signature", cwd=workdir)
    found = referrers(stack, repository, subject)
    assert len(found) == 1
    return found[0]


def push_untagged(stack: RunningStack, repository: str, like: str) -> str:
    """A manifest pushed by digest (no tag): ``like``'s, with an annotation of its own."""
    manifest = requests.get(f"{stack.url}/v2/{repository}/manifests/{like}", headers={"Accept": ACCEPT},
                            timeout=10)
    assert manifest.status_code == 200, manifest.text
    body = manifest.json()
    body["annotations"] = {"fresh": str(time.time_ns())}
    raw = json.dumps(body).encode()
    digest = "sha256:" + hashlib.sha256(raw).hexdigest()
    put = requests.put(f"{stack.url}/v2/{repository}/manifests/{digest}", data=raw, timeout=10,
                       headers={"Content-Type": manifest.headers["Content-Type"]})
    assert put.status_code == 201, put.text
    return digest


def retention_deletes(stack: RunningStack) -> set[tuple[str, str]]:
    """(tag, digest) of the delete events whose origin is wharf-retention, from the outbox streams."""
    client = redis.Redis.from_url(locate({"WHARF_DATA_DIR": str(stack.data_dir)}).redis_url)
    try:
        found = set()
        for shard in range(keys.OUTBOX_SHARDS):
            for _, event in client.xrange(keys.outbox(shard)):
                if event[b"a"] == b"delete" and json.loads(event[b"o"]) == {"account": "wharf-retention"}:
                    found.add((event[b"t"].decode(), event[b"d"].decode()))
        return found
    finally:
        client.close()


def items(report: dict[str, Any], key: str) -> set[tuple[str, str, str]]:
    return {(i["repository"], i["tag"], i["digest"]) for i in report[key]}


def test_retention_dry_run_then_real_run(start_stack: Callable[..., RunningStack], crane: Crane, oras: Oras,
                                         tmp_path: pathlib.Path) -> None:
    policy = write_policy(tmp_path / "conf", {
        "immutable": [{"repositories": "ret/app", "tags": "v1.*"}],
        "retention": [{"repositories": "ret/**", "keep_last": 2, "keep_tags": ["stable"],
                       "untagged_older_than": f"{UNTAGGED_AFTER:g}s"}],
    })
    stack = start_stack(env={"WHARF_POLICY_FILE": policy, "WHARF_RETENTION_INTERVAL": "0",
                             "WHARF_EVENTS_OUTBOX": "on"})
    digest = {}
    for tag in ("old1", "v1.0", "stable", "a", "b", "c"):  # oldest first
        digest[tag] = crane.push(f"{stack.host}/ret/app:{tag}")
        time.sleep(0.02)
    for tag in ("x1", "x2", "x3"):
        crane.push(f"{stack.host}/ret/lib:{tag}")
    sig_c = attach(oras, stack, "ret/app", "c", tmp_path / "sig-c")   # a signature of a kept image: stays
    sig_a = attach(oras, stack, "ret/app", "a", tmp_path / "sig-a")   # of a deleted one: goes with it
    time.sleep(UNTAGGED_AFTER + 0.5)

    dry = retention(stack, "--dry-run", "--repositories", "ret/app")
    expected = {("ret/app", "old1", digest["old1"]), ("ret/app", "a", digest["a"]),
                ("ret/app", "", digest["old1"]), ("ret/app", "", digest["a"]), ("ret/app", "", sig_a)}
    assert items(dry, "deleted") == expected, dry
    kept = {i["tag"]: i["reason"] for i in dry["kept"]}
    assert set(kept) == {"stable", "v1.0"} and "keep_tags" in kept["stable"] and "immutable" in kept["v1.0"]
    assert dry["repositories"] == 1 and dry["deleted_more"] == 0
    # Nothing went.
    assert tags(stack, "ret/app") == {"old1", "v1.0", "stable", "a", "b", "c"}
    assert status(stack, "ret/app", sig_a) == 200

    fresh = push_untagged(stack, "ret/app", "c")  # untagged but younger than untagged_older_than: stays
    assert status(stack, "ret/app", "a") == 200   # (now in the gateway's cache)
    real = retention(stack, "--repositories", "ret/app")
    assert items(real, "deleted") == expected, real
    assert {i["tag"] for i in real["kept"]} == {"stable", "v1.0"}

    # The registry API agrees at once: the gateways' caches followed the deletes.
    assert tags(stack, "ret/app") == {"v1.0", "stable", "b", "c"}
    for reference in ("old1", "a", digest["old1"], digest["a"], sig_a):
        assert status(stack, "ret/app", reference) == 404, reference
    for reference in ("v1.0", "stable", "b", "c", sig_c, fresh):
        assert status(stack, "ret/app", reference) == 200, reference
    assert referrers(stack, "ret/app", digest["c"]) == [sig_c]
    assert tags(stack, "ret/lib") == {"x1", "x2", "x3"}  # outside the run's --repositories
    # The event outbox names retention as the author of each delete.
    assert retention_deletes(stack) == {(tag, d) for _, tag, d in expected}

    # Without a filter, the rule applies to ret/lib too.
    again = retention(stack, "--dry-run")
    x1 = crane("digest", f"{stack.host}/ret/lib:x1")
    assert {i for i in items(again, "deleted") if i[0] == "ret/lib"} == {("ret/lib", "x1", x1), ("ret/lib", "", x1)}
    assert again["repositories"] == 2


def test_retention_runs_on_its_schedule(start_stack: Callable[..., RunningStack], crane: Crane,
                                        tmp_path: pathlib.Path) -> None:
    policy = write_policy(tmp_path / "conf", {"retention": [{"repositories": "sched/**", "keep_last": 1}]})
    stack = start_stack(env={"WHARF_POLICY_FILE": policy, "WHARF_RETENTION_INTERVAL": "1"})
    crane.push(f"{stack.host}/sched/app:first")
    crane.push(f"{stack.host}/sched/app:second")
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and status(stack, "sched/app", "first") != 404:
        time.sleep(0.2)
    assert status(stack, "sched/app", "first") == 404, stack.log_tail()
    assert tags(stack, "sched/app") == {"second"}
    assert "retention: scheduled run" in stack.log_tail(400)
