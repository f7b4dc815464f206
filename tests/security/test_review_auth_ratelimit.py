"""A hostile review of rate limits (2026-12-03), on a real stack: the gateway trusts 127.0.0.1 as a
proxy, so each request speaks for the client address its X-Forwarded-For names, as behind a load
balancer (a gateway reached over IPv6 directly sees the same addresses as TCP peers)."""

from __future__ import annotations

import collections
import pathlib
from collections.abc import Callable

import pytest
import requests

from tests.support.stack import RunningStack

POLICY = """
ratelimits:
  - repositories: "limited/**"
    requests_per_second: 0.1
    burst: 3
  - repositories: "**"
    requests_per_second: 1
    burst: 5
"""


@pytest.fixture(scope="module")
def limited(start_stack: Callable[..., RunningStack], tmp_path_factory: pytest.TempPathFactory) -> RunningStack:
    policy = tmp_path_factory.mktemp("policy") / "policy.yaml"
    policy.write_text(POLICY)
    return start_stack(env={"WHARF_POLICY_FILE": str(pathlib.Path(policy)), "WHARF_TRUSTED_PROXIES": "127.0.0.1",
                            "WHARF_GATEWAY_WORKERS": "1"})


def _statuses(stack: RunningStack, addresses: list[str]) -> collections.Counter[int]:
    with requests.Session() as session:
        return collections.Counter(session.get(f"{stack.url}/v2/", headers={"X-Forwarded-For": address},
                                               timeout=10).status_code for address in addresses)


def test_one_ipv6_host_cannot_escape_its_limit_by_changing_address(limited: RunningStack) -> None:
    """Before: every IPv6 address had a bucket of its own, and a host picks its source addresses from
    a whole /64: 30 requests from 30 addresses of one /64 were all served under a burst of 5."""
    statuses = _statuses(limited, [f"2001:db8:0:7::{i + 1:x}" for i in range(30)])
    assert statuses[429] >= 20, statuses
    # Another /64 is another client; an IPv4-mapped address is its IPv4 address.
    assert _statuses(limited, ["2001:db8:0:8::1"])[200] == 1
    assert _statuses(limited, ["192.0.2.44"] * 5)[200] == 5
    assert _statuses(limited, ["::ffff:192.0.2.44"])[429] == 1


def test_the_web_uis_pages_of_a_repository_count_under_its_rule(limited: RunningStack) -> None:
    """Before: a UI page names its repository in a parameter, not the path, and was counted under the
    rule for no repository ("**", or nothing at all): a client over the limit of limited/** kept reading
    its tags and manifests (and deleting) through /ui/repository, /ui/manifest and /ui/delete."""
    client = {"X-Forwarded-For": "192.0.2.60"}
    with requests.Session() as session:
        api = [session.get(f"{limited.url}/v2/limited/app/tags/list", headers=client, timeout=10).status_code
               for _ in range(3)]
        assert 429 not in api, api
        pages = [session.get(f"{limited.url}{page}", headers=client, timeout=10)
                 for page in ("/ui/repository?name=limited/app", "/ui/manifest?name=limited/app&ref=v1",
                              "/ui/delete?name=limited/app&ref=v1")]
        assert [page.status_code for page in pages] == [429, 429, 429], [page.text[:200] for page in pages]
        assert all(page.headers.get("Retry-After") for page in pages)
        # Another repository's page, under "**", is another bucket.
        assert session.get(f"{limited.url}/ui/repository?name=other/app", headers=client,
                           timeout=10).status_code != 429


def test_a_signed_in_ui_session_counts_under_its_account_from_any_address(
        start_stack: Callable[..., RunningStack], tmp_path_factory: pytest.TempPathFactory) -> None:
    """Before: a UI page's token travels in the session cookie, not in ``Authorization``, so the
    limiter saw no account and counted a signed-in session by its address only: one session browsing
    from 15 addresses was served 15 times under a burst of 5. Now the cookie's token names the account."""
    policy = tmp_path_factory.mktemp("policy") / "policy.yaml"
    policy.write_text(POLICY)
    admin, user, password = "ratelimit-ui-admin-1", "uirate", "uirate-password-1"
    stack = start_stack(env={"WHARF_POLICY_FILE": str(policy), "WHARF_TRUSTED_PROXIES": "127.0.0.1",
                             "WHARF_GATEWAY_WORKERS": "1", "WHARF_AUTH": "token", "WHARF_ADMIN_PASSWORD": admin,
                             "WHARF_BCRYPT_ROUNDS": "4"})
    stack.admin(admin, "user", "add", user, "--password-stdin", stdin=password + "\n")
    with requests.Session() as browser:
        login = {"X-Forwarded-For": "192.0.2.90"}
        form = browser.get(f"{stack.url}/ui/login", headers=login, timeout=10)
        csrf = form.text.split('name="csrf" value="', 1)[1].split('"', 1)[0]
        answer = browser.post(f"{stack.url}/ui/login", data={"csrf": csrf, "username": user, "password": password},
                              headers={**login, "Origin": stack.url}, allow_redirects=False, timeout=10)
        assert answer.status_code == 303, answer.text
        statuses = collections.Counter(
            browser.get(f"{stack.url}/ui/usage", headers={"X-Forwarded-For": f"198.51.100.{i + 1}"},
                        timeout=10).status_code for i in range(15))
    assert statuses[429] >= 8, statuses
    # Signed out (no cookie), each of those addresses is a client of its own.
    assert requests.get(f"{stack.url}/ui/usage", headers={"X-Forwarded-For": "198.51.100.200"},
                        timeout=10).status_code != 429
