"""Python mirror of bpf/include/tendril_abi.h: numpy dtypes for every struct, the constants, names.

Why explicit offsets: the dtypes must equal the C layout byte for byte (the kernel writes these
structs into maps and the ring buffer). tests/test_abi.py compares them to the compiled header's
BTF, so change both files together.
"""

from __future__ import annotations

from enum import IntEnum, IntFlag

import numpy as np


def _struct(fields: list[tuple[str, str | tuple[str, int]]], itemsize: int) -> np.dtype:
    """Build a packed-as-C dtype with explicit offsets (natural alignment, like the C compiler)."""
    names, formats, offsets = [], [], []
    off = 0
    for name, fmt in fields:
        dt = np.dtype(fmt) if isinstance(fmt, str) else np.dtype((fmt[0], (fmt[1],)))
        align = dt.base.itemsize
        off = (off + align - 1) // align * align
        names.append(name)
        formats.append(dt)
        offsets.append(off)
        off += dt.itemsize
    if off > itemsize:
        raise AssertionError(f"struct larger than declared: {off} > {itemsize}")
    return np.dtype({"names": names, "formats": formats, "offsets": offsets, "itemsize": itemsize})


# ---- event types / trace points / drop reasons -------------------------------------------------


class EventType(IntEnum):
    """Cilium monitor API message types."""

    DROP = 1
    TRACE = 4
    POLICY_VERDICT = 5


class TracePoint(IntEnum):
    """Cilium TRACE_* observation points."""

    TO_LXC = 0
    TO_PROXY = 1
    TO_HOST = 2
    TO_STACK = 3
    TO_OVERLAY = 4
    FROM_LXC = 5
    FROM_PROXY = 6
    FROM_HOST = 7
    FROM_STACK = 8
    FROM_OVERLAY = 9
    FROM_NETWORK = 10
    TO_NETWORK = 11


class DropReason(IntEnum):
    """Hubble flow.DropReason values."""

    INVALID_SOURCE_IP = 132
    POLICY_DENIED = 133
    INVALID_PACKET = 134
    CT_TRUNCATED = 135
    UNSUPPORTED_L3 = 139
    UNKNOWN_L4 = 142
    CT_MAP_INSERTION_FAILED = 155
    INVALID_IPV6_EXTHDR = 156


class CtState(IntEnum):
    NEW = 0
    ESTABLISHED = 1
    REPLY = 2
    RELATED = 3


class CtScope(IntEnum):
    EGRESS = 1  # created by traffic leaving the pod ("OUT")
    INGRESS = 2  # created by traffic entering the pod ("IN")


class CtFlags(IntFlag):
    SEEN_NON_SYN = 1 << 0
    TX_CLOSING = 1 << 1
    RX_CLOSING = 1 << 2
    SEEN_REPLY = 1 << 3
    RST = 1 << 4


CT_LIFETIME_TCP = 21600
CT_LIFETIME_TCP_SYN = 60
CT_LIFETIME_TCP_CLOSE = 10
CT_LIFETIME_NONTCP = 60


class MetricDirection(IntEnum):
    INGRESS = 1  # into the pod (to-endpoint)
    EGRESS = 2  # out of the pod (from-endpoint)


METRICS_ENTRIES = 1024


def metrics_index(reason: int, direction: int) -> int:
    """Metrics map index = reason * 4 + direction; reason 0 = forwarded."""
    return reason * 4 + direction


class TraceLevel(IntEnum):
    ALL = 0
    MEDIUM = 1
    NONE = 2


class EventFlags(IntFlag):
    IS_REPLY = 1 << 0
    IPV6 = 1 << 1
    FRAGMENT = 1 << 2
    ICMP_ERROR = 1 << 3  # ICMP error: ports/addrs are from the outer header
    INGRESS = 1 << 4  # emitted by tnd_to_container (traffic entering the pod)


class TcpFlags(IntFlag):
    FIN = 0x01
    SYN = 0x02
    RST = 0x04
    PSH = 0x08
    ACK = 0x10
    URG = 0x20
    ECE = 0x40
    CWR = 0x80


class SettingsFlags(IntFlag):
    SOURCE_IP_CHECK = 1 << 0


SETTINGS_SOURCE_IP_CHECK = int(SettingsFlags.SOURCE_IP_CHECK)

# ---- structs ------------------------------------------------------------------------------------

EVENT_DTYPE = _struct(
    [
        ("ts_ns", "u8"),
        ("type", "u1"),
        ("subtype", "u1"),
        ("ip_version", "u1"),
        ("l4_proto", "u1"),
        ("ct_state", "u1"),
        ("tcp_flags", "u1"),
        ("icmp_type", "u1"),
        ("icmp_code", "u1"),
        ("sport", "u2"),
        ("dport", "u2"),
        ("ep_id", "u2"),
        ("flags", "u2"),
        ("ifindex", "u4"),
        ("hash", "u4"),
        ("pkt_len", "u4"),
        ("pad0", "u4"),
        ("saddr", ("u1", 16)),
        ("daddr", ("u1", 16)),
    ],
    72,  # ring record 80 with its header; tests/test_abi.py checks it against BTF
)

ENDPOINT_KEY_DTYPE = np.dtype("u4")  # host-side veth ifindex

ENDPOINT_INFO_DTYPE = _struct(
    [
        ("ep_id", "u2"),
        ("flags", "u2"),
        ("pad0", "u4"),
        ("ipv4", ("u1", 4)),
        ("pad1", ("u1", 4)),
        ("ipv6", ("u1", 16)),
    ],
    32,
)

CT_KEY_DTYPE = _struct(
    [
        ("ifindex", "u4"),
        ("saddr", ("u1", 16)),
        ("daddr", ("u1", 16)),
        ("sport", "u2"),
        ("dport", "u2"),
        ("proto", "u1"),
        ("ip_version", "u1"),
        ("pad0", "u2"),
    ],
    44,
)

CT_VALUE_DTYPE = _struct(
    [
        ("created_ns", "u8"),
        ("last_seen_ns", "u8"),
        ("expires_ns", "u8"),
        ("tx_packets", "u8"),
        ("tx_bytes", "u8"),
        ("rx_packets", "u8"),
        ("rx_bytes", "u8"),
        ("scope", "u1"),
        ("tx_flags_seen", "u1"),
        ("rx_flags_seen", "u1"),
        ("pad0", "u1"),
        ("flags", "u2"),
        ("ep_id", "u2"),
    ],
    64,
)

METRICS_KEY_DTYPE = np.dtype("u4")
METRICS_VALUE_DTYPE = _struct([("packets", "u8"), ("bytes", "u8")], 16)

SETTINGS_KEY_DTYPE = np.dtype("u4")
SETTINGS_DTYPE = _struct([("trace_level", "u4"), ("flags", "u4")], 8)

LOST_KEY_DTYPE = np.dtype("u4")
LOST_VALUE_DTYPE = np.dtype("u8")  # events the datapath could not reserve in tnd_events

# C struct name -> dtype, used by tests/test_abi.py to compare with BTF.
C_STRUCTS: dict[str, np.dtype] = {
    "tnd_event": EVENT_DTYPE,
    "tnd_endpoint_info": ENDPOINT_INFO_DTYPE,
    "tnd_ct_key": CT_KEY_DTYPE,
    "tnd_ct_value": CT_VALUE_DTYPE,
    "tnd_metrics_value": METRICS_VALUE_DTYPE,
    "tnd_settings": SETTINGS_DTYPE,
}

# ---- map and program names ----------------------------------------------------------------------

MAP_EVENTS = "tnd_events"  # ringbuf of struct tnd_event
MAP_LOST = "tnd_lost"  # per-CPU array, 1 entry, u64
MAP_CT = "tnd_ct"  # LRU hash tnd_ct_key -> tnd_ct_value
MAP_METRICS = "tnd_metrics"  # per-CPU array[METRICS_ENTRIES] of tnd_metrics_value
MAP_ENDPOINTS = "tnd_endpoints"  # hash u32 ifindex -> tnd_endpoint_info
MAP_SETTINGS = "tnd_settings"  # array, 1 entry of tnd_settings

MAP_NAMES: dict[str, str] = {
    "events": MAP_EVENTS,
    "lost": MAP_LOST,
    "ct": MAP_CT,
    "metrics": MAP_METRICS,
    "endpoints": MAP_ENDPOINTS,
    "settings": MAP_SETTINGS,
}

# map name -> (key dtype, value dtype); the ring buffer has no key/value (records are EVENT_DTYPE).
MAP_DTYPES: dict[str, tuple[np.dtype, np.dtype]] = {
    MAP_LOST: (LOST_KEY_DTYPE, LOST_VALUE_DTYPE),
    MAP_CT: (CT_KEY_DTYPE, CT_VALUE_DTYPE),
    MAP_METRICS: (METRICS_KEY_DTYPE, METRICS_VALUE_DTYPE),
    MAP_ENDPOINTS: (ENDPOINT_KEY_DTYPE, ENDPOINT_INFO_DTYPE),
    MAP_SETTINGS: (SETTINGS_KEY_DTYPE, SETTINGS_DTYPE),
}

PROG_FROM_CONTAINER = "tnd_from_container"  # tc ingress on the host-side veth (pod egress)
PROG_TO_CONTAINER = "tnd_to_container"  # tc egress on the host-side veth (pod ingress)
PROGRAM_NAMES: tuple[str, str] = (PROG_FROM_CONTAINER, PROG_TO_CONTAINER)
