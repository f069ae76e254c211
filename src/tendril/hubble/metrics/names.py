"""Label values spelled exactly as Hubble's metric handlers spell them.

Dashboards and alerts written for Cilium match on these strings ("TCP", "Trace", "to-endpoint",
"POLICY_DENIED", "EchoRequest", "l3-l4"...), so they are kept in one table-driven module instead of
being formatted ad hoc inside each plugin.
"""

from __future__ import annotations

from tendril.hubble import record
from tendril.monitor import api

# Cilium monitor message types (pkg/monitor/api).
MSG_DROP, MSG_DEBUG, MSG_CAPTURE, MSG_TRACE, MSG_POLICY_VERDICT = 1, 2, 3, 4, 5
MSG_ACCESS_LOG = 129  # L7 records from the proxy

# IP protocol numbers that give a flow an L4 section.
IPPROTO_ICMP, IPPROTO_TCP, IPPROTO_UDP, IPPROTO_ICMPV6, IPPROTO_SCTP = 1, 6, 17, 58, 132
L4_NAMES: dict[int, str] = {
    IPPROTO_TCP: "TCP",
    IPPROTO_UDP: "UDP",
    IPPROTO_ICMP: "ICMPv4",
    IPPROTO_ICMPV6: "ICMPv6",
    IPPROTO_SCTP: "SCTP",
}
PORT_PROTOCOLS = (IPPROTO_TCP, IPPROTO_UDP, IPPROTO_SCTP)

TCP_FIN, TCP_SYN, TCP_RST, TCP_ACK = 0x01, 0x02, 0x04, 0x10

# Reserved security identities (cilium-dbg identity list); 9/10 are world-ipv4/world-ipv6.
RESERVED_IDENTITIES: dict[int, str] = {k: v for k, v in api.RESERVED_IDENTITY_NAMES.items() if k}
IDENTITY_HOST, IDENTITY_WORLD, IDENTITY_HEALTH = 1, 2, 4
WORLD_IDENTITIES = (2, 9, 10)

# monitorAPI.PolicyMatchType.String(), lower-cased by the policy handler.
POLICY_MATCH_NAMES: dict[int, str] = {
    0: "none",
    1: "L3-Only",
    2: "L3-L4",
    3: "L4-Only",
    4: "all",
    5: "L3-Proto",
    6: "Proto-Only",
}

FLOW_TYPE_NAMES: dict[int, str] = {
    MSG_DROP: "Drop",
    MSG_CAPTURE: "Capture",
    MSG_TRACE: "Trace",
    MSG_POLICY_VERDICT: "PolicyVerdict",
    MSG_ACCESS_LOG: "L7",
}

LOST_EVENT_SOURCES = ("perf_event_ring_buffer", "observer_events_queue", "hubble_ring_buffer")


def flow_protocol(event_type: int, l4_proto: int) -> str:
    """v1.FlowProtocol: the L7 name for proxy records, else the L4 name ("Unknown L4" without one).

    L7 records carry no parsed L7 section yet (a later issue), so they are all "Unknown L7".
    """
    if event_type == MSG_ACCESS_LOG:
        return "Unknown L7"
    if event_type in (MSG_DROP, MSG_TRACE, MSG_POLICY_VERDICT, MSG_CAPTURE):
        return L4_NAMES.get(l4_proto, "Unknown L4")
    return "Unknown flow"


def flow_type(event_type: int, sub_type: int) -> tuple[str, str]:
    """(type, subtype) of hubble_flows_processed_total, as the flow handler names them."""
    name = FLOW_TYPE_NAMES.get(event_type)
    if name is None:
        return "Unknown", str(event_type)
    if event_type == MSG_TRACE:
        # monitorAPI.TraceObservationPoints[sub_type]; a Go map miss is "".
        return name, api.TRACE_POINTS.get(sub_type, ("", ""))[0]
    return name, ""


def verdict_name(verdict: int) -> str:
    names = record.VERDICT_NAMES
    return names[verdict] if 0 <= verdict < len(names) else str(verdict)


def direction_name(direction: int) -> str:
    """flow.TrafficDirection enum name."""
    names = record.DIRECTION_NAMES
    return names[direction] if 0 <= direction < len(names) else str(direction)


def ip_family(version: int) -> str:
    """flow.IPVersion enum name, the tcp/icmp "family" label."""
    return {4: "IPv4", 6: "IPv6"}.get(version, "IP_NOT_USED")


def policy_match_name(match: int) -> str:
    return POLICY_MATCH_NAMES.get(match, "unknown").lower()


def icmp_type_code(l4_proto: int, icmp_type: int, code: int) -> str:
    """The icmp "type" label: "EchoRequest", "DestinationUnreachable(Port)", "42(0)" for unknown types."""
    return api.icmp_type_code_text(l4_proto, icmp_type, code)
