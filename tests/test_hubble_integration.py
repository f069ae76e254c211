"""Hubble on a live agent: the Observer over its Unix socket and TCP :4244, metrics, flow export."""

from __future__ import annotations

import ipaddress
import json
import os
import time
import urllib.request

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client.parser import text_string_to_metric_families

from conftest import Lab, tendril
from tendril.common import paths
from tendril.datapath.netns import call_in_netns
from tendril.hubble.api import flow_pb2, observer_pb2, observer_pb2_grpc

EXPORT = f"/tmp/tendril-test-export-{os.getpid()}.json"
LAB_UP_ARGS = [
    "--hubble-export-file",
    EXPORT,
    "--hubble-metrics",
    "flow drop tcp:sourceContext=pod;destinationContext=pod port-distribution icmp",
]

PODS = """
apiVersion: v1
kind: Pod
metadata: {name: web, labels: {app: web}}
spec:
  containers: [{name: http, command: [tendril, workload, http-echo, --port, "8080"]}]
---
apiVersion: v1
kind: Pod
metadata: {name: cli, labels: {app: cli}}
spec:
  containers: [{name: idle}]
"""


@pytest.fixture(scope="module")
def traffic(lab: Lab) -> dict[str, str]:
    lab.apply(PODS)
    pods = lab.wait_running("default", ["web", "cli"])
    web = pods["web"]["status"]["podIP"]
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        r = lab.in_pod(
            "default",
            "cli",
            f"""
import socket
try:
    s = socket.create_connection(("{web}", 8080), timeout=1)
    s.sendall(b"GET / HTTP/1.1\\r\\nHost: web\\r\\nConnection: close\\r\\n\\r\\n"); s.recv(4096); print("ok")
except OSError as e:
    print("no", e)
""",
        )
        if r.stdout.startswith("ok"):
            break
        time.sleep(0.3)
    time.sleep(0.5)
    yield {"web": web, "cli": pods["cli"]["status"]["podIP"]}
    if os.path.exists(EXPORT):
        os.unlink(EXPORT)


def _stub(lab: Lab) -> observer_pb2_grpc.ObserverStub:
    return observer_pb2_grpc.ObserverStub(grpc.insecure_channel(f"unix://{paths.hubble_socket(lab.node)}"))


def test_unix_socket_observer_serves_real_flows(lab: Lab, traffic: dict) -> None:
    stub = _stub(lab)
    wl = [flow_pb2.FlowFilter(source_pod=["default/cli"], tcp_flags=[flow_pb2.TCPFlags(SYN=True)])]
    got = list(stub.GetFlows(observer_pb2.GetFlowsRequest(number=100, whitelist=wl), timeout=10))
    syns = [r.flow for r in got if r.flow.l4.TCP.flags.SYN and not r.flow.l4.TCP.flags.ACK]
    assert len(syns) == 2  # from-endpoint at cli, to-endpoint at web
    for f in syns:
        assert f.source.pod_name == "cli" and f.destination.pod_name == "web"
        assert f.IP.source == traffic["cli"] and f.IP.destination == traffic["web"]
        assert f.l4.TCP.destination_port == 8080 and f.Summary == "TCP Flags: SYN"
        assert f.verdict == flow_pb2.FORWARDED and f.node_name == lab.node and f.uuid
    assert {f.trace_observation_point for f in syns} == {flow_pb2.FROM_ENDPOINT, flow_pb2.TO_ENDPOINT}
    st = stub.ServerStatus(observer_pb2.ServerStatusRequest(), timeout=5)
    assert st.max_flows == 65535 and st.seen_flows >= st.num_flows > 0


def test_tcp_4244_in_node_netns_with_health(lab: Lab, traffic: dict) -> None:
    # Through the node's underlay address, as Hubble Relay reaches it: gRPC connects from its own
    # threads, so a channel made on a thread that entered the node netns may still dial from ours.
    node_ip = ipaddress.ip_network(lab.underlay).network_address + 11
    with grpc.insecure_channel(f"{node_ip}:4244") as ch:
        h = health_pb2_grpc.HealthStub(ch).Check(
            health_pb2.HealthCheckRequest(service="hubble.server.Observer"), timeout=5
        )
        nodes = observer_pb2_grpc.ObserverStub(ch).GetNodes(observer_pb2.GetNodesRequest(), timeout=5)
    assert h.status == health_pb2.HealthCheckResponse.SERVING and len(nodes.nodes) == 1


def _scrape(lab: Lab, port: int) -> dict[str, list]:
    def get() -> str:
        return urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()

    families = text_string_to_metric_families(call_in_netns(f"tnd-{lab.node}", get))
    return {f.name: f.samples for f in families}


def test_hubble_and_agent_metrics(lab: Lab, traffic: dict) -> None:
    hub = _scrape(lab, 9965)
    flows = [s for s in hub["hubble_flows_processed"] if s.name.endswith("_total")]
    assert any(
        s.labels == {"type": "Trace", "subtype": "to-endpoint", "verdict": "FORWARDED", "protocol": "TCP"}
        and s.value >= 1
        for s in flows
    )
    tcp = [s for s in hub["hubble_tcp_flags"] if s.name.endswith("_total")]
    syn = [s for s in tcp if s.labels["flag"] == "SYN" and s.labels["source"] == "default/cli"]
    assert syn and syn[0].labels["destination"] == "default/web" and syn[0].labels["family"] == "IPv4"
    ports = {s.labels["port"] for s in hub["hubble_port_distribution"]}
    assert "8080" in ports
    assert {s.labels["source"] for s in hub["hubble_lost_events"]} >= {"hubble_ring_buffer"}
    agent = _scrape(lab, 9962)
    fwd = {
        s.labels["direction"]: s.value for s in agent["tendril_forward_count"] if s.name.endswith("_total")
    }
    assert fwd["EGRESS"] > 0 and fwd["INGRESS"] > 0
    assert agent["tendril_endpoint"][0].value == 3  # web, cli and the cluster DNS pod
    assert any(s.labels["map_name"] == "tnd_ct" for s in agent["tendril_bpf_map_pressure"])


def test_export_file_has_hubble_json_lines_and_replays(lab: Lab, traffic: dict) -> None:
    with open(EXPORT) as f:
        lines = [json.loads(line) for line in f if line.strip()]
    assert lines and all(set(line) == {"flow", "node_name", "time"} for line in lines)
    web_syn = [
        line["flow"]
        for line in lines
        if line["flow"].get("l4", {}).get("TCP", {}).get("flags") == {"SYN": True}
    ]
    assert web_syn and web_syn[0]["destination"]["pod_name"] == "web"
    out = tendril("observe", "--input-file", EXPORT, "-o", "compact").stdout
    assert "default/cli:" in out and "-> default/web:8080" in out and "(TCP Flags: SYN)" in out
