"""The LDAP identity backend (``ldap`` in the ``wharf.identity`` group), with ldap3.

A login is checked the way directory-backed services usually do it: bind as the service account
(or anonymously), find the user's entry by its name attribute under ``user_base``, bind as that
entry with the password given, and read the groups whose member attribute names the entry. The
caller's name is validated (an account name: lowercase letters, digits, ``.``, ``_``, ``-``)
before it reaches the directory, and escaped in the filter anyway; an empty password never
reaches it (LDAP treats a bind with a DN and no password as anonymous, not as a failure).

Every operation is bounded by ``timeout``, and at most ``max_concurrent`` logins talk to the
directory at once (as many more may wait for a turn, up to ``timeout``; any beyond are refused at
once), so a slow or dead directory holds a few of the auth service's workers, not all of them (the
rest keep issuing tokens to built-in accounts and robots). Connections are
opened per login; URLs are tried in order, so a second server is a failover.

Options (the entry's ``options`` in the ``identity`` section)::

    url: ldaps://ldap.example.com          # or a list, tried in order; ldap:// with start_tls
    start_tls: false
    ca_file: /etc/ssl/ldap-ca.pem          # default: the system's CAs; tls_verify: false to skip (tests only)
    bind_dn: cn=registry,ou=services,dc=example,dc=com   # omit for anonymous searches
    bind_password_file: /run/secrets/ldap-bind
    user_base: ou=people,dc=example,dc=com
    user_attribute: uid                    # the attribute the login name is matched against
    user_filter: (objectClass=person)      # and'ed with it
    group_base: ou=groups,dc=example,dc=com   # omit: no groups
    group_filter: (objectClass=groupOfNames)
    member_attribute: member               # memberUid for posixGroup
    member_value: dn                       # dn, or name (memberUid holds the login name)
    group_name_attribute: cn
    timeout: 5                             # seconds, per connect and per operation
    max_concurrent: 4
"""

from __future__ import annotations

import dataclasses
import math
import pathlib
import ssl
import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import ldap3
from ldap3.core.exceptions import LDAPException
from ldap3.utils.conv import escape_filter_chars

from services.auth.identity import (
    INTERFACE,
    Identity,
    IdentityBackend,
    IdentityContext,
    IdentityUnavailable,
    InvalidCredentials,
)

# Bind results that mean "not with this password" (invalidCredentials, inappropriateAuthentication,
# insufficientAccessRights, unwillingToPerform: e.g. a locked or expired entry); any other is the
# directory failing.
_REFUSED = {48, 49, 50, 53}
_NO_SUCH_OBJECT = 32


@dataclasses.dataclass(frozen=True)
class LdapOptions:
    urls: tuple[str, ...]
    user_base: str
    start_tls: bool = False
    ca_file: str = ""
    tls_verify: bool = True
    bind_dn: str = ""
    bind_password: str = dataclasses.field(default="", repr=False)
    user_attribute: str = "uid"
    user_filter: str = "(objectClass=person)"
    group_base: str = ""
    group_filter: str = "(objectClass=groupOfNames)"
    member_attribute: str = "member"
    member_value: str = "dn"
    group_name_attribute: str = "cn"
    timeout: float = 5.0
    max_concurrent: int = 4


_TEXT = ("user_base", "ca_file", "bind_dn", "user_attribute", "user_filter", "group_base", "group_filter",
         "member_attribute", "group_name_attribute")


def _filter_problem(value: str) -> str | None:
    depth = 0
    for char in value:
        depth += {"(": 1, ")": -1}.get(char, 0)
        if depth < 0:
            return "unbalanced parentheses"
    if not (value.startswith("(") and value.endswith(")")) or depth:
        return "an LDAP filter in parentheses, e.g. (objectClass=person)"
    return None


def parse_options(options: Mapping[str, Any]) -> LdapOptions:
    """The options, checked; ValueError naming every problem."""
    known = {field.name for field in dataclasses.fields(LdapOptions)} - {"urls", "bind_password"}
    unknown = sorted(set(options) - known - {"url", "bind_password_file"})
    problems = [f"unknown options {', '.join(unknown)}"] if unknown else []
    url = options.get("url")
    urls = tuple(url if isinstance(url, list) else [url] if url else [])
    if not urls or not all(isinstance(u, str) and u.startswith(("ldap://", "ldaps://")) for u in urls):
        problems.append("url: one or more ldap:// or ldaps:// URLs")
    values: dict[str, Any] = {}
    for key in _TEXT:
        if key in options:
            if not isinstance(options[key], str):
                problems.append(f"{key}: text")
            else:
                values[key] = options[key]
    if not values.get("user_base"):
        problems.append("user_base: the DN people are searched under")
    for key in ("user_filter", "group_filter"):
        problem = _filter_problem(values[key]) if key in values else None
        if problem:
            problems.append(f"{key}: {problem}")
    for key in ("start_tls", "tls_verify"):
        if key in options:
            if not isinstance(options[key], bool):
                problems.append(f"{key}: true or false")
            else:
                values[key] = options[key]
    if options.get("member_value", "dn") not in ("dn", "name"):
        problems.append("member_value: dn or name")
    elif "member_value" in options:
        values["member_value"] = options["member_value"]
    timeout = options.get("timeout", 5.0)
    if type(timeout) not in (int, float) or not 0 < timeout <= 60:
        problems.append("timeout: seconds, above 0 and at most 60")
    concurrent = options.get("max_concurrent", 4)
    if type(concurrent) is not int or not 1 <= concurrent <= 64:
        problems.append("max_concurrent: a whole number from 1 to 64")
    password = ""
    if options.get("bind_password_file"):
        try:
            password = pathlib.Path(str(options["bind_password_file"])).read_text().strip()
        except OSError as exc:
            problems.append(f"bind_password_file: cannot read it ({exc.strerror})")
    if bool(values.get("bind_dn")) != bool(options.get("bind_password_file")):
        problems.append("bind_dn and bind_password_file go together (neither: anonymous searches)")
    if values.get("ca_file") and not pathlib.Path(values["ca_file"]).is_file():
        problems.append("ca_file: no such file")
    if problems:
        raise ValueError("; ".join(problems))
    return LdapOptions(urls=urls, bind_password=password, timeout=float(timeout), max_concurrent=concurrent,
                       **values)


class LdapBackend(IdentityBackend):
    wharf_interface = INTERFACE

    def __init__(self, options: LdapOptions) -> None:
        self._o = options
        self._slots = threading.BoundedSemaphore(options.max_concurrent)
        self._waiting = 0  # logins waiting for a slot: at most max_concurrent (see _slot)
        self._waiting_lock = threading.Lock()
        self._tls = ldap3.Tls(ca_certs_file=options.ca_file or None,
                              validate=ssl.CERT_REQUIRED if options.tls_verify else ssl.CERT_NONE)

    def _server(self, url: str) -> ldap3.Server:
        """A fresh Server per connection: ldap3's keeps per-address state (marks an address
        unavailable for a while after one failure, caches DNS) that threads would share, and a
        directory back from an outage must be used at once."""
        return ldap3.Server(url, use_ssl=url.startswith("ldaps://"), tls=self._tls, get_info=ldap3.NONE,
                            connect_timeout=self._o.timeout, mode=ldap3.IP_SYSTEM_DEFAULT)

    @classmethod
    def from_options(cls, options: Mapping[str, Any], context: IdentityContext) -> LdapBackend:
        return cls(parse_options(options))

    def authenticate(self, name: str, password: str) -> Identity | None:
        if not password:
            raise InvalidCredentials()
        with self._slot():
            with self._bound(self._o.bind_dn, self._o.bind_password, service=True) as conn:
                dn = self._find(conn, name)
                if dn is None:
                    return None
                groups = self._groups(conn, name, dn)
            with self._bound(dn, password, service=False):
                pass
        return Identity(name, "user", False, (), groups)

    def lookup(self, name: str) -> Identity | None:
        with self._slot(), self._bound(self._o.bind_dn, self._o.bind_password, service=True) as conn:
            dn = self._find(conn, name)
            return None if dn is None else Identity(name, "user", False, (), self._groups(conn, name, dn))

    @contextmanager
    def _slot(self) -> Iterator[None]:
        """A turn to talk to the directory. At most ``max_concurrent`` logins wait for one (each up to
        ``timeout``), and a login beyond them is refused at once: every waiter holds one of the auth
        service's login threads, and unbounded waiters let a flood of logins for names the built-in
        accounts do not know (each a directory login) hold all of them while the directory hung, so
        that built-in accounts' logins queued behind them for seconds."""
        if not self._slots.acquire(blocking=False):
            with self._waiting_lock:
                if self._waiting >= self._o.max_concurrent:
                    raise IdentityUnavailable(f"{self._o.max_concurrent} LDAP logins in flight and as many waiting")
                self._waiting += 1
            try:
                turn = self._slots.acquire(timeout=self._o.timeout)
            finally:
                with self._waiting_lock:
                    self._waiting -= 1
            if not turn:
                raise IdentityUnavailable(f"{self._o.max_concurrent} LDAP logins already in flight")
        try:
            yield
        finally:
            self._slots.release()

    @contextmanager
    def _bound(self, dn: str, password: str, *, service: bool) -> Iterator[ldap3.Connection]:
        """A connection bound as ``dn`` (anonymously for the service when no bind_dn), trying the
        URLs in order. A refused bind is InvalidCredentials for a user, IdentityUnavailable for the
        service account (a configuration problem the operator must see)."""
        failures = []
        for url in self._o.urls:
            server = self._server(url)
            conn = ldap3.Connection(server, user=dn or None, password=password or None, read_only=True,
                                    receive_timeout=math.ceil(self._o.timeout), raise_exceptions=False,
                                    auto_referrals=False)
            try:
                conn.open()
                if self._o.start_tls and not server.ssl and not conn.start_tls():
                    raise IdentityUnavailable(f"{server.host}: StartTLS refused")
                if not conn.bind():
                    code = conn.result.get("result")
                    if code in _REFUSED:
                        if service:
                            raise IdentityUnavailable(f"the service account's bind was refused (result {code})")
                        raise InvalidCredentials()
                    raise IdentityUnavailable(f"{server.host}: bind failed: {conn.result.get('description')}")
            except LDAPException as exc:
                failures.append(f"{server.host}:{server.port}: {type(exc).__name__}")
                conn.unbind()
                continue
            except BaseException:
                conn.unbind()
                raise
            try:
                yield conn
            finally:
                conn.unbind()
            return
        raise IdentityUnavailable(f"no LDAP server answered ({'; '.join(failures)})")

    def _search(self, conn: ldap3.Connection, base: str, query: str, attributes: list[str],
                limit: int) -> list[dict[str, Any]]:
        try:
            conn.search(base, query, search_scope=ldap3.SUBTREE, attributes=attributes, size_limit=limit,
                        time_limit=math.ceil(self._o.timeout))
        except LDAPException as exc:
            raise IdentityUnavailable(f"search failed: {type(exc).__name__}") from None
        code = conn.result.get("result")
        if code not in (0, 4, _NO_SUCH_OBJECT):  # 4: sizeLimitExceeded, still with the entries found
            raise IdentityUnavailable(f"search failed: {conn.result.get('description')}")
        return [entry for entry in conn.response or [] if entry.get("type") == "searchResEntry"]

    def _find(self, conn: ldap3.Connection, name: str) -> str | None:
        query = f"(&{self._o.user_filter}({self._o.user_attribute}={escape_filter_chars(name)}))"
        found = self._search(conn, self._o.user_base, query, [], 2)
        # Two entries for one name is ambiguous: nobody logs in as either.
        return str(found[0]["dn"]) if len(found) == 1 else None

    def _groups(self, conn: ldap3.Connection, name: str, dn: str) -> tuple[str, ...]:
        if not self._o.group_base:
            return ()
        member = dn if self._o.member_value == "dn" else name
        query = f"(&{self._o.group_filter}({self._o.member_attribute}={escape_filter_chars(member)}))"
        names = set()
        for entry in self._search(conn, self._o.group_base, query, [self._o.group_name_attribute], 1000):
            value = entry.get("attributes", {}).get(self._o.group_name_attribute)
            for item in value if isinstance(value, list) else [value]:
                if isinstance(item, str) and item:
                    names.add(item)
        return tuple(sorted(names))
