"""Hostile review of the registry API's request handlers (2026-12-03), against the token-mode target."""

from __future__ import annotations

import concurrent.futures
import uuid

import requests

from services.api.views.manifests import MOUNT_ROUNDS
from services.common import digests, mediatypes
from tests.security.conftest import bearer, manifest, push_blob, token
from tests.support import prometheus
from tests.support.stack import RunningStack


def test_a_manifest_refused_for_a_wrong_size_mounts_nothing(target: RunningStack) -> None:
    """A manifest naming a blob of another repository the pusher may pull, with a wrong size: the
    blob was mounted into the target first, then the manifest refused, so the refused push left
    the blob linked and a repository in the catalog. Now the size is checked before the mount."""
    source, fresh = f"b/src-{uuid.uuid4().hex[:8]}", f"b/fresh-{uuid.uuid4().hex[:8]}"
    config = push_blob(target, "b", source, b"{}")
    layer = push_blob(target, "b", source, b"a layer stored elsewhere")
    headers = bearer(token(target, "b", f"repository:{fresh}:pull,push", "registry:catalog:*"))
    body = manifest(config, 2, [(layer, 999)])
    answer = requests.put(f"{target.url}/v2/{fresh}/manifests/v1", data=body, timeout=30,
                          headers={**headers, "Content-Type": mediatypes.OCI_MANIFEST})
    assert answer.status_code == 400, answer.text
    error = answer.json()["errors"][0]
    assert error["code"] == "MANIFEST_INVALID" and error["detail"] == {"digest": layer, "declared": 999,
                                                                        "stored": 24}
    for digest in (config, layer):
        head = requests.head(f"{target.url}/v2/{fresh}/blobs/{digest}", headers=headers, timeout=10)
        assert head.status_code == 404
    catalog = requests.get(f"{target.url}/v2/_catalog", headers=headers, timeout=10).json()["repositories"]
    assert source in catalog and fresh not in catalog

    # The right size still mounts and stores it.
    body = manifest(config, 2, [(layer, 24)])
    answer = requests.put(f"{target.url}/v2/{fresh}/manifests/v1", data=body, timeout=30,
                          headers={**headers, "Content-Type": mediatypes.OCI_MANIFEST})
    assert answer.status_code == 201, answer.text
    assert answer.headers["Docker-Content-Digest"] == digests.of(body)


def test_a_manifest_of_many_blobs_of_other_repositories_is_put_a_bounded_number_of_times(
        target: RunningStack) -> None:
    """A manifest naming N blobs the pusher stored in another repository: the gateway mounted the 50
    a refusal lists and put the whole manifest again, N/50 + 1 times, each put reading and checking
    every reference (3,000 layers: 61 puts, 20 s of a gateway worker; 27,000, the most a 4 MiB
    manifest holds, some 15 minutes). Now it puts at most MOUNT_ROUNDS + 1 times."""
    source, fresh = f"b/many-{uuid.uuid4().hex[:8]}", f"b/dst-{uuid.uuid4().hex[:8]}"
    headers = bearer(token(target, "b", f"repository:{source}:pull,push"))
    blobs = [b"blob %d" % i for i in range(400)]

    def push(data: bytes) -> str:
        digest = digests.of(data)
        answer = requests.post(f"{target.url}/v2/{source}/blobs/uploads/", params={"digest": digest}, data=data,
                               headers=headers, timeout=30)
        assert answer.status_code == 201, answer.text
        return digest

    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        layers = list(pool.map(push, blobs))
    config = push_blob(target, "b", source, b"{}")
    body = manifest(config, 2, [(digest, len(data)) for digest, data in zip(layers, blobs, strict=True)])
    metadata = prometheus.addresses(target)["metadata"]
    before = _puts(metadata)
    headers = bearer(token(target, "b", f"repository:{fresh}:pull,push"))
    answer = requests.put(f"{target.url}/v2/{fresh}/manifests/v1", data=body, timeout=120,
                          headers={**headers, "Content-Type": mediatypes.OCI_MANIFEST})
    assert answer.status_code == 201, answer.text
    for digest in (config, layers[0], layers[-1]):
        assert requests.head(f"{target.url}/v2/{fresh}/blobs/{digest}", headers=headers, timeout=10).status_code == 200
    puts = _puts(metadata) - before
    assert 0 < puts <= MOUNT_ROUNDS + 1, f"the manifest was put {puts} times"


def _puts(metadata: str) -> float:
    return prometheus.value(prometheus.samples_of(prometheus.exposition(metadata)), "wharf_grpc_server_calls_total",
                            grpc_method="PutManifest")
