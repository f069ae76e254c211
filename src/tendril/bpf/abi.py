"""Python mirror of bpf/include/tendril_abi.h: numpy dtypes for every struct, the constants, names.

Why explicit offsets: the dtypes must equal the C layout byte for byte (the kernel writes these
structs into maps and the ring buffer). tests/test_abi.py compares them to the compiled header's
BTF, so change both files together.
"""

from __future__ import annotations

import ipaddress
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
    TRACE_SOCK = 7  # socket LB translation (Hubble trace-sock)


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
    WRITE_ERROR = 141  # "Error writing to packet" (NAT rewrite failed)
    UNKNOWN_L4 = 142
    NO_TUNNEL_KEY = 147  # "Error retrieving tunnel key": tnd_from_overlay on a device without tunnel info
    CT_MAP_INSERTION_FAILED = 155
    INVALID_IPV6_EXTHDR = 156
    NO_SERVICE_BACKEND = 158  # "Service backend not found"
    NAT_NO_MAPPING = 167  # "No mapping for NAT masquerade": no free NodePort SNAT port
    SOCKET_LOOKUP_FAILED = 178  # L7 redirect: no proxy listener in the node
    SOCKET_ASSIGN_FAILED = 179  # L7 redirect: bpf_sk_assign refused the proxy's socket
    POLICY_DENY = 181  # "Policy denied by denylist": a deny rule matched


class Identity(IntEnum):
    """Security identities (Cilium numbering) and the ranges/markers of the header's TND_ID_*."""

    UNKNOWN = 0
    HOST = 1
    WORLD = 2
    UNMANAGED = 3
    HEALTH = 4
    INIT = 5
    REMOTE_NODE = 6
    KUBE_APISERVER = 7
    INGRESS = 8
    CLUSTER_MIN = 256  # label-based identities: 256..65535
    LOCAL_MIN = 1 << 24  # node-local CIDR identities
    ENFORCED_MARKER = 0xFFFFFFFF  # policy-map key identity meaning "this direction is enforced"


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
    POLICY_DENY = 1 << 5  # policy verdict: denied (a drop follows unless audit)
    POLICY_AUDIT = 1 << 6  # policy verdict in audit mode: would deny, let through


class MatchType(IntEnum):
    """Policy verdict event subtype: what kind of entry decided (Hubble's numbering)."""

    NONE = 0
    L3_ONLY = 1  # peer identity, any port/protocol
    L3_L4 = 2  # peer identity and port
    L4_ONLY = 3  # any peer, port
    ALL = 4  # any peer, any port
    L3_PROTO = 5  # peer identity and protocol
    PROTO_ONLY = 6  # any peer, protocol


class PolicyFlags(IntFlag):
    """tnd_policy_value.flags (TND_POLICY_*); an entry without DENY allows."""

    DENY = 1 << 0


# ---- service load balancing ----------------------------------------------------------------------


class SockXlatePoint(IntEnum):
    """Trace-sock event subtype (Hubble SocketTranslationPoint)."""

    PRE_FWD = 1  # the service address the application asked for
    POST_FWD = 2  # the backend it was translated to
    PRE_REV = 3  # a reply's peer as the kernel has it (the backend)
    POST_REV = 4  # ... as the application sees it (the service address)


class ServiceFlags(IntFlag):
    """tnd_lb_value.flags of a slot-0 (master) entry (TND_SVC_*)."""

    CLUSTERIP = 1 << 0
    NODEPORT = 1 << 1  # the packet LB (tnd_from_netdev) balances only frontends with this flag
    AFFINITY = 1 << 2  # sessionAffinity: ClientIP (affinity_timeout_s)
    MAGLEV = 1 << 3  # pick with the service's Maglev table instead of random


class BackendState(IntEnum):
    ACTIVE = 0
    TERMINATING = 1  # existing connections finish, new ones never pick it


class LbAffinityFlags(IntFlag):
    """tnd_lb_affinity_key.flags (TND_LB_AFF_*)."""

    NETNS = 1 << 0  # client holds a netns cookie (socket LB), not an address


class LbNatDir(IntEnum):
    """tnd_lb_nat_key.dir (TND_LB_NAT_*)."""

    FWD = 1  # key: client -> frontend tuple; value: the backend
    REV = 2  # key: backend -> client tuple; value: the frontend (reverse NAT)


LB_SERVICES_MAX = 65536
LB_BACKENDS_MAX = 65536
LB_AFFINITY_MAX = 65536
LB_SOCK_REVNAT_MAX = 262144
LB_NAT_MAX = 262144
LB_SNAT_MAX = 262144
LB_SNAT_PORT_MIN = 61000  # NodePort SNAT source ports (above the default ip_local_port_range)
LB_SNAT_PORT_MAX = 65535
LB_SNAT_RETRIES = 8  # ports tried for a new connection
LB_SNAT_STALE_S = 300  # a REV entry without replies for this long may be reused
LB_CGROUPS_MAX = 4096
MAGLEV_DEFAULT_M = 16381  # size of a Maglev table (a prime); inner maps may use other primes
MAP_F_INNER_MAP = 1 << 12  # BPF_F_INNER_MAP: Maglev inner arrays (and the template) carry it

POLICY_MAX_ENTRIES = 16384  # per endpoint inner map
POLICY_ENDPOINTS = 4096  # outer array: endpoint IDs 0..4095
IPCACHE_MAX_ENTRIES = 512000
MAP_F_NO_PREALLOC = 1  # BPF_F_NO_PREALLOC: required for LPM tries (ipcache and policy inner maps)


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
    POLICY_AUDIT = 1 << 1  # PolicyAuditMode: report would-be policy drops, forward them


SETTINGS_SOURCE_IP_CHECK = int(SettingsFlags.SOURCE_IP_CHECK)
SETTINGS_POLICY_AUDIT = int(SettingsFlags.POLICY_AUDIT)

# ---- overlay (VXLAN; tendril_abi.h "Overlay") ------------------------------------------------------

VXLAN_PORT = 8472  # UDP destination port of the overlay (Cilium's)
OVERLAY_MAC = 0x02746E640001  # every node's VXLAN device has this MAC (inner destination MAC)
OVERLAY_MAC_ADDR = ":".join(f"{(OVERLAY_MAC >> (8 * i)) & 0xFF:02x}" for i in range(5, -1, -1))
# skb->mark from tnd_from_overlay to tnd_to_container: identity << MARK_IDENTITY_SHIFT | MARK_MAGIC_IDENTITY
MARK_MAGIC_MASK = 0xFF
MARK_MAGIC_IDENTITY = 0xE5
MARK_IDENTITY_SHIFT = 8
# L7 proxy (bpf/include/proxy.h): redirected packets carry MARK_MAGIC_TO_PROXY (routed locally by
# `ip rule fwmark 0xe6/0xff lookup PROXY_ROUTE_TABLE`), the proxy's sockets MARK_MAGIC_FROM_PROXY.
MARK_MAGIC_TO_PROXY = 0xE6
MARK_MAGIC_FROM_PROXY = 0xE7
PROXY_ROUTE_TABLE = 2004


def overlay_mark(identity: int) -> int:
    """The skb->mark carrying a source identity from the overlay to tnd_to_container (identity < 2^24)."""
    if not 0 <= identity < 1 << 24:
        raise ValueError(f"identity {identity} does not fit the 24-bit VNI")
    return identity << MARK_IDENTITY_SHIFT | MARK_MAGIC_IDENTITY


def overlay_vni_identity(vni: int) -> int:
    """The source identity tnd_from_overlay reads from a VNI: 0 -> WORLD, HOST -> REMOTE_NODE."""
    if vni == Identity.UNKNOWN:
        return int(Identity.WORLD)
    if vni == Identity.HOST:
        return int(Identity.REMOTE_NODE)
    return vni


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
        ("remote_id", "u4"),  # peer identity from ipcache (0 = not IP)
        ("saddr", ("u1", 16)),
        ("daddr", ("u1", 16)),
    ],
    72,  # ring record 80 with its header; tests/test_abi.py checks it against BTF
)

SNAP_LEN = 128  # TND_SNAP_LEN
PAYLOAD_DTYPE = _struct(
    [
        ("ts_ns", "u8"),
        ("ep_id", "u2"),
        ("flags", "u2"),  # EventFlags.INGRESS: entering the pod
        ("ip_version", "u1"),
        ("pad", "u1"),
        ("cap_len", "u2"),
        ("sport", "u2"),
        ("dport", "u2"),
        ("remote_id", "u4"),
        ("seq", "u4"),
        ("payload_len", "u4"),
        ("saddr", ("u1", 16)),
        ("daddr", ("u1", 16)),
        ("data", ("u1", SNAP_LEN)),
    ],
    192,  # ring record 200 with its header
)

EPF_HTTP_VISIBILITY = 0x0001  # tnd_endpoint_info.flags: snap HTTP/1.x message starts

ENDPOINT_KEY_DTYPE = np.dtype("u4")  # host-side veth ifindex

ENDPOINT_INFO_DTYPE = _struct(
    [
        ("ep_id", "u2"),
        ("flags", "u2"),
        ("identity", "u4"),  # the endpoint's own security identity
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
SETTINGS_DTYPE = _struct(
    [
        ("trace_level", "u4"),
        ("flags", "u4"),
        ("overlay_ifindex", "u4"),  # the node's VXLAN device; 0 = no overlay (native routing)
        ("pad", "u4"),
    ],
    16,
)

LOST_KEY_DTYPE = np.dtype("u4")
LOST_VALUE_DTYPE = np.dtype("u8")  # events the datapath could not reserve in tnd_events

# LPM trie keys: prefixlen counts the bits after itself that must match.
IPCACHE_KEY_DTYPE = _struct(
    [("prefixlen", "u4"), ("pad", ("u1", 3)), ("family", "u1"), ("addr", ("u1", 16))],
    24,
)
IPCACHE_VALUE_DTYPE = _struct(
    [
        ("identity", "u4"),
        # IPv4 underlay address of the node hosting the IP (network order: int(IPv4Address) reads
        # and writes it); 0 = local or not reached through the overlay
        ("tunnel_endpoint", ">u4"),
        ("ep_id", "<u2"),  # endpoint ID of a pod on this node, else 0 (the L7 redirect reads it)
        ("pad", "<u2"),
    ],
    12,
)

POLICY_KEY_DTYPE = _struct(
    [
        ("prefixlen", "u4"),
        ("identity", "u4"),  # 0 = any peer
        ("egress", "u1"),  # 1 egress (pod -> peer), 0 ingress
        ("proto", "u1"),  # 0 = any protocol
        ("dport", ">u2"),  # network order: assign plain port numbers
    ],
    12,
)
POLICY_VALUE_DTYPE = _struct(
    [("flags", "u1"), ("match_type", "u1"), ("proxy_port", ">u2"), ("rule_ref", "u4")],
    8,
)
POLICY_OUTER_KEY_DTYPE = np.dtype("u4")  # endpoint ID

# Service LB. Addresses: 16 bytes, IPv4 in the first 4. Ports: network order (">u2": assign plain
# port numbers), unlike the event and conntrack ports.
LB_KEY_DTYPE = _struct(
    [
        ("addr", ("u1", 16)),  # all zero = any local node address (NodePort wildcard)
        ("port", ">u2"),
        ("proto", "u1"),
        ("family", "u1"),
        ("slot", "u2"),  # 0 = master entry, 1..count = backends
        ("pad", "u2"),
    ],
    24,
)
LB_VALUE_DTYPE = _struct(
    [
        ("backend_id", "u4"),  # slots > 0
        ("count", "u2"),  # slot 0: number of active backends
        ("rev_nat_id", "u2"),
        ("flags", "u4"),  # slot 0: ServiceFlags
        ("affinity_timeout_s", "u4"),
    ],
    16,
)
LB_BACKEND_KEY_DTYPE = np.dtype("u4")  # backend ID (0 is never a backend)
LB_BACKEND_DTYPE = _struct(
    [
        ("addr", ("u1", 16)),
        ("port", ">u2"),
        ("proto", "u1"),
        ("family", "u1"),
        ("state", "u1"),  # BackendState
        ("pad", ("u1", 3)),
    ],
    24,
)
LB_REVNAT_KEY_DTYPE = np.dtype("u2")  # rev_nat_id
LB_REVNAT_DTYPE = _struct([("addr", ("u1", 16)), ("port", ">u2"), ("family", "u1"), ("pad", "u1")], 20)
LB_AFFINITY_KEY_DTYPE = _struct(
    [("client", ("u1", 16)), ("rev_nat_id", "u2"), ("family", "u1"), ("flags", "u1")],
    20,
)
LB_AFFINITY_VALUE_DTYPE = _struct([("backend_id", "u4"), ("last_used_s", "u4")], 8)
LB_SOCK_KEY_DTYPE = _struct(
    [("cookie", "u8"), ("addr", ("u1", 16)), ("port", ">u2"), ("family", "u1"), ("pad", ("u1", 5))],
    32,
)
LB_SOCK_VALUE_DTYPE = _struct(
    [("addr", ("u1", 16)), ("port", ">u2"), ("rev_nat_id", "u2"), ("pad", "u4")],
    24,
)
LB_NAT_KEY_DTYPE = _struct(
    [
        ("saddr", ("u1", 16)),
        ("daddr", ("u1", 16)),
        ("sport", ">u2"),
        ("dport", ">u2"),
        ("proto", "u1"),
        ("family", "u1"),
        ("dir", "u1"),  # LbNatDir
        ("pad", "u1"),
    ],
    40,
)
LB_NAT_VALUE_DTYPE = _struct(
    [
        ("addr", ("u1", 16)),  # FWD: the backend; REV: the frontend address the client used
        ("port", ">u2"),
        ("rev_nat_id", "u2"),
        ("backend_id", "u4"),
        ("ifindex", "u4"),  # REV: the device the request arrived on
        ("pad", "u4"),
    ],
    32,
)
LB_SNAT_VALUE_DTYPE = _struct(
    [
        ("addr", ("u1", 16)),  # FWD: the backend; REV: the client
        ("nat_addr", ("u1", 16)),  # FWD: the SNAT source (node address); REV: the frontend address
        ("port", ">u2"),  # FWD: backend port; REV: client port
        ("nat_port", ">u2"),  # FWD: SNAT source port; REV: frontend port
        ("rev_nat_id", "u2"),
        ("pad", "u2"),
        ("backend_id", "u4"),
        ("ifindex", "u4"),  # REV: the device the request arrived on
        ("last_used_s", "u4"),  # REV: coarse monotonic seconds of its last reply or (re)use
        ("pad2", "u4"),
    ],
    56,
)
LB_CGROUP_KEY_DTYPE = np.dtype("u8")  # cgroup v2 id = inode number of the cgroup directory
LB_CGROUP_DTYPE = _struct([("ep_id", "u2"), ("pad0", "u2"), ("pad1", "u4")], 8)
LB_MAGLEV_KEY_DTYPE = np.dtype("u2")  # rev_nat_id -> inner ARRAY u32 index -> u32 backend ID

# C struct name -> dtype, used by tests/test_abi.py to compare with BTF.
C_STRUCTS: dict[str, np.dtype] = {
    "tnd_event": EVENT_DTYPE,
    "tnd_payload": PAYLOAD_DTYPE,
    "tnd_endpoint_info": ENDPOINT_INFO_DTYPE,
    "tnd_ct_key": CT_KEY_DTYPE,
    "tnd_ct_value": CT_VALUE_DTYPE,
    "tnd_metrics_value": METRICS_VALUE_DTYPE,
    "tnd_settings": SETTINGS_DTYPE,
    "tnd_ipcache_key": IPCACHE_KEY_DTYPE,
    "tnd_ipcache_value": IPCACHE_VALUE_DTYPE,
    "tnd_policy_key": POLICY_KEY_DTYPE,
    "tnd_policy_value": POLICY_VALUE_DTYPE,
    "tnd_lb_key": LB_KEY_DTYPE,
    "tnd_lb_value": LB_VALUE_DTYPE,
    "tnd_lb_backend": LB_BACKEND_DTYPE,
    "tnd_lb_revnat": LB_REVNAT_DTYPE,
    "tnd_lb_affinity_key": LB_AFFINITY_KEY_DTYPE,
    "tnd_lb_affinity_value": LB_AFFINITY_VALUE_DTYPE,
    "tnd_lb_sock_key": LB_SOCK_KEY_DTYPE,
    "tnd_lb_sock_value": LB_SOCK_VALUE_DTYPE,
    "tnd_lb_nat_key": LB_NAT_KEY_DTYPE,
    "tnd_lb_nat_value": LB_NAT_VALUE_DTYPE,
    "tnd_lb_snat_value": LB_SNAT_VALUE_DTYPE,
    "tnd_lb_cgroup": LB_CGROUP_DTYPE,
}

# ---- map and program names ----------------------------------------------------------------------

MAP_EVENTS = "tnd_events"  # ringbuf of struct tnd_event
MAP_LOST = "tnd_lost"  # per-CPU array, 1 entry, u64
MAP_PAYLOADS = "tnd_payloads"  # ringbuf of struct tnd_payload (HTTP visibility snaps)
MAP_PAYLOADS_LOST = "tnd_payloads_lost"  # per-CPU array, 1 entry, u64
MAP_CT = "tnd_ct"  # LRU hash tnd_ct_key -> tnd_ct_value
MAP_METRICS = "tnd_metrics"  # per-CPU array[METRICS_ENTRIES] of tnd_metrics_value
MAP_ENDPOINTS = "tnd_endpoints"  # hash u32 ifindex -> tnd_endpoint_info
MAP_SETTINGS = "tnd_settings"  # array, 1 entry of tnd_settings
MAP_IPCACHE = "tnd_ipcache"  # LPM trie tnd_ipcache_key -> tnd_ipcache_value
MAP_POLICY = "tnd_policy"  # array of maps[POLICY_ENDPOINTS]: ep_id -> LPM trie tnd_policy_key -> value
MAP_LB_SERVICES = "tnd_lb_services"  # hash tnd_lb_key -> tnd_lb_value (agent)
MAP_LB_BACKENDS = "tnd_lb_backends"  # hash u32 backend ID -> tnd_lb_backend (agent)
MAP_LB_REVNAT = "tnd_lb_revnat"  # hash u16 rev_nat_id -> tnd_lb_revnat (agent)
MAP_LB_MAGLEV = "tnd_lb_maglev"  # hash of maps u16 rev_nat_id -> ARRAY[M] of u32 backend IDs (agent)
MAP_LB_AFFINITY = "tnd_lb_affinity"  # LRU tnd_lb_affinity_key -> tnd_lb_affinity_value (datapath)
MAP_LB_SOCK_REVNAT = "tnd_lb_sock_revnat"  # LRU tnd_lb_sock_key -> tnd_lb_sock_value (datapath)
MAP_LB_NAT = "tnd_lb_nat"  # LRU tnd_lb_nat_key -> tnd_lb_nat_value (datapath)
MAP_LB_SNAT = "tnd_lb_snat"  # LRU tnd_lb_nat_key -> tnd_lb_snat_value (datapath: NodePort SNAT)
MAP_LB_CGROUPS = "tnd_lb_cgroups"  # hash u64 cgroup id -> tnd_lb_cgroup (agent)

MAP_NAMES: dict[str, str] = {
    "events": MAP_EVENTS,
    "lost": MAP_LOST,
    "payloads": MAP_PAYLOADS,
    "payloads_lost": MAP_PAYLOADS_LOST,
    "ct": MAP_CT,
    "metrics": MAP_METRICS,
    "endpoints": MAP_ENDPOINTS,
    "settings": MAP_SETTINGS,
    "ipcache": MAP_IPCACHE,
    "policy": MAP_POLICY,
    "lb_services": MAP_LB_SERVICES,
    "lb_backends": MAP_LB_BACKENDS,
    "lb_revnat": MAP_LB_REVNAT,
    "lb_maglev": MAP_LB_MAGLEV,
    "lb_affinity": MAP_LB_AFFINITY,
    "lb_sock_revnat": MAP_LB_SOCK_REVNAT,
    "lb_nat": MAP_LB_NAT,
    "lb_snat": MAP_LB_SNAT,
    "lb_cgroups": MAP_LB_CGROUPS,
}

# map name -> (key dtype, value dtype); the ring buffer has no key/value (records are EVENT_DTYPE).
MAP_DTYPES: dict[str, tuple[np.dtype, np.dtype]] = {
    MAP_LOST: (LOST_KEY_DTYPE, LOST_VALUE_DTYPE),
    MAP_PAYLOADS_LOST: (LOST_KEY_DTYPE, LOST_VALUE_DTYPE),
    MAP_CT: (CT_KEY_DTYPE, CT_VALUE_DTYPE),
    MAP_METRICS: (METRICS_KEY_DTYPE, METRICS_VALUE_DTYPE),
    MAP_ENDPOINTS: (ENDPOINT_KEY_DTYPE, ENDPOINT_INFO_DTYPE),
    MAP_SETTINGS: (SETTINGS_KEY_DTYPE, SETTINGS_DTYPE),
    MAP_IPCACHE: (IPCACHE_KEY_DTYPE, IPCACHE_VALUE_DTYPE),
    MAP_LB_SERVICES: (LB_KEY_DTYPE, LB_VALUE_DTYPE),
    MAP_LB_BACKENDS: (LB_BACKEND_KEY_DTYPE, LB_BACKEND_DTYPE),
    MAP_LB_REVNAT: (LB_REVNAT_KEY_DTYPE, LB_REVNAT_DTYPE),
    MAP_LB_AFFINITY: (LB_AFFINITY_KEY_DTYPE, LB_AFFINITY_VALUE_DTYPE),
    MAP_LB_SOCK_REVNAT: (LB_SOCK_KEY_DTYPE, LB_SOCK_VALUE_DTYPE),
    MAP_LB_NAT: (LB_NAT_KEY_DTYPE, LB_NAT_VALUE_DTYPE),
    MAP_LB_SNAT: (LB_NAT_KEY_DTYPE, LB_SNAT_VALUE_DTYPE),
    MAP_LB_CGROUPS: (LB_CGROUP_KEY_DTYPE, LB_CGROUP_DTYPE),
}
# tnd_policy's values are inner maps (an fd to update, an ID on lookup), each inner map
# (POLICY_KEY_DTYPE -> POLICY_VALUE_DTYPE) created by the agent: see tendril.bpf.maps.create_policy_map.
# tnd_lb_maglev's values are inner maps too: BPF_MAP_TYPE_ARRAY, key u4, value u4 (backend ID),
# max_entries M (a prime), flags MAP_F_INNER_MAP.


PROG_FROM_CONTAINER = "tnd_from_container"  # tc ingress on the host-side veth (pod egress)
PROG_TO_CONTAINER = "tnd_to_container"  # tc egress on the host-side veth (pod ingress)
PROGRAM_NAMES: tuple[str, str] = (PROG_FROM_CONTAINER, PROG_TO_CONTAINER)

# build/bpf/overlay.o: the receiving end of the VXLAN overlay.
PROG_FROM_OVERLAY = "tnd_from_overlay"  # tcx ingress on the node's VXLAN device

# build/bpf/sock.o: the service load balancer.
PROG_FROM_NETDEV = "tnd_from_netdev"  # tcx ingress on the node's underlay device (NodePort DNAT)
# cgroup programs -> their enum bpf_attach_type (tendril.bpf.AttachType) for attach_cgroup().
SOCK_PROGRAMS: dict[str, int] = {
    "tnd_sock4_connect": 10,  # CGROUP_INET4_CONNECT
    "tnd_sock6_connect": 11,  # CGROUP_INET6_CONNECT
    "tnd_sock4_sendmsg": 14,  # CGROUP_UDP4_SENDMSG
    "tnd_sock6_sendmsg": 15,  # CGROUP_UDP6_SENDMSG
    "tnd_sock4_recvmsg": 19,  # CGROUP_UDP4_RECVMSG
    "tnd_sock6_recvmsg": 20,  # CGROUP_UDP6_RECVMSG
    "tnd_sock4_getpeername": 29,  # CGROUP_INET4_GETPEERNAME
    "tnd_sock6_getpeername": 30,  # CGROUP_INET6_GETPEERNAME
}

# ---- key/value builders for the LPM maps ----------------------------------------------------------

POLICY_PREFIX_ANY_PROTO = 40  # identity + direction: any protocol, any port
POLICY_PREFIX_PROTO = 48  # ... + protocol: any port of it
POLICY_PREFIX_FULL = 64  # ... + all 16 bits of the port


def ipcache_key(ip_or_cidr: str) -> np.void:
    """The tnd_ipcache key of an address (a /32 or /128) or a CIDR; host bits are cleared."""
    net = ipaddress.ip_network(ip_or_cidr, strict=False)
    k = np.zeros((), IPCACHE_KEY_DTYPE)
    k["prefixlen"] = 32 + net.prefixlen
    k["family"] = net.version
    packed = net.network_address.packed
    k["addr"][: len(packed)] = np.frombuffer(packed, np.uint8)
    return k[()]


def ipcache_value(
    identity: int, tunnel_endpoint: str | ipaddress.IPv4Address | None = "", ep_id: int = 0
) -> np.void:
    """A tnd_ipcache value: the identity and, for an IP on another node reached through the overlay,
    that node's IPv4 underlay address ("" / None = local or not tunnelled); `ep_id` for a local pod."""
    v = np.zeros((), IPCACHE_VALUE_DTYPE)
    v["identity"] = identity
    v["ep_id"] = ep_id
    v["tunnel_endpoint"] = int(ipaddress.IPv4Address(tunnel_endpoint)) if tunnel_endpoint else 0
    return v[()]


def policy_key(
    identity: int, egress: bool, proto: int = 0, port: int = 0, prefixlen: int | None = None
) -> np.void:
    """One tnd_policy_key. Default prefixlen: 40 when proto is 0, 48 when port is 0, else 64."""
    if prefixlen is None:
        prefixlen = POLICY_PREFIX_FULL if port else POLICY_PREFIX_PROTO if proto else POLICY_PREFIX_ANY_PROTO
    if not POLICY_PREFIX_ANY_PROTO <= prefixlen <= POLICY_PREFIX_FULL:
        raise ValueError(
            f"policy key prefixlen {prefixlen}: must be 40..64 (identity and direction always match)"
        )
    k = np.zeros((), POLICY_KEY_DTYPE)
    k["prefixlen"] = prefixlen
    k["identity"] = identity
    k["egress"] = int(bool(egress))
    k["proto"] = proto
    k["dport"] = port
    return k[()]


def policy_enforced_key(egress: bool) -> np.void:
    """The marker entry whose presence makes a direction enforced (default deny)."""
    return policy_key(int(Identity.ENFORCED_MARKER), egress, prefixlen=POLICY_PREFIX_FULL)


def policy_value(match_type: int, deny: bool = False, proxy_port: int = 0, rule_ref: int = 0) -> np.void:
    v = np.zeros((), POLICY_VALUE_DTYPE)
    v["flags"] = int(PolicyFlags.DENY) if deny else 0
    v["match_type"] = match_type
    v["proxy_port"] = proxy_port
    v["rule_ref"] = rule_ref
    return v[()]


def port_range_prefixes(port_lo: int, port_hi: int) -> list[tuple[int, int]]:
    """The fewest (port, prefix bits 0..16) blocks that cover port_lo..port_hi exactly."""
    if not 0 <= port_lo <= port_hi <= 0xFFFF:
        raise ValueError(f"bad port range {port_lo}-{port_hi}: need 0 <= lo <= hi <= 65535")
    out = []
    lo = port_lo
    while lo <= port_hi:
        size = lo & -lo if lo else 1 << 16  # largest aligned block starting at lo ...
        while lo + size - 1 > port_hi:  # ... that stays inside the range
            size >>= 1
        out.append((lo, 16 - size.bit_length() + 1))
        lo += size
    return out


def policy_entries_for_port_range(
    identity: int, egress: bool, proto: int, port_lo: int = 0, port_hi: int = 0
) -> list[np.void]:
    """Policy keys for identity/direction/protocol and a destination port range.

    proto 0 = any protocol (then no port may be given); port_lo 0 (with port_hi 0 or 65535) = any
    port of proto; port_hi 0 = the single port port_lo (like an unset endPort). A range becomes its
    minimal set of LPM prefixes, e.g. 8080-8083 -> one /14 key, 1-3 -> /16 + /15.
    """
    if not proto:
        if port_lo or port_hi:
            raise ValueError("a port needs a protocol (proto 0 means any protocol, any port)")
        return [policy_key(identity, egress)]
    if port_hi == 0:
        port_hi = port_lo
    if port_lo == 0 and port_hi in (0, 0xFFFF):
        return [policy_key(identity, egress, proto)]
    return [
        policy_key(identity, egress, proto, port, POLICY_PREFIX_PROTO + bits)
        for port, bits in port_range_prefixes(port_lo, port_hi)
    ]


def policy_match_type(identity: int, proto: int = 0, port: int = 0) -> MatchType:
    """The match type a policy entry reports, from what it constrains (identity 0 = any peer)."""
    if identity:
        return MatchType.L3_L4 if port else MatchType.L3_PROTO if proto else MatchType.L3_ONLY
    return MatchType.L4_ONLY if port else MatchType.PROTO_ONLY if proto else MatchType.ALL


# ---- key/value builders for the service LB maps ----------------------------------------------------


def lb_addr(ip: str | ipaddress.IPv4Address | ipaddress.IPv6Address | None) -> tuple[np.ndarray, int]:
    """(16-byte address array, family) of an address; None or "" = the all-zero NodePort wildcard (v4)."""
    if not ip:
        return np.zeros(16, np.uint8), 4
    a = ipaddress.ip_address(ip)
    out = np.zeros(16, np.uint8)
    out[: len(a.packed)] = np.frombuffer(a.packed, np.uint8)
    return out, a.version


def lb_key(addr: str | None, port: int, proto: int, slot: int = 0, family: int | None = None) -> np.void:
    """A tnd_lb_services key. addr None/"" = the NodePort wildcard of ``family`` (default 4)."""
    k = np.zeros((), LB_KEY_DTYPE)
    a, fam = lb_addr(addr)
    k["addr"] = a
    k["port"] = port
    k["proto"] = proto
    k["family"] = family if family is not None else fam
    k["slot"] = slot
    return k[()]


def lb_master(count: int, rev_nat_id: int, flags: int = 0, affinity_timeout_s: int = 0) -> np.void:
    """The slot-0 value of a frontend: number of backends, rev_nat_id, ServiceFlags, affinity timeout."""
    v = np.zeros((), LB_VALUE_DTYPE)
    v["count"], v["rev_nat_id"], v["flags"] = count, rev_nat_id, flags
    v["affinity_timeout_s"] = affinity_timeout_s
    return v[()]


def lb_slot(backend_id: int, rev_nat_id: int = 0) -> np.void:
    """The value of slot 1..count: the backend ID."""
    v = np.zeros((), LB_VALUE_DTYPE)
    v["backend_id"], v["rev_nat_id"] = backend_id, rev_nat_id
    return v[()]


def lb_backend(addr: str, port: int, proto: int, state: int = BackendState.ACTIVE) -> np.void:
    v = np.zeros((), LB_BACKEND_DTYPE)
    a, fam = lb_addr(addr)
    v["addr"], v["port"], v["proto"], v["family"], v["state"] = a, port, proto, fam, int(state)
    return v[()]


def lb_revnat(addr: str, port: int) -> np.void:
    v = np.zeros((), LB_REVNAT_DTYPE)
    a, fam = lb_addr(addr)
    v["addr"], v["port"], v["family"] = a, port, fam
    return v[()]


def lb_cgroup(ep_id: int) -> np.void:
    v = np.zeros((), LB_CGROUP_DTYPE)
    v["ep_id"] = ep_id
    return v[()]


def lb_nat_key(saddr: str, daddr: str, sport: int, dport: int, proto: int, direction: int) -> np.void:
    """A tnd_lb_nat key: FWD = the client's tuple to the frontend, REV = the backend's reply tuple."""
    k = np.zeros((), LB_NAT_KEY_DTYPE)
    s, fam = lb_addr(saddr)
    k["saddr"], k["daddr"] = s, lb_addr(daddr)[0]
    k["sport"], k["dport"], k["proto"], k["family"], k["dir"] = sport, dport, proto, fam, int(direction)
    return k[()]
