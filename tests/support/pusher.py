"""A small registry client for tests that need to control every request: which gateway each
PATCH goes to, what a failure looks like. Real clients (skopeo, oras) are tested elsewhere."""

from __future__ import annotations

import hashlib
import itertools
import json
import os

import requests

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"


class PushError(Exception):
    def __init__(self, step: str, response: requests.Response) -> None:
        super().__init__(f"{step}: HTTP {response.status_code} {response.text[:300]}")
        self.status = response.status_code
        self.body = response.text


def digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def random_layers(count: int, size: int) -> list[bytes]:
    return [os.urandom(size) for _ in range(count)]


def push_blob(gateways: list[str], repository: str, data: bytes, chunk: int = 1024 * 1024) -> str:
    """A chunked upload whose requests rotate over ``gateways``."""
    rotation = itertools.cycle(gateways)
    started = requests.post(f"{next(rotation)}/v2/{repository}/blobs/uploads/", timeout=30)
    if started.status_code != 202:
        raise PushError("start upload", started)
    location = started.headers["Location"]
    for offset in range(0, len(data), chunk):
        piece = data[offset:offset + chunk]
        response = requests.patch(next(rotation) + location, data=piece, timeout=60,
                                  headers={"Content-Range": f"{offset}-{offset + len(piece) - 1}",
                                           "Content-Type": "application/octet-stream"})
        if response.status_code != 202:
            raise PushError(f"patch at {offset}", response)
        location = response.headers["Location"]
    done = requests.put(next(rotation) + location, params={"digest": digest(data)}, timeout=60)
    if done.status_code != 201:
        raise PushError("commit", done)
    return digest(data)


def push_image(gateways: list[str], repository: str, tag: str, layers: list[bytes], chunk: int = 1024 * 1024) -> str:
    config = json.dumps({"architecture": "amd64", "os": "linux", "tag": tag}).encode()
    descriptors = []
    for layer in layers:
        descriptors.append({"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest":
                            push_blob(gateways, repository, layer, chunk), "size": len(layer)})
    config_digest = push_blob(gateways, repository, config, chunk)
    manifest = json.dumps({"schemaVersion": 2, "mediaType": OCI_MANIFEST, "layers": descriptors,
                           "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                                      "digest": config_digest, "size": len(config)}}).encode()
    response = requests.put(f"{gateways[-1]}/v2/{repository}/manifests/{tag}", data=manifest, timeout=30,
                            headers={"Content-Type": OCI_MANIFEST})
    if response.status_code != 201:
        raise PushError("manifest", response)
    return digest(manifest)


def verify_image(gateway: str, repository: str, tag: str) -> int:
    """Every blob the manifest references is readable and matches its digest; returns how many."""
    response = requests.get(f"{gateway}/v2/{repository}/manifests/{tag}", headers={"Accept": OCI_MANIFEST},
                            timeout=30)
    assert response.status_code == 200, response.text
    manifest = response.json()
    checked = 0
    for descriptor in [manifest["config"], *manifest["layers"]]:
        blob = requests.get(f"{gateway}/v2/{repository}/blobs/{descriptor['digest']}", timeout=60)
        assert blob.status_code == 200, (descriptor, blob.status_code)
        assert digest(blob.content) == descriptor["digest"] and len(blob.content) == descriptor["size"]
        checked += 1
    return checked
