"""The upstream registries the pull-through cache mirrors: the ``mirrors`` section, checked once at start-up.

The section comes from its own file, ``WHARF_MIRRORS_FILE``, or else from ``mirrors:`` in
``WHARF_CONFIG`` (the rule of :func:`services.common.config_file.section`)::

    upstreams:
      - prefix: docker.io                   # docker.io/library/alpine here is library/alpine there
        url: https://registry-1.docker.io   # scheme://host[:port]; http only with insecure: true
        default: true                       # where names under no prefix go (Docker's registry-mirrors)
        anonymous: true                     # anonymous clients may pull through it (token mode)
        tag_ttl: 5m                         # how long a cached tag is trusted (0: revalidate every pull)
        size_limit: 50GiB                   # for eviction; bytes, or B/KB/MB/GB/TB, KiB/MiB/GiB/TiB
      - prefix: ghcr.io
        url: https://ghcr.io
        username: robot                     # with password_file: both or neither
        password_file: /run/secrets/ghcr    # read at start; a relative path is from the YAML file's folder

A mistake stops start-up with one line per problem, each naming the file and the line. The YAML is
composed (not just loaded) for those line numbers. A password never appears in a message or a repr.
"""

from __future__ import annotations

import dataclasses
import pathlib
import urllib.parse
from collections.abc import Mapping
from typing import Any

from services.common import config_file, names, yaml_section
from services.common.yaml_section import duration, flag, parse_duration, parse_size, read_text, text

__all__ = ["parse_duration", "parse_size"]  # part of this module's interface (tests, earlier callers)

OWN_FILE = "WHARF_MIRRORS_FILE"
SECTION = "mirrors"
DEFAULT_TAG_TTL = 300.0
# Docker Hub keeps official images under library/: "alpine" there is "library/alpine".
DOCKER_HUB_HOSTS = frozenset({"docker.io", "registry-1.docker.io", "index.docker.io"})


class MirrorsError(config_file.ConfigFileError):
    """The section is unreadable or wrong: one line per problem, each naming the file and line."""


@dataclasses.dataclass(frozen=True)
class Upstream:
    """One mirrored registry: repository ``<prefix>/<name>`` here is ``<name>`` at ``url``."""

    prefix: str
    url: str
    username: str | None = None
    password: str | None = dataclasses.field(default=None, repr=False)
    tag_ttl: float = DEFAULT_TAG_TTL
    insecure: bool = False
    default: bool = False
    anonymous: bool = False
    size_limit: int | None = None

    @property
    def is_docker_hub(self) -> bool:
        return (urllib.parse.urlsplit(self.url).hostname or "") in DOCKER_HUB_HOSTS

    def remote_name(self, name: str) -> str:
        """``name`` as the upstream calls it (Docker Hub's one-component names are under ``library/``)."""
        return f"library/{name}" if self.is_docker_hub and "/" not in name else name


@dataclasses.dataclass(frozen=True)
class Mirrors:
    """Every upstream; empty (and not ``enabled``) when nothing is configured."""

    upstreams: tuple[Upstream, ...] = ()

    @property
    def enabled(self) -> bool:
        return bool(self.upstreams)

    @property
    def default_upstream(self) -> Upstream | None:
        return next((upstream for upstream in self.upstreams if upstream.default), None)

    def route(self, name: str) -> tuple[Upstream, str] | None:
        """The upstream whose prefix ``name`` is under, and the name there; None when under none.
        At most one matches: no prefix is inside another."""
        for upstream in self.upstreams:
            if name.startswith(upstream.prefix + "/"):
                return upstream, upstream.remote_name(name[len(upstream.prefix) + 1:])
        return None

    def route_default(self, name: str) -> tuple[Upstream, str] | None:
        """The default upstream and the name there, for a name under no prefix (the caller decides
        first that it is not a local repository); None without a default."""
        upstream = self.default_upstream
        return (upstream, upstream.remote_name(name)) if upstream is not None else None

    def is_mirrored(self, name: str) -> bool:
        """Whether ``name`` is under a prefix (the default upstream is not considered)."""
        return self.route(name) is not None


def load(environ: Mapping[str, str], secrets: bool = True) -> Mirrors:
    """The configured upstreams (none without a section), or MirrorsError naming every problem.
    ``secrets=False`` leaves the password files unread (the gateway and the auth service route by
    prefix and never talk to an upstream: they need no credentials mounted)."""
    mirrors, found = _load(environ, secrets)
    if found:
        raise MirrorsError("\n".join(found))
    return mirrors


def problems(environ: Mapping[str, str]) -> list[str]:
    """Every problem, one line each (empty: all good), like ``settings.problems``: for the runner's
    check before anything starts."""
    try:
        return _load(environ)[1]
    except config_file.ConfigFileError as exc:
        return str(exc).splitlines()


def _load(environ: Mapping[str, str], secrets: bool = True) -> tuple[Mirrors, list[str]]:
    located = yaml_section.locate(environ, SECTION, MirrorsError)
    if located is None:
        return Mirrors(), []
    check, node = located
    seen: list[Upstream] = []
    for index, entry in enumerate(check.listing(node, "upstreams", MirrorsError)):
        where = f"upstreams[{index}]"
        found = _upstream(check, entry, where, pathlib.Path(check.path).parent, secrets)
        if found is not None:
            _against_earlier(check, where, *found, seen)
            seen.append(found[0])
    return Mirrors(tuple(seen)), check.found


def _against_earlier(check: yaml_section.Check, where: str, upstream: Upstream, keys: dict[Any, Any],
                     seen: list[Upstream]) -> None:
    """One prefix per upstream, none inside another (so ``route`` is unambiguous); one default."""
    for index, other in enumerate(seen):
        a, b = other.prefix, upstream.prefix
        if a == b or a.startswith(b + "/") or b.startswith(a + "/"):
            check.problem(keys["prefix"][1], f"{where}.prefix",
                          f"{b!r} {'is also' if a == b else 'overlaps'} upstreams[{index}]'s prefix {a!r}")
        if upstream.default and other.default:
            check.problem(keys["default"][1], f"{where}.default", f"upstreams[{index}] is the default")


def _prefix(value: Any) -> str:
    if not names.is_valid_name(text(value)):
        raise ValueError(f"{value!r} is not a repository-name prefix (lower-case components like docker.io or quay.io)")
    return str(value)


def _url(value: Any) -> str:
    given = text(value)
    if "@" in given:  # not repeated: it may hold a password
        raise ValueError("must not hold a user name or password (username and password_file are for that)")
    try:
        parts = urllib.parse.urlsplit(given)
        valid = parts.scheme in ("http", "https") and bool(parts.hostname) and (parts.port or 0) >= 0 \
            and given.isprintable() and " " not in given
    except ValueError:  # a port out of range, a bad IPv6 address
        valid = False
    if not valid:
        raise ValueError(f"{given!r} is not a URL like https://registry-1.docker.io")
    if parts.path not in ("", "/") or "?" in given or "#" in given:
        raise ValueError(f"{given!r} must be scheme://host[:port] only (no path, query or fragment)")
    return f"{parts.scheme}://{parts.netloc.lower()}"


def _size(value: Any) -> int:
    try:
        size = value if type(value) is int else parse_size(text(value))
    except ValueError:
        size = 0
    if size <= 0:
        raise ValueError(f"{value!r} is not a size like 50GiB, 500MB or a number of bytes")
    return int(size)


def _password(file: pathlib.Path) -> str:
    """The file's text less one trailing newline; ValueError naming the file (never its text)."""
    try:
        content = read_text(file)
    except OSError as exc:
        raise ValueError(f"cannot read {str(file)!r} ({exc.strerror})") from None
    password = content[:-2] if content.endswith("\r\n") else content.removesuffix("\n")
    if not password:
        raise ValueError(f"{str(file)!r} is empty")
    return password


_PARSERS = {"prefix": _prefix, "url": _url, "username": text, "password_file": text, "tag_ttl": duration,
            "insecure": flag, "default": flag, "anonymous": flag, "size_limit": _size}


def _upstream(check: yaml_section.Check, node: Any, where: str, base: pathlib.Path,
              secrets: bool = True) -> tuple[Upstream, dict[Any, Any]] | None:
    """The entry as an Upstream (and its keys' nodes), or None after noting every problem it has."""
    keys = check.mapping(node, where)
    if keys is None:
        return None
    before = len(check.found)
    fields = check.fields(keys, where, _PARSERS)
    for name in ("prefix", "url"):
        if name not in keys:
            check.problem(node, where, f"{name} is missing")
    if fields.get("url", "").startswith("http:") and not fields.get("insecure"):
        check.problem(keys["url"][1], f"{where}.url", "plain http needs insecure: true")
    if ("username" in keys) != ("password_file" in keys):
        check.problem(node, where, "username and password_file go together: give both or neither")
    elif "password_file" in fields and not secrets:
        fields.pop("password_file")
    elif "password_file" in fields:
        try:
            fields["password"] = _password(base / fields.pop("password_file"))
        except ValueError as exc:
            check.problem(keys["password_file"][1], f"{where}.password_file", str(exc))
    return (Upstream(**fields), keys) if len(check.found) == before else None
