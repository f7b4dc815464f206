"""Who is calling, defined once: the address lockouts, rate limits and the audit log count by.

The client address is the TCP peer, unless that peer is one of the operator's trusted
proxies (``WHARF_TRUSTED_PROXIES``, CIDRs, empty by default): then it is the right-most
address in ``X-Forwarded-For`` that is not itself a trusted proxy. Everything left of that
was written by the client and proves nothing, so it is never used. The same rule decides
whether ``X-Forwarded-Proto`` and ``X-Forwarded-Host`` are believed.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable

Network = ipaddress.IPv4Network | ipaddress.IPv6Network

# host or IPv4, or a bracketed IPv6 literal, then an optional port: what a Host header may hold.
_HOST_RE = re.compile(r"^(?:\[[0-9A-Fa-f:.]{2,45}\]|[A-Za-z0-9](?:[A-Za-z0-9.-]{0,251}[A-Za-z0-9])?)(?::[0-9]{1,5})?\Z")
# Bounds the work a hostile X-Forwarded-For can cause.
_MAX_HOPS = 32


def parse_networks(values: Iterable[str], variable: str = "WHARF_TRUSTED_PROXIES") -> tuple[Network, ...]:
    """CIDRs (or single addresses) -> networks; a malformed entry raises ValueError naming ``variable``."""
    networks: list[Network] = []
    for value in values:
        try:
            networks.append(ipaddress.ip_network(value.strip(), strict=False))
        except ValueError:
            raise ValueError(f"{variable}: {value!r} is not an address or a CIDR (e.g. 10.0.0.0/8)") from None
    return tuple(networks)


def _address(value: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    value = value.strip()
    if value.startswith("[") and "]" in value:  # [v6]:port
        value = value[1:value.index("]")]
    elif value.count(":") == 1:  # v4:port
        value = value.split(":", 1)[0]
    try:
        return ipaddress.ip_address(value)
    except ValueError:
        return None


def is_trusted(peer: str, trusted: tuple[Network, ...]) -> bool:
    address = _address(peer) if trusted else None
    return address is not None and any(address in network for network in trusted)


def client_address(peer: str, forwarded_for: str, trusted: tuple[Network, ...]) -> str:
    """The address to attribute a request to (see the module docstring)."""
    if not is_trusted(peer, trusted):
        return peer
    hops = [h for h in (part.strip() for part in forwarded_for.split(",")[-_MAX_HOPS:]) if h]
    for hop in reversed(hops):
        address = _address(hop)
        if address is None:
            return peer  # a garbled entry: stop at the last hop we can vouch for
        if not any(address in network for network in trusted):
            return str(address)
    # Every hop is a trusted proxy: the left-most one is where the request entered.
    first = _address(hops[0]) if hops else None
    return str(first) if first is not None else peer


def valid_host(value: str) -> bool:
    """True for a Host header that can safely go into a URL we hand out (the token realm)."""
    return bool(_HOST_RE.match(value))
