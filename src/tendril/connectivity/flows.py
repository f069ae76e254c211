"""Flow validation: what Hubble Relay recorded for an action, against what the action expects.

For every action the relay is asked for the flows from or to the source's addresses since the
action started; those of the action's connection (its addresses, ports and, when the command
reported it, its source port) are matched against requirements built like cilium-cli's
(GetEgressRequirements / GetIngressRequirements): on the source's side (egress) and on the
destination pods' side (ingress), flows that must appear (SYN, SYN-ACK, FIN or RST, or a drop with
a policy reason at the right place) and flows that must not (a drop on a connection that must
work, a SYN-ACK on one that must be dropped). Requests through the L7 proxy (a side whose result
is `l7`) need, on the node of the proxy that applied the rules, the proxy's http-request and
http-response records of the connection, with the method, the status and the verdict (FORWARDED,
or DROPPED for a 403); the proxy's own connection to the server comes from the node, so only the
client's side of the TCP connection is checked. A source that resolves the destination's name
through its node's DNS proxy first (a `dns` result) needs the proxy's dns-request and
dns-response records of that name there, FORWARDED. Flows reach the relay a little after the
packets, so matching polls for a bounded time.
"""

from __future__ import annotations

import io
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from tendril.connectivity.actions import CommandResult
from tendril.connectivity.model import Action, Pod, Result

ICMP_REQUEST = {8, 128}  # echo request, ICMPv4 / ICMPv6
ICMP_REPLY = {0, 129}
EVENT_DROP = 1  # monitor message type of drop events (policy verdicts are 5)
EVENT_L7 = 129  # L7 records (the proxy's http-request / http-response rows)
EVENT_NAMES = {1: "drop", 2: "debug", 4: "trace", 5: "policy-verdict", 7: "trace-sock", 129: "l7"}


@dataclass
class Flow:
    """The fields of a Hubble flow that validation looks at, plus its `hubble observe` line."""

    node: str
    time: float
    verdict: str
    drop_reason: str
    event_type: int
    src_ip: str
    dst_ip: str
    proto: str  # TCP | UDP | ICMPv4 | ICMPv6 | ""
    sport: int
    dport: int
    flags: frozenset[str]
    icmp_type: int
    direction: str  # INGRESS | EGRESS | TRAFFIC_DIRECTION_UNKNOWN
    line: str
    l7_type: str = ""  # REQUEST | RESPONSE for the proxy's HTTP records, else ""
    http_code: int = 0
    http_method: str = ""
    http_url: str = ""
    dns_query: str = ""

    @property
    def l7(self) -> bool:
        return bool(self.l7_type) or self.event_type == EVENT_L7

    @property
    def kind(self) -> str:
        return EVENT_NAMES.get(self.event_type, str(self.event_type))

    @property
    def syn(self) -> bool:
        return "SYN" in self.flags and "ACK" not in self.flags

    @property
    def synack(self) -> bool:
        return {"SYN", "ACK"} <= self.flags

    @property
    def fin_or_rst(self) -> bool:
        return bool({"FIN", "RST"} & self.flags)


def flow_from_response(resp: Any) -> Flow:
    from tendril.hubble.api import flow_pb2

    f = resp.flow
    proto = f.l4.WhichOneof("protocol") if f.HasField("l4") else None
    sport = dport = icmp_type = 0
    flags: set[str] = set()
    if proto in ("TCP", "UDP"):
        l4 = getattr(f.l4, proto)
        sport, dport = l4.source_port, l4.destination_port
        if proto == "TCP":
            flags = {n for n in ("SYN", "ACK", "FIN", "RST", "PSH") if getattr(l4.flags, n)}
    elif proto in ("ICMPv4", "ICMPv6"):
        icmp_type = getattr(f.l4, proto).type
    l7_type, http = "", None
    if f.HasField("l7"):
        l7_type = flow_pb2.L7FlowType.Name(f.l7.type)
        http = f.l7.http if f.l7.HasField("http") else None
    return Flow(
        node=resp.node_name or f.node_name,
        time=f.time.ToNanoseconds() / 1e9,
        verdict=flow_pb2.Verdict.Name(f.verdict),
        drop_reason=flow_pb2.DropReason.Name(f.drop_reason_desc),
        event_type=f.event_type.type,
        src_ip=f.IP.source,
        dst_ip=f.IP.destination,
        proto=proto or "",
        sport=sport,
        dport=dport,
        flags=frozenset(flags),
        icmp_type=icmp_type,
        direction=flow_pb2.TrafficDirection.Name(f.traffic_direction),
        line=_compact(resp),
        l7_type=l7_type,
        http_code=http.code if http is not None else 0,
        http_method=http.method if http is not None else "",
        http_url=http.url if http is not None else "",
        dns_query=f.l7.dns.query if f.HasField("l7") and f.l7.HasField("dns") else "",
    )


def _compact(resp: Any) -> str:
    """The flow as `hubble observe --print-node-name` prints it."""
    from tendril.hubble.cli.printer import Printer, PrinterOptions

    out = io.BytesIO()
    Printer(PrinterOptions(color="never", node_name=True), out, io.BytesIO()).write_flow(resp)
    return out.getvalue().decode(errors="replace").rstrip("\n")


class Relay:
    """A Hubble Relay client (the lab's relay on 127.0.0.1:<port>)."""

    def __init__(self, address: str) -> None:
        import grpc

        from tendril.hubble.api import observer_pb2_grpc

        self.address = address
        self.channel = grpc.insecure_channel(address)
        self.stub = observer_pb2_grpc.ObserverStub(self.channel)

    def close(self) -> None:
        self.channel.close()

    def status(self, timeout: float = 3.0) -> tuple[int, int, int]:
        """(connected nodes, unavailable nodes, flows)."""
        from tendril.hubble.api import observer_pb2

        st = self.stub.ServerStatus(observer_pb2.ServerStatusRequest(), timeout=timeout)
        return st.num_connected_nodes.value, st.num_unavailable_nodes.value, st.num_flows

    def wait_ready(self, nodes: int, timeout: float = 15.0) -> str:
        """'' once every node is connected, else why not."""
        import grpc

        deadline = time.monotonic() + timeout
        why = ""
        while time.monotonic() < deadline:
            try:
                connected, unavailable, _ = self.status()
                if connected >= nodes and unavailable == 0:
                    return ""
                why = f"{connected}/{nodes} nodes connected, {unavailable} unavailable"
            except grpc.RpcError as e:
                why = e.details() or str(e.code())
            time.sleep(0.3)
        return why or "no answer"

    def flows(self, since: float, ips: set[str], timeout: float = 10.0) -> list[Flow]:
        from google.protobuf import timestamp_pb2

        from tendril.hubble.api import flow_pb2, observer_pb2

        ts = timestamp_pb2.Timestamp()
        ts.FromNanoseconds(int(since * 1e9))
        wl = [flow_pb2.FlowFilter(source_ip=sorted(ips)), flow_pb2.FlowFilter(destination_ip=sorted(ips))]
        req = observer_pb2.GetFlowsRequest(since=ts, whitelist=wl)
        return [flow_from_response(r) for r in self.stub.GetFlows(req, timeout=timeout) if r.HasField("flow")]


# ---- requirements ----------------------------------------------------------------------------


@dataclass
class Requirement:
    side: str  # egress | ingress
    peer: str  # the pod (or host) whose side it is
    msg: str  # SYN, SYN-ACK, FIN or RST, Drop, ...
    match: Callable[[Flow], bool]
    present: bool = True  # False: no flow may match ("except" in cilium-cli)
    matched: list[Flow] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return bool(self.matched) == self.present


@dataclass
class Connection:
    """The addresses and ports of an action's connection."""

    src: set[str]
    dst: set[str]
    ports: set[int]
    lport: int
    proto: str  # tcp | icmp | udp
    name: str = ""  # the name resolved through the DNS proxy first (lower case, no root), or ""

    def l4(self, f: Flow) -> bool:
        if self.proto == "tcp":
            return f.proto == "TCP"
        if self.proto == "udp":
            return f.proto in ("UDP", "TCP")  # DNS may retry over TCP
        return f.proto in ("ICMPv4", "ICMPv6")

    def request(self, f: Flow) -> bool:
        if f.l7 or not (f.src_ip in self.src and f.dst_ip in self.dst and self.l4(f)):
            return False
        if self.proto == "icmp":
            return f.icmp_type in ICMP_REQUEST
        return f.dport in self.ports and (not self.lport or f.sport == self.lport)

    def response(self, f: Flow) -> bool:
        if f.l7 or not (f.src_ip in self.dst and f.dst_ip in self.src and self.l4(f)):
            return False
        if self.proto == "icmp":
            return f.icmp_type in ICMP_REPLY
        return f.sport in self.ports and (not self.lport or f.dport == self.lport)

    def either(self, f: Flow) -> bool:
        return self.request(f) or self.response(f)

    def http(self, f: Flow, kind: str) -> bool:
        """The proxy's HTTP record of this connection: REQUEST client -> server, RESPONSE back."""
        if f.l7_type != kind:
            return False
        src, dst = (self.src, self.dst) if kind == "REQUEST" else (self.dst, self.src)
        if not (f.src_ip in src and f.dst_ip in dst):
            return False
        cport, sport = (f.sport, f.dport) if kind == "REQUEST" else (f.dport, f.sport)
        return (not sport or sport in self.ports) and (not self.lport or not cport or cport == self.lport)

    def dns(self, f: Flow, kind: str) -> bool:
        """The DNS proxy's record of the lookup of `name`: REQUEST from the client, RESPONSE to it."""
        if not self.name or f.l7_type != kind or f.dns_query.rstrip(".").lower() != self.name:
            return False
        return (f.src_ip if kind == "REQUEST" else f.dst_ip) in self.src

    def any(self, f: Flow) -> bool:
        return self.either(f) or any(m(f, k) for m in (self.http, self.dns) for k in ("REQUEST", "RESPONSE"))


def connection(action: Action, res: CommandResult) -> Connection:
    ips = {res.local_ip} if res.local_ip else set(action.source.ips)
    d = action.destination
    name = d.address.rstrip(".").lower() if action.egress.dns else ""
    return Connection(
        src=ips, dst=set(d.addresses), ports=set(d.ports), lport=res.local_port, proto=action.protocol,
        name=name,
    )  # fmt: skip


def _drop(result: Result, direction: str, nodes: set[str]) -> Callable[[Flow], bool]:
    def pred(f: Flow) -> bool:
        if f.verdict != "DROPPED" or f.event_type != EVENT_DROP or f.drop_reason not in result.reasons:
            return False
        if result.egress_drop and direction == "EGRESS" or result.ingress_drop and direction == "INGRESS":
            return f.direction == direction and f.node in nodes
        return True

    return pred


def requirements(action: Action, res: CommandResult) -> list[Requirement]:
    """cilium-cli's flow requirements for this action, on the source's and the destination's side."""
    t = connection(action, res)
    reqs: list[Requirement] = []
    opening = {"tcp": "SYN", "icmp": "ICMP request", "udp": "DNS request"}[action.protocol]
    answer = {"tcp": "SYN-ACK", "icmp": "ICMP response", "udp": "DNS response"}[action.protocol]

    def first(f: Flow) -> bool:
        return t.request(f) and (action.protocol != "tcp" or f.syn)

    def reply(f: Flow) -> bool:
        return t.response(f) and (action.protocol != "tcp" or f.synack)

    def closing(f: Flow) -> bool:
        return t.either(f) and f.fin_or_rst

    def any_drop(f: Flow) -> bool:
        return t.either(f) and f.verdict == "DROPPED"

    def side(name: str, peer: str, nodes: set[str], result: Result, direction: str, other: Result) -> None:
        def here(pred: Callable[[Flow], bool]) -> Callable[[Flow], bool]:
            return lambda f: f.node in nodes and pred(f)

        if result.none:
            return
        if result.dns:
            for kind in ("REQUEST", "RESPONSE"):
                lookup = here(lambda f, k=kind: t.dns(f, k) and f.verdict == "FORWARDED")
                reqs.append(Requirement(name, peer, f"dns-{kind.lower()} FORWARDED", lookup))
        if result.l7:
            http_side(name, peer, nodes, result, direction)
            return
        if result.drop:
            drop = _drop(result, direction, nodes)
            reqs.append(Requirement(name, peer, opening, first))
            reqs.append(Requirement(name, peer, _drop_msg(result), lambda f: t.request(f) and drop(f)))
            reqs.append(Requirement(name, peer, answer, reply, present=False))
            if action.protocol == "tcp":
                reqs.append(Requirement(name, peer, "FIN", lambda f: t.either(f) and "FIN" in f.flags, False))
            return
        if other.drop:  # this side works, the other drops: the request leaves (or arrives), that is all
            reqs.append(Requirement(name, peer, opening, here(first)))
            return
        arriving = (lambda f: f.direction == "INGRESS") if direction == "INGRESS" else (lambda f: True)
        reqs.append(Requirement(name, peer, opening, here(lambda f: first(f) and arriving(f))))
        reqs.append(Requirement(name, peer, answer, here(reply)))
        if action.protocol == "tcp":
            reqs.append(Requirement(name, peer, "FIN or RST", here(closing)))
        reqs.append(Requirement(name, peer, "Drop", any_drop, present=False))

    def http_side(name: str, peer: str, nodes: set[str], result: Result, direction: str) -> None:
        """Through the proxy: on the client's side the TCP connection (to the proxy, which answers
        for the server) opens and closes without a drop; the proxy, on the node of the side whose
        L7 rules apply, records the request and the response with the status and the verdict.
        The proxy's own connection to the server comes from the node: not the action's."""
        verdict = "DROPPED" if result.http_status >= 400 else "FORWARDED"
        if direction == "EGRESS":
            reqs.append(Requirement(name, peer, opening, here_(nodes, first)))
            reqs.append(Requirement(name, peer, answer, here_(nodes, reply)))
            reqs.append(Requirement(name, peer, "FIN or RST", here_(nodes, closing)))
            reqs.append(Requirement(name, peer, "Drop", any_drop, present=False))

        def l7(kind: str) -> Callable[[Flow], bool]:
            def pred(f: Flow) -> bool:
                if f.node not in nodes or not t.http(f, kind) or f.verdict != verdict:
                    return False
                if f.http_method and f.http_method != action.method:
                    return False
                return kind == "REQUEST" or not result.http_status or f.http_code == result.http_status

            return pred

        code = f" {result.http_status}" if result.http_status else ""
        reqs.append(Requirement(name, peer, f"http-request {verdict}", l7("REQUEST")))
        reqs.append(Requirement(name, peer, f"http-response{code} {verdict}", l7("RESPONSE")))

    def here_(nodes: set[str], pred: Callable[[Flow], bool]) -> Callable[[Flow], bool]:
        return lambda f: f.node in nodes and pred(f)

    src = action.source
    if isinstance(src, Pod):
        side("egress", src.key, {src.node}, action.egress, "EGRESS", action.ingress)
    backends = action.destination.backends
    if backends:
        peer = ", ".join(p.key for p in backends)
        side("ingress", peer, {p.node for p in backends}, action.ingress, "INGRESS", action.egress)
    return reqs


def _drop_msg(r: Result) -> str:
    where = " at egress" if r.egress_drop else " at ingress" if r.ingress_drop else ""
    return f"Drop{where} ({' or '.join(r.reasons)})"


@dataclass
class Validation:
    requirements: list[Requirement]
    flows: list[Flow]  # every flow of the action's connection
    error: str = ""  # the relay could not be asked
    elapsed: float = 0.0  # seconds spent waiting for flows

    @property
    def ok(self) -> bool:
        return not self.error and all(r.ok for r in self.requirements)

    def failures(self) -> list[Requirement]:
        return [r for r in self.requirements if not r.ok]


def validate(relay: Relay, action: Action, res: CommandResult, wait: float) -> Validation:
    """Poll the relay until every requirement that asks for a flow is met, or `wait` seconds have
    passed since the command ended; then judge."""
    import grpc

    reqs = requirements(action, res)
    t = connection(action, res)
    since = res.started - 0.02
    t0 = time.monotonic()
    deadline = t0 + wait
    flows: list[Flow] = []
    while True:
        try:
            flows = [f for f in relay.flows(since, t.src) if t.any(f)]
        except grpc.RpcError as e:
            err = f"Hubble Relay {relay.address}: {e.details() or e.code()}"
            return Validation(reqs, flows, err, time.monotonic() - t0)
        for r in reqs:
            r.matched = [f for f in flows if r.match(f)]
        if all(r.matched for r in reqs if r.present) or time.monotonic() > deadline:
            return Validation(reqs, flows, elapsed=time.monotonic() - t0)
        time.sleep(0.25)
