"""Hostile review of the maintenance tools (2026-12-03): `wharf-admin import` onto a live registry,
`wharf-admin check --repair` on manifests whose references were never checked."""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys
from collections.abc import Callable

import pytest
import requests

from services.common.internal_auth import read_token
from services.maintenance import targets
from services.maintenance.clients import RegistryCalls
from services.maintenance.importer import Importer, ImportFailed
from tests.support.pusher import OCI_MANIFEST, digest, push_blob, push_image, random_layers
from tests.support.stack import RunningStack

ROOT = pathlib.Path(__file__).resolve().parents[2]


def test_an_import_does_not_move_back_a_tag_pushed_after_its_check(start_stack: Callable[..., RunningStack],
                                                                   tmp_path: pathlib.Path) -> None:
    """The first pass found `imp/app:v1` absent; a user pushed it before the second pass wrote the
    file's manifest: the import moved the tag back over the acknowledged push, silently."""
    stack = start_stack()
    env = {**os.environ, "WHARF_DATA_DIR": str(stack.data_dir)}
    env.pop("WHARF_REDIS_URL", None)
    exported = push_image([stack.url], "imp/app", "v1", random_layers(1, 1000))
    file = tmp_path / "export.jsonl"
    subprocess.run([sys.executable, "-m", "services.auth.admin_cli", "export", str(file)], env=env, cwd=ROOT,
                   check=True, capture_output=True, timeout=60)
    assert requests.delete(f"{stack.url}/v2/imp/app/manifests/{exported}", timeout=30).status_code == 202
    where = targets.locate({"WHARF_DATA_DIR": str(stack.data_dir)})
    calls = RegistryCalls(where, read_token(where.token_file))
    try:
        importer = Importer(calls, file)
        importer.look()  # v1 is absent: no conflict
        pushed = push_image([stack.url], "imp/app", "v1", random_layers(1, 1000))  # meanwhile, a user's push

        with pytest.raises(ImportFailed, match="imp/app:v1 was pushed to"):
            importer.write()

        served = requests.head(f"{stack.url}/v2/imp/app/manifests/v1", headers={"Accept": OCI_MANIFEST}, timeout=30)
        assert served.headers["Docker-Content-Digest"] == pushed
    finally:
        calls.close()


def test_check_repair_does_not_link_another_repositorys_blob_a_sparse_manifest_names(
        start_stack: Callable[..., RunningStack]) -> None:
    """With sparse manifests allowed, `b/x` stores a manifest naming the layer of `a/secret` (its
    digest and size are all it needs). `wharf-admin check --repair` took that for a lost link and
    linked the layer into `b/x`: whoever may pull `b/x` then read `a/secret`'s bytes."""
    stack = start_stack(env={"WHARF_ALLOW_SPARSE_MANIFESTS": "true"})
    secret = random_layers(1, 3000)[0]
    push_image([stack.url], "a/secret", "v1", [secret])
    layer = digest(secret)
    config = push_blob([stack.url], "b/x", b"{}")
    manifest = json.dumps({"schemaVersion": 2, "mediaType": OCI_MANIFEST,
                           "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config,
                                      "size": 2},
                           "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": layer,
                                       "size": 3000}]}).encode()
    assert requests.put(f"{stack.url}/v2/b/x/manifests/v1", data=manifest, headers={"Content-Type": OCI_MANIFEST},
                        timeout=30).status_code == 201
    env = {**os.environ, "WHARF_DATA_DIR": str(stack.data_dir)}
    env.pop("WHARF_REDIS_URL", None)

    checked = subprocess.run([sys.executable, "-m", "services.auth.admin_cli", "check", "--repair"], env=env,
                             cwd=ROOT, capture_output=True, text=True, timeout=120)

    [finding] = json.loads(checked.stdout)["findings"]
    assert (finding["kind"], finding["repository"], finding["digest"]) == ("manifest_blob_unlinked", "b/x", layer)
    assert not finding["repaired"] and "sparse" in finding["reason"]
    assert requests.head(f"{stack.url}/v2/b/x/blobs/{layer}", timeout=30).status_code == 404
