"""A rolling upgrade: the previous release's gateway beside this release's services.

During a rollout, gateways of both releases serve at once against the upgraded metadata
service and blob stores (the services upgrade first: services/metadata/README.md, "Rolling
upgrades"). The previous release's tree is taken from git history (PREVIOUS_RELEASE, bumped
with each release) and its gateway runs as a process against the stack `make run` starts from
this tree; pushes, pulls, mounts, deletes and listings through either gateway must be seen
through the other, byte for byte (the proto changes are additive: the old gateway sends no pin
and no mount source, the services take that as the old meaning).
"""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys
import time
from collections.abc import Callable, Iterator

import pytest
import requests

from services.common import redisconn
from services.metadata import redis_keys as keys
from services.stack import records
from services.stack.processes import free_port
from tests.support.pusher import OCI_MANIFEST, digest, push_image, random_layers, verify_image
from tests.support.stack import RunningStack
from tests.support.tools import in_ci

pytestmark = pytest.mark.e2e

ROOT = pathlib.Path(__file__).resolve().parents[2]
# The release before the storage-lifecycle work (schema version 2): issue 14's last commit.
PREVIOUS_RELEASE = "c89228d"


def _previous_tree(target: pathlib.Path) -> pathlib.Path | None:
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", "--format=tar", PREVIOUS_RELEASE],
                             capture_output=True, timeout=120)
    if archive.returncode != 0:
        return None
    target.mkdir(parents=True)
    subprocess.run(["tar", "-x", "-C", str(target)], input=archive.stdout, check=True, timeout=120)
    return target


@pytest.fixture()
def old_gateway(start_stack: Callable[..., RunningStack], tmp_path: pathlib.Path) -> Iterator[tuple[RunningStack, str]]:
    tree = _previous_tree(tmp_path / "previous")
    if tree is None:
        message = f"git history with {PREVIOUS_RELEASE} is needed (a shallow clone has none)"
        if in_ci():
            pytest.fail(message)
        pytest.skip(message)
    stack = start_stack()
    port = free_port()
    data_dir = stack.data_dir.resolve()
    env = {k: v for k, v in os.environ.items() if not k.startswith("WHARF_")}
    env.update(PYTHONPATH=str(tree), WHARF_HOST="127.0.0.1", WHARF_PORT=str(port), WHARF_DATA_DIR=str(data_dir),
               WHARF_METADATA_ADDR=records.read(data_dir, records.METADATA_ADDRESS) or "",
               WHARF_BLOBSTORE_ADDR=records.read(data_dir, records.BLOBSTORE_ADDRESS) or "",
               WHARF_INTERNAL_TOKEN_FILE=str(data_dir / records.INTERNAL_TOKEN), WHARF_WORKERS="1")
    log = open(tmp_path / "old-gateway.log", "ab")  # noqa: SIM115 - closed below
    process = subprocess.Popen([sys.executable, "-m", "services.api"], cwd=tree, env=env, stdout=log,
                               stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if requests.get(f"{url}/v2/", timeout=2).status_code == 200:
                    break
            except requests.ConnectionError:
                pass
            assert process.poll() is None, (tmp_path / "old-gateway.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "the previous release's gateway did not start"
            time.sleep(0.2)
        yield stack, url
    finally:
        process.terminate()
        try:
            process.wait(20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()


def test_the_previous_gateway_works_against_the_new_services(old_gateway: tuple[RunningStack, str]) -> None:
    stack, old = old_gateway
    new = stack.url
    layers = random_layers(2, 64 * 1024)
    # Pushed through the old gateway, pulled through the new one, and the other way round.
    through_old = push_image([old], "upgrade/app", "from-old", layers)
    assert verify_image(new, "upgrade/app", "from-old") == 3
    push_image([new], "upgrade/app", "from-new", [layers[0], os.urandom(1024)])
    assert verify_image(old, "upgrade/app", "from-new") == 3
    # A mount through the old gateway (no source check sent: the old meaning).
    mounted = requests.post(f"{old}/v2/upgrade/other/blobs/uploads/",
                            params={"mount": digest(layers[1]), "from": "upgrade/app"}, timeout=30)
    assert mounted.status_code == 201
    assert requests.head(f"{new}/v2/upgrade/other/blobs/{digest(layers[1])}", timeout=30).status_code == 200
    # Listings and a tag move seen through both (the old gateway's manifest cache is invalidated).
    for url in (old, new):
        assert requests.get(f"{url}/v2/upgrade/app/tags/list", timeout=30).json()["tags"] == ["from-new", "from-old"]
        assert "upgrade/app" in requests.get(f"{url}/v2/_catalog", timeout=30).json()["repositories"]
    assert verify_image(old, "upgrade/app", "from-old")  # cached now in the old gateway
    moved = push_image([new], "upgrade/app", "from-old", [os.urandom(2048)])
    got = requests.get(f"{old}/v2/upgrade/app/manifests/from-old", headers={"Accept": OCI_MANIFEST}, timeout=30)
    assert got.status_code == 200 and digest(got.content) == moved
    # Deletes through the old gateway.
    assert requests.delete(f"{old}/v2/upgrade/app/manifests/{through_old}", timeout=30).status_code in (202, 404)
    assert requests.delete(f"{old}/v2/upgrade/app/manifests/{moved}", timeout=30).status_code == 202
    assert requests.get(f"{new}/v2/upgrade/app/manifests/from-old", timeout=30).status_code == 404
    # The new services kept their counts for what the old gateway pushed: the tag's push time is known.
    client = redisconn.sync_client(records.read(stack.data_dir.resolve(), records.REDIS_URL) or "")
    assert client.hget(keys.tag_times("upgrade/app"), "from-new")
    assert client.hget(keys.refs("upgrade/app"), digest(layers[0])) == b"1"
