"""Shared pieces of the property tests (tests/e2e/test_properties_*.py): the hypothesis settings
CI runs them with, a raw HTTP client, and the registry state a refused request must not change."""

from __future__ import annotations

import dataclasses
import hashlib
import http.client
import json
import urllib.parse

import requests
from hypothesis import HealthCheck, settings

# Reproducible and bounded: the same examples on every run (derandomize), no example database,
# no deadline (a loaded 2-core CI machine), and a live stack is slow by hypothesis' measure.
CI = settings(derandomize=True, database=None, deadline=None, print_blob=False,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                     HealthCheck.large_base_example, HealthCheck.filter_too_much])
settings.register_profile("wharf-ci", CI)

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
CONFIG_TYPE = "application/vnd.oci.image.config.v1+json"


def digest(data: bytes, algorithm: str = "sha256") -> str:
    return f"{algorithm}:{hashlib.new(algorithm, data).hexdigest()}"


@dataclasses.dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes

    @property
    def code(self) -> str:
        """The first OCI error code of the body ("" when there is none)."""
        try:
            return str(json.loads(self.body)["errors"][0]["code"])
        except (ValueError, KeyError, IndexError, TypeError):
            return ""


class Raw:
    """Sends the request line exactly as given: requests (urllib3) would remove "/../" and "/./"
    and re-encode the path, which is what the name properties must not have done for them."""

    def __init__(self, url: str) -> None:
        self.host = urllib.parse.urlsplit(url).netloc

    def __call__(self, method: str, path: str, body: bytes = b"", headers: dict[str, str] | None = None) -> Answer:
        connection = http.client.HTTPConnection(self.host, timeout=30)
        try:
            connection.request(method, path, body=body, headers=headers or {})
            response = connection.getresponse()
            return Answer(response.status, {k.lower(): v for k, v in response.getheaders()}, response.read())
        finally:
            connection.close()


def catalog(url: str) -> list[str]:
    response = requests.get(f"{url}/v2/_catalog", params={"n": "10000"}, timeout=30)
    assert response.status_code == 200, response.text
    return list(response.json()["repositories"])


def tags(url: str, name: str) -> list[str] | None:
    response = requests.get(f"{url}/v2/{name}/tags/list", timeout=30)
    if response.status_code == 404:
        return None
    assert response.status_code == 200, response.text
    return list(response.json()["tags"])


def push_blob(url: str, name: str, data: bytes, algorithm: str = "sha256") -> str:
    blob_digest = digest(data, algorithm)
    response = requests.post(f"{url}/v2/{name}/blobs/uploads/", params={"digest": blob_digest}, data=data,
                             timeout=30)
    assert response.status_code == 201, (name, response.status_code, response.text)
    return blob_digest


def image_manifest(config_digest: str, config_size: int, layers: tuple[tuple[str, int], ...] = ()) -> bytes:
    return json.dumps({"schemaVersion": 2, "mediaType": OCI_MANIFEST,
                       "config": {"mediaType": CONFIG_TYPE, "digest": config_digest, "size": config_size},
                       "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": d, "size": s}
                                  for d, s in layers]}).encode()
