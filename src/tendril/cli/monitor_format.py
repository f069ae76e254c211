"""Render flow records as `cilium-dbg monitor` lines (hubble formats live in tendril.hubble.cli)."""

from __future__ import annotations

from tendril.hubble.parser.flow import EndpointMeta, Flow, icmp_type_name
from tendril.monitor import api

RESERVED_IDENTITIES = api.RESERVED_IDENTITY_NAMES


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
    """One `cilium-dbg monitor` line for a trace, drop or policy verdict event."""
    idents = f"identity {_identity_name(f.source)}->{_identity_name(f.destination)}"
    if f.event_type == 5:
        ingress = f.traffic_direction == "INGRESS"
        remote = f.source if ingress else f.destination
        action = {"FORWARDED": "allow", "DROPPED": "deny", "AUDIT": "audit"}.get(f.verdict, f.verdict.lower())
        match = api.POLICY_MATCH_TYPES.get(f.policy_match, str(f.policy_match))
        remote_id = _identity_name(remote)
        return (
            f"Policy verdict log: flow {f.hash:#x} local EP ID {f.ep_id}, remote ID {remote_id}, "
            f"proto {f.l4_proto}, {'ingress' if ingress else 'egress'}, action {action}, match {match}, "
            f"{_tuple(f)}"
        )
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
