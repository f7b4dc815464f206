"""Identity backends: who a login is (the ``wharf.identity`` extension group, interface version 1).

The auth service asks a chain of backends, in the order the ``identity`` section lists them,
whether a name and password belong together. The built-in accounts (Redis, bcrypt; managed with
``wharf-admin``) are the backend ``accounts``; ``ldap`` (services/auth/ldap.py) is the second
built-in; a third party registers its own in the group (docs/extending.md).

A backend implements :class:`IdentityBackend`:

- ``from_options(options, context)`` builds it from its entry's ``options``; raise ValueError for a
  bad option (start-up stops with the message). Connect lazily: nothing may be reached at start.
- ``authenticate(name, password)`` returns an :class:`Identity`, None when the backend does not know
  the name (the next backend is asked), raises :class:`InvalidCredentials` when it knows the name
  and the password is wrong (the chain stops there: a name belongs to the first backend that knows
  it, so a later backend cannot take over a built-in account), or :class:`IdentityUnavailable`
  when it cannot answer now (the login gets 503 ``UNAVAILABLE``, and is not counted as a failure).
- ``lookup(name)`` returns the identity as it is now, or None when it is gone: a refresh token of an
  identity from this backend is honoured only while lookup finds it, with its groups as they are.

Calls run in the auth service's worker threads: bound the time one may block (a backend's own
timeout) and how many may block at once. The chain adds the login throttle (per account and client
address, atomic, the same for every backend), maps groups to grants (``groups:``) and admin rights
(``admin_groups:``), and records the grants of identities that are not built-in accounts for as
long as a token issued to them lives (the catalog filters by them).

The ``identity`` section (``WHARF_IDENTITY_FILE``, or ``identity:`` in ``WHARF_CONFIG``)::

    backends:                     # asked in this order (default: [{name: accounts}])
      - name: accounts
      - name: ldap
        options: {url: ldaps://ldap.example.com, user_base: "ou=people,dc=example,dc=com", ...}
    groups:                       # a backend's group -> grants (patterns and actions as for grants)
      developers: [{pattern: "team/**", actions: [pull, push]}]
    admin_groups: [registry-admins]
"""

from __future__ import annotations

import abc
import dataclasses
import hashlib
import hmac
import json
import logging
from collections.abc import Mapping
from typing import Any

import redis

from services.auth.accounts import REFRESH_REFUSED, AccountStore
from services.auth.policy import Principal, normalise_actions
from services.auth.verified import VerifiedLogins
from services.common import config_file, plugins
from services.common.errors import UNAUTHORIZED, UNAVAILABLE, RegistryError
from services.common.patterns import pattern_problem
from services.common.redisconn import text

GROUP = "wharf.identity"
INTERFACE = 1
BUILTIN = "accounts"
log = logging.getLogger("wharf.auth.identity")

Grants = tuple[tuple[str, frozenset[str]], ...]


@dataclasses.dataclass(frozen=True)
class Identity:
    """Who logged in, as a backend knows them. ``name`` is the account name tokens carry (the name
    the caller logged in with); ``groups`` are mapped to grants and admin rights by the chain."""

    name: str
    kind: str = "user"
    admin: bool = False
    grants: Grants = ()
    groups: tuple[str, ...] = ()


class InvalidCredentials(Exception):
    """The backend knows the name and the password is not its password."""


class IdentityUnavailable(Exception):
    """The backend cannot answer now (unreachable, too slow, misconfigured); the message says why
    and is shown to the operator's logs, not to the caller."""


@dataclasses.dataclass(frozen=True)
class IdentityContext:
    """What the auth service lends a backend: its Redis client (the ``wharf-auth:`` keyspace; a
    backend's own keys go under ``wharf-auth:ext:<backend>:``) and the built-in account store."""

    redis: redis.Redis
    accounts: AccountStore


class IdentityBackend(abc.ABC):
    @classmethod
    @abc.abstractmethod
    def from_options(cls, options: Mapping[str, Any], context: IdentityContext) -> IdentityBackend:
        """The backend, from its ``options`` mapping."""

    @abc.abstractmethod
    def authenticate(self, name: str, password: str) -> Identity | None:
        """The identity; None for a name it does not know; InvalidCredentials, IdentityUnavailable."""

    @abc.abstractmethod
    def lookup(self, name: str) -> Identity | None:
        """The identity as it is now (for refresh tokens), None when gone; IdentityUnavailable."""

    def credential_stamp(self, name: str) -> str | None:
        """Optional: a value that changes whenever ``name``'s password does (or the name goes),
        read cheaply. A backend that gives one has a right password remembered for a minute, so
        identical logins cost one check (services/auth/verified.py); None (the default): every
        login asks :meth:`authenticate`."""
        return None


class Accounts(IdentityBackend):
    """The built-in accounts: users and robots in Redis, bcrypt passwords, grants by wharf-admin."""

    wharf_interface = INTERFACE

    def __init__(self, store: AccountStore) -> None:
        self._store = store

    @classmethod
    def from_options(cls, options: Mapping[str, Any], context: IdentityContext) -> Accounts:
        if options:
            raise ValueError("the built-in accounts take no options")
        return cls(context.accounts)

    def authenticate(self, name: str, password: str) -> Identity | None:
        matches = self._store.check_password(name, password)
        if matches is False:
            raise InvalidCredentials()
        return self.lookup(name) if matches else None

    def credential_stamp(self, name: str) -> str | None:
        return self._store.password_stamp(name)

    def lookup(self, name: str) -> Identity | None:
        principal = self._store.find(name)
        if principal is None:
            return None
        return Identity(principal.name, principal.kind, principal.admin, principal.grants)


@dataclasses.dataclass(frozen=True)
class Login:
    """A login let in: who, by which backend, and the backend's credential stamp as it was before
    the password was checked (None when the backend gives none)."""

    principal: Principal
    backend: str
    stamp: str | None = None


def stamp_digest(stamp: str) -> str:
    """What a refresh token keeps of a credential stamp (the stamp itself may be a password hash)."""
    return hashlib.sha256(stamp.encode()).hexdigest()


def _snapshot_key(name: str) -> str:
    return f"wharf-auth:identity:{name}"


class Identities:
    """The configured chain of backends, with the group mapping; what the auth service logs in with."""

    def __init__(self, store: AccountStore, backends: list[tuple[str, IdentityBackend]],
                 groups: Mapping[str, Grants] | None = None, admin_groups: frozenset[str] = frozenset(),
                 remember: int = 600) -> None:
        self._store = store
        self._backends = backends
        # LDAP compares names without case; so do the group mappings.
        self._groups = {group.casefold(): grants for group, grants in (groups or {}).items()}
        self._admin_groups = frozenset(group.casefold() for group in admin_groups)
        self._remember = remember
        self._verified = VerifiedLogins()

    @classmethod
    def builtin(cls, store: AccountStore) -> Identities:
        return cls(store, [(BUILTIN, Accounts(store))])

    @property
    def names(self) -> list[str]:
        return [name for name, _ in self._backends]

    def authenticate(self, name: str, password: str, address: str, account_limit: int | None = None) -> \
            tuple[Principal, str]:
        """(principal, backend name) for a right password; UNAUTHORIZED, TOOMANYREQUESTS or
        UNAVAILABLE otherwise. Every backend's check runs under the same login throttle; identical
        logins share one check, and a right password is remembered briefly where the backend
        allows it (services/auth/verified.py)."""
        login = self.login(name, password, address, account_limit)
        return login.principal, login.backend

    def login(self, name: str, password: str, address: str, account_limit: int | None = None) -> Login:
        """:meth:`authenticate`, with the credential stamp the password was checked against (what a
        refresh token issued for this login is bound to: see :meth:`redeem`)."""
        if not self._rememberable(name):
            return self._checked(name, password, None, address, account_limit)
        mac = self._verified.mac(name, password)
        with self._verified.flight(name, mac):
            return self._remembered(name, mac, address, account_limit) or \
                self._checked(name, password, mac, address, account_limit)

    def _rememberable(self, name: str) -> bool:
        """Whether the name's login may be shared and remembered: the first backend asked gives a
        stamp for it (the built-in accounts, for an account they have). Any other login (LDAP, a
        third party's backend, a name the first backend does not know) is checked alone, as before:
        waiting on an identical one could never end in a remembered login."""
        try:
            return self._backends[0][1].credential_stamp(name) is not None
        except Exception:  # a backend's failure here only means "not remembered"; its login reports it
            return False

    def _remembered(self, name: str, mac: bytes, address: str, account_limit: int | None) -> Login | None:
        """A login remembered with this password whose backend stamp is unchanged, the account not
        locked: its principal as it is now; None to check the password."""
        entry = self._verified.find(name, mac)
        if entry is None:
            return None
        backend = dict(self._backends).get(entry.backend)
        stamp: str | None = None
        try:
            stamp = backend.credential_stamp(name) if backend is not None else None
            identity = backend.lookup(name) if backend is not None and stamp is not None else None
        except IdentityUnavailable:
            identity = None
        if stamp is None or identity is None or identity.name != name or \
                not hmac.compare_digest(stamp.encode(), entry.stamp.encode()):
            self._verified.forget(name)
            return None
        self._store.admit_verified(name, address, account_limit)
        return Login(self._principal(entry.backend, identity), entry.backend, entry.stamp)

    def _checked(self, name: str, password: str, mac: bytes | None, address: str,
                 account_limit: int | None) -> Login:
        found: list[tuple[str, Identity, str | None]] = []

        def verify() -> bool:
            if not password:  # an empty password is an anonymous bind to LDAP, and never anyone's
                return False
            for backend_name, backend in self._backends:
                try:
                    # Before the check: what it checks against (remembered logins and refresh tokens are
                    # bound to it; the built-in accounts always give one, another backend when asked to
                    # remember, as before).
                    stamp = backend.credential_stamp(name) if mac is not None or isinstance(backend, Accounts) \
                        else None
                    identity = backend.authenticate(name, password)
                except InvalidCredentials:
                    return False
                except IdentityUnavailable as exc:
                    raise self._unavailable(backend_name, exc) from None
                except Exception as exc:  # a third party's bug: refuse (fail closed), say where
                    log.exception("an identity backend failed", extra={"fields": {"backend": backend_name}})
                    raise self._unavailable(backend_name, exc) from None
                if identity is not None:
                    if identity.name != name:
                        log.error("an identity backend answered for another name; refused",
                                  extra={"fields": {"backend": backend_name}})
                        return False
                    found.append((backend_name, identity, stamp))
                    if mac is not None and stamp is not None and stamp == backend.credential_stamp(name):
                        # Unchanged across the check, so it is the password's: remembered (a password
                        # set meanwhile leaves nothing remembered).
                        self._verified.remember(name, mac, backend_name, stamp)
                    return True
            return False

        if not self._store.throttled(name, address, verify, account_limit=account_limit) \
                or not found:
            raise RegistryError(UNAUTHORIZED, "invalid username or password")
        backend_name, identity, stamp = found[0]
        return Login(self._principal(backend_name, identity), backend_name, stamp)

    def redeem(self, token: str) -> tuple[Principal, str]:
        """(principal, backend name) of a refresh token, asking its backend whether the identity
        still exists (and for its groups now); UNAUTHORIZED when it does not, or when the token was
        issued for a login checked against another credential stamp than the backend's now: a login
        that checked the old password while the password changed (or the account was deleted, and
        made again under its name) got its refresh token after the change had revoked the others."""
        account, backend_name, bound = self._store.redeem_refresh_token(token)
        backend_name = backend_name or BUILTIN
        backend = dict(self._backends).get(backend_name)
        if backend is None and backend_name == BUILTIN:
            backend = Accounts(self._store)  # built-in accounts' tokens outlive their removal from the chain
        try:
            identity = backend.lookup(account) if backend is not None else None
        except IdentityUnavailable as exc:
            raise self._unavailable(backend_name, exc) from None
        if identity is None or identity.name != account:
            raise RegistryError(UNAUTHORIZED, REFRESH_REFUSED)
        if bound:
            try:
                stamp = backend.credential_stamp(account) if backend is not None else None
            except IdentityUnavailable as exc:
                raise self._unavailable(backend_name, exc) from None
            if stamp is None or not hmac.compare_digest(stamp_digest(stamp), bound):
                raise RegistryError(UNAUTHORIZED, REFRESH_REFUSED)
        return self._principal(backend_name, identity), backend_name

    def find(self, name: str) -> Principal | None:
        """The principal a token's subject is now, for the catalog: a built-in account, or the
        grants an identity from another backend had when its latest token was issued."""
        raw = self._store.client.get(_snapshot_key(name)) if name else None
        if raw is not None:
            try:
                saved = json.loads(text(raw))
                if saved.get("backend") != BUILTIN:
                    return Principal(name, saved["kind"], bool(saved["admin"]),
                                     tuple((p, frozenset(a)) for p, a in saved["grants"]))
            except (ValueError, KeyError, TypeError):
                log.warning("an unreadable identity record was ignored")
        return self._store.find(name)

    def _principal(self, backend_name: str, identity: Identity) -> Principal:
        merged: dict[str, set[str]] = {}
        for pattern, actions in identity.grants:
            merged.setdefault(pattern, set()).update(actions)
        groups = {group.casefold() for group in identity.groups}
        for group in groups:
            for pattern, actions in self._groups.get(group, ()):
                merged.setdefault(pattern, set()).update(actions)
        admin = identity.admin or bool(self._admin_groups & groups)
        principal = Principal(identity.name, identity.kind, admin,
                              tuple(sorted((p, frozenset(a)) for p, a in merged.items())))
        record = {"backend": backend_name, "kind": principal.kind, "admin": principal.admin,
                  "grants": [[p, sorted(a)] for p, a in principal.grants]}
        try:
            self._store.client.set(_snapshot_key(identity.name), json.dumps(record), ex=self._remember)
        except redis.RedisError as exc:  # read-only Redis: the login works, the catalog shows less
            log.warning("identity not recorded", extra={"fields": {"reason": type(exc).__name__}})
        return principal

    @staticmethod
    def _unavailable(backend_name: str, exc: Exception) -> RegistryError:
        log.warning("an identity backend cannot answer",
                    extra={"fields": {"backend": backend_name, "reason": str(exc)[:300] or type(exc).__name__}})
        return RegistryError(UNAVAILABLE, "the identity service cannot check credentials now; retry later")


# -- the identity section ---------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Entry:
    name: str
    options: Mapping[str, Any]


@dataclasses.dataclass(frozen=True)
class IdentityConfig:
    backends: tuple[Entry, ...] = (Entry(BUILTIN, {}),)
    groups: Mapping[str, Grants] = dataclasses.field(default_factory=dict)
    admin_groups: frozenset[str] = frozenset()


def backend_class(name: str) -> type[IdentityBackend]:
    return plugins.load_class(GROUP, name, IdentityBackend)


def _grants(where: str, value: Any) -> Grants:
    if not isinstance(value, list):
        raise config_file.ConfigFileError(f"{where}: expected a list of {{pattern, actions}}")
    out = []
    for index, item in enumerate(value):
        place = f"{where}[{index}]"
        if not isinstance(item, dict) or set(item) != {"pattern", "actions"} \
                or not isinstance(item["pattern"], str) or not isinstance(item["actions"], list) \
                or not all(isinstance(a, str) for a in item["actions"]):
            raise config_file.ConfigFileError(f"{place}: expected pattern (text) and actions (a list)")
        problem = pattern_problem(item["pattern"])
        if problem:
            raise config_file.ConfigFileError(f"{place}.pattern: {problem}")
        try:
            actions = normalise_actions(item["actions"])
        except ValueError as exc:
            raise config_file.ConfigFileError(f"{place}.actions: {exc}") from None
        out.append((item["pattern"], actions))
    return tuple(out)


def config(environ: Mapping[str, str]) -> IdentityConfig:
    """The ``identity`` section, checked (not built); ConfigFileError naming what is wrong."""
    section = config_file.section(environ, "identity")
    if section is None:
        return IdentityConfig()
    if not isinstance(section, dict) or set(section) - {"backends", "groups", "admin_groups"}:
        raise config_file.ConfigFileError("identity: expected a mapping of backends, groups and admin_groups")
    entries = section.get("backends") or [{"name": BUILTIN}]
    if not isinstance(entries, list):
        raise config_file.ConfigFileError("identity.backends: expected a list")
    backends = []
    for index, entry in enumerate(entries):
        where = f"identity.backends[{index}]"
        if not isinstance(entry, dict) or not isinstance(entry.get("name"), str) \
                or set(entry) - {"name", "options"} or not isinstance(entry.get("options") or {}, dict):
            raise config_file.ConfigFileError(f"{where}: expected name, and optionally options (a mapping)")
        backends.append(Entry(entry["name"], entry.get("options") or {}))
    if len({entry.name for entry in backends}) != len(backends):
        raise config_file.ConfigFileError("identity.backends: a backend is listed twice")
    groups = section.get("groups") or {}
    if not isinstance(groups, dict) or not all(isinstance(g, str) for g in groups):
        raise config_file.ConfigFileError("identity.groups: expected a mapping of group names to grants")
    admin_groups = section.get("admin_groups") or []
    if not isinstance(admin_groups, list) or not all(isinstance(g, str) for g in admin_groups):
        raise config_file.ConfigFileError("identity.admin_groups: expected a list of group names")
    return IdentityConfig(tuple(backends), {g: _grants(f"identity.groups.{g}", v) for g, v in groups.items()},
                          frozenset(admin_groups))


def load(environ: Mapping[str, str], context: IdentityContext, remember: int = 600) -> Identities:
    """The configured chain, built; ConfigFileError or PluginError naming what is wrong."""
    found = config(environ)
    backends = []
    for index, entry in enumerate(found.backends):
        found_class = backend_class(entry.name)
        what = f"{GROUP} {entry.name!r} (identity.backends[{index}])"
        try:
            backends.append((entry.name, plugins.build(what, IdentityBackend, found_class.from_options,
                                                       entry.options, context)))
        except ValueError as exc:
            raise config_file.ConfigFileError(f"identity.backends[{index}] ({entry.name}): {exc}") from None
    return Identities(context.accounts, backends, found.groups, found.admin_groups, remember)


def check(environ: Mapping[str, str]) -> None:
    """Builds the chain as the auth service would, reaching nothing (``wharf-stack --check``):
    ConfigFileError or PluginError naming what is wrong."""
    client = redis.Redis()  # never connected: from_options must not reach anything
    load(environ, IdentityContext(client, AccountStore(client, 4, 1, 1)))
