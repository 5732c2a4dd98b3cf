"""Who sent a request to the public port, and whether that source may send webhooks.

The sender is the TCP peer, unless the peer is one of our own proxies: then it is the right-most
address in X-Forwarded-For that is not one of our proxies. Only the hops our proxies appended are
believed; whatever the client wrote to the left of them is the client's to forge.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True, slots=True)
class SourcePolicy:
    """`allowed` None: any source may send; `trusted_proxies` empty: X-Forwarded-For is ignored."""

    allowed: tuple[Network, ...] | None = None
    trusted_proxies: tuple[Network, ...] = ()

    @property
    def inspects_requests(self) -> bool:
        """False when neither setting is in use: nothing to check, nothing to resolve."""
        return self.allowed is not None or bool(self.trusted_proxies)

    def sender(self, peer: str | None, forwarded_for: Iterable[str]) -> Address | None:
        """The sender's address; None when it cannot be told (no peer, or a hop that is not an
        address where our proxy should have written one)."""
        address = parse_address(peer)
        if address is None or not self._is_proxy(address):
            return address
        hops = [hop for header in forwarded_for for hop in header.split(",")]
        for hop in reversed(hops):
            hop_address = parse_address(hop)
            if hop_address is None:
                return None
            address = hop_address
            if not self._is_proxy(address):
                return address
        return address  # every hop is one of our proxies: the left-most is the sender

    def allows(self, address: Address | None) -> bool:
        if self.allowed is None:
            return True
        return address is not None and _within(address, self.allowed)

    def _is_proxy(self, address: Address) -> bool:
        return _within(address, self.trusted_proxies)


def _within(address: Address, networks: tuple[Network, ...]) -> bool:
    return any(address in network for network in networks)  # other IP versions never match


def parse_address(text: str | None) -> Address | None:
    """An IP address as peers and proxies write it (`1.2.3.4`, `1.2.3.4:5678`, `[::1]:80`,
    `::ffff:1.2.3.4`, which is 1.2.3.4); None if it is none."""
    if not text:
        return None
    text = text.strip()
    if text.startswith("["):
        text = text[1:].partition("]")[0]
    elif text.count(":") == 1:
        text = text.partition(":")[0]
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address
