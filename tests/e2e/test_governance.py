"""Immutable tags, storage quotas, usage and whole-repository deletes, against a running stack with
a policy file and rules set by wharf-admin, with real clients (skopeo, crane) and raw HTTP where
the test must aim at one request (a chunked body, ten uploads at once)."""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator

import pytest
import requests

from tests.e2e.images import write_oci_index_layout
from tests.e2e.test_skopeo import Skopeo
from tests.support.pusher import OCI_MANIFEST, PushError, digest, push_blob, push_image, random_layers
from tests.support.stack import RunningStack
from tests.support.tools import require_tool

pytestmark = pytest.mark.e2e

MIB = 1024 * 1024
POLICY = {"immutable": [{"repositories": "prod/**", "tags": "v*"}],
          "quotas": [{"namespace": "quota", "size": "3MiB"}, {"namespace": "held", "size": "1MiB"}]}


@pytest.fixture(scope="module")
def governed(start_stack: Callable[..., RunningStack], tmp_path_factory: pytest.TempPathFactory) -> RunningStack:
    policy = tmp_path_factory.mktemp("policy") / "policy.yaml"
    policy.write_text(json.dumps(POLICY))
    return start_stack(env={"WHARF_POLICY_FILE": str(policy)})


def admin(stack: RunningStack, *args: str, ok: bool = True) -> subprocess.CompletedProcess[str]:
    result = stack.maintenance(*args)
    if ok:
        assert result.returncode == 0, result.stderr
    return result


def usage(stack: RunningStack, namespace: str) -> dict[str, object]:
    [row] = json.loads(admin(stack, "usage", namespace, "--repositories", "--json").stdout)
    return dict(row)


def crane(tmp_path: pathlib.Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DOCKER_")}
    env.update(HOME=str(tmp_path / "crane-home"), DOCKER_CONFIG=str(tmp_path / "crane-home" / "docker"))
    return subprocess.run([require_tool("crane"), *args, "--insecure"], env=env, capture_output=True, text=True,
                          timeout=120)


def error_of(response: requests.Response) -> tuple[int, str, str]:
    [error] = response.json()["errors"]
    return response.status_code, error["code"], error["message"]


# -- immutable tags -----------------------------------------------------------------------------------


def test_immutable_tags_cannot_move_or_go(governed: RunningStack, tmp_path: pathlib.Path) -> None:
    url = governed.url
    skopeo = Skopeo(require_tool("skopeo"), tmp_path / "skopeo")
    image = write_oci_index_layout(tmp_path / "layout", "v1")
    skopeo.copy(f"oci:{tmp_path / 'layout'}:v1", f"docker://{governed.host}/prod/app:v1", "--all")
    skopeo.copy(f"oci:{tmp_path / 'layout'}:v1", f"docker://{governed.host}/prod/app:v1", "--all")  # same: fine
    other = push_image([url], "staging/app", "rc", random_layers(1, 1000))
    # A real client moving the immutable tag is refused with the rule named; the tag stays.
    moved = crane(tmp_path, "copy", f"{governed.host}/staging/app:rc", f"{governed.host}/prod/app:v1")
    assert moved.returncode != 0 and "DENIED" in moved.stderr and "immutable" in moved.stderr, moved.stderr
    assert crane(tmp_path, "digest", f"{governed.host}/prod/app:v1").stdout.strip() == image.digest
    # New tags are fine, and tags outside the rule move freely.
    assert crane(tmp_path, "copy", f"{governed.host}/staging/app:rc", f"{governed.host}/prod/app:v2").returncode == 0
    assert crane(tmp_path, "copy", f"{governed.host}/staging/app:rc", f"{governed.host}/prod/app:latest"
                 ).returncode == 0
    # Neither the tag nor its manifest can be deleted.
    status, code, message = error_of(requests.delete(f"{url}/v2/prod/app/manifests/v1", timeout=10))
    assert (status, code) == (403, "DENIED") and "prod/**" in message and "'v*'" in message
    status, code, message = error_of(requests.delete(f"{url}/v2/prod/app/manifests/{image.digest}", timeout=10))
    assert (status, code) == (403, "DENIED") and "tag v1 of prod/app is immutable" in message
    assert requests.head(f"{url}/v2/prod/app/manifests/v1", headers={"Accept": "*/*"}, timeout=10).status_code == 200
    # latest is not immutable: its manifest (also v2's, which is immutable) cannot go either.
    assert requests.delete(f"{url}/v2/prod/app/manifests/{other}", timeout=10).status_code == 403
    assert requests.delete(f"{url}/v2/prod/app/manifests/latest", timeout=10).status_code == 202


def test_an_immutable_tag_holds_its_images_parts(governed: RunningStack, tmp_path: pathlib.Path) -> None:
    """An immutable tag held the tag only: a DELETE of a layer blob of its image, or of a child
    manifest of its index by digest, was accepted, and the tag then served an image whose parts
    answered 404. In a repository an immutable-tag rule covers, a blob or manifest that one of its
    manifests names cannot be deleted on its own now; elsewhere, and for parts no manifest names,
    deletes work as before."""
    url = governed.url
    skopeo = Skopeo(require_tool("skopeo"), tmp_path / "skopeo")
    image = write_oci_index_layout(tmp_path / "layout", "v1")
    for repository in ("prod/parts", "staging/parts"):
        skopeo.copy(f"oci:{tmp_path / 'layout'}:v1", f"docker://{governed.host}/{repository}:v1", "--all")
    layer = next(d for d, b in image.blobs.items() if not b.startswith(b"{"))
    child = next(iter(image.manifests.values()))
    status, code, message = error_of(requests.delete(f"{url}/v2/prod/parts/blobs/{layer}", timeout=10))
    assert (status, code) == (403, "DENIED") and "prod/**" in message and layer in message, message
    status, code, message = error_of(requests.delete(f"{url}/v2/prod/parts/manifests/{child}", timeout=10))
    assert (status, code) == (403, "DENIED") and "index" in message, message
    assert requests.get(f"{url}/v2/prod/parts/blobs/{layer}", timeout=10).status_code == 200
    assert requests.head(f"{url}/v2/prod/parts/manifests/{child}", headers={"Accept": OCI_MANIFEST},
                         timeout=10).status_code == 200
    # A blob no manifest names goes, in the covered repository too.
    loose = push_blob([url], "prod/parts", b"a loose blob")
    assert requests.delete(f"{url}/v2/prod/parts/blobs/{loose}", timeout=10).status_code == 202
    # No rule covers staging/parts: its parts may go, as the API always allowed.
    assert requests.delete(f"{url}/v2/staging/parts/blobs/{layer}", timeout=10).status_code == 202
    assert requests.delete(f"{url}/v2/staging/parts/manifests/{child}", timeout=10).status_code == 202


def test_immutable_rules_set_by_wharf_admin_apply_at_once(governed: RunningStack) -> None:
    url = governed.url
    push_image([url], "team/app", "rel-1", random_layers(1, 500))
    push_image([url], "team/app", "rel-1", random_layers(1, 500))  # no rule yet: moves
    admin(governed, "immutable", "set", "team/**", "--tags", "rel-*")
    listed = json.loads(admin(governed, "immutable", "list", "--json").stdout)
    assert {"repositories": "prod/**", "tags": "v*", "source": "file"} in listed
    assert {"repositories": "team/**", "tags": "rel-*", "source": "stored"} in listed
    with pytest.raises(PushError) as refused:
        push_image([url], "team/app", "rel-1", random_layers(1, 500))
    assert refused.value.status == 403
    # The policy file's rules are the file's to change.
    removed = admin(governed, "immutable", "remove", "prod/**:v*", ok=False)
    assert removed.returncode != 0 and "policy file" in removed.stderr
    admin(governed, "immutable", "remove", "team/**:rel-*")
    push_image([url], "team/app", "rel-1", random_layers(1, 500))
    bad = admin(governed, "immutable", "set", "team/**", "--tags", "rel-[0-9]", ok=False)
    assert bad.returncode != 0 and "tag glob" in bad.stderr


# -- quotas -------------------------------------------------------------------------------------------


def test_a_quota_refuses_cleanly_counts_shared_layers_once_and_frees_after_collection(governed: RunningStack) -> None:
    url = governed.url
    layer = os.urandom(MIB)
    push_blob([url], "quota/a", layer)
    push_blob([url], "quota/b", layer)  # the same layer in a second repository counts once
    found = usage(governed, "quota")
    assert MIB <= int(found["bytes"]) < MIB + 10_000 and found["limit"] == 3 * MIB  # type: ignore[arg-type]
    assert {r["name"]: r["bytes"] for r in found["repositories"]} == {"quota/a": MIB, "quota/b": MIB}  # type: ignore[attr-defined]

    too_big = os.urandom(2 * MIB + 512 * 1024)
    started = requests.post(f"{url}/v2/quota/a/blobs/uploads/", timeout=10)
    refused = requests.patch(url + started.headers["Location"], data=too_big, timeout=30,
                             headers={"Content-Type": "application/octet-stream"})
    status, code, message = error_of(refused)
    assert (status, code) == (403, "DENIED")
    assert "namespace quota is over its storage quota" in message and "limit 3.0 MiB" in message
    # Nothing of it stays: not linked, not held, the session as it was.
    assert requests.head(f"{url}/v2/quota/a/blobs/{digest(too_big)}", timeout=10).status_code == 404
    assert usage(governed, "quota")["held_by_uploads"] == 0
    assert requests.get(url + started.headers["Location"], timeout=10).headers["Range"] == "0-0"
    # A one-request upload and a chunked body of unknown length are refused the same way.
    monolithic = requests.post(f"{url}/v2/quota/a/blobs/uploads/", params={"digest": digest(too_big)},
                               data=too_big, timeout=30)
    assert error_of(monolithic)[:2] == (403, "DENIED")

    def chunks() -> object:
        for start in range(0, len(too_big), 256 * 1024):
            yield too_big[start:start + 256 * 1024]

    streamed = requests.post(f"{url}/v2/quota/a/blobs/uploads/", timeout=10)
    refused = requests.patch(url + streamed.headers["Location"], data=chunks(), timeout=30,
                             headers={"Content-Type": "application/octet-stream"})
    assert refused.status_code == 403
    assert usage(governed, "quota")["held_by_uploads"] == 0
    # A mount of a big blob from outside the namespace is refused; reads and deletes always work.
    push_blob([url], "outside/big", too_big)
    mount = requests.post(f"{url}/v2/quota/a/blobs/uploads/",
                          params={"mount": digest(too_big), "from": "outside/big"}, timeout=10)
    assert error_of(mount)[:2] == (403, "DENIED")
    assert requests.get(f"{url}/v2/quota/a/blobs/{digest(layer)}", timeout=30).content == layer

    # Freed: a deleted image's manifest at once, its layers once the collector unlinks them.
    push_image([url], "quota/app", "v1", [os.urandom(1024 * 1024)])
    before = int(usage(governed, "quota")["bytes"])  # type: ignore[arg-type]
    assert before > 2 * MIB
    manifest = requests.get(f"{url}/v2/quota/app/manifests/v1", headers={"Accept": OCI_MANIFEST}, timeout=10)
    assert requests.delete(f"{url}/v2/quota/app/manifests/{manifest.headers['Docker-Content-Digest']}",
                           timeout=10).status_code == 202
    assert int(usage(governed, "quota")["bytes"]) == before - len(manifest.content)  # type: ignore[arg-type]
    env = {k: v for k, v in os.environ.items() if k != "WHARF_REDIS_URL"}
    env.update(governed.extra_env, WHARF_DATA_DIR=str(governed.data_dir))
    gc = subprocess.run([sys.executable, "-m", "services.gc", "--grace", "0"], env=env, capture_output=True,
                        text=True, timeout=120)
    assert gc.returncode == 0, gc.stderr
    assert int(usage(governed, "quota")["bytes"]) <= MIB  # type: ignore[arg-type]
    push_blob([url], "quota/a", os.urandom(MIB))  # room again


def test_parallel_uploads_do_not_overshoot_the_quota(governed: RunningStack) -> None:
    url = governed.url
    room = 3 * MIB - int(usage(governed, "quota")["bytes"])  # type: ignore[arg-type]
    size = 400 * 1024
    outcomes: list[int] = []
    lock = threading.Lock()
    barrier = threading.Barrier(10)

    def upload() -> None:
        data = os.urandom(size)
        started = requests.post(f"{url}/v2/quota/parallel/blobs/uploads/", timeout=30)
        barrier.wait()
        done = requests.put(url + started.headers["Location"], params={"digest": digest(data)}, data=data,
                            headers={"Content-Type": "application/octet-stream"}, timeout=60)
        with lock:
            outcomes.append(done.status_code)

    threads = [threading.Thread(target=upload) for _ in range(10)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert set(outcomes) <= {201, 403} and 403 in outcomes, outcomes
    after = usage(governed, "quota")
    assert int(after["bytes"]) <= 3 * MIB and after["held_by_uploads"] == 0  # type: ignore[arg-type]
    assert outcomes.count(201) <= room // size



def test_a_failed_request_keeps_its_sessions_stored_bytes_held(governed: RunningStack) -> None:
    """A request that fails on a session (a wrong Content-Range here) gives back only its own hold:
    the bytes the session still stores stay counted, else sessions full of bytes could be left
    open past the quota, one failed request each."""
    url = governed.url
    started = requests.post(f"{url}/v2/held/one/blobs/uploads/", timeout=30)
    location = url + started.headers["Location"]
    stored = requests.patch(location, data=os.urandom(200 * 1024), timeout=60,
                            headers={"Content-Type": "application/octet-stream", "Content-Range": "0-204799"})
    assert stored.status_code == 202, stored.text
    assert usage(governed, "held")["held_by_uploads"] == 200 * 1024
    wrong = requests.patch(location, data=b"z", timeout=30,
                           headers={"Content-Type": "application/octet-stream", "Content-Range": "0-0"})
    assert wrong.status_code == 416
    assert usage(governed, "held")["held_by_uploads"] == 200 * 1024
    assert requests.delete(location, timeout=30).status_code == 204
    assert usage(governed, "held")["held_by_uploads"] == 0


def test_a_small_body_of_unknown_length_fits_where_less_than_a_step_is_left(governed: RunningStack) -> None:
    """A chunked body is held in 8 MiB steps as it streams; where the quota has less room than a
    step, what has arrived is held instead, so a small streamed push is not refused."""
    url = governed.url
    data = os.urandom(100)

    def chunked() -> Iterator[bytes]:
        yield data  # a generator: requests sends it chunked, without a Content-Length

    done = requests.post(f"{url}/v2/held/streamed/blobs/uploads/", params={"digest": digest(data)},
                         data=chunked(), headers={"Content-Type": "application/octet-stream"}, timeout=60)
    assert done.status_code == 201, done.text
    assert usage(governed, "held")["held_by_uploads"] == 0

def test_a_manifest_push_over_the_quota_is_refused(governed: RunningStack) -> None:
    url = governed.url
    room = 3 * MIB - int(usage(governed, "quota")["bytes"])  # type: ignore[arg-type]
    config = b"{}"
    push_blob([url], "quota/manifests", config)
    body = json.dumps({"schemaVersion": 2, "mediaType": OCI_MANIFEST,
                       "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": digest(config),
                                  "size": len(config)}, "layers": [],
                       "annotations": {"padding": "x" * max(room, 1)}}).encode()
    refused = requests.put(f"{url}/v2/quota/manifests/manifests/big", data=body,
                           headers={"Content-Type": OCI_MANIFEST}, timeout=30)
    assert error_of(refused)[:2] == (403, "DENIED")
    assert requests.get(f"{url}/v2/quota/manifests/tags/list", timeout=10).json().get("tags") in (None, [])


# -- whole repositories ---------------------------------------------------------------------------------


def test_an_admin_deletes_a_whole_repository(governed: RunningStack) -> None:
    url = governed.url
    push_image([url], "doomed/app", "v1", random_layers(2, 1000))
    push_image([url], "doomed/app", "v2", random_layers(1, 1000))
    result = admin(governed, "repo", "delete", "doomed/app", "--yes")
    assert "deleted doomed/app: 2 tags, 2 manifests, 5 blob links" in result.stdout
    assert requests.get(f"{url}/v2/doomed/app/tags/list", timeout=10).status_code == 404
    assert "doomed/app" not in requests.get(f"{url}/v2/_catalog", timeout=10).json()["repositories"]
    refused = admin(governed, "repo", "delete", "prod/app", "--yes", ok=False)
    assert refused.returncode != 0 and "immutable" in refused.stderr
    assert requests.get(f"{url}/v2/prod/app/tags/list", timeout=10).json()["tags"]


def test_a_bad_policy_file_stops_start_up_naming_the_problem(tmp_path: pathlib.Path) -> None:
    policy = tmp_path / "policy.yaml"
    policy.write_text("quotas:\n  - namespace: team\n    size: lots\n")
    env = {**os.environ, "WHARF_DATA_DIR": str(tmp_path / "data"), "WHARF_POLICY_FILE": str(policy)}
    result = subprocess.run([sys.executable, "-m", "services.stack", "--check"], env=env, capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 2
    assert "policy.quotas[0].size: a size like 500MB, 10GiB or a number of bytes" in result.stderr
