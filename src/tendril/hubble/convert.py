"""Stored flow rows -> flow.Flow messages, filled the way Hubble's L3/L4 parser fills them.

This is the only place rows become protobuf (design.md: parsing happens once, in the agent; the
observer only formats). Field by field it follows cilium's pkg/hubble/parser/threefour: the
Summary text ("TCP Flags: SYN, ACK", "UDP", "ICMPv4 EchoRequest", "ICMPv6 NeighborSolicitation"),
is_reply only when the datapath knew it, drop_reason + drop_reason_desc for drops,
trace_observation_point for traces, the interface only when an ifindex was recorded.

`apply_field_mask` implements the GetFlowsRequest.field_mask copy as Hubble's server does it.
"""

from __future__ import annotations

import functools
import ipaddress
import socket
import uuid as _uuid
from collections.abc import Sequence

import numpy as np
from google.protobuf import descriptor

import tendril
from tendril.hubble import record as rec
from tendril.hubble.api import flow_pb2
from tendril.hubble.filters.base import FilterError
from tendril.hubble.record import FLOW_DTYPE, EndpointMeta, Tables
from tendril.monitor.api import icmp_type_code_text

EMITTER_NAME = "Tendril"
EMITTER_VERSION: str = getattr(tendril, "__version__", None) or "0.1.0"

EVENT_DROP = 1
EVENT_TRACE = 4
EVENT_POLICY_VERDICT = 5
EVENT_TRACE_SOCK = 7

IPPROTO_ICMP, IPPROTO_IGMP, IPPROTO_TCP, IPPROTO_UDP = 1, 2, 6, 17
IPPROTO_ICMPV6, IPPROTO_VRRP, IPPROTO_SCTP = 58, 112, 132

# Hubble's Summary lists TCP flags in this order (threefour getTCPFlags), not in bit order.
TCP_FLAG_ORDER: tuple[tuple[str, int], ...] = (
    ("SYN", 0x02),
    ("ACK", 0x10),
    ("RST", 0x04),
    ("FIN", 0x01),
    ("PSH", 0x08),
    ("URG", 0x20),
    ("ECE", 0x40),
    ("CWR", 0x80),
)

# ---- pieces ------------------------------------------------------------------------------------


def ip_text(raw: bytes, version: int) -> str:
    """A stored 16-byte address as Go's net.IP.String() prints it (IPv4-mapped IPv6 as IPv4)."""
    if version == 4:
        return socket.inet_ntop(socket.AF_INET, raw[:4])
    addr = ipaddress.IPv6Address(raw)
    mapped = addr.ipv4_mapped
    return str(mapped) if mapped is not None else str(addr)


def tcp_flag_names(flags: int) -> list[str]:
    return [name for name, bit in TCP_FLAG_ORDER if flags & bit]


def l34_summary(l4_proto: int, ip_version: int, tcp_flags: int, icmp_type: int, icmp_code: int) -> str:
    """Flow.Summary of an L3/L4 flow: the last decoded layer, with TCP flags or the ICMP type."""
    if not ip_version:
        return ""
    if l4_proto == IPPROTO_TCP:
        return "TCP Flags: " + ", ".join(tcp_flag_names(tcp_flags))
    if l4_proto == IPPROTO_UDP:
        return "UDP"
    if l4_proto == IPPROTO_SCTP:
        return "SCTP"
    if l4_proto == IPPROTO_ICMP:
        return "ICMPv4 " + icmp_type_code_text(l4_proto, icmp_type, icmp_code)
    if l4_proto == IPPROTO_ICMPV6:
        return "ICMPv6 " + icmp_type_code_text(l4_proto, icmp_type, icmp_code)
    if l4_proto == IPPROTO_VRRP:
        return "VRRP"
    if l4_proto == IPPROTO_IGMP:
        return "IGMP"
    return "IPv4" if ip_version == 4 else "IPv6"


def uuid_text(raw: bytes) -> str:
    return "" if not any(raw) else str(_uuid.UUID(bytes=raw))


def endpoint_proto(meta: EndpointMeta | None, identity: int) -> flow_pb2.Endpoint | None:
    """The Endpoint for one side: full metadata when known, else only the identity, else none."""
    if meta is None:
        return flow_pb2.Endpoint(identity=identity) if identity else None
    return flow_pb2.Endpoint(
        ID=meta.id,
        identity=identity or meta.identity,
        cluster_name=meta.cluster_name,
        namespace=meta.namespace,
        labels=list(meta.labels),
        pod_name=meta.pod_name,
        workloads=[flow_pb2.Workload(name=name, kind=kind) for name, kind in meta.workloads],
    )


def _service(tables: Tables, sid: int) -> flow_pb2.Service | None:
    if not sid:
        return None
    ns, _, name = tables.string(sid).partition("/")
    return flow_pb2.Service(namespace=ns, name=name) if name else flow_pb2.Service(name=ns)


def _set_l4(f: flow_pb2.Flow, r: dict) -> None:
    proto = r["l4_proto"]
    if proto == IPPROTO_TCP:
        tcp = f.l4.TCP
        tcp.source_port, tcp.destination_port = r["src_port"], r["dst_port"]
        flags = r["tcp_flags"]
        tcp.flags.SetInParent()  # Hubble always sends the flags message for TCP
        for name, bit in TCP_FLAG_ORDER:
            if flags & bit:
                setattr(tcp.flags, name, True)
    elif proto == IPPROTO_UDP:
        f.l4.UDP.source_port, f.l4.UDP.destination_port = r["src_port"], r["dst_port"]
        f.l4.UDP.SetInParent()
    elif proto == IPPROTO_SCTP:
        f.l4.SCTP.source_port, f.l4.SCTP.destination_port = r["src_port"], r["dst_port"]
        f.l4.SCTP.SetInParent()
    elif proto in (IPPROTO_ICMP, IPPROTO_ICMPV6):
        icmp = f.l4.ICMPv4 if proto == IPPROTO_ICMP else f.l4.ICMPv6
        icmp.type, icmp.code = r["icmp_type"], r["icmp_code"]
        icmp.SetInParent()  # echo reply is type 0 code 0: still an ICMP layer
    elif proto == IPPROTO_VRRP:
        f.l4.VRRP.SetInParent()
    elif proto == IPPROTO_IGMP:
        f.l4.IGMP.SetInParent()


DNS_RCODES = {0: "NOERROR", 1: "FORMERR", 2: "SERVFAIL", 3: "NXDOMAIN", 4: "NOTIMP", 5: "REFUSED"}


def l7_summary(l7: flow_pb2.Layer7) -> str:
    """Hubble's Summary of an HTTP or DNS record (pkg/hubble/parser/seven/http.go, dns.go)."""
    if l7.HasField("dns"):
        d = l7.dns
        qtypes = ",".join(d.qtypes)
        if l7.type != flow_pb2.RESPONSE:
            return f"DNS Query {d.query} {qtypes}"
        rcode = DNS_RCODES.get(d.rcode, str(d.rcode))
        if rcode != "NOERROR":
            answer = f"RCode: {rcode}"
        else:
            answer = '"' + ",".join(d.ips) + '"'
            if d.cnames:
                answer += " CNAMEs: " + ",".join(d.cnames)
        source = "Proxy" if d.observation_source == "proxy" else "Query"
        return f"DNS Answer {answer} TTL: {d.ttl} ({source} {d.query} {qtypes})"
    h = l7.http
    if l7.type == flow_pb2.RESPONSE:
        return f"{h.protocol} {h.code} {l7.latency_ns // 1_000_000}ms ({h.method} {h.url})"
    return f"{h.protocol} {h.method} {h.url}"


def _l7_record(tables: Tables, l7_id: int) -> flow_pb2.Layer7 | None:
    """The L7 record of a row (`tables.l7`, see record.L7Records and filters/l7.py)."""
    interner = getattr(tables, "l7", None)
    if not l7_id or interner is None:
        return None
    record = interner.value(l7_id)
    return record if isinstance(record, flow_pb2.Layer7) else None


# ---- rows -> Flow ------------------------------------------------------------------------------


_COLUMNS = FLOW_DTYPE.names


def row_to_proto(row: np.void, tables: Tables) -> flow_pb2.Flow:
    """One stored row -> flow.Flow."""
    return _build(dict(zip(_COLUMNS, row.item(), strict=True)), tables, None)


def rows_to_protos(rows: np.ndarray, tables: Tables) -> list[flow_pb2.Flow]:
    """Many rows; endpoint messages are built once per distinct (endpoint, identity) in the batch."""
    cache: dict[tuple[int, int], flow_pb2.Endpoint | None] = {}
    return [_build(dict(zip(_COLUMNS, values, strict=True)), tables, cache) for values in rows.tolist()]


def _build(
    r: dict, tables: Tables, endpoints: dict[tuple[int, int], flow_pb2.Endpoint | None] | None
) -> flow_pb2.Flow:
    """The Flow for one row given as {column: Python value} (one C call per row or batch, not per field)."""
    f = flow_pb2.Flow()
    if r["time_ns"]:
        f.time.FromNanoseconds(r["time_ns"])
    f.uuid = uuid_text(r["uuid"])
    f.emitter.name = EMITTER_NAME
    f.emitter.version = EMITTER_VERSION
    f.verdict = r["verdict"]

    event_type, sub_type = r["event_type"], r["sub_type"]
    drop_reason = r["drop_reason"] or (sub_type if event_type == EVENT_DROP else 0)
    if drop_reason:
        f.drop_reason = drop_reason
        f.drop_reason_desc = drop_reason  # unknown codes stay numbers, as Go's enum cast does

    version = r["ip_version"]
    if version in (4, 6):
        f.IP.source = ip_text(r["src_ip"], version)
        f.IP.destination = ip_text(r["dst_ip"], version)
        f.IP.ipVersion = flow_pb2.IPv4 if version == 4 else flow_pb2.IPv6
    _set_l4(f, r)

    for side, key in (
        ("source", (r["src_ep"], r["src_identity"])),
        ("destination", (r["dst_ep"], r["dst_identity"])),
    ):
        if endpoints is not None and key in endpoints:
            ep = endpoints[key]
        else:
            ep_id, identity = key
            ep = endpoint_proto(tables.endpoint(ep_id) if ep_id else None, identity)
            if endpoints is not None:
                endpoints[key] = ep
        if ep is not None:
            getattr(f, side).CopyFrom(ep)

    f.Type = r["flow_type"]
    f.node_name = tables.string(r["node"])
    f.event_type.type = event_type
    f.event_type.sub_type = sub_type
    for side, col in (("source_service", "src_service"), ("destination_service", "dst_service")):
        svc = _service(tables, r[col])
        if svc is not None:
            getattr(f, side).CopyFrom(svc)
    f.traffic_direction = r["traffic_direction"]
    if event_type == EVENT_POLICY_VERDICT:
        f.policy_match_type = r["policy_match"]

    is_reply, point = r["is_reply"], r["trace_point"]
    if event_type == EVENT_TRACE:
        # monitor point 0 (to-endpoint) is TO_ENDPOINT (101) in the flow enum; the others coincide
        f.trace_observation_point = point or (flow_pb2.TO_ENDPOINT if sub_type == 0 else sub_type)
        if is_reply != rec.REPLY_UNKNOWN:  # the datapath reported its conntrack result
            f.trace_reason = r["ct_state"] + 1  # new/established/reply/related -> NEW..RELATED
    elif point and event_type != EVENT_TRACE_SOCK:
        f.trace_observation_point = point
    if is_reply != rec.REPLY_UNKNOWN:
        f.is_reply.value = bool(is_reply)
        f.reply = bool(is_reply)

    if r["ifindex"]:
        f.interface.index = r["ifindex"]
        f.interface.name = tables.string(r["ifname"])

    l7 = _l7_record(tables, r["l7"])
    if l7 is not None:
        f.l7.CopyFrom(l7)
        if l7.HasField("http") or l7.HasField("dns"):
            f.Summary = l7_summary(l7)
            return f
    if event_type == EVENT_TRACE and point == flow_pb2.TO_PROXY:
        # the event does not carry the port: UDP is only ever redirected to the DNS proxy, TCP to
        # port 53 is taken to be DNS too (an HTTP rule on port 53 would be reported wrongly)
        dns = r["l4_proto"] == 17 or r["dst_port"] == 53
        port = getattr(tables, "dns_proxy_port", 0) if dns else tables.proxy_port
        if port:
            f.proxy_port = port
    if event_type == EVENT_TRACE_SOCK:
        f.sock_xlate_point = point  # Hubble leaves Summary empty for socket translations
        if f.l4.HasField("TCP"):
            f.l4.TCP.ClearField("flags")
    else:
        f.Summary = l34_summary(r["l4_proto"], version, r["tcp_flags"], r["icmp_type"], r["icmp_code"])
    return f


# ---- field masks -------------------------------------------------------------------------------


class FieldMaskError(FilterError):
    """A field_mask path that does not name a Flow field (answered with INVALID_ARGUMENT)."""

    def __init__(self, path: str, message: str) -> None:
        self.field = "field_mask"
        self.message = f"{path!r}: {message}"
        ValueError.__init__(self, f"invalid field_mask path {path!r}: {message}")


FieldMaskTree = dict[str, "FieldMaskTree"]  # path component -> sub-tree ({} = whole field)


@functools.lru_cache(maxsize=64)
def compile_field_mask(paths: tuple[str, ...]) -> FieldMaskTree:
    """Validate paths against flow.Flow and fold them into a tree; a shorter path wins over a longer one.

    Call it once per request (it is cached too) so a bad path fails the request up front.
    """
    for path in paths:
        _validate_path(path)
    tree: FieldMaskTree = {}
    for path in sorted(set(paths), key=lambda p: p.count(".")):
        node = tree
        *parents, leaf = path.split(".")
        for name in parents:
            if name in node and not node[name]:
                break  # a shorter path already keeps the whole field
            node = node.setdefault(name, {})
        else:
            node[leaf] = {}
    return tree


def _validate_path(path: str) -> None:
    msg: descriptor.Descriptor = flow_pb2.Flow.DESCRIPTOR
    parts = path.split(".")
    for i, name in enumerate(parts):
        fd = msg.fields_by_name.get(name)
        if fd is None:
            raise FieldMaskError(path, f"{msg.full_name} has no field {name!r}")
        if i < len(parts) - 1:
            if fd.message_type is None or _is_repeated(fd):
                raise FieldMaskError(path, f"{name!r} is not a message field, it cannot have sub-fields")
            msg = fd.message_type


def _is_repeated(fd: descriptor.FieldDescriptor) -> bool:
    return bool(fd.is_repeated)


def _copy(tree: FieldMaskTree, dst: object, src: object) -> None:
    fields = src.DESCRIPTOR.fields_by_name  # type: ignore[attr-defined]
    for name, sub in tree.items():
        fd = fields[name]
        oneof = fd.containing_oneof
        if not sub:
            if _is_repeated(fd):
                getattr(dst, name).extend(getattr(src, name))
            elif fd.message_type is not None or oneof is not None:
                if src.HasField(name):  # type: ignore[attr-defined]
                    if fd.message_type is not None:
                        getattr(dst, name).CopyFrom(getattr(src, name))
                    else:
                        setattr(dst, name, getattr(src, name))
            else:
                setattr(dst, name, getattr(src, name))
            continue
        if oneof is not None and src.WhichOneof(oneof.name) != name:  # type: ignore[attr-defined]
            continue  # only the variant the source has
        child = getattr(dst, name)
        child.SetInParent()  # Hubble allocates the sub-message even when the source lacks it
        _copy(sub, child, getattr(src, name))


def apply_field_mask(flow: flow_pb2.Flow, paths: Sequence[str] | FieldMaskTree) -> flow_pb2.Flow:
    """A new Flow holding only the masked fields of `flow` (nested paths like `source.pod_name`).

    Same result as Hubble's server-side copy: leaf fields are copied when set, parents of nested
    paths always exist in the result (so `source` is present, possibly empty, under the CLI's
    default mask), and an empty mask keeps everything.
    """
    tree = paths if isinstance(paths, dict) else compile_field_mask(tuple(paths))
    if not tree:
        return flow
    out = flow_pb2.Flow()
    _copy(tree, out, flow)
    return out
