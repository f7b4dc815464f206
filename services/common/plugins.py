"""Extensions: what a third party ships as its own package, found through Python entry points.

Wharf is extended the way Python software is, by installing a package: a distribution declares
entry points in one of the groups below, and the service that owns the group loads the one its
settings name. Each group has one small interface (an abstract class) with a version; an extension
says which version it implements in a class attribute, ``wharf_interface``, and a release loads
only the versions it speaks, so an extension written against an interface that changed fails at
start-up with a message, not at its first call. The built-in implementations are registered the
same way (pyproject.toml), so nothing distinguishes them from a third party's.

    wharf.storage   services.blobstore.storage.base.StorageDriver   blob storage drivers
    wharf.events    services.events.sinks.EventSink                 event sinks beside the webhook
    wharf.admission services.api.admission.AdmissionPolicy          rules consulted before a manifest is stored
    wharf.identity  services.auth.identity.IdentityBackend          who a login is (accounts, LDAP)

A name that is not installed, an extension that fails to import, one that implements another
version, or one whose factory fails or builds something else (:func:`build`) stops the service
before it serves, with a message naming the group, the name and the package (:class:`PluginError`).
``wharf-admin plugins`` lists what is installed.
"""

from __future__ import annotations

import dataclasses
import importlib.metadata
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")

# Group -> the interface versions this release speaks.
GROUPS: dict[str, tuple[int, ...]] = {
    "wharf.storage": (1,),
    "wharf.events": (1,),
    "wharf.admission": (1,),
    "wharf.identity": (1,),
}


class PluginError(RuntimeError):
    """An extension cannot be used; the message says which and why."""


@dataclasses.dataclass(frozen=True)
class Installed:
    group: str
    name: str
    target: str  # module:attribute
    package: str
    version: str


def _entry_points(group: str) -> list[importlib.metadata.EntryPoint]:
    return sorted(importlib.metadata.entry_points(group=group), key=lambda ep: ep.name)


def _package(entry: importlib.metadata.EntryPoint) -> tuple[str, str]:
    dist = entry.dist
    return (dist.metadata["Name"], dist.version) if dist is not None else ("?", "?")


def installed(group: str | None = None) -> list[Installed]:
    """Every extension installed, by group (all of Wharf's groups when ``group`` is None)."""
    found = []
    for name in [group] if group else sorted(GROUPS):
        for entry in _entry_points(name):
            package, version = _package(entry)
            found.append(Installed(name, entry.name, entry.value, package, version))
    return found


def names(group: str) -> list[str]:
    """The names installed in ``group`` (nothing is imported: for settings checks)."""
    return [entry.name for entry in _entry_points(group)]


def load(group: str, name: str) -> Any:
    """The object the extension ``name`` of ``group`` registered (a class, usually), checked to
    implement a version of the group's interface this release speaks; PluginError otherwise."""
    if group not in GROUPS:
        raise PluginError(f"{group} is not an extension group (known: {', '.join(sorted(GROUPS))})")
    entries = [entry for entry in _entry_points(group) if entry.name == name]
    if not entries:
        known = ", ".join(entry.name for entry in _entry_points(group)) or "none"
        raise PluginError(f"{group}: no extension named {name!r} is installed (installed: {known}); "
                          "install the package that provides it")
    if len(entries) > 1:
        packages = ", ".join(_package(entry)[0] for entry in entries)
        raise PluginError(f"{group}: {name!r} is registered by more than one package ({packages}); uninstall one")
    entry = entries[0]
    package, version = _package(entry)
    where = f"{group} {name!r} ({entry.value}, from {package} {version})"
    try:
        loaded = entry.load()
    except (Exception, SystemExit) as exc:  # an import may fail in any way (sys.exit too); say which and why
        raise PluginError(f"{where} cannot be imported: {type(exc).__name__}: {str(exc)[:300]}") from exc
    speaks = GROUPS[group]
    implements = getattr(loaded, "wharf_interface", None)
    if implements not in speaks:
        raise PluginError(f"{where} implements interface version {implements!r}; this Wharf speaks "
                          f"{', '.join(map(str, speaks))} (see docs/extending.md)")
    return loaded


def load_class(group: str, name: str, base: type[Any]) -> Any:
    """``load``, for groups whose extensions are classes: also checked to subclass the group's
    interface ``base`` (every group's loader is this, with its own interface)."""
    found = load(group, name)
    if not (isinstance(found, type) and issubclass(found, base)):
        raise PluginError(f"{group} {name!r} is not {_article(base)} {base.__name__} subclass")
    return found


def build(what: str, base: type[Any], factory: Callable[..., T], *args: Any) -> T:
    """What an extension's factory (``from_endpoint``, ``from_options``) builds from ``args``. A ValueError
    (a bad option, as the interfaces ask) goes to the caller, which names the option's place; any
    other exception, or an answer that is not a ``base`` (None, say), is a defect of the extension:
    PluginError naming ``what``. Before, the first was a traceback at start-up and the second a
    service that started and failed each call (every push refused, every delivery retried)."""
    try:
        made = factory(*args)
    except ValueError:
        raise
    except (Exception, SystemExit) as exc:
        raise PluginError(f"{what} failed to build: {type(exc).__name__}: {str(exc)[:300]}") from exc
    if not isinstance(made, base):
        raise PluginError(f"{what} built {type(made).__name__}, not {_article(base)} {base.__name__}")
    return made


def _article(base: type[Any]) -> str:
    return "an" if base.__name__[0] in "AEIOU" else "a"


def command() -> Any:
    """`wharf-admin plugins`: what is installed, by group, with the package and its version."""
    import json

    import click

    @click.command("plugins")
    @click.option("--json", "as_json", is_flag=True, help="print JSON")
    def plugins(as_json: bool) -> None:
        """List the installed extensions (storage drivers, event sinks, ...) by group."""
        found = installed()
        if as_json:
            click.echo(json.dumps([dataclasses.asdict(item) for item in found], indent=2))
            return
        for group in sorted(GROUPS):
            click.echo(f"{group} (interface {', '.join(map(str, GROUPS[group]))})")
            for item in (i for i in found if i.group == group):
                click.echo(f"  {item.name:<16} {item.package} {item.version}  {item.target}")
    return plugins
