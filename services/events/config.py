"""Where events go: the ``events`` section, in the shape of Distribution's ``notifications``.

The section comes from its own file, ``WHARF_EVENTS_FILE``, or else from ``events:`` in
``WHARF_CONFIG``. Its ``endpoints`` list reads like Distribution's ``notifications.endpoints``, so
an existing configuration carries over; Wharf adds the keys after the blank line::

    endpoints:
      - name: ci                              # letters, digits, . _ -; names the cursor and the metrics
        url: https://ci.example.com/hook      # http(s)://host[:port]/path
        headers:
          Authorization: [Bearer xyz]         # a list of values per header, as in Distribution
        timeout: 5s                           # per delivery (default 5s)
        threshold: 3                          # failures in a row before backing off (default 3)
        backoff: 1s                           # the first backoff; doubles, up to max_backoff (default 1s)
        ignoredmediatypes: [application/octet-stream]
        ignore:
          mediatypes: [application/vnd.oci.image.config.v1+json]
          actions: [pull]
        disabled: false

        secret_file: /run/secrets/ci-hook     # HMAC-SHA256 key (or secret: inline); X-Wharf-Signature-256
        format: distribution                  # or cloudevents (CloudEvents 1.0, structured batch)
        sink: webhook                         # or an installed wharf.events extension; its settings in options:
        max_backoff: 1m
        attempts: 10                          # failed deliveries of an event before it is dead-lettered
        backlog: 100000                       # events waiting past which the oldest are dead-lettered ...
        max_age: 24h                          # ... and so are events older than this (0: no age limit)
        batch: 50                             # events per delivery, at most
        pull_sample: 1.0                      # the share of pulls delivered (0: none)

A mistake stops start-up with one line per problem, naming the file and the line. Secrets never
appear in a message or a repr.
"""

from __future__ import annotations

import dataclasses
import pathlib
import re
import urllib.parse
from collections.abc import Mapping
from typing import Any

from services.common import config_file, yaml_section
from services.common.yaml_section import duration, flag, read_text, text, whole

SECTION = "events"
ACTIONS = ("push", "pull", "mount", "delete")
FORMATS = ("distribution", "cloudevents")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}\Z")
_HEADER = re.compile(r"^[A-Za-z0-9!#$%&'*+.^_`|~-]{1,64}\Z")


class EventsError(config_file.ConfigFileError):
    """The section is unreadable or wrong: one line per problem, each naming the file and line."""


@dataclasses.dataclass(frozen=True)
class Endpoint:
    name: str
    url: str = ""
    headers: tuple[tuple[str, str], ...] = dataclasses.field(default=(), repr=False)
    timeout: float = 5.0
    threshold: int = 3
    backoff: float = 1.0
    max_backoff: float = 60.0
    ignored_media_types: frozenset[str] = frozenset()
    ignored_actions: frozenset[str] = frozenset()
    disabled: bool = False
    secret: bytes = dataclasses.field(default=b"", repr=False)
    format: str = "distribution"
    attempts: int = 10
    backlog: int = 100_000
    max_age: float = 86_400.0
    batch: int = 50
    pull_sample: float = 1.0
    sink: str = "webhook"
    options: dict[str, Any] = dataclasses.field(default_factory=dict, repr=False)

    @property
    def pull_share(self) -> float:
        """The share of pulls this endpoint receives (0 when it ignores them)."""
        return 0.0 if "pull" in self.ignored_actions else self.pull_sample

    def wants(self, action: str, media_type: str) -> bool:
        return action not in self.ignored_actions and media_type not in self.ignored_media_types


@dataclasses.dataclass(frozen=True)
class Events:
    endpoints: tuple[Endpoint, ...] = ()

    @property
    def active(self) -> tuple[Endpoint, ...]:
        return tuple(e for e in self.endpoints if not e.disabled)

    @property
    def enabled(self) -> bool:
        return bool(self.active)

    @property
    def pull_share(self) -> float:
        """The largest share of pulls an endpoint wants: the gateways record that many."""
        return max((e.pull_share for e in self.active), default=0.0)


def load(environ: Mapping[str, str], secrets: bool = True) -> Events:
    """The endpoints (none without a section), or EventsError naming every problem. ``secrets=False``
    leaves secret files unread (the gateway and the metadata service only ask whether events are on)."""
    found, problems_found = _load(environ, secrets)
    if problems_found:
        raise EventsError("\n".join(problems_found))
    return found


def problems(environ: Mapping[str, str]) -> list[str]:
    try:
        return _load(environ)[1]
    except config_file.ConfigFileError as exc:
        return str(exc).splitlines()


def _load(environ: Mapping[str, str], secrets: bool = True) -> tuple[Events, list[str]]:
    located = yaml_section.locate(environ, SECTION, EventsError)
    if located is None:
        return Events(), []
    check, node = located
    seen: list[Endpoint] = []
    for index, entry in enumerate(check.listing(node, "endpoints", EventsError)):
        where = f"endpoints[{index}]"
        endpoint = _endpoint(check, entry, where, pathlib.Path(check.path).parent, secrets)
        if endpoint is not None:
            if any(other.name == endpoint.name for other in seen):
                check.problem(entry, f"{where}.name", f"{endpoint.name!r} names another endpoint too")
            seen.append(endpoint)
    return Events(tuple(seen)), check.found


def _name(value: Any) -> str:
    if not _NAME.match(text(value)):
        raise ValueError(f"{value!r} is not a name (letters, digits, . _ -; at most 64)")
    return str(value)


def _url(value: Any) -> str:
    given = text(value)
    try:
        parts = urllib.parse.urlsplit(given)
        valid = parts.scheme in ("http", "https") and bool(parts.hostname) and (parts.port or 0) >= 0
    except ValueError:
        valid = False
    if not valid or not given.isprintable() or " " in given or "#" in given or len(given) > 2048:
        raise ValueError("is not a URL like https://hooks.example.com/registry")
    if parts.username or parts.password:  # not repeated: it may hold a password
        raise ValueError("must not hold a user name or password (use headers or secret_file)")
    return given


def _headers(value: Any) -> tuple[tuple[str, str], ...]:
    if not isinstance(value, dict):
        raise ValueError("expected a mapping of header names to lists of values")
    found: list[tuple[str, str]] = []
    for name, values in value.items():
        if not isinstance(name, str) or not _HEADER.match(name):
            raise ValueError(f"{name!r} is not a header name")
        for item in values if isinstance(values, list) else [values]:
            if not isinstance(item, str) or not item.isprintable() or len(item) > 4096:
                raise ValueError(f"header {name}: values must be printable text")  # the value may be a secret
            found.append((name, item))
    return tuple(found)


def _strings(value: Any) -> frozenset[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise ValueError("expected a list of text")
    return frozenset(value)


def _ignore(value: Any) -> dict[str, frozenset[str]]:
    if not isinstance(value, dict) or set(value) - {"mediatypes", "actions"}:
        raise ValueError("expected mediatypes and/or actions")
    actions = _strings(value.get("actions", []))
    if actions - set(ACTIONS):
        raise ValueError(f"actions are {', '.join(ACTIONS)}")
    return {"mediatypes": _strings(value.get("mediatypes", [])), "actions": actions}


def _options(value: Any) -> dict[str, Any]:
    if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
        raise ValueError("expected a mapping of option names to values (the sink's own settings)")
    return dict(value)


def _choice(value: Any) -> str:
    if value not in FORMATS:
        raise ValueError(f"{value!r}: expected {' or '.join(FORMATS)}")
    return str(value)


def _share(value: Any) -> float:
    if type(value) not in (int, float) or not 0 <= value <= 1:
        raise ValueError(f"{value!r} is not a share from 0 to 1")
    return float(value)


def _positive_duration(value: Any) -> float:
    seconds = duration(value)
    if seconds <= 0:
        raise ValueError(f"{value!r} must be longer than 0")
    return seconds


_PARSERS = {"name": _name, "url": _url, "headers": _headers, "timeout": _positive_duration,
            "threshold": lambda v: whole(v, 0, 1000), "backoff": _positive_duration,
            "ignoredmediatypes": _strings, "ignore": _ignore, "disabled": flag, "secret": text, "secret_file": text,
            "format": _choice, "max_backoff": _positive_duration, "attempts": lambda v: whole(v, 1, 1000),
            "backlog": lambda v: whole(v, 1, 100_000_000), "max_age": duration, "batch": lambda v: whole(v, 1, 1000),
            "pull_sample": _share, "sink": _name, "options": _options}
# Distribution's keys that mean something else here or nothing at all (accepted, so that its
# configurations carry over).
_ACCEPTED = {"queuepurge": str}


def _endpoint(check: yaml_section.Check, node: Any, where: str, base: pathlib.Path,
              secrets: bool) -> Endpoint | None:
    keys = check.mapping(node, where)
    if keys is None:
        return None
    before = len(check.found)
    fields = check.fields({k: v for k, v in keys.items() if k not in _ACCEPTED}, where, _PARSERS)
    for name in ("name", "url") if fields.get("sink", "webhook") == "webhook" else ("name",):
        if name not in keys:
            check.problem(node, where, f"{name} is missing")
    if "secret" in keys and "secret_file" in keys:
        check.problem(node, where, "secret and secret_file: give one")
    ignore = fields.pop("ignore", {})
    fields["ignored_media_types"] = fields.pop("ignoredmediatypes", frozenset()) | ignore.get("mediatypes", frozenset())
    fields["ignored_actions"] = ignore.get("actions", frozenset())
    secret_file = fields.pop("secret_file", None)
    if "secret" in fields:
        fields["secret"] = fields["secret"].encode()
    elif secret_file and secrets:
        try:
            fields["secret"] = read_text(base / secret_file).strip().encode()
            if not fields["secret"]:
                check.problem(keys["secret_file"][1], f"{where}.secret_file", f"{secret_file!r} is empty")
        except OSError as exc:
            check.problem(keys["secret_file"][1], f"{where}.secret_file",
                          f"cannot read {secret_file!r} ({exc.strerror})")
    if len(check.found) != before:
        return None
    return Endpoint(**fields)
