"""The flow record: one observed packet event, enriched with endpoint metadata.

Field names follow Hubble's flow.Flow so that `to_hubble_dict()` is the `hubble observe -o jsonpb`
shape and the gRPC layer can build protobuf messages from it without re-parsing.
"""

from __future__ import annotations

import datetime as _dt
from dataclasses import dataclass, field
from typing import Any

from tendril.hubble.record import VERDICT_NAMES, EndpointMeta
from tendril.monitor import api


@dataclass(slots=True)
class Flow:
    time_ns: int  # wall clock, ns since the epoch
    node_name: str
    event_type: int  # monitor message type: 1 drop, 4 trace
    sub_type: int  # drop reason or trace observation point
    verdict: str  # FORWARDED / DROPPED
    ip_version: int  # 4 / 6 / 0
    source_ip: str
    destination_ip: str
    l4_proto: int
    source_port: int
    destination_port: int
    tcp_flags: int
    icmp_type: int
    icmp_code: int
    is_reply: bool | None  # None = unknown (drops)
    ct_state: int
    traffic_direction: str  # INGRESS / EGRESS (seen from the endpoint)
    ifindex: int
    ifname: str
    hash: int
    pkt_len: int
    ep_id: int
    source: EndpointMeta | None = None
    destination: EndpointMeta | None = None
    uuid: str = ""
    flags: int = 0
    policy_match: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

    # ---- derived views -------------------------------------------------------------------------
    @property
    def drop_reason(self) -> int:
        return self.sub_type if self.event_type == 1 else 0

    @property
    def protocol_name(self) -> str:
        return {6: "TCP", 17: "UDP", 1: "ICMPv4", 58: "ICMPv6", 132: "SCTP"}.get(self.l4_proto, "")

    def tcp_flag_names(self) -> list[str]:
        return [name for bit, name in api.TCP_FLAG_NAMES if self.tcp_flags & bit]

    def summary(self) -> str:
        """Hubble's Flow.Summary text ("TCP Flags: SYN", "UDP", "ICMPv4 EchoRequest")."""
        if self.l4_proto == 6:
            return "TCP Flags: " + ", ".join(self.tcp_flag_names()) if self.tcp_flags else "TCP"
        if self.l4_proto == 17:
            return "UDP"
        if self.l4_proto in (1, 58):
            return f"{self.protocol_name} {icmp_type_name(self.l4_proto, self.icmp_type)}"
        return self.protocol_name or "IP"

    def time_rfc3339(self) -> str:
        sec, ns = divmod(self.time_ns, 1_000_000_000)
        base = _dt.datetime.fromtimestamp(sec, tz=_dt.UTC).strftime("%Y-%m-%dT%H:%M:%S")
        return f"{base}.{ns:09d}Z"

    def to_hubble_dict(self) -> dict[str, Any]:
        """The flow in `hubble observe -o jsonpb` form (proto field names, enums as names)."""
        d: dict[str, Any] = {"time": self.time_rfc3339()}
        if self.uuid:
            d["uuid"] = self.uuid
        d["verdict"] = self.verdict
        if self.event_type == 1:
            d["drop_reason"] = self.sub_type
        if self.ip_version:
            d["IP"] = {
                "source": self.source_ip,
                "destination": self.destination_ip,
                "ipVersion": "IPv4" if self.ip_version == 4 else "IPv6",
            }
        l4 = self._l4_dict()
        if l4:
            d["l4"] = l4
        for side, meta in (("source", self.source), ("destination", self.destination)):
            if meta is not None:
                d[side] = _endpoint_dict(meta)
        d["Type"] = "L3_L4"
        d["node_name"] = self.node_name
        d["event_type"] = {"type": self.event_type, "sub_type": self.sub_type}
        d["traffic_direction"] = self.traffic_direction
        if self.event_type == 4:
            d["trace_observation_point"] = api.TRACE_POINTS.get(self.sub_type, ("", "UNKNOWN_POINT"))[1]
        if self.event_type == 1:
            d["drop_reason_desc"] = api.drop_reason_enum(self.sub_type)
        if self.is_reply is not None:
            d["is_reply"] = self.is_reply
        d["interface"] = {"index": self.ifindex, "name": self.ifname}
        d["Summary"] = self.summary()
        return d

    def _l4_dict(self) -> dict[str, Any]:
        if self.l4_proto in (6, 17, 132):
            key = {6: "TCP", 17: "UDP", 132: "SCTP"}[self.l4_proto]
            inner: dict[str, Any] = {}
            if self.source_port:
                inner["source_port"] = self.source_port
            if self.destination_port:
                inner["destination_port"] = self.destination_port
            if self.l4_proto == 6 and self.tcp_flags:
                inner["flags"] = {name: True for name in self.tcp_flag_names()}
            return {key: inner}
        if self.l4_proto in (1, 58):
            inner = {}
            if self.icmp_type:
                inner["type"] = self.icmp_type
            if self.icmp_code:
                inner["code"] = self.icmp_code
            return {"ICMPv4" if self.l4_proto == 1 else "ICMPv6": inner}
        return {}


def _endpoint_dict(meta: EndpointMeta) -> dict[str, Any]:
    d: dict[str, Any] = {}
    if meta.id:
        d["ID"] = meta.id
    if meta.identity:
        d["identity"] = meta.identity
    if meta.namespace:
        d["namespace"] = meta.namespace
    if meta.labels:
        d["labels"] = list(meta.labels)
    if meta.pod_name:
        d["pod_name"] = meta.pod_name
    if meta.workloads:
        d["workloads"] = [{"name": n, "kind": k} for n, k in meta.workloads]
    return d


_ICMP4 = {0: "EchoReply", 3: "DestinationUnreachable", 8: "EchoRequest", 11: "TimeExceeded", 5: "Redirect"}
_ICMP6 = {
    1: "DestinationUnreachable",
    2: "PacketTooBig",
    3: "TimeExceeded",
    128: "EchoRequest",
    129: "EchoReply",
    130: "MulticastListenerQuery",
    131: "MulticastListenerReport",
    132: "MulticastListenerDone",
    133: "RouterSolicitation",
    134: "RouterAdvertisement",
    135: "NeighborSolicitation",
    136: "NeighborAdvertisement",
    143: "MLDv2MulticastListenerReport",
}


def icmp_type_name(proto: int, icmp_type: int) -> str:
    table = _ICMP4 if proto == 1 else _ICMP6
    return table.get(icmp_type, f"Type{icmp_type}")


def flow_to_wire(f: Flow) -> dict[str, Any]:
    """Lossless JSON form used between the agent and the CLI (the CLI renders it either way)."""
    from dataclasses import asdict

    return asdict(f)


def flow_from_wire(d: dict[str, Any]) -> Flow:
    d = dict(d)
    for side in ("source", "destination"):
        m = d.get(side)
        if m is not None:
            d[side] = EndpointMeta(
                id=m["id"],
                namespace=m["namespace"],
                pod_name=m["pod_name"],
                labels=tuple(m.get("labels", ())),
                identity=m.get("identity", 0),
                workloads=tuple(tuple(w) for w in m.get("workloads", ())),  # type: ignore[misc]
            )
    return Flow(**d)


def _ip(raw: bytes, version: int) -> str:
    import ipaddress

    if version == 4:
        return str(ipaddress.IPv4Address(raw[:4]))
    if version == 6:
        return str(ipaddress.IPv6Address(raw[:16]))
    return ""


def flow_from_row(row: Any, tables: Any) -> Flow:
    """A stored row (record.FLOW_DTYPE) as a Flow, for the agent's REST views."""
    import uuid as _uuid

    version = int(row["ip_version"])
    reply = int(row["is_reply"])
    src_ep, dst_ep = int(row["src_ep"]), int(row["dst_ep"])
    return Flow(
        time_ns=int(row["time_ns"]),
        node_name=tables.string(row["node"]),
        event_type=int(row["event_type"]),
        sub_type=int(row["sub_type"]),
        verdict=VERDICT_NAMES[int(row["verdict"])],
        policy_match=int(row["policy_match"]),
        ip_version=version,
        source_ip=_ip(bytes(row["src_ip"]), version),
        destination_ip=_ip(bytes(row["dst_ip"]), version),
        l4_proto=int(row["l4_proto"]),
        source_port=int(row["src_port"]),
        destination_port=int(row["dst_port"]),
        tcp_flags=int(row["tcp_flags"]),
        icmp_type=int(row["icmp_type"]),
        icmp_code=int(row["icmp_code"]),
        is_reply=None if reply < 0 else bool(reply),
        ct_state=int(row["ct_state"]),
        traffic_direction="INGRESS" if int(row["traffic_direction"]) == 1 else "EGRESS",
        ifindex=int(row["ifindex"]),
        ifname=tables.string(row["ifname"]),
        hash=int(row["hash"]),
        pkt_len=int(row["pkt_len"]),
        ep_id=int(row["ep_id"]),
        source=tables.endpoint(src_ep) if src_ep else None,
        destination=tables.endpoint(dst_ep) if dst_ep else None,
        uuid=str(_uuid.UUID(bytes=bytes(row["uuid"]))),
    )
