"""The auth service's rules on attacker-chosen input: non-canonical names, globs, scope floods,
peer strings and log text. Pure functions, no servers."""

from __future__ import annotations

import pytest

from services.auth import peers
from services.auth.policy import ANONYMOUS, Principal, grant, mirror_pulls, repository_actions
from services.common import scopes
from services.common.errors import RegistryError
from services.common.scopes import Scope

ALL = ("pull", "push", "delete")
USER_B = Principal("b", "user")
ADMIN = Principal("root", "user", admin=True)


def _actions(principal: Principal, name: str, public: tuple[str, ...] = ()) -> tuple[str, ...]:
    [granted] = grant(principal, public, [Scope(scopes.REPOSITORY, name, ("*",))])
    return granted.actions


# -- non-canonical repository names (finding 4) ---------------------------------------------

@pytest.mark.parametrize("name", ["b/../a/secret", "b/x;a/secret", "b/*", "b/./x", "b//x", "b/x/", "B/x", "b/x y",
                                  "b/" + "x" * 300, "b/x\n", "b/x:tag"])
def test_non_canonical_names_are_granted_nothing(name: str) -> None:
    """The namespace rule was a prefix test: b/../a/secret starts with "b/"."""
    assert _actions(USER_B, name) == ()
    assert _actions(ADMIN, name) == ()  # not even an admin: the registry refuses such names anyway
    assert _actions(Principal("r", "robot", grants=(("**", frozenset(ALL)),)), name) == ()
    assert _actions(Principal(), name, public=("**",)) == ()
    assert repository_actions(USER_B, ["**"], name) == frozenset()


def test_canonical_names_keep_their_rights() -> None:
    assert _actions(USER_B, "b/app") == ALL
    assert _actions(USER_B, "b/app/deep") == ALL
    assert _actions(USER_B, "bb/app") == ()
    assert _actions(ADMIN, "any/thing") == ALL


# -- glob semantics in grants and public patterns (finding 5) --------------------------------

def test_a_single_star_grant_stays_inside_one_component() -> None:
    robot = Principal("bot", "robot", grants=(("team/*", frozenset({"pull", "push"})),))
    assert _actions(robot, "team/a") == ("pull", "push")
    assert _actions(robot, "team/a/b") == ()  # fnmatch granted push here
    deep = Principal("bot", "robot", grants=(("team/**", frozenset({"pull"})),))
    assert _actions(deep, "team/a/b") == ("pull",)
    assert _actions(deep, "team") == ()


def test_public_patterns_use_the_same_globs() -> None:
    assert _actions(Principal(), "pub/app", public=("pub/*",)) == ("pull",)
    assert _actions(Principal(), "pub/app/inner", public=("pub/*",)) == ()
    assert _actions(Principal(), "pub/app/inner", public=("pub/**",)) == ("pull",)


def test_legacy_fnmatch_grants_grant_nothing() -> None:
    robot = Principal("bot", "robot", grants=(("team/[ab]", frozenset(ALL)), ("team/?", frozenset(ALL))))
    assert _actions(robot, "team/a") == ()


# -- the scope cap counts scopes after splitting (finding 3) ---------------------------------

def test_the_scope_cap_applies_after_splitting() -> None:
    many = " ".join(f"repository:b/app{i}:pull" for i in range(100))
    with pytest.raises(RegistryError) as raised:
        scopes.parse_many([many], limit=32)
    assert raised.value.code == "REQUEST_INVALID" and "32" in raised.value.message
    with pytest.raises(RegistryError):  # repeated parameters count the same way
        scopes.parse_many([f"repository:b/a{i}:pull" for i in range(33)], limit=32)


def test_scopes_up_to_the_cap_and_repeats_are_fine() -> None:
    exactly = " ".join(f"repository:b/app{i}:pull" for i in range(32))
    assert len(scopes.parse_many([exactly], limit=32)) == 32
    repeated = ["repository:b/app:pull repository:b/app:pull"] * 50
    assert scopes.parse_many(repeated, limit=32) == [Scope(scopes.REPOSITORY, "b/app", ("pull",))]
    assert len(scopes.parse_many([" ".join(f"r:n{i}:pull" for i in range(100))])) == 100  # no limit given


# -- client addresses and log text (findings 2 and 7) ----------------------------------------

@pytest.mark.parametrize(("peer", "address"), [
    ("ipv4:127.0.0.1:54321", "127.0.0.1"),
    ("ipv4:10.1.2.3:1", "10.1.2.3"),
    ("ipv6:[::1]:54321", "::1"),
    ("ipv6:%5B::1%5D:42364", "::1"),
    ("ipv6:%5B2001:DB8:0:0::7%5D:443", "2001:db8::7"),
    ("ipv6:[::ffff:192.0.2.1]:80", "192.0.2.1"),
    ("ipv6:%5Bfe80::1%25eth0%5D:80", "fe80::1"),
    ("unix:/run/wharf/auth.sock", "unix"),
    ("unix:", "unix"),
    ("unix-abstract:wharf", "unix"),
    ("ipv4:not-an-address:1", "unknown"),
    ("", "unknown"),
    ("vsock:3:1024", "unknown"),
])
def test_peer_address_drops_the_port(peer: str, address: str) -> None:
    assert peers.peer_address(peer) == address


def test_reconnecting_does_not_change_the_throttle_bucket() -> None:
    buckets = {peers.throttle_bucket(peers.peer_address(f"ipv4:192.0.2.9:{port}")) for port in range(40000, 40100)}
    assert buckets == {"192.0.2.9"}


def test_ipv6_clients_are_counted_per_64() -> None:
    one = peers.throttle_bucket("2001:db8:1:2:aaaa::1")
    assert one == peers.throttle_bucket("2001:db8:1:2:ffff:ffff:ffff:ffff") == "2001:db8:1:2::/64"
    assert one != peers.throttle_bucket("2001:db8:1:3::1")
    assert peers.throttle_bucket("::ffff:192.0.2.1") == "192.0.2.1"
    assert peers.throttle_bucket("x" * 10_000) == "unknown"
    assert peers.throttle_bucket("") == "unknown"


def test_printable_bounds_and_escapes_attacker_text() -> None:
    assert peers.printable("alice") == "alice"
    forged = peers.printable('bob\n{"level": "info", "msg": "login ok"}\x1b[2J')
    assert "\n" not in forged and "\x1b" not in forged and "\\n" in forged and "\\x1b" in forged
    cut = peers.printable("a" * 10_000)
    assert cut.startswith("a" * 64) and cut.endswith("...(cut)") and len(cut) < 80
    assert len(peers.printable("\u00e9" * 1000)) < 80
    assert peers.printable("") == ""


def test_mirrored_prefixes_are_pullable_by_signed_in_accounts_only_unless_anonymous() -> None:
    mirrored = mirror_pulls([("docker.io", False), ("public.example", True)])
    robot = Principal("ci", kind="robot")
    assert repository_actions(robot, [], "docker.io/library/alpine", mirrored) == {"pull"}
    assert repository_actions(ANONYMOUS, [], "docker.io/library/alpine", mirrored) == frozenset()
    assert repository_actions(ANONYMOUS, [], "public.example/a", mirrored) == {"pull"}
    # Only under the prefix, and never more than pull; a non-canonical name gets nothing.
    assert repository_actions(robot, [], "docker.iox/a", mirrored) == frozenset()
    assert repository_actions(robot, [], "docker.io/../x", mirrored) == frozenset()


# -- registry:admin:* (the web UI's way to learn that an account is an admin) -----------------

def test_only_admins_are_granted_the_admin_scope() -> None:
    wanted = [Scope(scopes.REGISTRY, scopes.ADMIN, ("*",))]
    granted_everything = Principal("b", "user", grants=(("**", frozenset(ALL)),))
    robot = Principal("b+ci", "robot", grants=(("**", frozenset(ALL)),))
    assert grant(ADMIN, (), wanted)[0].actions == ("*",)
    for principal in (USER_B, granted_everything, robot, ANONYMOUS):
        assert grant(principal, ("**",), wanted)[0].actions == ()
    # Only "*" is granted, and only when "*" is asked for.
    assert grant(ADMIN, (), [Scope(scopes.REGISTRY, scopes.ADMIN, ("pull",))])[0].actions == ()


def test_what_was_refused_names_real_actions_and_a_star_stands_for_each() -> None:
    """A "*" partly granted refuses the rest by name (a DELETE then gets 403, not 401); actions the
    client made up are never signed into the token (they only grew it: 63 KB from 32 scopes)."""
    from services.auth.policy import refused

    made_up = tuple(f"a{i:03d}" for i in range(195))
    asked = [Scope("repository", "team/app", ("*",)), Scope("repository", "alice/app", ("*",)),
             Scope("repository", "bob/x", ("pull", *made_up)), Scope("registry", "catalog", ("*",))]
    given = [Scope("repository", "team/app", ("pull", "push")), Scope("repository", "alice/app", ()),
             Scope("repository", "bob/x", ("pull",)), Scope("registry", "catalog", ())]
    assert refused(asked, given) == [Scope("repository", "team/app", ("delete",)),
                                     Scope("repository", "alice/app", ("pull", "push", "delete")),
                                     Scope("registry", "catalog", ("*",))]
