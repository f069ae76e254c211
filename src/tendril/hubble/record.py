"""The stored flow record: one fixed-size numpy row per flow, plus interning tables for strings.

This is the shape every Hubble component shares (design.md: "columnar flow store with vectorised
filters"): the parser writes rows, the ring stores them, filters turn columns into boolean masks,
metrics count them with np.unique, and only the observer's output path builds protobuf messages.
Strings (node names, pod metadata, labels, interface names) are interned to small integers once,
at parse time.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

import numpy as np

# flow.Verdict
VERDICT_UNKNOWN, FORWARDED, DROPPED, ERROR, AUDIT, REDIRECTED, TRACED, TRANSLATED = range(8)
VERDICT_NAMES = [
    "VERDICT_UNKNOWN",
    "FORWARDED",
    "DROPPED",
    "ERROR",
    "AUDIT",
    "REDIRECTED",
    "TRACED",
    "TRANSLATED",
]

# flow.FlowType
FLOW_TYPE_UNKNOWN, L3_L4, L7, SOCK = range(4)

# flow.TrafficDirection
DIRECTION_UNKNOWN, INGRESS, EGRESS = range(3)
DIRECTION_NAMES = ["TRAFFIC_DIRECTION_UNKNOWN", "INGRESS", "EGRESS"]

# is_reply column: -1 = unknown (not set on the Flow), 0 = false, 1 = true
REPLY_UNKNOWN = -1

FLOW_DTYPE = np.dtype(
    [
        ("time_ns", "<i8"),  # wall clock, ns since the epoch
        ("uuid", "V16"),
        ("node", "<u4"),  # interned node name
        ("verdict", "u1"),  # flow.Verdict
        ("flow_type", "u1"),  # flow.FlowType
        ("event_type", "u1"),  # Cilium monitor message type: 1 drop, 4 trace, 5 policy verdict, 129 L7
        ("sub_type", "u1"),  # drop reason (low byte) or trace observation point (monitor numbering)
        ("drop_reason", "<u2"),  # flow.DropReason (0 unless dropped)
        ("trace_point", "u1"),  # flow.TraceObservationPoint value, 0 unknown (101 = TO_ENDPOINT)
        ("ip_version", "u1"),  # 0 none, 4, 6
        ("src_ip", "V16"),  # IPv4 in the first 4 bytes
        ("dst_ip", "V16"),
        ("l4_proto", "u1"),  # IPPROTO_*
        ("tcp_flags", "u1"),
        ("icmp_type", "u1"),
        ("icmp_code", "u1"),
        ("src_port", "<u2"),
        ("dst_port", "<u2"),
        ("is_reply", "i1"),  # REPLY_UNKNOWN / 0 / 1
        ("traffic_direction", "u1"),
        ("ct_state", "u1"),
        ("policy_match", "u1"),  # policy-verdict match type (later issues)
        ("src_ep", "<u4"),  # interned EndpointMeta id, 0 = no endpoint known
        ("dst_ep", "<u4"),
        ("src_identity", "<u4"),
        ("dst_identity", "<u4"),
        ("ep_id", "<u2"),  # endpoint ID of the veth that observed it
        ("ifindex", "<u4"),
        ("ifname", "<u4"),  # interned interface name
        ("hash", "<u4"),
        ("pkt_len", "<u4"),
        ("src_service", "<u4"),  # interned "ns/name", 0 = none (services issue)
        ("dst_service", "<u4"),
        ("l7", "<u4"),  # interned L7 record id, 0 = none (L7 issue)
    ],
    align=False,
)


@dataclass(frozen=True, slots=True)
class EndpointMeta:
    """What is known about one side of a flow; interned, so identical metadata shares one id."""

    id: int = 0  # endpoint ID (0 for non-endpoints)
    identity: int = 0
    namespace: str = ""
    pod_name: str = ""
    labels: tuple[str, ...] = ()
    workloads: tuple[tuple[str, str], ...] = ()  # (name, kind)
    cluster_name: str = ""


class Interner:
    """Thread-safe value <-> small int table. Id 0 is reserved for "none" (the empty value)."""

    def __init__(self, empty: object) -> None:
        self._ids: dict[object, int] = {empty: 0}
        self._values: list[object] = [empty]
        self._lock = threading.Lock()

    def intern(self, value: object) -> int:
        i = self._ids.get(value)
        if i is not None:
            return i
        with self._lock:
            i = self._ids.get(value)
            if i is None:
                i = len(self._values)
                self._values.append(value)
                self._ids[value] = i
            return i

    def lookup(self, value: object) -> int | None:
        return self._ids.get(value)

    def value(self, i: int) -> object:
        return self._values[i]

    def __len__(self) -> int:
        return len(self._values)

    def items(self) -> list[tuple[int, object]]:
        return list(enumerate(self._values))


class L7Records:
    """L7 records (flow_pb2.Layer7) by ever-increasing id, 0 = none: the row's `l7` column.

    Unlike the interners, every record is distinct (latency, URL), so only the newest `capacity`
    are kept: the flow ring overwrites its rows at the same pace (one record per L7 row), so a row
    still in a ring of at most `capacity` rows always finds its record. An evicted id reads as None.
    Ids are never reused, so per-id answers cached by filters (InternedLookup) stay right.
    """

    def __init__(self, capacity: int = 1 << 16) -> None:
        self.capacity = capacity
        self._items: dict[int, object] = {}
        self._next = 1
        self._lock = threading.Lock()

    def add(self, record: object) -> int:
        with self._lock:
            i = self._next
            self._next += 1
            self._items[i] = record
            self._items.pop(i - self.capacity, None)
            return i

    def value(self, i: int) -> object | None:
        return self._items.get(int(i)) if i else None

    def __len__(self) -> int:
        return self._next


class Tables:
    """The interning tables a store's rows refer to."""

    def __init__(self, l7_capacity: int = 1 << 16) -> None:
        self.strings = Interner("")
        self.endpoints = Interner(EndpointMeta())
        self.l7 = L7Records(l7_capacity)
        self.proxy_port = 0  # the node's L7 proxy port, reported on to-proxy flows (0 = none)
        self.dns_proxy_port = 0  # the node's DNS proxy port (to-proxy flows of DNS)

    def string(self, i: int) -> str:
        return self.strings.value(int(i))  # type: ignore[return-value]

    def endpoint(self, i: int) -> EndpointMeta:
        return self.endpoints.value(int(i))  # type: ignore[return-value]


def empty(n: int) -> np.ndarray:
    """n zeroed rows with is_reply unknown."""
    rows = np.zeros(n, dtype=FLOW_DTYPE)
    rows["is_reply"] = REPLY_UNKNOWN
    return rows
