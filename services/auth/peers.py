"""Who is calling: client addresses for login throttling, and attacker-supplied text for logs.

Failed logins are counted per account and client *address*. A gRPC peer string
(``ipv4:10.0.0.7:54321``) carries the client's source port, which changes with every
connection, so counting per peer string let a client that reconnected each time guess
forever. IPv6 gives one host a whole /64 to pick source addresses from, so IPv6 clients
are counted per /64.
"""

from __future__ import annotations

import ipaddress
import urllib.parse

UNIX = "unix"
UNKNOWN = "unknown"
_MAX_ADDRESS = 100  # longer than any IP address, zone included


def peer_address(peer: str) -> str:
    """The client address of a gRPC peer string, without the port.

    ``ipv4:1.2.3.4:5`` -> ``1.2.3.4``; ``ipv6:[::1]:5`` or ``ipv6:%5B::1%5D:5`` (newer gRPC
    percent-encodes the brackets) -> ``::1``; ``unix:...`` -> ``unix`` (every local-socket
    client is one caller); anything else -> ``unknown`` (one shared bucket, so an
    unexpected format cannot hand out a fresh counter per connection).
    """
    scheme, _, rest = peer[:_MAX_ADDRESS * 2].partition(":")
    if scheme == "ipv4":
        return normalise_address(rest.rpartition(":")[0])
    if scheme == "ipv6":
        rest = urllib.parse.unquote(rest)
        if rest.startswith("[") and "]" in rest:
            return normalise_address(rest[1:rest.index("]")])
        return normalise_address(rest.rpartition(":")[0])
    if scheme in ("unix", "unix-abstract"):
        return UNIX
    return UNKNOWN


def normalise_address(address: str) -> str:
    """An IP address in canonical form (an IPv4-mapped IPv6 address as IPv4), ``unix`` kept,
    anything else ``unknown``."""
    address = address.strip()
    if address == UNIX:
        return UNIX
    try:
        ip = ipaddress.ip_address(address[:_MAX_ADDRESS])
    except ValueError:
        return UNKNOWN
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.IPv6Address(int(ip)))  # drops a zone id ("%eth0")
    return str(ip)


def throttle_bucket(address: str) -> str:
    """What failed logins of one account are counted per: an IPv4 address, an IPv6 /64,
    ``unix`` or ``unknown``. Always short and free of separators, as it goes into a Redis key."""
    canonical = normalise_address(address)
    if canonical in (UNIX, UNKNOWN):
        return canonical
    ip = ipaddress.ip_address(canonical)
    if isinstance(ip, ipaddress.IPv6Address):
        return str(ipaddress.IPv6Network((int(ip) >> 64 << 64, 64)))
    return canonical


def printable(value: str, limit: int = 64) -> str:
    """Attacker-supplied text (a user name, an address) made safe for a log line: printable
    ASCII, other characters escaped (``\\n``, ``\\xe9``), at most ``limit`` characters plus a
    marker when cut, so a log line can neither be forged nor blown up."""
    out: list[str] = []
    size = 0
    for char in value[:limit + 1]:
        shown = char if " " <= char <= "~" else char.encode("unicode_escape").decode("ascii")
        if size + len(shown) > limit:
            return "".join(out) + "...(cut)"
        out.append(shown)
        size += len(shown)
    return "".join(out)
