"""SSRF guard for outgoing webhooks: only public addresses, checked where we connect.

A subscription URL is user input. Checking the name once at creation is not
enough (DNS can change, or answer differently the second time), so the
check runs on the addresses actually resolved, at every attempt: the
deliverer's aiohttp connector uses :class:`GuardedResolver`, and a literal IP
in the URL (which aiohttp never resolves) goes through :func:`check_url`.
"""

from __future__ import annotations

import ipaddress
import socket
from urllib.parse import urlsplit

from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import ThreadedResolver

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


class BlockedAddress(OSError):
    """The target resolves to an address webhooks may not reach."""


def is_public(ip: IPAddress) -> bool:
    """False for loopback, private, link-local, reserved, multicast, unspecified, ..."""
    if isinstance(ip, ipaddress.IPv6Address):
        mapped = ip.ipv4_mapped or ip.sixtofour
        if mapped is not None:
            return is_public(mapped)
    return not (ip.is_loopback or ip.is_private or ip.is_link_local or ip.is_reserved
                or ip.is_multicast or ip.is_unspecified or not ip.is_global)


def check_addresses(host: str, addresses: list[str], allow_private: bool) -> None:
    if allow_private:
        return
    for addr in addresses:
        ip = ipaddress.ip_address(addr.split("%", 1)[0])
        if not is_public(ip):
            raise BlockedAddress(f"{host} resolves to {ip}, a non-public address")


def literal_ip(host: str) -> IPAddress | None:
    try:
        return ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return None


def check_url(url: str, allow_private: bool) -> None:
    """Scheme and literal-IP check, no DNS; names are checked where they resolve."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise BlockedAddress(f"{url!r}: only http(s) URLs with a host")
    ip = literal_ip(parts.hostname)
    if ip is not None:
        check_addresses(parts.hostname, [str(ip)], allow_private)


async def resolve_checked(host: str, port: int, allow_private: bool) -> list[str]:
    """Resolve like the connector does and refuse if ANY address is not public."""
    resolver = GuardedResolver(allow_private)
    return [r["host"] for r in await resolver.resolve(host, port, socket.AF_UNSPEC)]


class GuardedResolver(AbstractResolver):
    """aiohttp resolver that refuses names resolving to any non-public address."""

    def __init__(self, allow_private: bool) -> None:
        self._inner = ThreadedResolver()
        self._allow_private = allow_private

    async def resolve(self, host: str, port: int = 0,
                      family: socket.AddressFamily = socket.AF_INET) -> list[ResolveResult]:
        results = await self._inner.resolve(host, port, family)
        check_addresses(host, [r["host"] for r in results], self._allow_private)
        return results

    async def close(self) -> None:
        await self._inner.close()
