"""Typed settings read from environment variables, once, in each service's main.

Each service declares a frozen dataclass whose fields carry their variable name
and default in ``env(...)``; :func:`load` builds it from a mapping and fails
fast on a malformed value. Nothing reads the environment at import time.
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
import sys
import typing
from collections.abc import Mapping
from typing import Any, TypeVar

T = TypeVar("T")


class SettingsError(ValueError):
    """A variable is missing or malformed; the message names it."""


def env(var: str, default: Any = dataclasses.MISSING, doc: str = "", choices: tuple[str, ...] = ()) -> Any:
    """Declares a settings field read from ``var`` (one of ``choices`` when given)."""
    kwargs: dict[str, Any] = {"metadata": {"env": var, "doc": doc, "choices": choices}}
    if default is not dataclasses.MISSING:
        kwargs["default"] = default
    return dataclasses.field(**kwargs)


def _convert(var: str, raw: str, kind: Any) -> Any:
    if kind is bool:
        lowered = raw.strip().lower()
        if lowered in {"1", "true", "yes", "on"}:
            return True
        if lowered in {"0", "false", "no", "off", ""}:
            return False
        raise SettingsError(f"{var}={raw!r}: expected true or false")
    if kind in (int, float):
        try:
            return kind(raw)
        except ValueError:
            raise SettingsError(f"{var}={raw!r}: expected a number") from None
    if kind is pathlib.Path:
        return pathlib.Path(raw)
    if kind == tuple[str, ...]:
        return tuple(part.strip() for part in raw.split(",") if part.strip())
    return raw


def load(cls: type[T], environ: Mapping[str, str]) -> T:
    hints = typing.get_type_hints(cls)
    values: dict[str, Any] = {}
    for field in dataclasses.fields(cls):  # type: ignore[arg-type]
        var = field.metadata.get("env")
        if var is None:
            continue
        if var in environ:
            values[field.name] = _convert(var, environ[var], hints[field.name])
            choices = field.metadata.get("choices") or ()
            if choices and values[field.name] not in choices:
                raise SettingsError(f"{var}={environ[var]!r}: expected {' or '.join(choices)}")
        elif field.default is dataclasses.MISSING:
            raise SettingsError(f"{var} must be set")
    return cls(**values)


def load_or_exit(cls: type[T], environ: Mapping[str, str], program: str) -> T:
    """``load`` for a service's main: a bad setting stops the program with one line naming the
    variable and what it accepts, before anything starts (cross-field rules are each settings
    class's ``__post_init__``)."""
    try:
        return load(cls, environ)
    except SettingsError as exc:
        sys.stderr.write(f"{program}: {exc}\n")
        sys.stderr.flush()
        # Nothing has started yet, so there is nothing to tear down; a normal exit would also
        # make gevent's patched locks (the gateway) complain during interpreter shutdown.
        os._exit(2)


def check_all(environ: Mapping[str, str], *classes: type) -> None:
    """Loads several services' settings to check them (the runner does, before it starts any)."""
    for cls in classes:
        load(cls, environ)


def secret(value: str, file: str) -> str:
    """A secret given directly or, preferably, as a file (a mounted Secret); the file wins."""
    return pathlib.Path(file).read_text().strip() if file else value


def variables(cls: type) -> dict[str, str]:
    """Variable name -> documentation, for READMEs and the deploy checks."""
    return {f.metadata["env"]: f.metadata.get("doc", "") for f in dataclasses.fields(cls) if "env" in f.metadata}
