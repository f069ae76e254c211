"""Allow/deny lists evaluated on flow.Flow messages, for `--input-file` replays.

hubble applies the request's filters itself when it reads saved flows (there is no server to do
it). The server's filters (`tendril.hubble.filters`) run vectorised over stored rows, so this is
their per-message counterpart; value parsing and the pattern/selector/name rules are borrowed
from those modules so both sides accept and match the same things.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable, Sequence

from tendril.hubble.api import flow_pb2, observer_pb2
from tendril.hubble.cli.errors import CLIError

Pred = Callable[[flow_pb2.Flow], bool]

L4_KINDS: dict[str, tuple[str, ...]] = {  # protocol filter value -> flow.Layer4 oneof names
    "icmp": ("ICMPv4", "ICMPv6"),
    "icmpv4": ("ICMPv4",),
    "icmpv6": ("ICMPv6",),
    "tcp": ("TCP",),
    "udp": ("UDP",),
    "sctp": ("SCTP",),
    "vrrp": ("VRRP",),
    "igmp": ("IGMP",),
}
_L7_PROTOCOLS = ("dns", "http", "kafka")
_TCP_FLAGS = ("FIN", "SYN", "RST", "PSH", "ACK", "URG", "ECE", "CWR", "NS")


def _networks(field: str, values: Sequence[str]) -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
    from tendril.hubble.filters.base import FilterError, quote

    nets = []
    for v in values:
        try:
            nets.append(ipaddress.ip_network(v, strict=False))
        except ValueError:
            raise FilterError(field, f"{quote(v)} is not an IP address or CIDR") from None
    return nets


def _ip_pred(field: str, values: Sequence[str], get: Callable[[flow_pb2.Flow], str]) -> Pred:
    nets = _networks(field, values)

    def pred(f: flow_pb2.Flow) -> bool:
        try:
            addr = ipaddress.ip_address(get(f))
        except ValueError:
            return False
        return any(addr in n for n in nets)

    return pred


def _ports(f: flow_pb2.Flow) -> tuple[int, int] | None:
    kind = f.l4.WhichOneof("protocol") if f.HasField("l4") else None
    if kind not in ("TCP", "UDP", "SCTP"):
        return None
    l4 = getattr(f.l4, kind)
    return l4.source_port, l4.destination_port


def _http(f: flow_pb2.Flow) -> flow_pb2.HTTP | None:
    return f.l7.http if f.HasField("l7") and f.l7.HasField("http") else None


def _protocol_pred(values: Sequence[str]) -> Pred:
    from tendril.hubble.filters.base import FilterError, quote

    l4: set[str] = set()
    l7: set[str] = set()
    for p in values:
        name = p.lower()
        if name in L4_KINDS:
            l4.update(L4_KINDS[name])
        elif name in _L7_PROTOCOLS:
            l7.add(name)
        else:
            raise FilterError("protocol", f"unknown protocol {quote(p)}")

    def pred(f: flow_pb2.Flow) -> bool:
        if f.HasField("l4") and f.l4.WhichOneof("protocol") in l4:
            return True
        return f.HasField("l7") and f.l7.WhichOneof("record") in l7

    return pred


def _endpoint_preds(ff: flow_pb2.FlowFilter) -> list[Pred]:  # noqa: C901 - one block per field
    from tendril.hubble.filters import fqdn, label, pod
    from tendril.hubble.filters.pod import match_namespaced

    preds: list[Pred] = []
    for side in ("source", "destination"):
        ep: Callable[[flow_pb2.Flow], flow_pb2.Endpoint] = lambda f, s=side: getattr(f, s)  # noqa: E731
        pods = list(getattr(ff, f"{side}_pod"))
        if pods:
            names = pod.parse_names(f"{side}_pod", pods)
            preds.append(lambda f, n=names, ep=ep: match_namespaced(n, ep(f).namespace, ep(f).pod_name))
        services = list(getattr(ff, f"{side}_service"))
        if services:
            names = pod.parse_names(f"{side}_service", services)
            svc_field = f"{side}_service"
            preds.append(
                lambda f, n=names, s=svc_field: match_namespaced(
                    n, getattr(f, s).namespace, getattr(f, s).name
                )
            )
        fqdns = list(getattr(ff, f"{side}_fqdn"))
        if fqdns:
            regex = fqdn.compile_patterns(f"{side}_fqdn", fqdns)
            names_field = f"{side}_names"
            preds.append(lambda f, r=regex, nf=names_field: fqdn.match_names(r, getattr(f, nf)))
        labels = list(getattr(ff, f"{side}_label"))
        if labels:
            selectors = label.compile_selectors(f"{side}_label", labels)
            preds.append(lambda f, s=selectors, ep=ep: label.matches_any(s, list(ep(f).labels)))
        workloads = [(w.name, w.kind) for w in getattr(ff, f"{side}_workload")]
        if workloads:
            preds.append(
                lambda f, wl=workloads, ep=ep: any(
                    (not name or name == w.name) and (not kind or kind == w.kind)
                    for w in ep(f).workloads
                    for name, kind in wl
                )
            )
        clusters = set(getattr(ff, f"{side}_cluster_name"))
        if clusters:
            preds.append(lambda f, c=clusters, ep=ep: ep(f).cluster_name in c)
        identities = set(getattr(ff, f"{side}_identity"))
        if identities:
            preds.append(lambda f, i=identities, ep=ep: ep(f).identity in i)
        ips = list(getattr(ff, f"{side}_ip"))
        if ips:
            preds.append(
                _ip_pred(f"{side}_ip", ips, lambda f, s=side: getattr(f.IP, s) if f.HasField("IP") else "")
            )
        ports = list(getattr(ff, f"{side}_port"))
        if ports:
            from tendril.hubble.filters.port import parse_ports

            wanted = {int(p) for p in parse_ports(f"{side}_port", ports)}
            index = 0 if side == "source" else 1
            preds.append(lambda f, w=wanted, i=index: (p := _ports(f)) is not None and p[i] in w)
    if ff.source_ip_xlated:
        preds.append(
            _ip_pred(
                "source_ip_xlated",
                ff.source_ip_xlated,
                lambda f: f.IP.source_xlated if f.HasField("IP") else "",
            )
        )
    return preds


def _l7_preds(ff: flow_pb2.FlowFilter) -> list[Pred]:
    from tendril.hubble.filters.http import parse_status, request_path

    preds: list[Pred] = []
    if ff.http_status_code:
        full, prefixes = parse_status(list(ff.http_status_code))

        def status_ok(f: flow_pb2.Flow) -> bool:
            h = _http(f)
            if h is None or h.code == 0:
                return False
            code = f"{h.code:03d}"
            return code in full or code.startswith(prefixes)

        preds.append(status_ok)
    if ff.http_method:
        methods = {m.lower() for m in ff.http_method}
        preds.append(lambda f: (h := _http(f)) is not None and h.method.lower() in methods)
    if ff.http_path:
        paths = [re.compile(p) for p in ff.http_path]
        preds.append(
            lambda f: (h := _http(f)) is not None
            and (path := request_path(h.url)) is not None
            and any(r.search(path) for r in paths)
        )
    if ff.http_url:
        urls = [re.compile(u) for u in ff.http_url]
        preds.append(lambda f: (h := _http(f)) is not None and any(r.search(h.url) for r in urls))
    if ff.http_header:
        want = [(hh.key, hh.value) for hh in ff.http_header]
        preds.append(
            lambda f: (h := _http(f)) is not None
            and any((not k or k == hd.key) and (not v or v == hd.value) for hd in h.headers for k, v in want)
        )
    if ff.dns_query:
        queries = [re.compile(q) for q in ff.dns_query]
        preds.append(
            lambda f: f.HasField("l7")
            and f.l7.HasField("dns")
            and any(r.search(f.l7.dns.query) for r in queries)
        )
    if ff.protocol:
        preds.append(_protocol_pred(ff.protocol))
    return preds


def _flow_preds(ff: flow_pb2.FlowFilter) -> list[Pred]:
    from tendril.hubble.filters.base import FilterError
    from tendril.hubble.filters.label import compile_selectors, matches_any
    from tendril.hubble.filters.patterns import PatternError, compile_node_name_patterns

    preds: list[Pred] = []
    if ff.HasField("experimental") and ff.experimental.cel_expression:
        raise CLIError("--cel-expression filters are not supported with --input-file")
    if ff.uuid:
        preds.append(lambda f, u=set(ff.uuid): f.uuid in u)
    for name, getter in (
        ("verdict", lambda f: f.verdict),
        ("traffic_direction", lambda f: f.traffic_direction),
        ("drop_reason_desc", lambda f: f.drop_reason_desc),
        ("ip_version", lambda f: f.IP.ipVersion if f.HasField("IP") else 0),
        ("ip_trace_id", lambda f: f.ip_trace_id.trace_id),
        ("encrypted", lambda f: f.IP.encrypted),
        ("trace_id", lambda f: f.trace_context.parent.trace_id),
    ):
        values = set(getattr(ff, name))
        if values:
            preds.append(lambda f, v=values, g=getter: g(f) in v)
    if ff.event_type:
        wanted = [(t.type, t.match_sub_type, t.sub_type) for t in ff.event_type]
        preds.append(
            lambda f: any(
                (not t or f.event_type.type == t) and (not m or f.event_type.sub_type == s)
                for t, m, s in wanted
            )
        )
    if ff.reply:
        want = set(ff.reply)
        preds.append(
            lambda f: (f.HasField("is_reply") or f.verdict == flow_pb2.DROPPED) and (f.is_reply.value in want)
        )
    if ff.tcp_flags:
        required = [[n for n in _TCP_FLAGS if getattr(flags, n)] for flags in ff.tcp_flags]
        preds.append(
            lambda f: f.HasField("l4")
            and f.l4.HasField("TCP")
            and any(all(getattr(f.l4.TCP.flags, n) for n in req) for req in required)
        )
    if ff.interface:
        ifaces = [(i.index, i.name) for i in ff.interface]
        preds.append(
            lambda f: f.HasField("interface")
            and any((not i or i == f.interface.index) and (not n or n == f.interface.name) for i, n in ifaces)
        )
    if ff.node_name:
        try:
            regex = compile_node_name_patterns(list(ff.node_name))
        except PatternError as e:
            raise FilterError("node_name", str(e)) from None
        preds.append(
            lambda f: bool(f.node_name)
            and regex.match(f.node_name if "/" in f.node_name else f"default/{f.node_name}") is not None
        )
    if ff.node_labels:
        selectors = compile_selectors("node_labels", list(ff.node_labels))
        preds.append(lambda f: matches_any(selectors, list(f.node_labels)))
    return preds + _endpoint_preds(ff) + _l7_preds(ff)


def _compile(filters: Sequence[flow_pb2.FlowFilter]) -> list[list[Pred]]:
    return [_flow_preds(ff) for ff in filters]


def build_matcher(
    req: observer_pb2.GetFlowsRequest,
) -> Callable[[observer_pb2.GetFlowsResponse], bool] | None:
    """A predicate over responses (whitelist OR-ed, blacklist excluded), or None without filters."""
    if not req.whitelist and not req.blacklist:
        return None
    from tendril.hubble.filters.base import FilterError

    try:
        allow = _compile(req.whitelist)
        deny = _compile(req.blacklist)
    except (FilterError, re.error) as e:
        raise CLIError(str(e)) from None

    def matches(res: observer_pb2.GetFlowsResponse) -> bool:
        f = res.flow
        if allow and not any(all(p(f) for p in preds) for preds in allow):
            return False
        return not any(all(p(f) for p in preds) for preds in deny)

    return matches
