"""Turn a batch of ring-buffer records (a numpy structured array) into Flow records.

The datapath only knows addresses and ifindexes; the agent adds who is behind them (pod, namespace,
labels) here, once, at parse time, so every consumer reads the same enriched record.
"""

from __future__ import annotations

import ipaddress
import time
import uuid
from collections.abc import Callable

import numpy as np

from tendril.hubble.parser.flow import EndpointMeta, Flow

EVENT_DROP = 1
EVENT_TRACE = 4
EVF_IS_REPLY = 1 << 0
EVF_INGRESS = 1 << 4

IpLookup = Callable[[str], EndpointMeta | None]
IfnameLookup = Callable[[int], str]


def _ip_text(raw: bytes, version: int) -> str:
    if version == 4:
        return str(ipaddress.IPv4Address(raw[:4]))
    if version == 6:
        return str(ipaddress.IPv6Address(raw[:16]))
    return ""


def monotonic_to_wall_offset_ns() -> int:
    """bpf_ktime_get_ns() is CLOCK_MONOTONIC; this offset turns it into wall-clock ns."""
    return time.time_ns() - time.monotonic_ns()


TRACE_TO_ENDPOINT = 0


def _direction(etype: int, subtype: int, flags: int) -> str:
    """Seen from the endpoint: traffic entering the pod is INGRESS, leaving it is EGRESS."""
    if etype == EVENT_TRACE:
        return "INGRESS" if subtype == TRACE_TO_ENDPOINT else "EGRESS"
    return "INGRESS" if flags & EVF_INGRESS else "EGRESS"


class EventDecoder:
    """Stateless apart from its lookups; cheap to call per batch."""

    def __init__(self, node_name: str, lookup_ip: IpLookup, ifname: IfnameLookup) -> None:
        self.node_name = node_name
        self.lookup_ip = lookup_ip
        self.ifname = ifname

    def decode(self, records: np.ndarray) -> list[Flow]:
        if len(records) == 0:
            return []
        offset = monotonic_to_wall_offset_ns()
        cols = {
            name: records[name].tolist() for name in records.dtype.names if name not in ("saddr", "daddr")
        }
        saddrs = [bytes(r) for r in np.ascontiguousarray(records["saddr"]).reshape(len(records), 16)]
        daddrs = [bytes(r) for r in np.ascontiguousarray(records["daddr"]).reshape(len(records), 16)]
        flows: list[Flow] = []
        for i in range(len(records)):
            etype = cols["type"][i]
            flags = cols["flags"][i]
            version = cols["ip_version"][i]
            src = _ip_text(saddrs[i], version)
            dst = _ip_text(daddrs[i], version)
            ifindex = cols["ifindex"][i]
            is_reply: bool | None = bool(flags & EVF_IS_REPLY) if etype == EVENT_TRACE else None
            flows.append(
                Flow(
                    time_ns=cols["ts_ns"][i] + offset,
                    node_name=self.node_name,
                    event_type=etype,
                    sub_type=cols["subtype"][i],
                    verdict="DROPPED" if etype == EVENT_DROP else "FORWARDED",
                    ip_version=version,
                    source_ip=src,
                    destination_ip=dst,
                    l4_proto=cols["l4_proto"][i],
                    source_port=cols["sport"][i],
                    destination_port=cols["dport"][i],
                    tcp_flags=cols["tcp_flags"][i],
                    icmp_type=cols["icmp_type"][i],
                    icmp_code=cols["icmp_code"][i],
                    is_reply=is_reply,
                    ct_state=cols["ct_state"][i],
                    traffic_direction=_direction(etype, cols["subtype"][i], flags),
                    ifindex=ifindex,
                    ifname=self.ifname(ifindex),
                    hash=cols["hash"][i],
                    pkt_len=cols["pkt_len"][i],
                    ep_id=cols["ep_id"][i],
                    source=self.lookup_ip(src) if src else None,
                    destination=self.lookup_ip(dst) if dst else None,
                    uuid=str(uuid.uuid4()),
                    flags=flags,
                )
            )
        return flows
