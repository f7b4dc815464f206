"""Reading a feature's YAML section (the mirrors' upstreams, the event endpoints) with line numbers.

A section comes from its own file (``WHARF_<SECTION>_FILE``) or from ``<section>:`` in
``WHARF_CONFIG`` (services/common/config_file.py). Every mistake is reported at once, one line
each, naming the file, the line and the place in the section, so an operator fixes them all in
one go. The YAML is *composed* (nodes keep their marks) rather than loaded for those line numbers;
values are built with the safe constructor only.
"""

from __future__ import annotations

import pathlib
import re
from collections.abc import Callable, Mapping
from typing import Any

import yaml
from yaml.constructor import SafeConstructor

from services.common import config_file

NULL = "tag:yaml.org,2002:null"
_DURATION_RE = re.compile(r"([0-9]+(?:\.[0-9]+)?)(ms|[smhd])")
_SECONDS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400}
_SIZE_RE = re.compile(r"([0-9]+(?:\.[0-9]+)?) ?([a-z]*)")
_BYTES = {"": 1, "b": 1, **{f"{p}b": 1000 ** n for n, p in enumerate("kmgt", 1)},
          **{f"{p}ib": 1024 ** n for n, p in enumerate("kmgt", 1)}}


class Check:
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

    def fields(self, keys: dict[Any, tuple[Any, Any]], where: str,
               parsers: Mapping[str, Callable[[Any], Any]]) -> dict[str, Any]:
        """Each key's value through its parser; a problem for an unknown key, an empty value, a
        value its parser refuses (ValueError) or a tag the safe loader does not know."""
        fields: dict[str, Any] = {}
        for name, (key, value) in keys.items():
            if name not in parsers:
                self.problem(key, where, f"{name} is not a key here (expected one of {', '.join(parsers)})")
            elif value.tag == NULL:
                self.problem(value, f"{where}.{name}", "has no value")
            else:
                try:
                    fields[name] = parsers[name](self.constructor.construct_object(value, deep=True))
                except ValueError as exc:
                    self.problem(value, f"{where}.{name}", str(exc))
                except yaml.YAMLError:  # !!python/... and other tags the safe loader refuses
                    self.problem(value, f"{where}.{name}", f"{value.tag} is not a plain YAML value")
        return fields

    def listing(self, node: Any, key: str, error: type[config_file.ConfigFileError]) -> list[Any]:
        """The items of the section's one top-level key ``key`` (a list); [] when absent."""
        top = self.mapping(node, "") if node is not None and node.tag != NULL else {}
        for name, (found, _) in (top or {}).items():
            if name != key:
                self.problem(found, "", f"{name} is not a key here (expected {key})")
        entries = (top or {}).get(key, (None, None))[1]
        if entries is None or entries.tag == NULL:
            return []
        if not isinstance(entries, yaml.SequenceNode):
            self.problem(entries, key, f"expected a list of {key}")
            return []
        return list(entries.value)


def read_text(path: pathlib.Path) -> str:
    """The file's text, or OSError (for a file that is not UTF-8 too: one message covers both)."""
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise OSError(0, "not UTF-8 text") from None


def _compose(what: str, path: str, error: type[config_file.ConfigFileError]) -> Any:
    try:
        return yaml.compose(read_text(pathlib.Path(path)), Loader=yaml.SafeLoader)
    except OSError as exc:
        raise error(f"{what}={path!r}: cannot read it ({exc.strerror})") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        raise error(f"{what}={path!r}: not valid YAML" + (f" at line {mark.line + 1}" if mark else "")) from None


def locate(environ: Mapping[str, str], section: str,
           error: type[config_file.ConfigFileError]) -> tuple[Check, Any] | None:
    """The section's node and a Check naming where it came from; None when neither file is set.
    The node is None when ``WHARF_CONFIG`` has no such section."""
    own_variable = f"WHARF_{section.upper()}_FILE"
    own, path = environ.get(own_variable, ""), environ.get(config_file.VARIABLE, "")
    if own:
        return Check(own_variable, own, ""), _compose(own_variable, own, error)
    if not path:
        return None
    document = _compose(config_file.VARIABLE, path, error)
    pairs = document.value if isinstance(document, yaml.MappingNode) else []
    return Check(config_file.VARIABLE, path, section), next((v for k, v in pairs if k.value == section), None)


def parse_duration(text: str) -> float:
    """Seconds in ``500ms``, ``30s``, ``5m``, ``1.5h``, ``1d`` or ``0``; ValueError otherwise (a bare
    number other than 0 too: seconds or minutes would be a guess)."""
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


def human_size(size: float) -> str:
    """Bytes as people read them: ``512 B``, ``3.0 MiB`` (powers of 1024, as ``parse_size`` reads ``MiB``)."""
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{size} B"


def text(value: Any) -> str:
    if not isinstance(value, str) or not value:
        raise ValueError(f"expected text, not {value!r}")
    return value


def flag(value: Any) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"{value!r} is not true or false")
    return value


def duration(value: Any) -> float:
    if type(value) in (int, float) and value == 0:
        return 0.0
    try:
        return parse_duration(text(value))
    except ValueError:
        raise ValueError(f"{value!r} is not a duration like 30s, 5m, 1h") from None


def whole(value: Any, low: int = 0, high: int = 2**31) -> int:
    if type(value) is not int or not low <= value <= high:
        raise ValueError(f"{value!r} is not a whole number from {low} to {high}")
    return value
