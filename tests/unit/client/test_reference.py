"""References normalize exactly as docker's reference package does."""

from __future__ import annotations

import pytest
from wharf_client.errors import InvalidReference
from wharf_client.reference import parse, parse_registry

DIGEST = "sha256:" + "a" * 64


@pytest.mark.parametrize(("text", "registry", "repository", "tag", "digest"), [
    ("ubuntu", "docker.io", "library/ubuntu", None, None),
    ("ubuntu:22.04", "docker.io", "library/ubuntu", "22.04", None),
    ("docker.io/ubuntu", "docker.io", "library/ubuntu", None, None),
    ("index.docker.io/library/ubuntu", "docker.io", "library/ubuntu", None, None),
    ("user/app", "docker.io", "user/app", None, None),
    ("localhost/app", "localhost", "app", None, None),
    ("localhost:5000/app:v1", "localhost:5000", "app", "v1", None),
    ("127.0.0.1:5000/a/b/c", "127.0.0.1:5000", "a/b/c", None, None),
    ("ghcr.io/org/app@" + DIGEST, "ghcr.io", "org/app", None, DIGEST),
    ("ghcr.io/org/app:v1@" + DIGEST, "ghcr.io", "org/app", "v1", DIGEST),
    ("Registry/app", "Registry", "app", None, None),  # a capital marks a host, as in docker
    ("[::1]:5000/app:v2", "[::1]:5000", "app", "v2", None),
    ("my-registry.example.com:443/a_b/c__d/e-f", "my-registry.example.com:443", "a_b/c__d/e-f", None, None),
])
def test_parse_normalizes_like_docker(text: str, registry: str, repository: str, tag: str | None,
                                      digest: str | None) -> None:
    ref = parse(text)
    assert (ref.registry, ref.repository, ref.tag, ref.digest) == (registry, repository, tag, digest)


@pytest.mark.parametrize("text", ["", "UPPER", "app:bad tag", "a" * 64, "app@sha256:123", "host:5000/App",
                                  "-app", "app/", "app//x", "app:" + "t" * 129, "app@md5:" + "a" * 32])
def test_invalid_references_are_refused(text: str) -> None:
    with pytest.raises(InvalidReference):
        parse(text)


def test_default_tag_and_identifier() -> None:
    assert parse("app", default_tag=True).tag == "latest"
    assert parse("app@" + DIGEST, default_tag=True).tag is None
    assert parse("app").identifier == "latest"
    assert parse("app:v1@" + DIGEST).identifier == DIGEST


def test_string_forms() -> None:
    ref = parse("ubuntu:22.04")
    assert str(ref) == "docker.io/library/ubuntu:22.04"
    assert ref.familiar() == "ubuntu:22.04"
    assert ref.api_host == "registry-1.docker.io"
    assert parse("localhost:5000/x/y").with_tag("t").familiar() == "localhost:5000/x/y:t"
    assert str(parse("x/y:t").with_digest(DIGEST)) == f"docker.io/x/y@{DIGEST}"


@pytest.mark.parametrize(("text", "expected"), [
    ("localhost:5000", "localhost:5000"), ("https://index.docker.io/v1/", "docker.io"),
    ("http://127.0.0.1:8080/", "127.0.0.1:8080"), ("ghcr.io", "ghcr.io")])
def test_parse_registry(text: str, expected: str) -> None:
    assert parse_registry(text) == expected
