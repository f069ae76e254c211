"""Render flow records for people: `cilium-dbg monitor` lines and `hubble observe` compact lines."""

from __future__ import annotations

import datetime as _dt

from tendril.hubble.parser.flow import EndpointMeta, Flow, icmp_type_name
from tendril.monitor import api

RESERVED_IDENTITIES = {
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


def _hostport(ip: str, port: int, proto: int) -> str:
    if proto in (6, 17, 132) and port:
        return f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}"
    return ip


def _identity_name(meta: EndpointMeta | None) -> str:
    ident = meta.identity if meta else 0
    return RESERVED_IDENTITIES.get(ident, str(ident))


def _l4_summary(f: Flow) -> str:
    if f.l4_proto == 6:
        return "tcp " + ", ".join(f.tcp_flag_names()) if f.tcp_flags else "tcp"
    if f.l4_proto == 17:
        return "udp"
    if f.l4_proto in (1, 58):
        return f"{'icmp' if f.l4_proto == 1 else 'icmpv6'} {icmp_type_name(f.l4_proto, f.icmp_type)}"
    return f"proto {f.l4_proto}" if f.l4_proto else ""


def _tuple(f: Flow) -> str:
    if not f.ip_version:
        return "non-IP"
    src = _hostport(f.source_ip, f.source_port, f.l4_proto)
    dst = _hostport(f.destination_ip, f.destination_port, f.l4_proto)
    return f"{src} -> {dst} {_l4_summary(f)}".rstrip()


def monitor_line(f: Flow) -> str:
    """One `cilium-dbg monitor` line for a trace or drop event."""
    idents = f"identity {_identity_name(f.source)}->{_identity_name(f.destination)}"
    if f.event_type == 1:
        to_ep = f.ep_id if f.traffic_direction == "INGRESS" else 0
        return (
            f"xx drop ({api.drop_reason_text(f.sub_type)}) flow {f.hash:#x} to endpoint {to_ep}, "
            f"ifindex {f.ifindex}, file lxc.c, , {idents}: {_tuple(f)}"
        )
    prefix = api.TRACE_MONITOR_PREFIX.get(f.sub_type, f"trace {f.sub_type}")
    ep = f" {f.ep_id}" if prefix.endswith("endpoint") else ""
    state = api.CT_STATE_TEXT.get(f.ct_state, str(f.ct_state))
    return (
        f"{prefix}{ep} flow {f.hash:#x} , {idents} state {state} ifindex {f.ifname or f.ifindex} "
        f"orig-ip 0.0.0.0: {_tuple(f)}"
    )


def _stamp_milli(ns: int) -> str:
    t = _dt.datetime.fromtimestamp(ns / 1e9, tz=_dt.UTC)
    return f"{t.strftime('%b')} {t.day:2d} {t.strftime('%H:%M:%S')}.{t.microsecond // 1000:03d}"


def _endpoint_text(ip: str, port: int, proto: int, meta: EndpointMeta | None, numeric: bool) -> str:
    name = ip
    if not numeric and meta is not None and meta.pod_name:
        name = f"{meta.namespace}/{meta.pod_name}"
    if proto in (6, 17, 132) and port:
        return f"[{name}]:{port}" if (":" in name and "/" not in name) else f"{name}:{port}"
    return name


def _id_text(meta: EndpointMeta | None) -> str:
    ident = meta.identity if meta else 0
    return f"({RESERVED_IDENTITIES[ident]})" if ident in RESERVED_IDENTITIES else f"(ID:{ident})"


def compact_line(f: Flow, numeric: bool = False, node_name: bool = False) -> str:
    """A `hubble observe` compact line (the layout in shared/reference/hubble-api.md §4)."""
    src = f"{_endpoint_text(f.source_ip, f.source_port, f.l4_proto, f.source, numeric)} {_id_text(f.source)}"
    dst = (
        f"{_endpoint_text(f.destination_ip, f.destination_port, f.l4_proto, f.destination, numeric)} "
        + _id_text(f.destination)
    )
    if f.is_reply is None:
        arrow, left, right = "<>", src, dst
    elif f.is_reply:
        arrow, left, right = "<-", dst, src
    else:
        arrow, left, right = "->", src, dst
    kind = api.drop_reason_text(f.sub_type) if f.event_type == 1 else api.trace_point_name(f.sub_type)
    node = f" [{f.node_name}]" if node_name else ""
    return f"{_stamp_milli(f.time_ns)}{node}: {left} {arrow} {right} {kind} {f.verdict} ({f.summary()})"
