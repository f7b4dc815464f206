"""Admission policies: rules consulted before a manifest or a tag is stored.

A policy is an extension of the ``wharf.admission`` entry-point group (services/common/plugins.py),
interface version 1 (``wharf_interface = 1`` in its class):

- ``from_options(options)`` builds it from its entry in the ``admission`` section; raise ValueError
  for a bad option (start-up stops with the message).
- ``admit(candidate)`` returns None to allow, or a message: the push is refused with ``DENIED``
  (403) and that message, and nothing is stored. It is called on the gateway's request path, for
  every manifest PUT (a tag is set by a manifest PUT): keep it fast, and do not block on a slow
  peer. It must not raise; a policy that raises refuses the push (fail closed) and is logged.

The ``admission`` section (``WHARF_ADMISSION_FILE``, or ``admission:`` in ``WHARF_CONFIG``)::

    policies:
      - name: media-types            # the extension's registered name
        repositories: ["prod/**"]    # where it applies (patterns as for grants; default: everywhere)
        options: {allow: [application/vnd.oci.image.manifest.v1+json]}

Policies run in their order; the first refusal wins. Signatures arrive after the push, so a
signature requirement is not an admission policy. Built in: ``media-types`` (allowed manifest
media types and artifact types), ``max-size`` (the total bytes a manifest references),
``required-annotations``, and ``base-registries`` (the registries, e.g. this one's mirror
prefixes, an image may be built on).
"""

from __future__ import annotations

import abc
import dataclasses
import logging
from collections.abc import Mapping
from typing import Any

import gevent

from services.common import config_file, plugins
from services.common.patterns import matches_any, pattern_problem

GROUP = "wharf.admission"
INTERFACE = 1
log = logging.getLogger("wharf.gateway.admission")


@dataclasses.dataclass(frozen=True)
class Candidate:
    """What a push would store. Read-only: a policy decides, it does not change the push."""

    repository: str
    digest: str
    media_type: str
    artifact_type: str
    size: int
    tags: tuple[str, ...]
    annotations: Mapping[str, str]
    # Bytes of the blobs and manifests it references, as its descriptors declare them.
    referenced_bytes: int
    subject: str
    account: str


# How long a policy may take to answer before the push is refused (fail closed). A policy runs on
# the gateway's request path; one that waits on a peer through gevent's sockets is cut off here
# (one that blocks without yielding holds its worker, which no timer can interrupt).
ADMIT_SECONDS = 10.0


class _TooSlow(Exception):
    """A policy's answer did not come within ADMIT_SECONDS."""


class AdmissionPolicy(abc.ABC):
    @classmethod
    @abc.abstractmethod
    def from_options(cls, options: Mapping[str, Any]) -> AdmissionPolicy:
        """The policy, from its ``options`` mapping."""

    @abc.abstractmethod
    def admit(self, candidate: Candidate) -> str | None:
        """None to allow; a message to refuse with DENIED."""


@dataclasses.dataclass(frozen=True)
class _Rule:
    name: str
    policy: AdmissionPolicy
    patterns: tuple[str, ...]

    def applies(self, repository: str) -> bool:
        return not self.patterns or matches_any(self.patterns, repository)


class Admission:
    """The configured policies, in order (none: every push is admitted)."""

    def __init__(self, rules: tuple[_Rule, ...] = ()) -> None:
        self._rules = rules

    @property
    def enabled(self) -> bool:
        return bool(self._rules)

    def refusal(self, candidate: Candidate) -> str | None:
        for rule in self._rules:
            if not rule.applies(candidate.repository):
                continue
            try:
                with gevent.Timeout(ADMIT_SECONDS, _TooSlow):
                    message = rule.policy.admit(candidate)
            except _TooSlow:
                log.error("an admission policy took too long", extra={"fields": {"policy": rule.name}})
                return f"admission policy {rule.name} did not answer within {ADMIT_SECONDS:g} s; the push was refused"
            except Exception:  # fail closed: a broken policy must not wave pushes through
                log.exception("an admission policy failed", extra={"fields": {"policy": rule.name}})
                return f"admission policy {rule.name} failed; the push was refused"
            if message is None:
                continue
            if not isinstance(message, str) or not message:
                # Fail closed here too: False, 0 or "" read as "no objection" let pushes through.
                log.error("an admission policy answered neither None nor a message",
                          extra={"fields": {"policy": rule.name, "answer": type(message).__name__}})
                return (f"admission policy {rule.name} answered {type(message).__name__}, not None or a message; "
                        "the push was refused")
            return f"{rule.name}: {message[:500]}"
        return None


def policy_class(name: str) -> type[AdmissionPolicy]:
    return plugins.load_class(GROUP, name, AdmissionPolicy)


def load(environ: Mapping[str, str]) -> Admission:
    """The ``admission`` section's policies, built; ConfigFileError or PluginError naming what is wrong."""
    section = config_file.section(environ, "admission")
    if section is None:
        return Admission()
    entries = section.get("policies") if isinstance(section, dict) else None
    if not isinstance(entries, list) or set(section) - {"policies"}:
        raise config_file.ConfigFileError("admission: expected a mapping with one key, policies: a list")
    rules = []
    for index, entry in enumerate(entries):
        where = f"admission.policies[{index}]"
        if not isinstance(entry, dict) or not isinstance(entry.get("name"), str) \
                or set(entry) - {"name", "repositories", "options"}:
            raise config_file.ConfigFileError(f"{where}: expected name, and optionally repositories and options")
        repositories = entry.get("repositories") or []
        options = entry.get("options") or {}
        if not isinstance(repositories, list) or not all(isinstance(r, str) for r in repositories) \
                or not isinstance(options, dict):
            raise config_file.ConfigFileError(f"{where}: repositories is a list of patterns, options a mapping")
        problems = [f"{r!r}: {problem}" for r in repositories if (problem := pattern_problem(r))]
        if problems:
            raise config_file.ConfigFileError(f"{where}: repositories: {'; '.join(problems)}")
        found = policy_class(entry["name"])
        try:
            policy = plugins.build(f"{GROUP} {entry['name']!r} ({where})", AdmissionPolicy, found.from_options,
                                   options)
        except ValueError as exc:
            raise config_file.ConfigFileError(f"{where} ({entry['name']}): {exc}") from None
        rules.append(_Rule(entry["name"], policy, tuple(repositories)))
    return Admission(tuple(rules))


# -- the built-in policies ------------------------------------------------------------------------


def _strings(options: Mapping[str, Any], key: str) -> frozenset[str]:
    value = options.get(key, [])
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ValueError(f"{key} must be a list of text")
    return frozenset(value)


class MediaTypes(AdmissionPolicy):
    """``allow``: manifest media types pushed here; ``artifact_types``: allowed artifact types
    (a manifest with none passes: an OCI image manifest without one has its config's media type)."""

    wharf_interface = INTERFACE

    def __init__(self, allow: frozenset[str], artifact_types: frozenset[str]) -> None:
        self._allow = allow
        self._artifact_types = artifact_types

    @classmethod
    def from_options(cls, options: Mapping[str, Any]) -> MediaTypes:
        if set(options) - {"allow", "artifact_types"}:
            raise ValueError("options are allow and artifact_types")
        return cls(_strings(options, "allow"), _strings(options, "artifact_types"))

    def admit(self, candidate: Candidate) -> str | None:
        if self._allow and candidate.media_type not in self._allow:
            return f"manifests of type {candidate.media_type} are not accepted here"
        if self._artifact_types and candidate.artifact_type and candidate.artifact_type not in self._artifact_types:
            return f"artifacts of type {candidate.artifact_type} are not accepted here"
        return None


class MaxSize(AdmissionPolicy):
    """``bytes``: the most a manifest may reference in all (its layers, config, children)."""

    wharf_interface = INTERFACE

    def __init__(self, limit: int) -> None:
        self._limit = limit

    @classmethod
    def from_options(cls, options: Mapping[str, Any]) -> MaxSize:
        limit = options.get("bytes")
        if type(limit) is not int or limit <= 0 or set(options) - {"bytes"}:
            raise ValueError("options: bytes, a whole number above 0")
        return cls(limit)

    def admit(self, candidate: Candidate) -> str | None:
        if candidate.referenced_bytes > self._limit:
            return f"the image references {candidate.referenced_bytes} bytes; the limit here is {self._limit}"
        return None


class RequiredAnnotations(AdmissionPolicy):
    """``keys``: annotations every manifest must carry (an index's or an image manifest's own)."""

    wharf_interface = INTERFACE

    def __init__(self, keys: frozenset[str]) -> None:
        self._keys = keys

    @classmethod
    def from_options(cls, options: Mapping[str, Any]) -> RequiredAnnotations:
        keys = _strings(options, "keys")
        if not keys or set(options) - {"keys"}:
            raise ValueError("options: keys, a list of annotation names")
        return cls(keys)

    def admit(self, candidate: Candidate) -> str | None:
        missing = sorted(self._keys - set(candidate.annotations))
        return f"annotations required here: {', '.join(missing)}" if missing else None


BASE_NAME = "org.opencontainers.image.base.name"


def normalise_reference(reference: str) -> str:
    """A reference as docker reads it, with its registry: ``alpine`` is ``docker.io/library/alpine``,
    ``user/app`` is ``docker.io/user/app``; a first component with a dot or a port, or
    ``localhost``, is a registry. The host is compared in lower case."""
    first, _, rest = reference.partition("/")
    if not rest:
        return f"docker.io/library/{first}"
    if "." in first or ":" in first or first == "localhost":
        return f"{first.lower()}/{rest}"
    return f"docker.io/{reference}"


class BaseRegistries(AdmissionPolicy):
    """``allow``: where images may be built from, as registry hosts or host/path prefixes (a
    mirror's prefix here, e.g. ``registry.example.com/dockerhub``), matched against the image's
    ``org.opencontainers.image.base.name`` annotation (BuildKit and ``oras`` write it); ``require``
    (default false): refuse images that do not name their base."""

    wharf_interface = INTERFACE

    def __init__(self, allow: tuple[str, ...], require: bool) -> None:
        self._allow = allow
        self._require = require

    @classmethod
    def from_options(cls, options: Mapping[str, Any]) -> BaseRegistries:
        allow = _strings(options, "allow")
        require = options.get("require", False)
        if not allow or not isinstance(require, bool) or set(options) - {"allow", "require"}:
            raise ValueError("options: allow, a list of registries or registry/path prefixes; require, true or false")
        if any(not entry.strip("/") or any(c.isspace() for c in entry) for entry in allow):
            raise ValueError("allow: registry names or prefixes without spaces")
        prefixes = tuple(sorted({normalise_reference(entry.strip("/")) if "/" in entry.strip("/")
                                 else entry.strip("/").lower() for entry in allow}))
        return cls(prefixes, require)

    def admit(self, candidate: Candidate) -> str | None:
        base = candidate.annotations.get(BASE_NAME, "")
        if not base:
            return f"images here must name their base image ({BASE_NAME})" if self._require else None
        name = base.split("@", 1)[0]
        if ":" in name.rsplit("/", 1)[-1] and "/" in name:  # a tag, not a registry's port
            name = name.rsplit(":", 1)[0]
        elif "/" not in name:
            name = name.split(":", 1)[0]
        name = normalise_reference(name)
        if any(name == prefix or name.startswith(prefix + "/") for prefix in self._allow):
            return None
        return f"base image {base[:200]!r} is not from an allowed registry ({', '.join(self._allow)})"
