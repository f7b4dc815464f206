"""Image references, normalized the way docker and containerd normalize them.

``ubuntu`` is ``docker.io/library/ubuntu:latest``; ``localhost:5000/app`` names
a registry because its first component has a port; ``Host/app`` names one
because of the capital letter; ``app@sha256:...`` pins a digest. Getting this
exactly like docker matters: the same string must reach the same registry and
credentials in every tool a user has.
"""

from __future__ import annotations

import dataclasses
import re

from wharf_client import digest as digests
from wharf_client.errors import InvalidReference

DEFAULT_REGISTRY = "docker.io"
# docker.io is a name, not a host: its API lives here, and its credentials under LEGACY_DOCKER_AUTH_KEY.
DOCKER_HUB_API_HOST = "registry-1.docker.io"
LEGACY_DOCKER_AUTH_KEY = "https://index.docker.io/v1/"
DEFAULT_TAG = "latest"
MAX_NAME_LENGTH = 255

_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_PATH_RE = re.compile(rf"^{_COMPONENT}(?:/{_COMPONENT})*$")
_DOMAIN_COMPONENT = r"(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])"
_HOST_RE = re.compile(rf"^(?:{_DOMAIN_COMPONENT}(?:\.{_DOMAIN_COMPONENT})*|\[[a-fA-F0-9:]+\])(?::[0-9]+)?$")
_TAG_RE = re.compile(r"^[\w][\w.-]{0,127}$")
_HEX64_RE = re.compile(r"^[a-f0-9]{64}$")


@dataclasses.dataclass(frozen=True)
class Reference:
    """A normalized reference: registry, repository, and an optional tag and/or digest."""

    registry: str
    repository: str
    tag: str | None = None
    digest: str | None = None

    @property
    def api_host(self) -> str:
        """Where the registry's HTTP API is: docker.io's lives on another host."""
        return DOCKER_HUB_API_HOST if self.registry == DEFAULT_REGISTRY else self.registry

    @property
    def identifier(self) -> str:
        """What to put after ``/manifests/``: the digest if pinned, else the tag, else ``latest``."""
        return self.digest or self.tag or DEFAULT_TAG

    @property
    def name(self) -> str:
        """registry/repository, without tag or digest."""
        return f"{self.registry}/{self.repository}"

    def with_tag(self, tag: str) -> Reference:
        return dataclasses.replace(self, tag=validate_tag(tag), digest=None)

    def with_digest(self, digest: str) -> Reference:
        return dataclasses.replace(self, tag=None, digest=digests.validate(digest))

    def with_repository(self, repository: str) -> Reference:
        return dataclasses.replace(self, repository=validate_repository(repository))

    def __str__(self) -> str:
        text = self.name
        if self.tag:
            text += f":{self.tag}"
        if self.digest:
            text += f"@{self.digest}"
        return text

    def familiar(self) -> str:
        """The short form docker prints: ``ubuntu:22.04`` rather than ``docker.io/library/ubuntu:22.04``."""
        text = str(self)
        if self.registry == DEFAULT_REGISTRY:
            text = text.removeprefix(f"{DEFAULT_REGISTRY}/")
            if text.startswith("library/") and "/" not in self.repository.removeprefix("library/"):
                text = text.removeprefix("library/")
        return text


def validate_tag(tag: str) -> str:
    if not _TAG_RE.match(tag):
        raise InvalidReference(f"invalid tag {tag[:150]!r}")
    return tag


def validate_repository(repository: str) -> str:
    if not _PATH_RE.match(repository):
        raise InvalidReference(f"invalid repository name {repository[:300]!r}")
    return repository


def _split_domain(name: str) -> tuple[str, str]:
    """docker's splitDockerDomain: the first component is a registry if it looks like a host."""
    head, sep, rest = name.partition("/")
    if not sep or (not any(c in head for c in ".:") and head != "localhost" and head.lower() == head):
        registry, remainder = DEFAULT_REGISTRY, name
    else:
        registry, remainder = head, rest
    if registry == "index.docker.io":
        registry = DEFAULT_REGISTRY
    if registry == DEFAULT_REGISTRY and "/" not in remainder:
        remainder = f"library/{remainder}"
    return registry, remainder


def parse(text: str, *, default_tag: bool = False) -> Reference:
    """Parses and normalizes ``text``; ``default_tag`` fills in ``latest`` when neither tag nor digest is given."""
    text = text.strip()
    if not text:
        raise InvalidReference("empty image reference")
    if _HEX64_RE.match(text):
        raise InvalidReference(f"{text!r} is an image id, not a reference: name a repository")
    name, at, digest = text.partition("@")
    if at:
        digests.validate(digest)
    tag: str | None = None
    colon = name.rfind(":")
    if colon > name.rfind("/"):
        name, tag = name[:colon], validate_tag(name[colon + 1:])
    registry, repository = _split_domain(name)
    if not _HOST_RE.match(registry):
        raise InvalidReference(f"invalid registry {registry!r} in {text!r}")
    if repository.lower() != repository:
        raise InvalidReference(f"invalid reference {text!r}: the repository name must be lowercase")
    if not _PATH_RE.match(repository):
        raise InvalidReference(f"invalid reference {text!r}: {repository!r} is not a valid repository name")
    if len(f"{registry}/{repository}") > MAX_NAME_LENGTH:
        raise InvalidReference(f"repository name longer than {MAX_NAME_LENGTH} characters: {text[:80]!r}...")
    if default_tag and tag is None and not at:
        tag = DEFAULT_TAG
    return Reference(registry, repository, tag, digest or None)


def parse_registry(text: str) -> str:
    """A bare registry host as given to login/catalog: ``docker.io``, ``localhost:5000``, ``https://host``."""
    host = text.strip().removeprefix("https://").removeprefix("http://").rstrip("/")
    host = host.removesuffix("/v1").removesuffix("/v2").rstrip("/")
    if host in ("index.docker.io", DOCKER_HUB_API_HOST):
        host = DEFAULT_REGISTRY
    if not host or not _HOST_RE.match(host):
        raise InvalidReference(f"invalid registry {text!r}")
    return host


def api_host(registry: str) -> str:
    return DOCKER_HUB_API_HOST if registry == DEFAULT_REGISTRY else registry
