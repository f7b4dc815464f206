"""A real OpenLDAP server (slapd) for the LDAP identity backend's tests, run unprivileged.

slapd's configuration is itself an LDAP database (cn=config); it is written as LDIF and loaded
with ``slapadd -n0`` into a directory of the test's own, the directory's entries with
``slapadd -n1``, and slapd then serves them on a free loopback port as the current user. The
Debian package ``slapd`` provides the binaries and the schemas (.ci/run installs it); without it
the tests skip locally and fail under CI=true, as for every outside tool.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import os
import pathlib
import shutil
import socket
import subprocess
import time

from tests.support.tools import missing, require_tool
from tests.support.topology import free_port

SUFFIX = "dc=wharf,dc=test"
SERVICE_DN = f"cn=registry,ou=services,{SUFFIX}"
SCHEMAS = pathlib.Path("/etc/ldap/schema")
MODULES = pathlib.Path("/usr/lib/ldap")


def ssha(password: str) -> str:
    """The {SSHA} form slapd checks simple binds against (a salted SHA-1, as ldappasswd writes)."""
    salt = os.urandom(8)
    return "{SSHA}" + base64.b64encode(hashlib.sha1(password.encode() + salt).digest() + salt).decode()


def _sbin(name: str) -> str:
    """slapd's tools live in /usr/sbin, which a non-root PATH often lacks."""
    path = pathlib.Path("/usr/sbin") / name
    return str(path) if path.is_file() and os.access(path, os.X_OK) else require_tool(name, "Debian package slapd")


@dataclasses.dataclass
class Person:
    uid: str
    password: str
    groups: tuple[str, ...] = ()


def _config(root: pathlib.Path, admin_password: str) -> str:
    schemas = "".join(f"include: file://{SCHEMAS / name}.ldif\n\n"
                      for name in ("core", "cosine", "nis", "inetorgperson"))
    return f"""dn: cn=config
objectClass: olcGlobal
cn: config
olcPidFile: {root}/slapd.pid

dn: cn=module{{0}},cn=config
objectClass: olcModuleList
cn: module{{0}}
olcModulePath: {MODULES}
olcModuleLoad: back_mdb

dn: cn=schema,cn=config
objectClass: olcSchemaConfig
cn: schema

{schemas}dn: olcDatabase={{1}}mdb,cn=config
objectClass: olcDatabaseConfig
objectClass: olcMdbConfig
olcDatabase: {{1}}mdb
olcSuffix: {SUFFIX}
olcDbDirectory: {root}/db
olcRootDN: cn=manager,{SUFFIX}
olcRootPW: {ssha(admin_password)}
olcAccess: {{0}}to attrs=userPassword by self read by anonymous auth by * none
olcAccess: {{1}}to * by dn.exact="{SERVICE_DN}" read by self read by * none
"""


def _entries(people: list[Person], service_password: str) -> str:
    groups = sorted({g for p in people for g in p.groups})
    out = [f"dn: {SUFFIX}\nobjectClass: dcObject\nobjectClass: organization\ndc: wharf\no: Wharf tests\n",
           f"dn: ou=people,{SUFFIX}\nobjectClass: organizationalUnit\nou: people\n",
           f"dn: ou=groups,{SUFFIX}\nobjectClass: organizationalUnit\nou: groups\n",
           f"dn: ou=services,{SUFFIX}\nobjectClass: organizationalUnit\nou: services\n",
           f"dn: {SERVICE_DN}\nobjectClass: organizationalRole\nobjectClass: simpleSecurityObject\n"
           f"cn: registry\nuserPassword: {ssha(service_password)}\n"]
    for person in people:
        out.append(f"dn: uid={person.uid},ou=people,{SUFFIX}\nobjectClass: inetOrgPerson\nuid: {person.uid}\n"
                   f"cn: {person.uid}\nsn: {person.uid}\nuserPassword: {ssha(person.password)}\n")
    for group in groups:
        members = "".join(f"member: uid={p.uid},ou=people,{SUFFIX}\n" for p in people if group in p.groups)
        out.append(f"dn: cn={group},ou=groups,{SUFFIX}\nobjectClass: groupOfNames\ncn: {group}\n{members}")
    return "\n".join(out)


class LdapServer:
    """slapd on 127.0.0.1 with the given people and groups; ``url``, ``service_password``."""

    def __init__(self, root: pathlib.Path, people: list[Person], service_password: str = "registry-bind-1") -> None:
        self.slapd = _sbin("slapd")
        slapadd = _sbin("slapadd")
        if not (SCHEMAS / "inetorgperson.ldif").is_file():
            missing(f"{SCHEMAS} is missing (Debian package slapd); .ci/run installs it")
        self.root = root
        self.service_password = service_password
        self.port = free_port()
        self.url = f"ldap://127.0.0.1:{self.port}"
        shutil.rmtree(root, ignore_errors=True)
        (root / "slapd.d").mkdir(parents=True)
        (root / "db").mkdir()
        (root / "config.ldif").write_text(_config(root, "manager-secret-1"))
        (root / "data.ldif").write_text(_entries(people, service_password))
        for database, ldif in (("0", "config.ldif"), ("1", "data.ldif")):
            loaded = subprocess.run([slapadd, "-n", database, "-F", str(root / "slapd.d"), "-l", str(root / ldif)],
                                    capture_output=True, text=True, timeout=60)
            if loaded.returncode:
                raise RuntimeError(f"slapadd -n{database} {ldif}: {loaded.stderr[-2000:]}")
        self._process: subprocess.Popen[bytes] | None = None
        self.start()

    def start(self) -> None:
        log = (self.root / "slapd.log").open("ab")
        # -d 0: stay in the foreground (the test owns the process) without debug output.
        self._process = subprocess.Popen([self.slapd, "-d", "0", "-F", str(self.root / "slapd.d"),
                                          "-h", self.url + "/"], stdout=log, stderr=log)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise RuntimeError(f"slapd exited: {(self.root / 'slapd.log').read_text()[-2000:]}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("slapd did not listen within 20 s")

    def stop(self) -> None:
        if self._process is not None and self._process.poll() is None:
            self._process.terminate()
            try:
                self._process.wait(10)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait(5)
        self._process = None
