"""Policy-map numbers shared with the datapath (bpf/include/tendril_abi.h; checked by a test)."""

from __future__ import annotations

from enum import IntEnum

#: tnd_policy_value.flags
POLICY_DENY = 1 << 0
#: per-endpoint policy map capacity (Cilium's bpf-policy-map-max default)
POLICY_MAX_ENTRIES = 16384

# tnd_policy_key.prefixlen parts: identity (32) + egress (8), then protocol (8), then port bits (16)
PREFIX_BASE = 40
PREFIX_PROTO = 48
PREFIX_FULL = 64


class MatchType(IntEnum):
    """TND_MATCH_*: what a policy verdict matched on (Hubble's numbering and names)."""

    NONE = 0
    L3_ONLY = 1  # peer identity, any port/protocol
    L3_L4 = 2  # peer identity and port
    L4_ONLY = 3  # any peer, port
    ALL = 4  # any peer, any port
    L3_PROTO = 5  # peer identity and protocol
    PROTO_ONLY = 6  # any peer, protocol


class Proto(IntEnum):
    """IP protocol numbers a policy entry can name (0 = any protocol)."""

    ANY = 0
    ICMP = 1
    IGMP = 2
    TCP = 6
    UDP = 17
    ICMPV6 = 58
    VRRP = 112
    SCTP = 132


#: protocols that have ports (the others are matched on protocol, or ICMP type, only)
PORT_PROTOCOLS = frozenset({Proto.TCP, Proto.UDP, Proto.SCTP})
#: what `protocol: ANY` (or no protocol) with ports means, as in Cilium
ANY_EXPANSION = (Proto.TCP, Proto.UDP, Proto.SCTP)
