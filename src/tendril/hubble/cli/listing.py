"""`hubble list nodes` / `hubble list namespaces`: GetNodes / GetNamespaces as table, wide or JSON.

Same columns, rounding and JSON indentation as hubble, so scripts that parse hubble's listing
keep working against a Tendril agent.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import grpc
from google.protobuf.message import Message

from tendril.hubble.api import jsonpb, observer_pb2, observer_pb2_grpc, relay_pb2
from tendril.hubble.cli import gojson, gotime
from tendril.hubble.cli.conn import Connection, rpc_error_text
from tendril.hubble.cli.errors import CLIError
from tendril.hubble.cli.tabwriter import TabWriter

NOT_AVAILABLE = "N/A"

_STATE_NAMES = {
    relay_pb2.NODE_CONNECTED: "Connected",
    relay_pb2.NODE_UNAVAILABLE: "Unavailable",
    relay_pb2.NODE_GONE: "Gone",
    relay_pb2.NODE_ERROR: "Error",
}


def json_list(items: Sequence[Message]) -> str:
    """json.MarshalIndent(items, "", "  ") + newline, each item in protojson form."""
    if not items:
        return "null\n"
    return gojson.indent("[" + ",".join(jsonpb.dumps(m) for m in items) + "]") + "\n"


def _round_to_second(ns: int) -> int:
    """time.Duration.Round(time.Second): halves round away from zero."""
    if ns >= 1 << 63:
        ns -= 1 << 64
    sec = gotime.SECOND
    q, r = divmod(abs(ns), sec)
    rounded = (q + (1 if r * 2 >= sec else 0)) * sec
    return rounded if ns >= 0 else -rounded


def format_nodes(nodes: Sequence[observer_pb2.Node], output: str) -> str:
    nodes = sorted(nodes, key=lambda n: n.name)
    if output == "json":
        return json_list(nodes)
    if output not in ("table", "wide"):
        raise CLIError(f"unknown output format: {output}")
    wide = output == "wide"
    tw = TabWriter(minwidth=2, padding=3)
    tw.write(
        "NAME\tSTATUS\tAGE\tFLOWS/S\tCURRENT/MAX-FLOWS" + ("\tVERSION\tADDRESS\tTLS" if wide else "") + "\n"
    )
    for n in nodes:
        age = flows_per_sec = NOT_AVAILABLE
        uptime = _round_to_second(n.uptime_ns)
        if uptime > 0:
            age = gotime.duration_string(uptime)
            flows_per_sec = f"{n.seen_flows / (uptime / 1e9):.2f}"
        ratio = NOT_AVAILABLE
        if n.max_flows > 0:
            ratio = f"{n.num_flows}/{n.max_flows} ({n.num_flows / n.max_flows * 100:6.2f}%)"
        row = f"{n.name}\t{_STATE_NAMES.get(n.state, 'Unknown')}\t{age}\t{flows_per_sec}\t{ratio}"
        if wide:
            tls = NOT_AVAILABLE
            if n.HasField("tls"):
                tls = "Enabled" if n.tls.enabled else "Disabled"
            row += f"\t{n.version or NOT_AVAILABLE}\t{n.address}\t{tls}"
        tw.write(row + "\n")
    return tw.flush()


def format_namespaces(namespaces: Sequence[observer_pb2.Namespace], output: str) -> str:
    if output == "json":
        return json_list(namespaces)
    if output not in ("table", "wide"):
        raise CLIError(f"unknown output format: {output}")
    wide = output == "wide"
    tw = TabWriter(minwidth=2, padding=3)
    tw.write("NAMESPACE" + ("\tCLUSTER" if wide else "") + "\n")
    for ns in namespaces:
        tw.write(ns.namespace + (f"\t{ns.cluster}" if wide and ns.cluster else "") + "\n")
    return tw.flush()


def _unary(conn: Connection, call: Callable[..., Message], request: Message) -> Message:
    try:
        return call(request, timeout=conn.request_timeout, metadata=conn.metadata or None)
    except grpc.RpcError as e:
        raise CLIError(rpc_error_text(e)) from None


def list_nodes(conn: Connection, output: str) -> str:
    stub = observer_pb2_grpc.ObserverStub(conn.channel)
    res = _unary(conn, stub.GetNodes, observer_pb2.GetNodesRequest())
    return format_nodes(list(res.nodes), output)  # type: ignore[attr-defined]


def list_namespaces(conn: Connection, output: str) -> str:
    stub = observer_pb2_grpc.ObserverStub(conn.channel)
    res = _unary(conn, stub.GetNamespaces, observer_pb2.GetNamespacesRequest())
    return format_namespaces(list(res.namespaces), output)  # type: ignore[attr-defined]
