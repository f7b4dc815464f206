"""Manifests at the size limit and referrers beyond one gRPC message, through a running stack.

A manifest's top-level annotations travel twice to the metadata service (in the manifest and in
its referrers descriptor), and every referrer's annotations came back in one answer: a manifest
within the 4 MiB limit was refused, and three referrers of ~3 MiB each made their subject's list
unreadable for good, both as 429 TOOMANYREQUESTS (gRPC's RESOURCE_EXHAUSTED), which a client
retries forever. The list now comes in pages bounded in bytes, linked as the tag list's are."""

from __future__ import annotations

import json
import re

import requests

from tests.support.pusher import OCI_MANIFEST, digest, push_image, random_layers
from tests.support.stack import RunningStack

LIMIT = 4 * 1024 * 1024  # WHARF_MAX_MANIFEST_BYTES's default


def _referrer(subject: str, config: dict[str, object], pad: int, note: str) -> bytes:
    """An artifact manifest whose subject is ``subject``, padded by an annotation to ``pad`` bytes."""
    manifest = {"schemaVersion": 2, "mediaType": OCI_MANIFEST, "artifactType": "application/x.test",
                "config": config, "layers": [], "subject": {"mediaType": OCI_MANIFEST, "digest": subject,
                                                            "size": 1},
                "annotations": {"note": note, "pad": ""}}
    empty = len(json.dumps(manifest).encode())
    manifest["annotations"]["pad"] = "x" * (pad - empty)  # type: ignore[index]
    body = json.dumps(manifest).encode()
    assert len(body) == pad
    return body


def _put(url: str, repository: str, body: bytes) -> requests.Response:
    return requests.put(f"{url}/v2/{repository}/manifests/{digest(body)}", data=body, timeout=60,
                        headers={"Content-Type": OCI_MANIFEST})


def test_a_manifest_at_the_limit_is_taken_and_one_byte_more_is_413(stack: RunningStack) -> None:
    repository = "limits/annotated"
    subject = push_image([stack.url], repository, "v1", random_layers(1, 100))
    config = requests.get(f"{stack.url}/v2/{repository}/manifests/v1", headers={"Accept": OCI_MANIFEST},
                          timeout=30).json()["config"]
    at_limit = _referrer(subject, config, LIMIT, "at the limit")
    assert _put(stack.url, repository, at_limit).status_code == 201
    over = _referrer(subject, config, LIMIT + 1, "over")
    answer = _put(stack.url, repository, over)
    assert answer.status_code == 413 and answer.json()["errors"][0]["code"] == "MANIFEST_INVALID"


def test_referrers_too_large_for_one_answer_are_listed_in_linked_pages(stack: RunningStack) -> None:
    repository = "limits/referred"
    subject = push_image([stack.url], repository, "v1", random_layers(1, 100))
    config = requests.get(f"{stack.url}/v2/{repository}/manifests/v1", headers={"Accept": OCI_MANIFEST},
                          timeout=30).json()["config"]
    pushed = set()
    for index in range(3):
        body = _referrer(subject, config, 3 * 1024 * 1024, f"referrer {index}")
        assert _put(stack.url, repository, body).status_code == 201
        pushed.add(digest(body))
    small = _referrer(subject, config, 2048, "small")
    assert _put(stack.url, repository, small).status_code == 201
    pushed.add(digest(small))

    for query in ("", "?artifactType=application%2Fx.test"):
        listed: list[str] = []
        target = f"{stack.url}/v2/{repository}/referrers/{subject}{query}"
        for _ in range(10):
            answer = requests.get(target, timeout=60)
            assert answer.status_code == 200, answer.text
            page = [entry["digest"] for entry in answer.json()["manifests"]]
            assert page, "every page holds at least one referrer"
            listed += page
            link = answer.headers.get("Link")
            if link is None:
                break
            found = re.fullmatch(r'<(/v2/[^>]+)>; rel="next"', link)
            assert found, link
            assert query == "" or "artifactType=application%2Fx.test" in link
            target = f"{stack.url}{found.group(1)}"
        assert sorted(listed) == sorted(pushed) and len(listed) == len(pushed)
        assert listed == sorted(listed)  # digest order, each once

    # A cursor that is not a digest is the client's error, at once.
    bad = requests.get(f"{stack.url}/v2/{repository}/referrers/{subject}?last=nope", timeout=30)
    assert bad.status_code == 400 and bad.json()["errors"][0]["code"] == "DIGEST_INVALID"
