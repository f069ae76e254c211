"""Names for the numbers the datapath emits, as Cilium's monitor and Hubble spell them.

Kept in one place so `tendril monitor`, flow parsing and later the Hubble printer agree on every
label; the numbers themselves are defined in bpf/include/tendril_abi.h and src/tendril/bpf/abi.py.
"""

from __future__ import annotations

# Cilium pkg/monitor/api drop reason texts (the subset our datapath can produce, plus the policy ones
# later issues add). Unknown codes fall back to "Unknown reason <n>".
DROP_REASON_TEXT: dict[int, str] = {
    0: "Success",
    2: "Invalid packet",
    3: "Interface",
    4: "Interface Decrypted",
    5: "LB, sock cgroup: No backend slot entry found",
    6: "LB, sock cgroup: No backend entry found",
    7: "LB, sock cgroup: Reverse entry update failed",
    8: "LB, sock cgroup: Reverse entry stale",
    9: "Fragmented packet",
    10: "Fragmented packet entry update failed",
    11: "Missed tail call to custom program",
    12: "Interface Decrypting",
    13: "Interface Encrypting",
    14: "LB: sock cgroup: Reverse entry delete succeeded",
    15: "MTU error message",
    130: "Invalid source mac",
    131: "Invalid destination mac",
    132: "Invalid source ip",
    133: "Policy denied",
    134: "Invalid packet",
    135: "CT: Truncated or invalid header",
    136: "Fragmentation needed",
    137: "CT: Unknown L4 protocol",
    138: "CT: Can't create entry from packet",
    139: "Unsupported L3 protocol",
    140: "Missed tail call",
    141: "Error writing to packet",
    142: "Unknown L4 protocol",
    143: "Unknown ICMPv4 code",
    144: "Unknown ICMPv4 type",
    145: "Unknown ICMPv6 code",
    146: "Unknown ICMPv6 type",
    147: "Error retrieving tunnel key",
    148: "Error retrieving tunnel options",
    149: "Invalid Geneve option",
    150: "Unknown L3 target address",
    151: "Stale or unroutable IP",
    152: "No matching local container found",
    153: "Error while correcting L3 checksum",
    154: "Error while correcting L4 checksum",
    155: "CT: Map insertion failed",
    156: "Invalid IPv6 extension header",
    157: "IP fragmentation not supported",
    158: "Service backend not found",
    160: "No tunnel/encapsulation endpoint (datapath BUG!)",
    161: "NAT 46/64 not enabled",
    162: "Reached EDT rate-limiting drop horizon",
    163: "Unknown connection tracking state",
    164: "Local host is unreachable",
    165: "No configuration available to perform policy decision",
    166: "Unsupported L2 protocol",
    167: "No mapping for NAT masquerade",
    168: "Unsupported protocol for NAT masquerade",
    169: "FIB lookup failed",
    170: "Encapsulation traffic is prohibited",
    171: "Invalid identity",
    172: "Unknown sender",
    173: "NAT not needed",
    174: "Is a ClusterIP",
    175: "First logical datagram fragment not found",
    176: "Forbidden ICMPv6 message",
    177: "Denied by LB src range check",
    178: "Socket lookup failed",
    179: "Socket assign failed",
    180: "Proxy redirection not supported for protocol",
    181: "Policy denied by denylist",
    182: "VLAN traffic disallowed by VLAN filter",
    183: "Incorrect VNI from VTEP",
    184: "Failed to update or lookup TC buffer",
    185: "No SID was found for the IP address",
    186: "SRv6 state was removed during tail call",
    187: "L3 translation from IPv4 to IPv6 failed (NAT46)",
    188: "L3 translation from IPv6 to IPv4 failed (NAT64)",
    189: "Authentication required",
    190: "No conntrack map found",
    191: "No nat map found",
    192: "Invalid ClusterID",
    193: "Unsupported packet protocol for DSR encapsulation",
    194: "No egress gateway found",
    195: "Traffic is unencrypted",
    196: "TTL exceeded",
    197: "No node ID found",
    198: "Rate limited",
    199: "IGMP handled",
    200: "IGMP subscribed",
    201: "Multicast handled",
    202: "Host datapath not ready",
    203: "Endpoint policy program not available",
    204: "No Egress IP configured",
    205: "Punt to proxy",
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


POLICY_MATCH_TYPES: dict[int, str] = {
    0: "none",
    1: "L3-Only",
    2: "L3-L4",
    3: "L4-Only",
    4: "all",
    5: "L3-Proto",
    6: "Proto-Only",
}


RESERVED_IDENTITY_NAMES: dict[int, str] = {
    0: "unknown",
    1: "host",
    2: "world",
    3: "unmanaged",
    4: "health",
    5: "init",
    6: "remote-node",
    7: "kube-apiserver",
    8: "ingress",
    9: "world-ipv4",
    10: "world-ipv6",
}


# ICMP type/code names as gopacket's ICMPv4TypeCode/ICMPv6TypeCode.String() spell them:
# type -> (name, {code: name} or None when the type has no codes).
ICMPV4_TYPES: dict[int, tuple[str, dict[int, str] | None]] = {
    0: ("EchoReply", None),
    3: (
        "DestinationUnreachable",
        {
            0: "Net",
            1: "Host",
            2: "Protocol",
            3: "Port",
            4: "FragmentationNeeded",
            5: "SourceRoutingFailed",
            6: "NetUnknown",
            7: "HostUnknown",
            8: "SourceIsolated",
            9: "NetAdminProhibited",
            10: "HostAdminProhibited",
            11: "NetTOS",
            12: "HostTOS",
            13: "CommAdminProhibited",
            14: "HostPrecedence",
            15: "PrecedenceCutoff",
        },
    ),
    4: ("SourceQuench", None),
    5: ("Redirect", {0: "Net", 1: "Host", 2: "TOS+Net", 3: "TOS+Host"}),
    8: ("EchoRequest", None),
    9: ("RouterAdvertisement", None),
    10: ("RouterSolicitation", None),
    11: ("TimeExceeded", {0: "TTLExceeded", 1: "FragmentReassemblyTimeExceeded"}),
    12: ("ParameterProblem", {0: "PointerIndicatesError", 1: "MissingOption", 2: "BadLength"}),
    13: ("TimestampRequest", None),
    14: ("TimestampReply", None),
    15: ("InfoRequest", None),
    16: ("InfoReply", None),
    17: ("AddressMaskRequest", None),
    18: ("AddressMaskReply", None),
}
ICMPV6_TYPES: dict[int, tuple[str, dict[int, str] | None]] = {
    1: (
        "DestinationUnreachable",
        {
            0: "NoRouteToDst",
            1: "AdminProhibited",
            2: "BeyondScopeOfSrc",
            3: "AddressUnreachable",
            4: "PortUnreachable",
            5: "SrcAddressFailedPolicy",
            6: "RejectRouteToDst",
        },
    ),
    2: ("PacketTooBig", None),
    3: ("TimeExceeded", {0: "HopLimitExceeded", 1: "FragmentReassemblyTimeExceeded"}),
    4: (
        "ParameterProblem",
        {0: "ErroneousHeaderField", 1: "UnrecognizedNextHeader", 2: "UnrecognizedIPv6Option"},
    ),
    128: ("EchoRequest", None),
    129: ("EchoReply", None),
    133: ("RouterSolicitation", None),
    134: ("RouterAdvertisement", None),
    135: ("NeighborSolicitation", None),
    136: ("NeighborAdvertisement", None),
    137: ("Redirect", None),
}


def icmp_type_code_text(l4_proto: int, icmp_type: int, icmp_code: int) -> str:
    """gopacket's ICMPv4TypeCode / ICMPv6TypeCode String(): "EchoRequest", "DestinationUnreachable(Port)"."""
    table = ICMPV4_TYPES if l4_proto == 1 else ICMPV6_TYPES
    info = table.get(icmp_type)
    if info is None:
        return f"{icmp_type}({icmp_code})"
    name, codes = info
    if codes is None:
        return name if icmp_code == 0 else f"{name}(Code: {icmp_code})"
    code_name = codes.get(icmp_code)
    return f"{name}({code_name})" if code_name is not None else f"{name}(Code: {icmp_code})"
