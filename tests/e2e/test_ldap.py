"""The LDAP identity backend against a real OpenLDAP server (slapd, run unprivileged by the test):
docker-login-style Basic to /token, group membership mapped to namespace grants, refresh tokens
that follow the directory, wrong passwords, a directory that is down, and names that must not
reach it or take over a built-in account."""

from __future__ import annotations

import json
import os
import pathlib
import re
import subprocess
import sys
from collections.abc import Callable, Iterator

import jwt
import ldap3
import pytest
import requests

from tests.e2e.images import write_oci_index_layout
from tests.e2e.test_skopeo import Skopeo
from tests.support.ldap import SERVICE_DN, SUFFIX, LdapServer, Person
from tests.support.stack import RunningStack
from tests.support.tools import require_tool

pytestmark = pytest.mark.e2e

ADMIN = "ldap-test-admin-1"
PEOPLE = [Person("carol", "carol-ldap-pass1", ("Developers",)),
          Person("dave", "dave-ldap-pass-1", ("Developers", "registry-admins")),
          Person("erin", "erin-ldap-pass-1"),
          Person("frank", "frank-ldap-pass1", ("Developers",)),
          # The directory has an "admin" too; the built-in admin keeps the name.
          Person("admin", "directory-admin-pass1", ("registry-admins",))]
PASSWORDS = {p.uid: p.password for p in PEOPLE}


@pytest.fixture(scope="module")
def directory(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LdapServer]:
    server = LdapServer(tmp_path_factory.mktemp("ldap"), PEOPLE)
    yield server
    server.stop()


@pytest.fixture(scope="module")
def stack(directory: LdapServer, tmp_path_factory: pytest.TempPathFactory,
          start_stack: Callable[..., RunningStack]) -> RunningStack:
    root = tmp_path_factory.mktemp("identity")
    (root / "bind-password").write_text(directory.service_password + "\n")
    section = {"backends": [{"name": "accounts"}, {"name": "ldap", "options": {
        "url": directory.url, "bind_dn": SERVICE_DN, "bind_password_file": str(root / "bind-password"),
        "user_base": f"ou=people,{SUFFIX}", "user_filter": "(objectClass=inetOrgPerson)",
        "group_base": f"ou=groups,{SUFFIX}", "timeout": 2}}],
        "groups": {"developers": [{"pattern": "team/**", "actions": ["pull", "push"]}]},
        "admin_groups": ["registry-admins"]}
    (root / "identity.yaml").write_text(json.dumps(section))
    return start_stack(env={"WHARF_AUTH": "token", "WHARF_ADMIN_PASSWORD": ADMIN, "WHARF_BCRYPT_ROUNDS": "4",
                            "WHARF_IDENTITY_FILE": str(root / "identity.yaml"), "WHARF_LOGIN_FAILURES": "4"})


def login(stack: RunningStack, user: str, password: str, *scopes: str, **params: str) -> requests.Response:
    """What `docker login` and then a push do: the challenge names the realm; Basic credentials go there."""
    challenge = requests.get(f"{stack.url}/v2/", timeout=10)
    assert challenge.status_code == 401
    realm = re.search(r'realm="([^"]+)"', challenge.headers["WWW-Authenticate"])
    assert realm is not None
    return requests.get(realm.group(1), params={"service": "wharf", "scope": list(scopes), **params},
                        auth=(user, password), timeout=15)


def access(response: requests.Response) -> dict[str, list[str]]:
    assert response.status_code == 200, response.text
    claims = jwt.decode(response.json()["token"], options={"verify_signature": False})
    return {entry["name"]: sorted(entry["actions"]) for entry in claims["access"] if entry["actions"]}


def test_ldap_login_and_group_grants(stack: RunningStack) -> None:
    # "Developers" in the directory is "developers" in the mapping: LDAP compares names without case.
    granted = access(login(stack, "carol", PASSWORDS["carol"], "repository:team/app:pull,push",
                           "repository:other/app:pull,push", "repository:carol/own:push"))
    assert granted == {"team/app": ["pull", "push"], "carol/own": ["push"]}
    # erin is in no mapped group: her own namespace only.
    assert access(login(stack, "erin", PASSWORDS["erin"], "repository:team/app:pull,push")) == {}
    claims = jwt.decode(login(stack, "carol", PASSWORDS["carol"]).json()["token"],
                        options={"verify_signature": False})
    assert claims["sub"] == "carol"


def test_a_real_client_logs_in_and_pushes_with_directory_credentials(stack: RunningStack,
                                                                      tmp_path: pathlib.Path) -> None:
    skopeo = Skopeo(require_tool("skopeo"), tmp_path / "home")
    bad = subprocess.run([*skopeo.argv, "login", "--tls-verify=false", "-u", "carol", "-p", "not-her-password",
                          stack.host], env=skopeo.env, capture_output=True, text=True, timeout=60)
    assert bad.returncode != 0 and "invalid username/password" in bad.stderr
    skopeo.run("login", "--tls-verify=false", "-u", "carol", "-p", PASSWORDS["carol"], stack.host)
    image = write_oci_index_layout(tmp_path / "in")
    skopeo.copy(f"oci:{tmp_path / 'in'}:{image.tag}", f"docker://{stack.host}/team/app:v1", "--all")
    skopeo.copy(f"docker://{stack.host}/team/app:v1", f"oci:{tmp_path / 'out'}:v1", "--all")
    assert json.loads((tmp_path / "out" / "index.json").read_text())["manifests"][0]["digest"] == image.digest
    # The catalog shows a directory user what their groups let them pull.
    token = login(stack, "carol", PASSWORDS["carol"], "registry:catalog:*").json()["token"]
    catalog = requests.get(f"{stack.url}/v2/_catalog", headers={"Authorization": f"Bearer {token}"}, timeout=10)
    assert "team/app" in catalog.json()["repositories"]
    token = login(stack, "erin", PASSWORDS["erin"], "registry:catalog:*").json()["token"]
    catalog = requests.get(f"{stack.url}/v2/_catalog", headers={"Authorization": f"Bearer {token}"}, timeout=10)
    assert "team/app" not in catalog.json().get("repositories", [])


def test_wrong_passwords_unknown_names_and_injection_are_unauthorized(stack: RunningStack) -> None:
    for user, password in (("carol", "wrong-password-1"), ("nobody", "whatever-pass-1"), ("carol", ""),
                           ("carol)(uid=*", "x"), ("*", "x"), ("Carol\n", PASSWORDS["carol"])):
        response = login(stack, user, password)
        assert response.status_code == 401, (user, response.text)
        assert response.json()["errors"][0]["code"] == "UNAUTHORIZED"
    # A failure is a failure whichever backend answered: the throttle locks the name.
    codes = [login(stack, "frank", f"wrong-{i}-password").status_code for i in range(6)]
    assert codes[:4] == [401] * 4 and codes[-1] == 429, codes


def test_the_built_in_account_keeps_its_name(stack: RunningStack) -> None:
    """The directory has an "admin" whose password is not the built-in admin's: the built-in
    accounts come first and own the name, so the directory's password is refused."""
    assert login(stack, "admin", PASSWORDS["admin"]).status_code == 401
    assert login(stack, "admin", ADMIN).status_code == 200


def test_refresh_tokens_follow_the_directory(stack: RunningStack, directory: LdapServer) -> None:
    first = login(stack, "carol", PASSWORDS["carol"], "repository:team/app:push",
                  offline_token="true", client_id="docker")
    refresh = first.json()["refresh_token"]

    def refreshed() -> requests.Response:
        return requests.post(f"{stack.url}/token", data={"grant_type": "refresh_token", "refresh_token": refresh,
                                                         "service": "wharf", "scope": "repository:team/app:push",
                                                         "client_id": "docker"}, timeout=15)

    assert access(refreshed()) == {"team/app": ["push"]}
    manager = ldap3.Connection(ldap3.Server(directory.url), f"cn=manager,{SUFFIX}", "manager-secret-1",
                               auto_bind=True)
    group = f"cn=Developers,ou=groups,{SUFFIX}"
    manager.modify(group, {"member": [(ldap3.MODIFY_DELETE, [f"uid=carol,ou=people,{SUFFIX}"])]})
    try:
        assert access(refreshed()) == {}  # out of the group: no team push any more
    finally:
        manager.modify(group, {"member": [(ldap3.MODIFY_ADD, [f"uid=carol,ou=people,{SUFFIX}"])]})
    manager.modify_dn(f"uid=carol,ou=people,{SUFFIX}", "uid=carol-gone")
    try:
        gone = refreshed()
        assert gone.status_code == 401 and gone.json()["errors"][0]["code"] == "UNAUTHORIZED"
    finally:
        manager.modify_dn(f"uid=carol-gone,ou=people,{SUFFIX}", "uid=carol")
        manager.unbind()


def test_a_directory_admin_group_administers(stack: RunningStack) -> None:
    env = dict(os.environ, WHARF_ADMIN_PASSWORD=PASSWORDS["dave"], WHARF_DATA_DIR=str(stack.data_dir))
    result = subprocess.run([sys.executable, "-m", "services.auth.admin_cli", "--user", "dave", "user", "list"],
                            env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "admin" in result.stdout
    env["WHARF_ADMIN_PASSWORD"] = PASSWORDS["carol"]
    result = subprocess.run([sys.executable, "-m", "services.auth.admin_cli", "--user", "carol", "user", "list"],
                            env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode != 0 and "admin" in result.stderr.lower()


def test_an_unreachable_directory_is_unavailable_not_unauthorized(stack: RunningStack,
                                                                   directory: LdapServer) -> None:
    directory.stop()
    try:
        down = login(stack, "carol", PASSWORDS["carol"], "repository:team/app:pull")
        assert down.status_code == 503, down.text
        assert down.json()["errors"][0]["code"] == "UNAVAILABLE"
        assert "identity" in down.json()["errors"][0]["message"]
        # Built-in accounts do not need the directory; and the outage is not counted as failures.
        assert login(stack, "admin", ADMIN).status_code == 200
        for _ in range(6):
            assert login(stack, "erin", PASSWORDS["erin"]).status_code == 503
    finally:
        directory.start()
    assert login(stack, "erin", PASSWORDS["erin"]).status_code == 200

