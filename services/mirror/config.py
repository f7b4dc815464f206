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
import re
import urllib.parse
from collections.abc import Mapping
from typing import Any

import yaml
from yaml.constructor import SafeConstructor

from services.common import config_file, names

OWN_FILE = "WHARF_MIRRORS_FILE"
SECTION = "mirrors"
DEFAULT_TAG_TTL = 300.0
# Docker Hub keeps official images under library/: "alpine" there is "library/alpine".
DOCKER_HUB_HOSTS = frozenset({"docker.io", "registry-1.docker.io", "index.docker.io"})
_DURATION_RE = re.compile(r"([0-9]+(?:\.[0-9]+)?)([smhd])")
_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
_SIZE_RE = re.compile(r"([0-9]+(?:\.[0-9]+)?) ?([a-z]*)")
_BYTES = {"": 1, "b": 1, **{f"{p}b": 1000 ** n for n, p in enumerate("kmgt", 1)},
          **{f"{p}ib": 1024 ** n for n, p in enumerate("kmgt", 1)}}
_NULL = "tag:yaml.org,2002:null"


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


def parse_duration(text: str) -> float:
    """Seconds in ``30s``, ``5m``, ``1.5h``, ``1d`` or ``0``; ValueError otherwise (a bare number
    other than 0 too: seconds or minutes would be a guess)."""
    match = _DURATION_RE.fullmatch(text.strip())
    if match is None and text.strip() != "0":
        raise ValueError(text)
    return float(match[1]) * _SECONDS[match[2]] if match else 0.0


def parse_size(text: str) -> int:
    """Bytes in ``500MB`` (powers of 1000), ``50GiB`` (powers of 1024) or ``1024``; ValueError otherwise."""
    match = _SIZE_RE.fullmatch(text.strip().lower())
    if match is None or match[2] not in _BYTES:
        raise ValueError(text)
    return int(float(match[1]) * _BYTES[match[2]])


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


class _Check:
    """Collects problems, each naming the file, the line and the place in the section."""

    def __init__(self, what: str, path: str, label: str) -> None:
        self.what, self.path, self.label = what, path, label
        self.found: list[str] = []
        self.constructor = SafeConstructor()

    def problem(self, node: Any, where: str, text: str) -> None:
        place = ".".join(part for part in (self.label, where) if part)
        self.found.append(f"{self.what}={self.path!r} line {node.start_mark.line + 1}: "
                          + (f"{place}: {text}" if place else text))

    def mapping(self, node: Any, where: str) -> dict[Any, tuple[Any, Any]] | None:
        """Key -> (key node, value node), or None (and a problem) when ``node`` is no mapping."""
        if not isinstance(node, yaml.MappingNode):
            self.problem(node, where, "expected a mapping of keys to values")
            return None
        keys: dict[Any, tuple[Any, Any]] = {}
        for key, value in node.value:
            name = key.value if isinstance(key, yaml.ScalarNode) else repr(key.value)
            if name in keys:
                self.problem(key, where, f"{name} is given twice")
            keys[name] = (key, value)
        return keys


def _read(path: pathlib.Path) -> str:
    """The file's text, or OSError (for a file that is not UTF-8 too: one message covers both)."""
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise OSError(0, "not UTF-8 text") from None


def _compose(what: str, path: str) -> Any:
    try:
        return yaml.compose(_read(pathlib.Path(path)), Loader=yaml.SafeLoader)
    except OSError as exc:
        raise MirrorsError(f"{what}={path!r}: cannot read it ({exc.strerror})") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        raise MirrorsError(f"{what}={path!r}: not valid YAML" + (f" at line {mark.line + 1}" if mark else "")) from None


def _load(environ: Mapping[str, str], secrets: bool = True) -> tuple[Mirrors, list[str]]:
    own, path = environ.get(OWN_FILE, ""), environ.get(config_file.VARIABLE, "")
    if own:
        check, node = _Check(OWN_FILE, own, ""), _compose(OWN_FILE, own)
    elif path:
        check, document = _Check(config_file.VARIABLE, path, SECTION), _compose(config_file.VARIABLE, path)
        pairs = document.value if isinstance(document, yaml.MappingNode) else []
        node = next((value for key, value in pairs if key.value == SECTION), None)
    else:
        return Mirrors(), []
    top = check.mapping(node, "") if node is not None and node.tag != _NULL else {}
    for name, (key, _) in (top or {}).items():
        if name != "upstreams":
            check.problem(key, "", f"{name} is not a key here (expected upstreams)")
    entries = (top or {}).get("upstreams", (None, None))[1]
    if entries is None or entries.tag == _NULL:
        return Mirrors(), check.found
    if not isinstance(entries, yaml.SequenceNode):
        check.problem(entries, "upstreams", "expected a list of upstreams")
        return Mirrors(), check.found
    seen: list[Upstream] = []
    for index, entry in enumerate(entries.value):
        where = f"upstreams[{index}]"
        found = _upstream(check, entry, where, pathlib.Path(check.path).parent, secrets)
        if found is not None:
            _against_earlier(check, where, *found, seen)
            seen.append(found[0])
    return Mirrors(tuple(seen)), check.found


def _against_earlier(check: _Check, where: str, upstream: Upstream, keys: dict[Any, Any], seen: list[Upstream]) -> None:
    """One prefix per upstream, none inside another (so ``route`` is unambiguous); one default."""
    for index, other in enumerate(seen):
        a, b = other.prefix, upstream.prefix
        if a == b or a.startswith(b + "/") or b.startswith(a + "/"):
            check.problem(keys["prefix"][1], f"{where}.prefix",
                          f"{b!r} {'is also' if a == b else 'overlaps'} upstreams[{index}]'s prefix {a!r}")
        if upstream.default and other.default:
            check.problem(keys["default"][1], f"{where}.default", f"upstreams[{index}] is the default")


def _text(value: Any) -> str:
    if not isinstance(value, str) or not value:
        raise ValueError(f"expected text, not {value!r}")
    return value


def _prefix(value: Any) -> str:
    if not names.is_valid_name(_text(value)):
        raise ValueError(f"{value!r} is not a repository-name prefix (lower-case components like docker.io or quay.io)")
    return str(value)


def _url(value: Any) -> str:
    text = _text(value)
    if "@" in text:  # not repeated: it may hold a password
        raise ValueError("must not hold a user name or password (username and password_file are for that)")
    try:
        parts = urllib.parse.urlsplit(text)
        valid = parts.scheme in ("http", "https") and bool(parts.hostname) and (parts.port or 0) >= 0 \
            and text.isprintable() and " " not in text
    except ValueError:  # a port out of range, a bad IPv6 address
        valid = False
    if not valid:
        raise ValueError(f"{text!r} is not a URL like https://registry-1.docker.io")
    if parts.path not in ("", "/") or "?" in text or "#" in text:
        raise ValueError(f"{text!r} must be scheme://host[:port] only (no path, query or fragment)")
    return f"{parts.scheme}://{parts.netloc.lower()}"


def _flag(value: Any) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"{value!r} is not true or false")
    return value


def _duration(value: Any) -> float:
    if type(value) in (int, float) and value == 0:
        return 0.0
    try:
        return parse_duration(_text(value))
    except ValueError:
        raise ValueError(f"{value!r} is not a duration like 30s, 5m, 1h") from None


def _size(value: Any) -> int:
    try:
        size = value if type(value) is int else parse_size(_text(value))
    except ValueError:
        size = 0
    if size <= 0:
        raise ValueError(f"{value!r} is not a size like 50GiB, 500MB or a number of bytes")
    return int(size)


def _password(file: pathlib.Path) -> str:
    """The file's text less one trailing newline; ValueError naming the file (never its text)."""
    try:
        text = _read(file)
    except OSError as exc:
        raise ValueError(f"cannot read {str(file)!r} ({exc.strerror})") from None
    password = text[:-2] if text.endswith("\r\n") else text.removesuffix("\n")
    if not password:
        raise ValueError(f"{str(file)!r} is empty")
    return password


_PARSERS = {"prefix": _prefix, "url": _url, "username": _text, "password_file": _text, "tag_ttl": _duration,
            "insecure": _flag, "default": _flag, "anonymous": _flag, "size_limit": _size}


def _upstream(check: _Check, node: Any, where: str, base: pathlib.Path,
              secrets: bool = True) -> tuple[Upstream, dict[Any, Any]] | None:
    """The entry as an Upstream (and its keys' nodes), or None after noting every problem it has."""
    keys = check.mapping(node, where)
    if keys is None:
        return None
    before, fields = len(check.found), dict[str, Any]()
    for name, (key, value) in keys.items():
        if name not in _PARSERS:
            check.problem(key, where, f"{name} is not a key here (expected one of {', '.join(_PARSERS)})")
        elif value.tag == _NULL:
            check.problem(value, f"{where}.{name}", "has no value")
        else:
            try:
                fields[name] = _PARSERS[name](check.constructor.construct_object(value, deep=True))
            except ValueError as exc:
                check.problem(value, f"{where}.{name}", str(exc))
            except yaml.YAMLError:  # a tag the safe loader does not know (!!python/...)
                check.problem(value, f"{where}.{name}", f"{value.tag} is not a plain YAML value")
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
