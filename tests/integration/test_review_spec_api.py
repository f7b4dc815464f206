"""Hostile review against the OCI distribution spec v1.1, side by side with CNCF Distribution
v3.0.0 (2026-12-03): edges of the registry API that clients rely on, on a real stack."""

from __future__ import annotations

import json

import requests

from services.common import digests, mediatypes
from tests.support.stack import RunningStack

OCI, EMPTY = mediatypes.OCI_MANIFEST, mediatypes.OCI_EMPTY
SIGNATURE, SBOM = "application/vnd.example.signature", "application/spdx+json"


def _push_blob(url: str, name: str, data: bytes) -> str:
    digest = digests.of(data)
    response = requests.post(f"{url}/v2/{name}/blobs/uploads/", params={"digest": digest}, data=data, timeout=10)
    assert response.status_code == 201, response.text
    return digest


def _descriptor(media_type: str, data: bytes) -> dict[str, object]:
    return {"mediaType": media_type, "digest": digests.of(data), "size": len(data)}


def _artifact(artifact_type: str, subject: bytes | None = None, with_media_type: bool = True) -> bytes:
    body: dict[str, object] = {"schemaVersion": 2, "artifactType": artifact_type,
                               "config": _descriptor(EMPTY, b"{}"), "layers": [_descriptor(EMPTY, b"{}")]}
    if with_media_type:
        body["mediaType"] = OCI
    if subject is not None:
        body["subject"] = _descriptor(OCI, subject)
    return json.dumps(body).encode()


def _put(url: str, name: str, reference: str, body: bytes, content_type: str = OCI) -> requests.Response:
    return requests.put(f"{url}/v2/{name}/manifests/{reference}", data=body,
                        headers={"Content-Type": content_type}, timeout=10)


def test_referrers_asked_for_several_artifact_types_are_not_filtered_by_the_first_alone(stack: RunningStack) -> None:
    """``?artifactType=<signature>&artifactType=<sbom>``: the page held only the signatures, and
    said ``OCI-Filters-Applied: artifactType``, so a client took the SBOMs for absent. The spec
    defines one value; for several, the page is unfiltered and says nothing (the client filters)."""
    name = "spec/referrers"
    _push_blob(stack.url, name, b"{}")
    subject = _artifact("application/vnd.example.image")
    assert _put(stack.url, name, "v1", subject).status_code == 201
    for kind in (SIGNATURE, SBOM):
        body = _artifact(kind, subject)
        assert _put(stack.url, name, digests.of(body), body).status_code == 201

    def listed(query: list[tuple[str, str]]) -> tuple[list[str], str | None]:
        response = requests.get(f"{stack.url}/v2/{name}/referrers/{digests.of(subject)}", params=query, timeout=10)
        assert response.status_code == 200
        kinds = sorted(entry["artifactType"] for entry in response.json()["manifests"])
        return kinds, response.headers.get("OCI-Filters-Applied")

    assert listed([("artifactType", SIGNATURE), ("artifactType", SBOM)]) == (sorted([SIGNATURE, SBOM]), None)
    # One type, however often or alongside an empty value, is still a filter, and says so.
    assert listed([("artifactType", SBOM)]) == ([SBOM], "artifactType")
    assert listed([("artifactType", SBOM), ("artifactType", SBOM)]) == ([SBOM], "artifactType")
    assert listed([("artifactType", ""), ("artifactType", SBOM)]) == ([SBOM], "artifactType")


def test_media_types_are_case_insensitive_in_accept_and_content_type(stack: RunningStack) -> None:
    """RFC 9110, 8.3.1. ``Content-Type: APPLICATION/VND.OCI.IMAGE.MANIFEST.V1+JSON`` for a manifest
    without ``mediaType`` was ``400 MANIFEST_INVALID`` (Distribution takes it); an ``Accept`` naming
    the OCI type in capitals was read as naming no manifest type, so a Docker list was served to
    it, and the OCI manifest to one refusing it with ``q=0``. Asked twice, the second answer comes
    from the hot-read path, which must decide alike."""
    name = "spec/case"
    _push_blob(stack.url, name, b"{}")
    body = _artifact("application/vnd.example.thing", with_media_type=False)
    response = _put(stack.url, name, "upper", body, content_type=OCI.upper())
    assert response.status_code == 201, response.text
    for _ in range(2):
        assert requests.get(f"{stack.url}/v2/{name}/manifests/upper", headers={"Accept": OCI.upper()},
                            timeout=10).status_code == 200
        refused = requests.get(f"{stack.url}/v2/{name}/manifests/upper", headers={"Accept": f"{OCI.upper()};q=0"},
                               timeout=10)
        assert refused.status_code == 404 and refused.json()["errors"][0]["code"] == "MANIFEST_UNKNOWN"
        other = requests.get(f"{stack.url}/v2/{name}/manifests/upper",
                             headers={"Accept": mediatypes.DOCKER_MANIFEST.upper()}, timeout=10)
        assert other.status_code == 404


def test_a_docker_manifest_must_declare_its_media_type(stack: RunningStack) -> None:
    """Docker's formats require ``mediaType`` (OCI's may omit it): Docker's own parser (and every
    client built on it) refuses a Docker manifest without it, so a registry that stored one made
    every later pull of it fail. Distribution refuses the push; so does Wharf now."""
    name = "spec/dockertype"
    config = _push_blob(stack.url, name, b'{"architecture": "amd64", "os": "linux"}')
    layer = _push_blob(stack.url, name, b"layer bytes")
    image = {"schemaVersion": 2,
             "config": {"mediaType": mediatypes.DOCKER_CONFIG, "digest": config, "size": 40},
             "layers": [{"mediaType": "application/vnd.docker.image.rootfs.diff.tar.gzip", "digest": layer,
                         "size": 11}]}
    refused = _put(stack.url, name, "v1", json.dumps(image).encode(), mediatypes.DOCKER_MANIFEST)
    assert refused.status_code == 400 and refused.json()["errors"][0]["code"] == "MANIFEST_INVALID"
    image["mediaType"] = mediatypes.DOCKER_MANIFEST
    body = json.dumps(image).encode()
    assert _put(stack.url, name, "v1", body, mediatypes.DOCKER_MANIFEST).status_code == 201
    child = {"mediaType": mediatypes.DOCKER_MANIFEST, "digest": digests.of(body), "size": len(body),
             "platform": {"os": "linux", "architecture": "amd64"}}
    listing = {"schemaVersion": 2, "manifests": [child]}
    refused = _put(stack.url, name, "list", json.dumps(listing).encode(), mediatypes.DOCKER_MANIFEST_LIST)
    assert refused.status_code == 400 and refused.json()["errors"][0]["code"] == "MANIFEST_INVALID"
    listing["mediaType"] = mediatypes.DOCKER_MANIFEST_LIST
    assert _put(stack.url, name, "list", json.dumps(listing).encode(),
                mediatypes.DOCKER_MANIFEST_LIST).status_code == 201


def test_a_closing_put_sent_again_after_its_answer_was_lost_is_created_again(stack: RunningStack) -> None:
    """A client whose closing PUT's 201 was lost with the connection sends it again. A finished
    upload's URL reads as a new, empty session (the blob store keeps nothing per finished id), and
    the retry got 400 DIGEST_INVALID, which docker and containerd take as the push failing; the
    blob was stored and linked. Now the same 201 (once: the URL then ends). An empty session closed
    with the digest of a blob the repository does not link is still DIGEST_INVALID."""
    name, data = "spec/retried-close", b"chunked upload bytes" * 100
    digest = digests.of(data)
    started = requests.post(f"{stack.url}/v2/{name}/blobs/uploads/", timeout=10)
    location = started.headers["Location"]
    patched = requests.patch(f"{stack.url}{location}", data=data, timeout=10,
                             headers={"Content-Type": "application/octet-stream"})
    assert patched.status_code == 202
    location = patched.headers["Location"]
    first = requests.put(f"{stack.url}{location}", params={"digest": digest}, timeout=10)
    assert first.status_code == 201
    again = requests.put(f"{stack.url}{location}", params={"digest": digest}, timeout=10)
    assert again.status_code == 201 and again.headers["Docker-Content-Digest"] == digest
    assert again.headers["Location"] == first.headers["Location"]
    # The retry ended that URL's empty session for good.
    gone = requests.put(f"{stack.url}{location}", params={"digest": digest}, timeout=10)
    assert gone.status_code == 404 and gone.json()["errors"][0]["code"] == "BLOB_UPLOAD_UNKNOWN"
    fresh = requests.post(f"{stack.url}/v2/{name}/blobs/uploads/", timeout=10).headers["Location"]
    refused = requests.put(f"{stack.url}{fresh}", params={"digest": digests.of(b"never uploaded")}, timeout=10)
    assert refused.status_code == 400 and refused.json()["errors"][0]["code"] == "DIGEST_INVALID"


def test_a_chunk_whose_range_passes_its_declared_total_is_refused(stack: RunningStack) -> None:
    """``Content-Range: 0-4/3`` names bytes past the complete length it declares: it was taken as
    ``0-4`` (the total ignored). Now 416 BLOB_UPLOAD_INVALID with the session's Range, nothing
    stored; a consistent total, or ``*``, is taken as before."""
    name = "spec/range-total"
    location = requests.post(f"{stack.url}/v2/{name}/blobs/uploads/", timeout=10).headers["Location"]
    refused = requests.patch(f"{stack.url}{location}", data=b"hello", timeout=10,
                             headers={"Content-Range": "0-4/3", "Content-Type": "application/octet-stream"})
    assert refused.status_code == 416 and refused.json()["errors"][0]["code"] == "BLOB_UPLOAD_INVALID"
    assert refused.headers["Range"] == "0-0"
    for total in ("5", "*"):
        location = requests.post(f"{stack.url}/v2/{name}/blobs/uploads/", timeout=10).headers["Location"]
        taken = requests.patch(f"{stack.url}{location}", data=b"hello", timeout=10,
                               headers={"Content-Range": f"0-4/{total}", "Content-Type": "application/octet-stream"})
        assert taken.status_code == 202 and taken.headers["Range"] == "0-4", total
