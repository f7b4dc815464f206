"""Admission policies and extensions at start-up, against the running stack: a refused push is
DENIED with the policy's message and stores nothing; an unknown or broken extension stops the
runner before it starts anything, naming it."""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys
import uuid
from collections.abc import Callable

import pytest
import requests

from tests.support.pusher import OCI_MANIFEST, digest, push_blob
from tests.support.stack import RunningStack

pytestmark = pytest.mark.e2e

POLICIES = {"policies": [
    {"name": "required-annotations", "repositories": ["prod/**"],
     "options": {"keys": ["org.opencontainers.image.source"]}},
    {"name": "max-size", "options": {"bytes": 1000}},
    {"name": "base-registries", "repositories": ["built/**"],
     "options": {"allow": ["registry.example.com/dockerhub"], "require": True}},
]}


def _manifest(stack: RunningStack, repository: str, layer: bytes, annotations: dict[str, str]) -> bytes:
    config = b"{}"
    push_blob([stack.url], repository, config)
    push_blob([stack.url], repository, layer)
    return json.dumps({"schemaVersion": 2, "mediaType": OCI_MANIFEST,
                       "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": digest(config),
                                  "size": len(config)},
                       "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": digest(layer),
                                   "size": len(layer)}], "annotations": annotations}).encode()


def test_policies_refuse_with_denied_and_store_nothing(tmp_path: pathlib.Path,
                                                       start_stack: Callable[..., RunningStack]) -> None:
    policies = tmp_path / "admission.yaml"
    policies.write_text(json.dumps(POLICIES))
    stack = start_stack(env={"WHARF_ADMISSION_FILE": str(policies)})
    repository = f"prod/app-{uuid.uuid4().hex[:6]}"
    headers = {"Content-Type": OCI_MANIFEST}

    unlabelled = _manifest(stack, repository, b"small layer", {})
    refused = requests.put(f"{stack.url}/v2/{repository}/manifests/v1", data=unlabelled, headers=headers, timeout=10)
    assert refused.status_code == 403
    [error] = refused.json()["errors"]
    assert error["code"] == "DENIED"
    assert error["message"] == "required-annotations: annotations required here: org.opencontainers.image.source"
    assert requests.get(f"{stack.url}/v2/{repository}/tags/list", timeout=10).json().get("tags") in (None, [])

    big = _manifest(stack, repository, b"x" * 2000, {"org.opencontainers.image.source": "https://git.example/app"})
    too_big = requests.put(f"{stack.url}/v2/{repository}/manifests/v2", data=big, headers=headers, timeout=10)
    assert too_big.status_code == 403 and too_big.json()["errors"][0]["message"].startswith("max-size: the image")

    fine = _manifest(stack, repository, b"small", {"org.opencontainers.image.source": "https://git.example/app"})
    assert requests.put(f"{stack.url}/v2/{repository}/manifests/v3", data=fine, headers=headers,
                        timeout=10).status_code == 201
    assert requests.get(f"{stack.url}/v2/{repository}/tags/list", timeout=10).json()["tags"] == ["v3"]
    # Under built/, images must be built on what the mirror serves.
    built = f"built/app-{uuid.uuid4().hex[:6]}"
    base = "org.opencontainers.image.base.name"
    foreign = _manifest(stack, built, b"s", {base: "docker.io/library/alpine:3.20"})
    refused = requests.put(f"{stack.url}/v2/{built}/manifests/v1", data=foreign, headers=headers, timeout=10)
    assert refused.status_code == 403 and "base-registries: base image" in refused.json()["errors"][0]["message"]
    mirrored = _manifest(stack, built, b"s", {base: "registry.example.com/dockerhub/library/alpine:3.20"})
    assert requests.put(f"{stack.url}/v2/{built}/manifests/v1", data=mirrored, headers=headers,
                        timeout=10).status_code == 201
    # Outside prod/ and built/, only the size rule applies.
    other = f"dev/app-{uuid.uuid4().hex[:6]}"
    assert requests.put(f"{stack.url}/v2/{other}/manifests/v1", data=_manifest(stack, other, b"s", {}),
                        headers=headers, timeout=10).status_code == 201


def _check(tmp_path: pathlib.Path, **env: str) -> subprocess.CompletedProcess[str]:
    environ = {**os.environ, "WHARF_DATA_DIR": str(tmp_path / "data"), **env}
    return subprocess.run([sys.executable, "-m", "services.stack", "--check"], env=environ, capture_output=True,
                          text=True, timeout=60)


def test_an_unknown_or_broken_extension_stops_start_up_naming_it(tmp_path: pathlib.Path) -> None:
    assert _check(tmp_path).returncode == 0
    storage = _check(tmp_path, WHARF_STORAGE="azure-blob")
    assert storage.returncode == 2 and "WHARF_STORAGE='azure-blob': expected filesystem or s3" in storage.stderr
    policies = tmp_path / "admission.yaml"
    policies.write_text(json.dumps({"policies": [{"name": "no-such-policy"}]}))
    admission = _check(tmp_path, WHARF_ADMISSION_FILE=str(policies))
    assert admission.returncode == 2
    assert "wharf.admission: no extension named 'no-such-policy' is installed" in admission.stderr
    policies.write_text(json.dumps({"policies": [{"name": "max-size", "options": {"bytes": "lots"}}]}))
    bad_option = _check(tmp_path, WHARF_ADMISSION_FILE=str(policies))
    assert bad_option.returncode == 2 and "admission.policies[0] (max-size): options: bytes" in bad_option.stderr
    events = tmp_path / "events.yaml"
    events.write_text(json.dumps({"endpoints": [{"name": "q", "sink": "kafka"}]}))
    sink = _check(tmp_path, WHARF_EVENTS_FILE=str(events))
    assert sink.returncode == 2 and "wharf.events: no extension named 'kafka' is installed" in sink.stderr
    identity = tmp_path / "identity.yaml"
    identity.write_text(json.dumps({"backends": [{"name": "accounts"}, {"name": "kerberos"}]}))
    backend = _check(tmp_path, WHARF_IDENTITY_FILE=str(identity))
    assert backend.returncode == 2 and "wharf.identity: no extension named 'kerberos' is installed" in backend.stderr
    identity.write_text(json.dumps({"backends": [{"name": "ldap", "options": {"url": "http://ldap.example"}}]}))
    ldap = _check(tmp_path, WHARF_IDENTITY_FILE=str(identity))
    assert ldap.returncode == 2
    assert "identity.backends[0] (ldap): url: one or more ldap:// or ldaps:// URLs; user_base:" in ldap.stderr
