"""Ports, protocols and ICMP types as policies write them, and port ranges as LPM prefixes.

Decisions (shared by both formats):
- a numeric port is 1..65535; port 0 is an error (omit `port` to mean every port);
- `endPort` needs a numeric `port` and must be >= it;
- a named port is an IANA service name (<= 15 chars of a-z, 0-9, '-', with a letter), compared
  lowercase as Cilium does;
- the policy map matches the destination port by prefix, so a range becomes a few aligned blocks.
"""

from __future__ import annotations

import re

from tendril.policy.constants import Proto

#: Cilium's `protocol` values (CRD enum); "" and ANY mean TCP+UDP+SCTP when ports are given.
CILIUM_PROTOCOLS: dict[str, int | None] = {
    "TCP": Proto.TCP,
    "UDP": Proto.UDP,
    "SCTP": Proto.SCTP,
    "ICMP": Proto.ICMP,
    "ICMPV6": Proto.ICMPV6,
    "VRRP": Proto.VRRP,
    "IGMP": Proto.IGMP,
    "ANY": None,
}
#: Kubernetes NetworkPolicy protocols
K8S_PROTOCOLS: dict[str, int] = {"TCP": Proto.TCP, "UDP": Proto.UDP, "SCTP": Proto.SCTP}

_SVC_NAME = re.compile(r"^[a-z0-9]([a-z0-9-]*[a-z0-9])?$")

# ICMP type names accepted in `icmps[].fields[].type` (Cilium's names)
ICMPV4_TYPES = {
    "EchoReply": 0,
    "DestinationUnreachable": 3,
    "Redirect": 5,
    "Echo": 8,
    "EchoRequest": 8,
    "RouterAdvertisement": 9,
    "RouterSelection": 10,
    "TimeExceeded": 11,
    "ParameterProblem": 12,
    "Timestamp": 13,
    "TimestampReply": 14,
    "Photuris": 40,
    "ExtendedEchoRequest": 42,
    "ExtendedEchoReply": 43,
}
ICMPV6_TYPES = {
    "DestinationUnreachable": 1,
    "PacketTooBig": 2,
    "TimeExceeded": 3,
    "ParameterProblem": 4,
    "EchoRequest": 128,
    "EchoReply": 129,
    "MulticastListenerQuery": 130,
    "MulticastListenerReport": 131,
    "MulticastListenerDone": 132,
    "RouterSolicitation": 133,
    "RouterAdvertisement": 134,
    "NeighborSolicitation": 135,
    "NeighborAdvertisement": 136,
    "RedirectMessage": 137,
    "RouterRenumbering": 138,
    "ICMPNodeInformationQuery": 139,
    "ICMPNodeInformationResponse": 140,
    "InverseNeighborDiscoverySolicitation": 141,
    "InverseNeighborDiscoveryAdvertisement": 142,
    "HomeAgentAddressDiscoveryRequest": 144,
    "HomeAgentAddressDiscoveryReply": 145,
    "MobilePrefixSolicitation": 146,
    "MobilePrefixAdvertisement": 147,
    "DuplicateAddressRequestCodeSuffix": 157,
    "DuplicateAddressConfirmationCodeSuffix": 158,
    "ExtendedEchoRequest": 160,
    "ExtendedEchoReply": 161,
}


def is_svc_name(name: str) -> bool:
    """IANA service name rules (RFC 6335), as Kubernetes and Cilium check named ports."""
    return (
        1 <= len(name) <= 15
        and bool(_SVC_NAME.match(name))
        and "--" not in name
        and any(c.isalpha() for c in name)
    )


def parse_port(value: int | str) -> tuple[int | None, str | None]:
    """A policy's `port` -> (number, None) or (None, name); ValueError says what is wrong."""
    if isinstance(value, int) or (isinstance(value, str) and value.isdigit()):
        n = int(value)
        if not 1 <= n <= 65535:
            raise ValueError(f'port {n} is out of range 1..65535 (omit "port" to allow every port)')
        return n, None
    if not isinstance(value, str) or not value:
        raise ValueError('port must be a number 1..65535 or a port name (omit "port" to allow every port)')
    name = value.lower()
    if not is_svc_name(name):
        raise ValueError(
            f"port {value!r} is neither a number 1..65535 nor a port name "
            "(a port name is at most 15 characters of a-z, 0-9 and '-', with at least one letter)"
        )
    return None, name


def check_end_port(port: int | None, end_port: int) -> None:
    if port is None:
        raise ValueError("endPort needs a numeric port")
    if not 1 <= end_port <= 65535:
        raise ValueError(f"endPort {end_port} is out of range 1..65535")
    if end_port < port:
        raise ValueError(f"endPort {end_port} must be >= port {port}")


def icmp_type(value: int | str, family: str) -> int:
    """An `icmps` type (number 0..255 or Cilium name) -> number; type 0 cannot be expressed."""
    names = ICMPV4_TYPES if family == "IPv4" else ICMPV6_TYPES
    if isinstance(value, int) or (isinstance(value, str) and value.isdigit()):
        n = int(value)
        if not 0 <= n <= 255:
            raise ValueError(f"ICMP type {n} is out of range 0..255")
    elif value in names:
        n = names[value]
    else:
        raise ValueError(f"unknown {family} ICMP type {value!r} (known: {', '.join(names)})")
    if n == 0:
        raise ValueError(
            "ICMP type 0 (echo reply) cannot be selected: the policy map uses type 0 for 'every type', "
            "and replies are allowed by connection tracking anyway"
        )
    return n


def port_prefixes(lo: int, hi: int) -> list[tuple[int, int]]:
    """Inclusive port range -> [(first port, prefix bits 0..16)] covering it exactly; (0, 0) = all."""
    if (lo, hi) == (0, 0) or (lo <= 0 and hi >= 65535):
        return [(0, 0)]
    out = []
    while lo <= hi:
        size = (lo & -lo) or (1 << 16)
        while size > hi - lo + 1:
            size >>= 1
        out.append((lo, 17 - size.bit_length()))
        lo += size
    return out
