"""Names for the numbers the datapath emits, as Cilium's monitor and Hubble spell them.

Kept in one place so `tendril monitor`, flow parsing and later the Hubble printer agree on every
label; the numbers themselves are defined in bpf/include/tendril_abi.h and src/tendril/bpf/abi.py.
"""

from __future__ import annotations

# Cilium pkg/monitor/api drop reason texts (the subset our datapath can produce, plus the policy ones
# later issues add). Unknown codes fall back to "Unknown reason <n>".
DROP_REASON_TEXT: dict[int, str] = {
    0: "Success",
    130: "Invalid source mac",
    131: "Invalid destination mac",
    132: "Invalid source ip",
    133: "Policy denied",
    134: "Invalid packet",
    135: "CT: Truncated or invalid header",
    136: "Fragmentation needed",
    137: "CT: Unknown L4 protocol",
    139: "Unsupported L3 protocol",
    140: "Missed tail call",
    141: "Error writing to packet",
    142: "Unknown L4 protocol",
    143: "Unknown ICMPv4 code",
    144: "Unknown ICMPv4 type",
    145: "Unknown ICMPv6 code",
    146: "Unknown ICMPv6 type",
    155: "CT: Map insertion failed",
    156: "Invalid IPv6 extension header",
    158: "Service backend not found",
    181: "Policy denied by denylist",
}

# Hubble flow.DropReason enum names for the same codes (Flow.drop_reason_desc).
DROP_REASON_ENUM: dict[int, str] = {
    0: "DROP_REASON_UNKNOWN",
    132: "INVALID_SOURCE_IP",
    133: "POLICY_DENIED",
    134: "INVALID_PACKET_DROPPED",
    135: "CT_TRUNCATED_OR_INVALID_HEADER",
    137: "CT_UNKNOWN_L4_PROTOCOL",
    139: "UNSUPPORTED_L3_PROTOCOL",
    142: "UNKNOWN_L4_PROTOCOL",
    155: "CT_MAP_INSERTION_FAILED",
    156: "INVALID_IPV6_EXTENSION_HEADER",
    158: "SERVICE_BACKEND_NOT_FOUND",
    181: "POLICY_DENY",
}

# Cilium monitor TRACE_* observation points -> (hubble CLI name, flow.TraceObservationPoint enum name).
TRACE_POINTS: dict[int, tuple[str, str]] = {
    0: ("to-endpoint", "TO_ENDPOINT"),
    1: ("to-proxy", "TO_PROXY"),
    2: ("to-host", "TO_HOST"),
    3: ("to-stack", "TO_STACK"),
    4: ("to-overlay", "TO_OVERLAY"),
    5: ("from-endpoint", "FROM_ENDPOINT"),
    6: ("from-proxy", "FROM_PROXY"),
    7: ("from-host", "FROM_HOST"),
    8: ("from-stack", "FROM_STACK"),
    9: ("from-overlay", "FROM_OVERLAY"),
    10: ("from-network", "FROM_NETWORK"),
    11: ("to-network", "TO_NETWORK"),
}

# `cilium-dbg monitor` one-line prefixes for trace events ("-> endpoint 1562 ...").
TRACE_MONITOR_PREFIX: dict[int, str] = {
    0: "-> endpoint",
    1: "-> proxy",
    2: "-> host",
    3: "-> stack",
    4: "-> overlay",
    5: "<- endpoint",
    6: "<- proxy",
    7: "<- host",
    8: "<- stack",
    9: "<- overlay",
    10: "<- network",
    11: "-> network",
}

CT_STATE_TEXT: dict[int, str] = {0: "new", 1: "established", 2: "reply", 3: "related"}

EVENT_TYPE_NAMES: dict[str, int] = {"drop": 1, "trace": 4, "policy-verdict": 5}

TCP_FLAG_NAMES: list[tuple[int, str]] = [
    (0x01, "FIN"),
    (0x02, "SYN"),
    (0x04, "RST"),
    (0x08, "PSH"),
    (0x10, "ACK"),
    (0x20, "URG"),
    (0x40, "ECE"),
    (0x80, "CWR"),
]


def drop_reason_text(code: int) -> str:
    return DROP_REASON_TEXT.get(code, f"Unknown reason {code}")


def drop_reason_enum(code: int) -> str:
    return DROP_REASON_ENUM.get(code, f"DROP_REASON_{code}")


def trace_point_name(code: int) -> str:
    return TRACE_POINTS.get(code, (str(code), "UNKNOWN_POINT"))[0]
