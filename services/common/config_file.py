"""The optional configuration file, ``WHARF_CONFIG``: the same settings as the environment, in YAML.

Eighty-odd variables are hard to keep in a deployment, so every setting may also come from
one file. Its top-level keys are the variable names without ``WHARF_``, in lower case
(``port``, ``data_dir``, ``auth``, ``s3_endpoint``); a list stands for a comma-separated value.
The environment wins over the file. Every service reads the file itself (the runner passes
``WHARF_CONFIG`` on), and takes the keys its settings declare.

Features with structured configuration (the mirror's upstreams, event endpoints, policies)
read a **section** of this file, named after the feature (``mirrors:``, ``events:``,
``policy:``); the same section may instead come from its own file, named by
``WHARF_<SECTION>_FILE`` (``WHARF_MIRRORS_FILE``), which wins. :func:`section` is that rule.
"""

from __future__ import annotations

import pathlib
from collections.abc import Mapping
from typing import Any

VARIABLE = "WHARF_CONFIG"
# Top-level keys that are sections for features, not settings.
SECTIONS = ("mirrors", "events", "policy", "storage_options", "admission", "identity")


class ConfigFileError(ValueError):
    """The file cannot be read, is not YAML, or holds something that is not a setting."""


def _read(path: str, what: str) -> Any:
    import yaml

    try:
        text = pathlib.Path(path).read_text()
    except OSError as exc:
        raise ConfigFileError(f"{what}={path!r}: cannot read it ({exc.strerror})") from None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise ConfigFileError(f"{what}={path!r}: not valid YAML{where}") from None


def _value(key: str, value: Any, path: str) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float | str):
        return str(value)
    if isinstance(value, list) and all(isinstance(item, int | float | str) for item in value):
        return ",".join(str(item) for item in value)
    raise ConfigFileError(f"{VARIABLE}={path!r}: {key} must be a string, a number, true/false or a list of those")


def variables(environ: Mapping[str, str]) -> dict[str, str]:
    """The settings the file gives, as environment variables (empty without ``WHARF_CONFIG``)."""
    path = environ.get(VARIABLE, "")
    if not path:
        return {}
    document = _read(path, VARIABLE)
    if document is None:
        return {}
    if not isinstance(document, dict):
        raise ConfigFileError(f"{VARIABLE}={path!r}: expected a mapping of setting names to values")
    found: dict[str, str] = {}
    for key, value in document.items():
        if key in SECTIONS:
            continue
        if not isinstance(key, str) or not key.replace("_", "").isalnum() or key != key.lower():
            raise ConfigFileError(f"{VARIABLE}={path!r}: {key!r} is not a setting name (lower case, like port)")
        found["WHARF_" + key.upper()] = _value(key, value, path)
    return found


def merged(environ: Mapping[str, str]) -> dict[str, str]:
    """The environment over the file: what every settings object is loaded from."""
    return {**variables(environ), **environ}


def unknown_keys(environ: Mapping[str, str], known: set[str]) -> list[str]:
    """The file's keys that no service reads (a typo, most likely), one line each."""
    path = environ.get(VARIABLE, "")
    return [f"{VARIABLE}={path!r}: {var[len('WHARF_'):].lower()} is not a Wharf setting"
            for var in variables(environ) if var not in known]


def section(environ: Mapping[str, str], name: str) -> Any:
    """A feature's section: from ``WHARF_<NAME>_FILE`` when set, else ``name:`` in ``WHARF_CONFIG``,
    else None."""
    own = environ.get(f"WHARF_{name.upper()}_FILE", "")
    if own:
        return _read(own, f"WHARF_{name.upper()}_FILE")
    path = environ.get(VARIABLE, "")
    document = _read(path, VARIABLE) if path else None
    return document.get(name) if isinstance(document, dict) else None
