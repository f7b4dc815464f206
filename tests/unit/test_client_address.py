"""The one rule for who is calling (services/common/client_address.py)."""

from __future__ import annotations

import pytest

from services.common.client_address import client_address, is_trusted, parse_networks, valid_host

PROXIES = parse_networks(["10.0.0.0/8", "fd00::/8"])


@pytest.mark.parametrize("peer,forwarded,expected", [
    ("203.0.113.5", "", "203.0.113.5"),
    # An untrusted peer's X-Forwarded-For is its own claim: ignored.
    ("203.0.113.5", "198.51.100.1", "203.0.113.5"),
    # A trusted proxy: the right-most address that is not a trusted proxy.
    ("10.1.1.1", "198.51.100.1", "198.51.100.1"),
    ("10.1.1.1", "1.2.3.4, 198.51.100.1, 10.2.2.2", "198.51.100.1"),
    # What the client wrote left of that (spoofed) is never used.
    ("10.1.1.1", "6.6.6.6, 198.51.100.7", "198.51.100.7"),
    ("10.1.1.1", "garbage, 198.51.100.1", "198.51.100.1"),
    ("10.1.1.1", "198.51.100.1, garbage", "10.1.1.1"),
    ("10.1.1.1", "10.3.3.3, 10.2.2.2", "10.3.3.3"),
    ("fd00::1", "2001:db8::5", "2001:db8::5"),
    ("10.1.1.1", "[2001:db8::5]:443", "2001:db8::5"),
])
def test_client_address(peer: str, forwarded: str, expected: str) -> None:
    assert client_address(peer, forwarded, PROXIES) == expected


def test_no_trusted_proxies_means_the_peer() -> None:
    assert client_address("127.0.0.1", "8.8.8.8", ()) == "127.0.0.1"
    assert not is_trusted("127.0.0.1", ())


def test_a_malformed_proxy_list_names_the_variable() -> None:
    with pytest.raises(ValueError, match="WHARF_TRUSTED_PROXIES"):
        parse_networks(["10.0.0.0/33"])


@pytest.mark.parametrize("host,ok", [
    ("registry.example.com", True), ("127.0.0.1:5000", True), ("[::1]:5000", True), ("localhost", True),
    ('evil",realm="x', False), ("a b", False), ("x\r\nY: z", False), ("", False), ("host:99999999", False),
])
def test_valid_host(host: str, ok: bool) -> None:
    assert valid_host(host) is ok
