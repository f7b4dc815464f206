"""Typed settings read from environment variables, once, in each service's main.

Each service declares a frozen dataclass whose fields carry their variable name
and default in ``env(...)``; :func:`load` builds it from a mapping and fails
fast on a malformed value. Nothing reads the environment at import time.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os
import pathlib
import sys
import typing
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

from services.common import config_file

T = TypeVar("T")


class SettingsError(ValueError):
    """A variable is missing or malformed; the message names it."""


LOG_LEVELS = ("debug", "info", "warning", "error")


def env(var: str, default: Any = dataclasses.MISSING, doc: str = "", choices: tuple[str, ...] = (),
        minimum: float | None = None, maximum: float | None = None, address: bool = False) -> Any:
    """Declares a settings field read from ``var`` (one of ``choices``, or a number within
    ``minimum``..``maximum``, or an empty-or-``host:port`` address, when given)."""
    kwargs: dict[str, Any] = {"metadata": {"env": var, "doc": doc, "choices": choices, "minimum": minimum,
                                           "maximum": maximum, "address": address}}
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
            value = kind(raw)
        except ValueError:
            raise SettingsError(f"{var}={raw!r}: expected a number") from None
        # float() reads "nan" and "inf": NaN passes every bound check (each comparison is false),
        # and an endless timeout or interval is no setting any service means.
        if not math.isfinite(value):
            raise SettingsError(f"{var}={raw!r}: expected a finite number")
        return value
    if kind is pathlib.Path:
        return pathlib.Path(raw)
    if kind == tuple[str, ...]:
        return tuple(part.strip() for part in raw.split(",") if part.strip())
    return raw


def split_address(value: str) -> tuple[str, int]:
    """``host:port`` (``[v6]:port`` too) as a pair; ValueError when it is not one."""
    host, sep, port = value.strip().rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(value)
    return host.strip("[]"), int(port)


def _number(bound: Any) -> str:
    """A bound as a person writes it: 4194304 rather than 4.1943e+06, 0.5 as 0.5."""
    return str(int(bound)) if float(bound).is_integer() else f"{bound:g}"


def _checked(field: dataclasses.Field[Any], var: str, raw: str, kind: Any) -> Any:
    value = _convert(var, raw, kind)
    if field.metadata.get("address") and value:
        try:
            split_address(value)
        except ValueError:
            raise SettingsError(f"{var}={raw!r}: expected host:port (or nothing, to turn it off)") from None
    choices = field.metadata.get("choices") or ()
    if choices and value not in choices:
        raise SettingsError(f"{var}={raw!r}: expected {' or '.join(choices)}")
    low, high = field.metadata.get("minimum"), field.metadata.get("maximum")
    if (low is not None and value < low) or (high is not None and value > high):
        if low is None:
            bounds = f"at most {_number(high)}"
        elif high is None:
            bounds = f"at least {_number(low)}"
        else:
            bounds = f"from {_number(low)} to {_number(high)}"
        raise SettingsError(f"{var}={raw!r}: expected a number {bounds}")
    return value


def problems(cls: type, environ: Mapping[str, str]) -> list[str]:
    """Every problem with ``cls``'s settings in ``environ`` (over ``WHARF_CONFIG``'s file), one
    line each (empty: all good)."""
    return _evaluate(cls, environ)[1]


def _evaluate(cls: type[T], environ: Mapping[str, str]) -> tuple[T | None, list[str]]:
    """The settings object and no problems, or None and every problem: one pass over the file,
    the variables and the rules between fields."""
    try:
        environ = config_file.merged(environ)
    except config_file.ConfigFileError as exc:
        return None, [str(exc)]
    hints = typing.get_type_hints(cls)
    values: dict[str, Any] = {}
    found: list[str] = []
    for field in dataclasses.fields(cls):  # type: ignore[arg-type]
        var = field.metadata.get("env")
        if var is None:
            continue
        if var in environ:
            try:
                values[field.name] = _checked(field, var, environ[var], hints[field.name])
            except SettingsError as exc:
                found.append(str(exc))
        elif field.default is dataclasses.MISSING:
            found.append(f"{var} must be set")
    if found:
        return None, found
    try:
        return cls(**values), []  # the rules between fields (__post_init__)
    except SettingsError as exc:
        return None, [str(exc)]


def load(cls: type[T], environ: Mapping[str, str]) -> T:
    """The settings object, or SettingsError naming every problem (one per line)."""
    settings, found = _evaluate(cls, environ)
    if settings is None:
        raise SettingsError("\n".join(found))
    return settings


def load_or_exit(cls: type[T], environ: Mapping[str, str], program: str) -> T:
    """``load`` for a service's main: a bad setting stops the program with one line naming the
    variable and what it accepts, before anything starts (cross-field rules are each settings
    class's ``__post_init__``)."""
    try:
        return load(cls, environ)
    except SettingsError as exc:
        _stop(program, exc)


def _stop(program: str, exc: SettingsError) -> typing.NoReturn:
    sys.stderr.write("".join(f"{program}: {line}\n" for line in str(exc).splitlines()))
    sys.stderr.flush()
    # Nothing is serving yet, so there is nothing to tear down; a normal exit would also make
    # gevent's patched locks (the gateway) complain during interpreter shutdown.
    os._exit(2)


def service_main(program: str) -> Callable[[Callable[[], None]], Callable[[], None]]:
    """A service's ``main``: a SettingsError raised as it builds its parts (the internal secret's
    file, read by the servers and the gateway's clients) stops it with one line, as a bad
    variable does in :func:`load_or_exit`, instead of a traceback; so does a ``SystemExit`` with
    a message (a configuration file's problem), without the gateway's gevent complaining about
    its locks at interpreter shutdown after the line."""

    def wrap(main: Callable[[], None]) -> Callable[[], None]:
        @functools.wraps(main)
        def run() -> None:
            try:
                main()
            except SettingsError as exc:
                _stop(program, exc)
            except SystemExit as exc:
                if not isinstance(exc.code, str):
                    raise
                sys.stdout.flush()
                sys.stderr.write(f"{exc.code}\n")
                sys.stderr.flush()
                os._exit(1)

        return run

    return wrap


def check_all(environ: Mapping[str, str], *classes: type) -> list[str]:
    """Every problem in several services' settings, each once, and the configuration file's keys
    none of them reads (the runner checks them all before it starts anything)."""
    found = list(dict.fromkeys(line for cls in classes for line in problems(cls, environ)))
    if not found:
        known = {var for cls in classes for var in variables(cls)}
        found = config_file.unknown_keys(environ, known)
    return found


def secret(value: str, file: str) -> str:
    """A secret given directly or, preferably, as a file (a mounted Secret); the file wins."""
    return pathlib.Path(file).read_text().strip() if file else value


def variables(cls: type) -> dict[str, str]:
    """Variable name -> documentation, for READMEs and the deploy checks."""
    return {f.metadata["env"]: f.metadata.get("doc", "") for f in dataclasses.fields(cls) if "env" in f.metadata}
