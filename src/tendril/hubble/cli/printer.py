"""Render GetFlowsResponses the way `hubble observe` does: compact, dict, table, json(pb).

Every string here is part of the compatibility contract (golden files compare bytes), so the
layout follows hubble's printer: which side is printed first, when ports appear, how identities,
event types and verdicts are named, what goes to stderr, and which characters get escaped.
"""

from __future__ import annotations

import posixpath
from dataclasses import dataclass
from typing import BinaryIO

from tendril.hubble.api import flow_pb2, jsonpb, observer_pb2, relay_pb2
from tendril.hubble.cli import gotime, names
from tendril.hubble.cli.colors import Colorer, TerminalEscaper
from tendril.hubble.cli.goquote import go_quote
from tendril.hubble.cli.tabwriter import TabWriter

COMPACT = "compact"
DICT = "dict"
TABLE = "table"
JSONPB = "jsonpb"
JSON_LEGACY = "jsonlegacy"

DICT_SEPARATOR = "------------"
NODE_NAMES_CUTOFF = 50

_SOCK_XLATE = {
    flow_pb2.SOCK_XLATE_POINT_POST_DIRECTION_FWD: "post-xlate-fwd",
    flow_pb2.SOCK_XLATE_POINT_POST_DIRECTION_REV: "post-xlate-rev",
    flow_pb2.SOCK_XLATE_POINT_PRE_DIRECTION_FWD: "pre-xlate-fwd",
    flow_pb2.SOCK_XLATE_POINT_PRE_DIRECTION_REV: "pre-xlate-rev",
}


def enum_name(enum: object, value: int) -> str:
    """Go's generated String(): the value name, or the number if the value is unknown."""
    try:
        return enum.Name(value)  # type: ignore[attr-defined]
    except ValueError:
        return str(value)


def fmt_timestamp(layout: str, msg: object, field: str) -> str:
    """hubble's fmtTimestamp: ``N/A`` for a missing or out-of-range Timestamp."""
    if not msg.HasField(field):  # type: ignore[attr-defined]
        return "N/A"
    ts = getattr(msg, field)
    if not gotime.timestamp_valid(ts.seconds, ts.nanos):
        return "N/A"
    return gotime.format_time(ts.seconds, ts.nanos, layout)


def join_with_cutoff(elems: list[str], sep: str, target_len: int) -> str:
    """Join, but past ``target_len`` characters summarise the rest as ``(and N more)``."""
    total = 0
    end = len(elems)
    for i, elem in enumerate(elems):
        total += len(elem) + len(sep)
        if total > target_len and i > 0:
            end = i
            break
    joined = sep.join(elems[:end])
    omitted = len(elems) - end
    return joined if omitted == 0 else f"{joined} (and {omitted} more)"


def _path_join(*parts: str) -> str:
    """Go's path.Join: non-empty elements joined by "/" and cleaned."""
    elems = [p for p in parts if p]
    if not elems:
        return ""
    cleaned = posixpath.normpath("/".join(elems))
    return "/" + cleaned.lstrip("/") if cleaned.startswith("//") else cleaned


def join_host_port(host: str, port: str) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def flow_type(f: flow_pb2.Flow) -> str:
    """hubble's GetFlowType: the TYPE column."""
    if f.HasField("l7"):
        l7 = f.l7
        proto = "l7"
        l7_type = enum_name(flow_pb2.L7FlowType, l7.type).lower()
        record = l7.WhichOneof("record")
        if record == "http":
            proto = "http"
        elif record == "dns":
            proto = "dns"
            l7_type += " " + l7.dns.observation_source
        elif record == "kafka":
            proto = "kafka"
        return f"{proto}-{l7_type}"
    etype = f.event_type.type
    sub = f.event_type.sub_type
    if etype == names.MESSAGE_TYPE_TRACE:
        return names.trace_observation_point(sub)
    if etype == names.MESSAGE_TYPE_DROP:
        return names.drop_reason(sub)
    if etype == names.MESSAGE_TYPE_POLICY_VERDICT:
        return (
            f"policy-verdict:{names.policy_match_type(f.policy_match_type)} "
            f"{enum_name(flow_pb2.TrafficDirection, f.traffic_direction)}"
        )
    if etype == names.MESSAGE_TYPE_CAPTURE:
        return enum_name(flow_pb2.DebugCapturePoint, f.debug_capture_point)
    if etype == names.MESSAGE_TYPE_TRACE_SOCK:
        return _SOCK_XLATE.get(
            f.sock_xlate_point, enum_name(flow_pb2.SocketTranslationPoint, f.sock_xlate_point)
        )
    return "UNKNOWN"


def _policy_names(policies: object) -> str:
    parts = [f"{p.name} ({p.kind})" for p in policies if p.kind and p.name]  # type: ignore[attr-defined]
    return " BY " + ", ".join(parts) if parts else ""


class _Out:
    """A UTF-8 byte sink; flushed after every record so `--follow` output appears immediately."""

    def __init__(self, stream: BinaryIO | None) -> None:
        self.stream = stream

    def write(self, text: str) -> None:
        if self.stream is None or not text:
            return
        self.stream.write(text.encode("utf-8", "surrogateescape"))
        self.stream.flush()


@dataclass
class PrinterOptions:
    output: str = COMPACT
    time_layout: str = gotime.STAMP_MILLI
    color: str = "auto"
    ip_translation: bool = True
    node_name: bool = False
    policy_names: bool = False
    debug: bool = False
    ignore_stderr: bool = False


class Printer:
    """Writes GetFlowsResponses to ``out`` (flows, lost events) and ``err`` (node status)."""

    def __init__(
        self, opts: PrinterOptions, out: BinaryIO, err: BinaryIO, stdout_isatty: bool = False
    ) -> None:
        self.opts = opts
        self.out = _Out(out)
        self.err = _Out(None if opts.ignore_stderr else err)
        self.line = 0
        self.color = Colorer(opts.color, stdout_isatty)
        self.tw: TabWriter | None = None
        if opts.output == TABLE:
            self.tw = TabWriter(minwidth=2, padding=3)
            self.color.disable()
        self.escape = TerminalEscaper(self.color.sequences())

    # -- helpers ----------------------------------------------------------------------------------

    def _ts(self, msg: object, field: str = "time") -> str:
        return fmt_timestamp(self.opts.time_layout, msg, field)

    def _table(self, text: str) -> None:
        assert self.tw is not None
        self.tw.write(self.escape(text))
        self.out.write(self.tw.take())

    def close(self) -> None:
        """Flush the table (it is aligned over the whole output, so printed at the end)."""
        if self.tw is not None:
            self.out.write(self.tw.flush())

    @staticmethod
    def _ports(f: flow_pb2.Flow) -> tuple[str, str]:
        if not f.HasField("l4"):
            return "", ""
        proto = f.l4.WhichOneof("protocol")
        if proto in ("TCP", "UDP", "SCTP"):
            l4 = getattr(f.l4, proto)
            return str(l4.source_port), str(l4.destination_port)
        return "", ""

    def hostname(self, ip: str, port: str, ns: str, pod: str, svc: str, dns_names: list[str]) -> str:
        host = ip
        if self.opts.ip_translation:
            if pod:
                host = _path_join(ns, pod)
            elif svc:
                host = _path_join(ns, svc)
            elif dns_names:
                host = ",".join(dns_names)
        if port and port != "0":
            return join_host_port(host, self.color.port(port))
        return host

    def host_names(self, f: flow_pb2.Flow) -> tuple[str, str]:
        if not f.HasField("IP"):
            if f.HasField("ethernet"):
                return self.color.host(f.ethernet.source), self.color.host(f.ethernet.destination)
            return "", ""
        src_ns, src_pod = f.source.namespace, f.source.pod_name
        dst_ns, dst_pod = f.destination.namespace, f.destination.pod_name
        src_svc = dst_svc = ""
        if f.HasField("source_service"):
            src_ns, src_svc = f.source_service.namespace, f.source_service.name
        if f.HasField("destination_service"):
            dst_ns, dst_svc = f.destination_service.namespace, f.destination_service.name
        sport, dport = self._ports(f)
        src = self.hostname(f.IP.source, sport, src_ns, src_pod, src_svc, list(f.source_names))
        dst = self.hostname(f.IP.destination, dport, dst_ns, dst_pod, dst_svc, list(f.destination_names))
        return self.color.host(src), self.color.host(dst)

    def identities(self, f: flow_pb2.Flow) -> tuple[str, str]:
        return (
            self.color.identity(names.identity_label(f.source.identity)),
            self.color.identity(names.identity_label(f.destination.identity)),
        )

    def verdict(self, f: flow_pb2.Flow) -> str:
        v = f.verdict
        msg = enum_name(flow_pb2.Verdict, v)
        policy_verdict = f.event_type.type == names.MESSAGE_TYPE_POLICY_VERDICT
        egress = f.traffic_direction == flow_pb2.EGRESS
        ingress = f.traffic_direction == flow_pb2.INGRESS
        if v in (flow_pb2.FORWARDED, flow_pb2.REDIRECTED):
            if policy_verdict:
                msg = "ALLOWED"
                if self.opts.policy_names:
                    if egress:
                        msg += _policy_names(f.egress_allowed_by)
                    elif ingress:
                        msg += _policy_names(f.ingress_allowed_by)
            return self.color.verdict_forwarded(msg)
        if v in (flow_pb2.DROPPED, flow_pb2.ERROR):
            if policy_verdict:
                msg = "DENIED"
                if self.opts.policy_names:
                    if egress:
                        msg += _policy_names(f.egress_denied_by)
                    elif ingress:
                        msg += _policy_names(f.ingress_denied_by)
            return self.color.verdict_dropped(msg)
        if v == flow_pb2.AUDIT:
            if policy_verdict:
                msg = "AUDITED"
            return self.color.verdict_audit(msg)
        if v == flow_pb2.TRACED:
            return self.color.verdict_traced(msg)
        if v == flow_pb2.TRANSLATED:
            return self.color.verdict_translated(msg)
        return msg

    def _auth(self, f: flow_pb2.Flow) -> str:
        if f.auth_type == flow_pb2.DISABLED:
            return ""
        text = enum_name(flow_pb2.AuthType, f.auth_type)
        if f.auth_type == flow_pb2.TEST_ALWAYS_FAIL:
            return self.color.auth_test_always_fail(text)
        return self.color.auth_enabled(text)

    def summary(self, f: flow_pb2.Flow) -> str:
        out = ""
        if f.HasField("ip_trace_id") and f.ip_trace_id.trace_id > 0:
            out += f"IP Trace ID: {f.ip_trace_id.trace_id}; "
        out += f.Summary
        auth = self._auth(f)
        if auth:
            out += "; Auth: " + auth
        return out

    # -- records ----------------------------------------------------------------------------------

    def write_response(self, res: observer_pb2.GetFlowsResponse) -> None:
        kind = res.WhichOneof("response_types")
        if kind == "flow":
            self.write_flow(res)
        elif kind == "node_status":
            self.write_node_status(res)
        elif kind == "lost_events":
            self.write_lost_events(res)

    def write_flow(self, res: observer_pb2.GetFlowsResponse) -> None:
        f = res.flow
        out = self.opts.output
        if out == JSONPB:
            self.out.write(jsonpb.dumps(res) + "\n")
            return
        if out == JSON_LEGACY:
            self.out.write(jsonpb.dumps(f) + "\n")
            return
        src, dst = self.host_names(f)
        ts = self._ts(f)
        if out == TABLE:
            text = ""
            if self.line == 0:
                text += "TIMESTAMP\t" + ("NODE\t" if self.opts.node_name else "")
                text += "SOURCE\tDESTINATION\tTYPE\tVERDICT\tSUMMARY\n"
            text += ts + "\t" + (f.node_name + "\t" if self.opts.node_name else "")
            text += f"{src}\t{dst}\t{flow_type(f)}\t{self.verdict(f)}\t{self.summary(f)}\n"
            self._table(text)
        elif out == DICT:
            text = DICT_SEPARATOR + "\n" if self.line != 0 else ""
            text += f"  TIMESTAMP: {ts}\n"
            if self.opts.node_name:
                text += f"       NODE: {f.node_name}\n"
            text += (
                f"     SOURCE: {src}\nDESTINATION: {dst}\n       TYPE: {flow_type(f)}\n"
                f"    VERDICT: {self.verdict(f)}\n    SUMMARY: {self.summary(f)}\n"
            )
            self.out.write(self.escape(text))
        else:
            src_id, dst_id = self.identities(f)
            node = f" [{f.node_name}]" if self.opts.node_name else ""
            arrow = "->"
            if not f.HasField("is_reply"):
                arrow = "<>"
            elif f.is_reply.value:
                src, dst = dst, src
                src_id, dst_id = dst_id, src_id
                arrow = "<-"
            line = (
                f"{ts}{node}: {src} {src_id} {arrow} {dst} {dst_id} {flow_type(f)} "
                f"{self.verdict(f)} ({self.summary(f)})\n"
            )
            self.out.write(self.escape(line))
        self.line += 1

    def write_lost_events(self, res: observer_pb2.GetFlowsResponse) -> None:
        ev = res.lost_events
        out = self.opts.output
        if out == JSONPB:
            self.out.write(jsonpb.dumps(res) + "\n")
            return
        if out == JSON_LEGACY:
            self.out.write(jsonpb.dumps(ev) + "\n")
            return
        source = enum_name(flow_pb2.LostEventSource, ev.source)
        cpu = ev.cpu.value if ev.HasField("cpu") else 0
        span = ""
        if ev.HasField("first") or ev.HasField("last"):
            span = f" (first: {self._ts(ev, 'first')}, last: {self._ts(ev, 'last')})"
        ts = self._ts(res)
        node = res.node_name or "-"
        if out == TABLE:
            text = ""
            if self.line == 0:
                text += "TIMESTAMP\t" + ("NODE\t" if self.opts.node_name else "")
                text += "SOURCE\tDESTINATION\tTYPE\tVERDICT\tSUMMARY\n"
            text += ts + "\t" + (node + "\t" if self.opts.node_name else "")
            text += f"{source}\t-\tEVENTS LOST\t-\tCPU({cpu}) - {ev.num_events_lost}{span}\n"
            self._table(text)
        elif out == DICT:
            text = DICT_SEPARATOR + "\n" if self.line != 0 else ""
            text += f"  TIMESTAMP: {ts}\n"
            if self.opts.node_name:
                text += f"       NODE: {node}\n"
            text += (
                f"     SOURCE: {source}\n       TYPE: EVENTS LOST\n    VERDICT: -\n"
                f"    SUMMARY: CPU({cpu}) - {ev.num_events_lost}{span}\n"
            )
            self.out.write(self.escape(text))
        else:
            self.out.write(self.escape(f"{ts} EVENTS LOST: {source} CPU({cpu}) {ev.num_events_lost}{span}\n"))
        self.line += 1

    def write_node_status(self, res: observer_pb2.GetFlowsResponse) -> None:
        s = res.node_status
        if not self.opts.debug and s.state_change not in (relay_pb2.NODE_ERROR, relay_pb2.NODE_UNAVAILABLE):
            return
        out = self.opts.output
        if out == JSONPB:
            self.err.write(jsonpb.dumps(res) + "\n")
            return
        if out == JSON_LEGACY:
            return
        node_names = join_with_cutoff(list(s.node_names), ", ", NODE_NAMES_CUTOFF)
        state = enum_name(relay_pb2.NodeState, s.state_change)
        if out == DICT:
            text = ""
            if self.line != 0:
                text += DICT_SEPARATOR + "\n"
            else:
                self.line += 1
            message = go_quote(s.message) if s.message else "N/A"
            text += (
                f"  TIMESTAMP: {self._ts(res)}\n      STATE: {state}\n      NODES: {node_names}\n"
                f"    MESSAGE: {message}\n"
            )
            self.err.write(self.escape(text))
            return
        n = len(s.node_names)
        prefix = f"{self._ts(res)} [{res.node_name}]"
        if s.state_change == relay_pb2.NODE_CONNECTED:
            msg = f"{prefix}: Receiving flows from {n} nodes: {node_names}"
        elif s.state_change == relay_pb2.NODE_UNAVAILABLE:
            msg = f"{prefix}: {n} nodes are unavailable: {node_names}"
        elif s.state_change == relay_pb2.NODE_GONE:
            msg = f"{prefix}: {n} nodes removed from cluster: {node_names}"
        elif s.state_change == relay_pb2.NODE_ERROR:
            msg = f"{prefix}: Error {go_quote(s.message)} on {n} nodes: {node_names}"
        else:
            msg = f"{prefix}: unknown node status event: state_change:{state} node_names:{list(s.node_names)}"
        self.err.write(self.escape(msg + "\n"))
