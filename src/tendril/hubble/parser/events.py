"""Datapath ring-buffer records -> stored flow rows, one numpy pass per batch.

Everything here is column arithmetic: per-row Python work would cap the agent far below what the
kernel can produce. The only Python loops run over *distinct* values (a handful of pod IPs and
interfaces per batch), through the resolver.
"""

from __future__ import annotations

import os
from typing import Protocol

import numpy as np

from tendril.hubble import record as rec

EVENT_DROP = 1
EVENT_TRACE = 4
EVENT_POLICY_VERDICT = 5
EVENT_TRACE_SOCK = 7
EVF_IS_REPLY = 1 << 0
EVF_INGRESS = 1 << 4
EVF_POLICY_DENY = 1 << 5
EVF_POLICY_AUDIT = 1 << 6

# Cilium monitor trace points -> flow.TraceObservationPoint (only TO_LXC differs: 0 -> TO_ENDPOINT 101)
_TRACE_POINT_MAP = np.arange(256, dtype=np.uint8)
_TRACE_POINT_MAP[0] = 101


class Resolver(Protocol):
    """Agent-side knowledge the parser needs, keyed the way the datapath reports things."""

    def endpoint_ids(self, addrs: np.ndarray) -> np.ndarray:
        """addrs: V16 array of distinct addresses -> interned EndpointMeta ids (0 = unknown)."""
        ...

    def identity_of(self, meta_ids: np.ndarray) -> np.ndarray:
        """Interned EndpointMeta ids -> security identities."""
        ...

    def ifname_ids(self, ifindexes: np.ndarray) -> np.ndarray:
        """Distinct ifindexes -> interned interface names."""
        ...


def _v16(col: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(col).view("V16").reshape(len(col))


def _map_distinct(values: np.ndarray, fn) -> np.ndarray:  # noqa: ANN001 - fn: distinct values -> ids
    n = len(values)
    if n == 0:
        return np.zeros(0, dtype=np.uint32)
    if n <= 16 or (values.dtype.kind == "V" and values.dtype.itemsize != 16):
        # Small batches: a dict of the distinct values beats np.unique's fixed cost.
        index: dict[bytes, int] = {}
        inverse = np.fromiter((index.setdefault(v.tobytes(), len(index)) for v in values), np.int64, n)
        uniq = np.frombuffer(b"".join(index), dtype=values.dtype)
        return np.asarray(fn(uniq), dtype=np.uint32)[inverse]
    if values.dtype.kind == "V":  # 16 bytes: addresses
        # numpy sorts 16-byte void values slowly: unique on a 64-bit hash of each address, then
        # check the (astronomically unlikely) collision case before trusting it.
        halves = np.ascontiguousarray(values).view("<u8").reshape(n, 2)
        key = (halves[:, 0] * np.uint64(0x9E3779B97F4A7C15)) ^ halves[:, 1]
        _, first, inverse = np.unique(key, return_index=True, return_inverse=True)
        uniq = values[first]
        if not (uniq[inverse.reshape(-1)] == values).all():
            uniq, inverse = np.unique(values, return_inverse=True)
        return np.asarray(fn(uniq), dtype=np.uint32)[inverse.reshape(-1)]
    uniq, inverse = np.unique(values, return_inverse=True)
    return np.asarray(fn(uniq), dtype=np.uint32)[inverse.reshape(-1)]


_SVC_KEY = np.dtype([("a", "V16"), ("p", "<u2"), ("x", "u1")])


def _svc_keys(addrs: np.ndarray, ports: np.ndarray, protos: np.ndarray) -> np.ndarray:
    keys = np.empty(len(addrs), _SVC_KEY)
    keys["a"], keys["p"], keys["x"] = addrs, ports, protos
    return keys


def random_uuids(n: int) -> np.ndarray:
    """RFC 4122 version-4 UUIDs, as V16, in one call to the OS."""
    raw = np.frombuffer(os.urandom(16 * n), dtype=np.uint8).reshape(n, 16).copy()
    raw[:, 6] = (raw[:, 6] & 0x0F) | 0x40
    raw[:, 8] = (raw[:, 8] & 0x3F) | 0x80
    return raw.view("V16").reshape(n)


def parse_events(records: np.ndarray, node_id: int, resolver: Resolver, wall_offset_ns: int) -> np.ndarray:
    """Turn ring-buffer records (abi.EVENT_DTYPE) into FLOW_DTYPE rows."""
    n = len(records)
    rows = rec.empty(n)
    if n == 0:
        return rows
    etype = records["type"]
    sub = records["subtype"]
    flags = records["flags"]
    is_drop = etype == EVENT_DROP
    is_trace = etype == EVENT_TRACE
    is_verdict = etype == EVENT_POLICY_VERDICT
    is_sock = etype == EVENT_TRACE_SOCK

    rows["time_ns"] = records["ts_ns"].astype(np.int64) + wall_offset_ns
    rows["uuid"] = random_uuids(n)
    rows["node"] = node_id
    verdict = np.where(is_drop, rec.DROPPED, rec.FORWARDED)
    # policy verdicts: denied -> DROPPED, denied in audit mode -> AUDIT, allowed -> FORWARDED
    verdict = np.where(is_verdict & ((flags & EVF_POLICY_DENY) != 0), rec.DROPPED, verdict)
    verdict = np.where(is_verdict & ((flags & EVF_POLICY_AUDIT) != 0), rec.AUDIT, verdict)
    rows["verdict"] = np.where(is_sock, rec.TRANSLATED, verdict)
    rows["flow_type"] = np.where(is_sock, rec.SOCK, rec.L3_L4)
    rows["event_type"] = etype
    # Hubble keeps the match type in policy_match and the translation point in sock_xlate_point
    rows["sub_type"] = np.where(is_verdict | is_sock, 0, sub)
    rows["policy_match"] = np.where(is_verdict, sub, 0)
    rows["drop_reason"] = np.where(is_drop, sub, 0)
    rows["trace_point"] = np.where(is_trace, _TRACE_POINT_MAP[sub], np.where(is_sock, sub, 0))
    rows["ip_version"] = records["ip_version"]
    src = _v16(records["saddr"])
    dst = _v16(records["daddr"])
    rows["src_ip"] = src
    rows["dst_ip"] = dst
    for col in ("l4_proto", "tcp_flags", "icmp_type", "icmp_code", "ct_state", "ifindex", "hash", "pkt_len"):
        rows[col] = records[col]
    rows["ep_id"] = records["ep_id"]
    rows["src_port"] = records["sport"]
    rows["dst_port"] = records["dport"]
    rows["is_reply"] = np.where(is_trace, (flags & EVF_IS_REPLY) != 0, rec.REPLY_UNKNOWN)
    # Hubble's rule for traces: the direction of the connection, not of the packet. Packets towards
    # a pod (to-endpoint 0, from-overlay 9, which leads to one here) are ingress unless they are
    # replies; packets leaving a pod are egress unless they are replies.
    towards_pod = (sub == 0) | (sub == 9)
    reply = (flags & EVF_IS_REPLY) != 0
    ingress = np.where(is_trace, towards_pod != reply, (flags & EVF_INGRESS) != 0)
    rows["traffic_direction"] = np.where(ingress, rec.INGRESS, rec.EGRESS)
    rows["ifname"] = _map_distinct(records["ifindex"], resolver.ifname_ids)
    src_ep = _map_distinct(src, resolver.endpoint_ids)
    dst_ep = _map_distinct(dst, resolver.endpoint_ids)
    # Socket-LB events (translations, and drops of services without backends) know the pod by its
    # cgroup, not by an address (the socket may not be bound yet): their ep_id names the source
    # endpoint, whose address stands in for the missing source.
    from_socket = (records["ifindex"] == 0) & (records["ep_id"] != 0)
    if from_socket.any() and hasattr(resolver, "endpoint_ids_by_epid"):
        src_ep = np.where(from_socket, _map_distinct(records["ep_id"], resolver.endpoint_ids_by_epid), src_ep)
        fix = from_socket & (src == np.void(bytes(16)))
        if fix.any():
            rows["src_ip"][fix] = resolver.endpoint_addrs(records["ep_id"][fix], records["ip_version"][fix])
    rows["src_ep"] = src_ep
    rows["dst_ep"] = dst_ep
    if hasattr(resolver, "service_ids"):
        rows["dst_service"] = _map_distinct(
            _svc_keys(dst, records["dport"], records["l4_proto"]), resolver.service_ids
        )
        rows["src_service"] = _map_distinct(
            _svc_keys(src, records["sport"], records["l4_proto"]), resolver.service_ids
        )
    rows["src_identity"] = _map_distinct(src_ep, resolver.identity_of)
    rows["dst_identity"] = _map_distinct(dst_ep, resolver.identity_of)
    return rows
