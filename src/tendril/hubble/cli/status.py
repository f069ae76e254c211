"""`hubble status`: gRPC health check, then ServerStatus, printed like hubble.

The health check goes first because that is what tells "server down" apart from "server up but
not a Hubble server"; its "Healthcheck (via ...)" line only appears in compact output.
"""

from __future__ import annotations

from collections.abc import Callable

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tendril.hubble.api import jsonpb, observer_pb2, observer_pb2_grpc
from tendril.hubble.cli import gotime
from tendril.hubble.cli.colors import TerminalEscaper
from tendril.hubble.cli.conn import OBSERVER_SERVICE_NAME, Connection, rpc_error_text
from tendril.hubble.cli.errors import CLIError
from tendril.hubble.cli.tabwriter import TabWriter

_MAX_INT64 = (1 << 63) - 1


def uint64_grouping(n: int) -> str:
    """1234567 -> 1,234,567."""
    return f"{n:,}"


def format_duration_ns(ns: int) -> str:
    if ns > _MAX_INT64:
        return f"{ns}ns"
    return gotime.duration_string(ns)


def format_server_status(res: observer_pb2.ServerStatusResponse, output: str) -> str:
    """The text hubble's printer writes for a ServerStatusResponse in ``output`` format."""
    connected = str(res.num_connected_nodes.value) if res.HasField("num_connected_nodes") else "N/A"
    unavailable = str(res.num_unavailable_nodes.value) if res.HasField("num_unavailable_nodes") else "N/A"
    flows_per_sec = f"{res.flows_rate:.2f}" if res.flows_rate > 0 else "N/A"
    if output in ("tab", "table"):
        tw = TabWriter(minwidth=2, padding=3)
        tw.write(
            "NUM FLOWS\tMAX FLOWS\tSEEN FLOWS\tFLOWS PER SECOND\tUPTIME\tNUM CONNECTED NODES\t"
            "NUM UNAVAILABLE NODES\tVERSION\n"
            f"{uint64_grouping(res.num_flows)}\t{uint64_grouping(res.max_flows)}\t"
            f"{uint64_grouping(res.seen_flows)}\t{flows_per_sec}\t{format_duration_ns(res.uptime_ns)}\t"
            f"{connected}\t{unavailable}\t{res.version}\n"
        )
        return tw.flush()
    if output == "dict":
        return (
            f"          NUM FLOWS: {uint64_grouping(res.num_flows)}\n"
            f"          MAX FLOWS: {uint64_grouping(res.max_flows)}\n"
            f"         SEEN FLOWS: {uint64_grouping(res.seen_flows)}\n"
            f"   FLOWS PER SECOND: {flows_per_sec}\n"
            f"             UPTIME: {format_duration_ns(res.uptime_ns)}\n"
            f"NUM CONNECTED NODES: {connected}\n"
            f" NUM UNAVAIL. NODES: {unavailable}\n"
            f"            VERSION: {res.version}\n"
        )
    if output in ("json", "JSON", "jsonpb"):
        return jsonpb.dumps(res) + "\n"
    # compact
    ratio = f" ({res.num_flows / res.max_flows * 100:.2f}%)" if res.max_flows > 0 else ""
    out = f"Current/Max Flows: {uint64_grouping(res.num_flows)}/{uint64_grouping(res.max_flows)}{ratio}\n"
    uptime_s = (res.uptime_ns if res.uptime_ns <= _MAX_INT64 else res.uptime_ns - (1 << 64)) / 1e9
    if flows_per_sec == "N/A" and uptime_s > 0:
        flows_per_sec = f"{res.seen_flows / uptime_s:.2f}"
    out += f"Flows/s: {flows_per_sec}\n"
    if res.HasField("num_connected_nodes"):
        total = ""
        if res.HasField("num_unavailable_nodes"):
            total = f"/{(res.num_unavailable_nodes.value + res.num_connected_nodes.value) & 0xFFFFFFFF}"
        out += f"Connected Nodes: {res.num_connected_nodes.value}{total}\n"
    if res.HasField("num_unavailable_nodes") and res.num_unavailable_nodes.value > 0:
        count = res.num_unavailable_nodes.value
        nodes = sorted(res.unavailable_nodes)
        if nodes:
            if count > len(nodes):
                nodes.append(f"and {count - len(nodes)} more...")
            out += f"Unavailable Nodes: {count}\n  - " + "\n  - ".join(nodes) + "\n"
        else:
            out += f"Unavailable Nodes: {count}\n"
    return TerminalEscaper([])(out)


def run_status(conn: Connection, output: str, write: Callable[[str], None]) -> None:
    """Query the server and print via ``write``; failures raise CLIError with hubble's message."""
    health = health_pb2_grpc.HealthStub(conn.channel)
    try:
        resp = health.Check(
            health_pb2.HealthCheckRequest(service=OBSERVER_SERVICE_NAME),
            timeout=conn.request_timeout,
            metadata=conn.metadata or None,
        )
    except grpc.RpcError as e:
        raise CLIError(f"failed getting status: {rpc_error_text(e)}") from None
    healthy = resp.status == health_pb2.HealthCheckResponse.SERVING
    if output == "compact":
        state = (
            "Ok"
            if healthy
            else "Unavailable: " + health_pb2.HealthCheckResponse.ServingStatus.Name(resp.status)
        )
        write(f"Healthcheck (via {conn.target}): {state}\n")
    if not healthy:
        raise CLIError("not healthy")
    try:
        status = observer_pb2_grpc.ObserverStub(conn.channel).ServerStatus(
            observer_pb2.ServerStatusRequest(), timeout=conn.request_timeout, metadata=conn.metadata or None
        )
    except grpc.RpcError as e:
        raise CLIError(f"failed to get hubble server status: {rpc_error_text(e)}") from None
    if output not in ("compact", "dict", "json", "JSON", "jsonpb", "tab", "table"):
        raise CLIError(f"invalid output format: {output}")
    write(format_server_status(status, output))
