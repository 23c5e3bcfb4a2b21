"""Where a webhook may be sent: the SSRF policy, applied at registration and again before every send.

A URL passes when its scheme is https (http only under a test setting), it carries no userinfo, and every
address its host resolves to lies outside the deny ranges below. The host is resolved once; the sender
then connects to one of exactly those addresses (never resolving again, so DNS rebinding between check
and connect is impossible) and never follows a redirect.

The deny ranges are written out as CIDRs rather than left to ``ipaddress``' ``is_private``/``is_global``
flags, which miss shared address space and the IPv6 forms that embed an IPv4 address: ``::ffff:a.b.c.d``
(IPv4-mapped), ``64:ff9b::a.b.c.d`` (NAT64) and ``2002:aabb:ccdd::`` (6to4) reach the same hosts as the
plain IPv4 address on most systems.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from urllib.parse import SplitResult, urlsplit

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

# IANA special-purpose IPv4 ranges that must never receive a webhook.
DENY_IPV4 = (
    "0.0.0.0/8",  # "this network"
    "10.0.0.0/8",  # private
    "100.64.0.0/10",  # shared address space (carrier-grade NAT)
    "127.0.0.0/8",  # loopback
    "169.254.0.0/16",  # link-local, including the 169.254.169.254 cloud metadata service
    "172.16.0.0/12",  # private
    "192.0.0.0/24",  # IETF protocol assignments (192.0.0.192 is a metadata address on some clouds)
    "192.0.2.0/24",  # documentation
    "192.88.99.0/24",  # 6to4 relay anycast
    "192.168.0.0/16",  # private
    "198.18.0.0/15",  # benchmarking
    "198.51.100.0/24",  # documentation
    "203.0.113.0/24",  # documentation
    "224.0.0.0/4",  # multicast
    "240.0.0.0/4",  # reserved, including 255.255.255.255
)

DENY_IPV6 = (
    "::/96",  # unspecified, loopback and the deprecated IPv4-compatible addresses (::a.b.c.d)
    "::ffff:0:0/96",  # IPv4-mapped: every one of them
    "::ffff:0:0:0/96",  # IPv4-translated (SIIT)
    "64:ff9b:1::/48",  # local-use NAT64
    "100::/64",  # discard-only
    "2001::/23",  # IETF protocol assignments, including Teredo (2001::/32)
    "2001:db8::/32",  # documentation
    "3fff::/20",  # documentation
    "fc00::/7",  # unique local (fd00:ec2::254 is a metadata address)
    "fe80::/10",  # link-local
    "fec0::/10",  # site-local (deprecated)
    "ff00::/8",  # multicast
)

# IPv6 prefixes that embed an IPv4 address, and where it sits: (prefix, prefix length, left shift).
_EMBEDDINGS = (
    (int(ipaddress.IPv6Address("::ffff:0:0")), 96, 0),  # IPv4-mapped
    (int(ipaddress.IPv6Address("64:ff9b::")), 96, 0),  # NAT64 well-known prefix
    (int(ipaddress.IPv6Address("2002::")), 16, 80),  # 6to4: 2002:WWXX:YYZZ::/48
)


def _embedded_forms(v4: ipaddress.IPv4Network) -> list[ipaddress.IPv6Network]:
    return [
        ipaddress.IPv6Network((prefix | (int(v4.network_address) << shift), length + v4.prefixlen))
        for prefix, length, shift in _EMBEDDINGS
    ]


def _deny_networks() -> tuple[IPNetwork, ...]:
    v4 = [ipaddress.IPv4Network(cidr) for cidr in DENY_IPV4]
    v6 = [ipaddress.IPv6Network(cidr) for cidr in DENY_IPV6]
    embedded = [form for net in v4 for form in _embedded_forms(net)]
    return (*v4, *v6, *embedded)


DENY_NETWORKS: tuple[IPNetwork, ...] = _deny_networks()


class UnsafeUrl(ValueError):
    """The URL may not receive webhooks; the message says why (safe to show its owner)."""


@dataclass(frozen=True)
class ParsedUrl:
    scheme: str
    host: str  # lower-case, without brackets
    port: int
    target: str  # path and query, as sent on the request line
    host_header: str  # what the Host header carries: the name as written, port when not the default


@dataclass(frozen=True)
class CheckedUrl:
    url: ParsedUrl
    addresses: tuple[IPAddress, ...]  # every address the host resolved to, all of them allowed

    @property
    def address(self) -> IPAddress:
        """The address to connect to (the first one the resolver gave)."""
        return self.addresses[0]


def _literal(host: str) -> IPAddress | None:
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        return None


class UrlPolicy:
    """The SSRF policy with its (test-only) relaxations."""

    def __init__(
        self,
        *,
        allow_http: bool = False,
        allow_cidrs: Iterable[str] = (),
        resolver: Mapping[str, Sequence[str]] | None = None,
    ) -> None:
        self.allow_http = allow_http
        self.allow_networks = tuple(ipaddress.ip_network(cidr, strict=False) for cidr in allow_cidrs)
        self.resolver = {host.lower(): list(addresses) for host, addresses in (resolver or {}).items()}

    def parse(self, url: str) -> ParsedUrl:
        """Syntax and scheme checks; no network access."""
        if len(url) > 2048:
            raise UnsafeUrl("the URL is longer than 2048 characters")
        if any(ch.isspace() or ord(ch) < 0x20 for ch in url):
            raise UnsafeUrl("the URL contains whitespace or control characters")
        try:
            parts: SplitResult = urlsplit(url)
            port = parts.port
        except ValueError as exc:
            raise UnsafeUrl(f"the URL is malformed ({exc})") from None
        scheme = parts.scheme.lower()
        allowed = ("https", "http") if self.allow_http else ("https",)
        if scheme not in allowed:
            raise UnsafeUrl("only " + " and ".join(f"{s}://" for s in allowed) + " URLs are accepted")
        if "@" in parts.netloc or parts.username is not None or parts.password is not None:
            raise UnsafeUrl("credentials in the URL (user:password@) are not accepted")
        host = (parts.hostname or "").rstrip(".")
        if not host:
            raise UnsafeUrl("the URL has no host")
        try:
            host = host.encode("idna").decode("ascii")  # internationalised names, as DNS and TLS see them
        except UnicodeError:
            raise UnsafeUrl("the host name is not valid") from None
        if parts.fragment:
            raise UnsafeUrl("the URL may not carry a #fragment")
        default_port = 443 if scheme == "https" else 80
        port = port or default_port
        if not 0 < port < 65536:
            raise UnsafeUrl("the port is out of range")
        literal = _literal(host)
        shown_host = f"[{host}]" if isinstance(literal, ipaddress.IPv6Address) else host
        host_header = shown_host if port == default_port else f"{shown_host}:{port}"
        target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        return ParsedUrl(scheme=scheme, host=host, port=port, target=target, host_header=host_header)

    def resolve(self, host: str, port: int) -> list[IPAddress]:
        """Every address ``host`` stands for: a literal, the test resolver's answer, or DNS (once)."""
        literal = _literal(host)
        if literal is not None:
            return [literal]
        if host in self.resolver:
            return [ipaddress.ip_address(a) for a in self.resolver[host]]
        try:
            infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP)
        except (socket.gaierror, UnicodeError) as exc:
            raise UnsafeUrl(f"the host {host!r} does not resolve") from exc
        addresses: list[IPAddress] = []
        for _family, _type, _proto, _canon, sockaddr in infos:
            # getaddrinfo may append a scope to link-local IPv6 addresses ("fe80::1%eth0").
            address = ipaddress.ip_address(str(sockaddr[0]).split("%", 1)[0])
            if address not in addresses:
                addresses.append(address)
        if not addresses:
            raise UnsafeUrl(f"the host {host!r} does not resolve")
        return addresses

    def is_denied(self, address: IPAddress) -> bool:
        if any(address in net for net in self.allow_networks):
            return False
        return any(address in net for net in DENY_NETWORKS)

    def check(self, url: str) -> CheckedUrl:
        """Parse, resolve once and check every address; raises :class:`UnsafeUrl`."""
        parsed = self.parse(url)
        addresses = self.resolve(parsed.host, parsed.port)
        denied = [a for a in addresses if self.is_denied(a)]
        if denied:
            raise UnsafeUrl(
                f"the host {parsed.host!r} resolves to an address that may not receive webhooks ({denied[0]})"
            )
        return CheckedUrl(url=parsed, addresses=tuple(addresses))
