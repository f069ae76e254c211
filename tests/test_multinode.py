"""Two-node labs, native routing and VXLAN: cross-node traffic, label policy across nodes, identities
allocated through etcd, Hubble Relay over mTLS, a node dying and etcd restarting.

One lab per routing mode (module fixture parametrised): namespace alpha with a server on node 2
and two clients on node 1 (app=client and app=other), plus a client on node 2. Everything runs
against the real agents, the real etcd and the real relay the lab starts.
"""

from __future__ import annotations

import json
import os
import random
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator

import grpc
import pytest

from conftest import Lab, _require_root, free_underlay, save_lab_logs, tendril, wait_for
from tendril.datapath.netns import nsenter_argv
from test_policy_integration import PROBE

PODS = """
apiVersion: v1
kind: Namespace
metadata: {{name: alpha, labels: {{team: alpha}}}}
---
apiVersion: v1
kind: Pod
metadata: {{name: server, namespace: alpha, labels: {{app: server}}}}
spec:
  nodeName: {n2}
  containers:
    - name: http
      command: [tendril, workload, http-echo, --port, "8080"]
      ports: [{{containerPort: 8080, name: http}}]
    - name: udp
      command: [tendril, workload, udp-echo, --port, "9000"]
      ports: [{{containerPort: 9000, protocol: UDP}}]
---
apiVersion: v1
kind: Pod
metadata: {{name: client, namespace: alpha, labels: {{app: client}}}}
spec: {{nodeName: {n1}, containers: [{{name: c}}]}}
---
apiVersion: v1
kind: Pod
metadata: {{name: other, namespace: alpha, labels: {{app: other}}}}
spec: {{nodeName: {n1}, containers: [{{name: c}}]}}
---
apiVersion: v1
kind: Pod
metadata: {{name: near, namespace: alpha, labels: {{app: client}}}}
spec: {{nodeName: {n2}, containers: [{{name: c}}]}}
"""

ALLOW_CLIENT = """
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: server-from-client, namespace: alpha}
spec:
  endpointSelector: {matchLabels: {app: server}}
  ingress:
    - fromEndpoints: [{matchLabels: {app: client}}]
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Cluster:
    def __init__(self, lab: Lab, routing: str, relay_port: int) -> None:
        self.lab = lab
        self.routing = routing
        self.relay_port = relay_port
        self.n1, self.n2 = f"{lab.name}-node1", f"{lab.name}-node2"
        self.pods: dict[str, dict] = {}

    def record(self) -> dict:
        from tendril.lab.cluster import load_lab

        rec = load_lab(self.lab.name)
        assert rec is not None
        return rec

    def ip(self, pod: str, family: int = 4) -> str:
        ips = [i["ip"] for i in self.pods[pod]["status"]["podIPs"]]
        return ips[0] if family == 4 else ips[1]

    def netns(self, pod: str) -> str:
        from tendril.datapath.podnet import pod_netns_name

        return pod_netns_name(self.pods[pod]["spec"]["nodeName"], "alpha", pod)

    def probe(self, pod: str, targets: list[tuple[str, str, int]]) -> list[bool]:
        r = subprocess.run(
            nsenter_argv(self.netns(pod), [sys.executable, "-c", PROBE, json.dumps(targets)]),
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        )
        return json.loads(r.stdout)

    def status(self, node: str) -> dict:
        from tendril.cli.client import AgentClient

        with AgentClient(node) as c:
            return c.get("/v1/status")

    def flows(self, node: str) -> list[dict]:
        from tendril.cli.client import AgentClient

        with AgentClient(node) as c:
            return c.get("/v1/flows", last=100000)

    def relay(self) -> grpc.Channel:
        return grpc.insecure_channel(f"127.0.0.1:{self.relay_port}")


@pytest.fixture(scope="module", params=["native", "vxlan"])
def cluster(request: pytest.FixtureRequest) -> Iterator[Cluster]:
    _require_root()
    name = "m" + "".join(random.choices("0123456789abcdef", k=5))
    lab = Lab(name, free_underlay())
    c = Cluster(lab, request.param, _free_port())
    try:
        tendril(
            "lab", "up", "--name", name, "--underlay", lab.underlay, "--nodes", "2",
            "--routing", request.param, "--relay-port", str(c.relay_port),
            "--kvstore-lease-ttl", "3", timeout=180,
        )  # fmt: skip
        lab.apply(PODS.format(n1=c.n1, n2=c.n2))
        pods = lab.wait_running("alpha", ["server", "client", "other", "near"], timeout=40)
        c.pods = pods
        yield c
    finally:
        save_lab_logs(name)
        tendril("lab", "down", "--name", name, check=False, timeout=120)


def test_pods_placed_and_cluster_converged(cluster: Cluster) -> None:
    assert cluster.pods["server"]["spec"]["nodeName"] == cluster.n2
    assert cluster.pods["client"]["spec"]["nodeName"] == cluster.n1
    for node in (cluster.n1, cluster.n2):
        st = wait_for(
            f"{node} sees both nodes and the other node's pods",
            lambda node=node: (s := cluster.status(node))["cluster"]["nodes"] == [cluster.n1, cluster.n2]
            and s["cluster"]["remote_endpoints"] >= 2
            and s,
        )
        assert st["cluster"]["kvstore"]["connected"] and st["cluster"]["kvstore"]["backend"] == "etcd"
    out = tendril("status", "--lab", cluster.lab.name, "--wait", "--wait-duration", "30").stdout
    assert "KVStore:" in out and "etcd://" in out and "2/2 agents ready" in out


def test_cross_node_tcp_udp_icmp_v4_v6(cluster: Cluster) -> None:
    targets = []
    for fam in (4, 6):
        s = cluster.ip("server", fam)
        targets += [("tcp", s, 8080), ("udp", s, 9000), ("icmp", s, 0)]
    assert cluster.probe("client", targets) == [True] * 6
    # and the other way round: node 2 -> a pod on node 1
    back = [("icmp", cluster.ip("client", 4), 0), ("icmp", cluster.ip("client", 6), 0)]
    assert cluster.probe("near", back) == [True, True]


def test_routing_mode_is_what_carries_the_traffic(cluster: Cluster) -> None:
    from pyroute2 import NetNS

    ns = f"tnd-{cluster.n1}"
    with NetNS(ns) as ipr:
        vx = ipr.link_lookup(ifname="tnd_vxlan")
        if cluster.routing == "vxlan":
            assert vx, "VXLAN mode needs tnd_vxlan"
            before = ipr.get_links(vx[0])[0].get("IFLA_STATS64")["tx_packets"]
        else:
            assert not vx
    assert cluster.probe("client", [("tcp", cluster.ip("server"), 8080)]) == [True]
    if cluster.routing == "vxlan":
        with NetNS(ns) as ipr:
            after = ipr.get_links(vx[0])[0].get("IFLA_STATS64")["tx_packets"]
        assert after > before, "pod-to-pod traffic across nodes must be encapsulated"
    else:
        pod_cidr2 = cluster.record()["nodes"][1]["pod_cidr_v4"]
        r = subprocess.run(
            ["ip", "-n", ns, "route", "show", pod_cidr2], capture_output=True, text=True, check=True
        )
        assert "via" in r.stdout and cluster.record()["nodes"][1]["underlay_ip"] in r.stdout


def test_cross_node_label_policy_allow_and_deny(cluster: Cluster) -> None:
    tendril("apply", "-f", "-", "--lab", cluster.lab.name, input=ALLOW_CLIENT)
    try:
        s = cluster.ip("server")
        s6 = cluster.ip("server", 6)
        assert cluster.probe("client", [("tcp", s, 8080), ("tcp", s6, 8080)]) == [True, True]
        assert cluster.probe("other", [("tcp", s, 8080), ("tcp", s6, 8080)]) == [False, False]
        ids = {i["id"]: i["labels"] for i in json.loads(
            tendril("identity", "list", "-o", "json", "--lab", cluster.lab.name).stdout)}  # fmt: skip
        client_id = next(n for n, labels in ids.items() if "k8s:app=client" in labels)
        other_id = next(n for n, labels in ids.items() if "k8s:app=other" in labels)
        server_id = next(n for n, labels in ids.items() if "k8s:app=server" in labels)
        # node 2 (the server's) saw the denied packets, naming the remote source pod and its identity
        drops = wait_for(
            "a policy drop on node 2",
            lambda: [
                f
                for f in cluster.flows(cluster.n2)
                if f.get("verdict") == "DROPPED"
                and (f.get("source") or {}).get("pod_name") == "other"
                and (f.get("destination") or {}).get("pod_name") == "server"
            ],
        )
        assert drops[0]["source"]["identity"] == other_id
        assert drops[0]["source"]["namespace"] == "alpha"
        assert drops[0]["destination"]["identity"] == server_id
        # node 1 (the client's) names the remote server and its identity on the way out
        out = [
            f
            for f in cluster.flows(cluster.n1)
            if (f.get("source") or {}).get("pod_name") == "client"
            and (f.get("destination") or {}).get("pod_name") == "server"
        ]
        assert out and out[0]["destination"]["identity"] == server_id
        assert out[0]["source"]["identity"] == client_id
        allowed_in = [
            f
            for f in cluster.flows(cluster.n2)
            if (f.get("source") or {}).get("pod_name") == "client" and f.get("verdict") == "FORWARDED"
        ]
        assert allowed_in and allowed_in[0]["source"]["identity"] == client_id
    finally:
        tendril("policy", "delete", "--all", "--lab", cluster.lab.name)
    assert cluster.probe("other", [("tcp", cluster.ip("server"), 8080)]) == [True]


def test_identity_allocated_concurrently_gets_one_number(cluster: Cluster) -> None:
    """Two agents create pods with the same new labels at the same moment: one number."""
    from tendril.cli.client import AgentClient

    for round_ in range(3):
        labels = {"app": f"race{round_}-{random.randint(0, 1 << 30)}"}
        results: dict[str, int] = {}

        def create(node: str, pod: str, labels: dict = labels, results: dict = results) -> None:
            with AgentClient(node) as c:
                body = {
                    "labels": labels,
                    "annotations": {},
                    "owner": "",
                    "containers": [{"name": "c", "argv": ["tendril", "workload", "pause"]}],
                }
                c.put(f"/v1/pods/alpha/{pod}", body)
                eps = {f"{e['namespace']}/{e['pod']}": e for e in c.get("/v1/endpoints")}
                results[node] = eps[f"alpha/{pod}"]["identity"]

        threads = [
            threading.Thread(target=create, args=(cluster.n1, f"race{round_}a")),
            threading.Thread(target=create, args=(cluster.n2, f"race{round_}b")),
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert len(results) == 2 and results[cluster.n1] == results[cluster.n2] >= 256, results
        for node, pod in ((cluster.n1, f"race{round_}a"), (cluster.n2, f"race{round_}b")):
            with AgentClient(node) as c:
                c.delete(f"/v1/pods/alpha/{pod}")


SPREAD = """
apiVersion: apps/v1
kind: Deployment
metadata: {name: web, namespace: alpha}
spec:
  replicas: 4
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec:
      containers:
        - name: http
          command: [tendril, workload, http-echo, --port, "8080"]
          ports: [{containerPort: 8080}]
---
apiVersion: v1
kind: Service
metadata: {name: server, namespace: alpha}
spec:
  selector: {app: server}
  ports: [{port: 80, targetPort: 8080}]
"""


def test_round_robin_placement_services_and_dns_across_nodes(cluster: Cluster) -> None:
    tendril("apply", "-f", "-", "--lab", cluster.lab.name, input=SPREAD)
    try:
        web = wait_for(
            "4 web replicas running",
            lambda: len(
                w := [
                    p
                    for n, p in cluster.lab.pods("alpha").items()
                    if n.startswith("web-") and p["status"]["phase"] == "Running"
                ]
            )
            == 4
            and w,
        )
        per_node = {}
        for p in web:
            per_node[p["spec"]["nodeName"]] = per_node.get(p["spec"]["nodeName"], 0) + 1
        assert per_node == {cluster.n1: 2, cluster.n2: 2}, per_node
        # the same ClusterIP on both nodes, published once through the kvstore
        from tendril.cli.client import AgentClient

        vips = set()
        for node in (cluster.n1, cluster.n2):
            with AgentClient(node) as c:
                svc = next(x for x in c.get("/v1/services")["services"] if x["name"] == "server")
                vips.add(tuple(svc["cluster_ips"]))
        assert len(vips) == 1
        vip = next(iter(vips))[0]
        # a client on node 1 reaches the backend on node 2 through the service, by name (the
        # cluster DNS runs on node 1; `near` on node 2 asks it across nodes too)
        for pod in ("client", "near"):
            out = tendril(
                "exec", "-n", "alpha", "--lab", cluster.lab.name, pod, "--",
                "tendril", "workload", "curl", "http://server.alpha.svc.cluster.local/",
            ).stdout  # fmt: skip
            assert json.loads(out)["pod"] == "server", out
        out = tendril(
            "exec", "-n", "alpha", "--lab", cluster.lab.name, "near", "--",
            "tendril", "workload", "curl", f"http://{vip}/",
        ).stdout  # fmt: skip
        assert json.loads(out)["pod"] == "server", out
    finally:
        tendril("delete", "-f", "-", "--lab", cluster.lab.name, input=SPREAD)


NODEPORTS = """
apiVersion: v1
kind: Service
metadata: {{name: np-remote, namespace: alpha}}
spec:
  type: NodePort
  selector: {{app: server}}
  ports: [{{port: 80, targetPort: 8080, nodePort: 30091}}]
---
apiVersion: v1
kind: Service
metadata: {{name: np-both, namespace: alpha}}
spec:
  type: NodePort
  selector: {{app: np}}
  ports: [{{port: 80, targetPort: 8080, nodePort: 30092}}]
---
apiVersion: v1
kind: Pod
metadata: {{name: np1, namespace: alpha, labels: {{app: np}}}}
spec:
  nodeName: {n1}
  containers: [{{name: http, command: [tendril, workload, http-echo, --port, "8080"]}}]
---
apiVersion: v1
kind: Pod
metadata: {{name: np2, namespace: alpha, labels: {{app: np}}}}
spec:
  nodeName: {n2}
  containers: [{{name: http, command: [tendril, workload, http-echo, --port, "8080"]}}]
"""

NODEPORT_CLIENT = r"""
import json, socket, sys
host, port, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
out = []
for _ in range(n):
    try:
        s = socket.create_connection((host, port), timeout=2)
        s.settimeout(3)
        s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        data = b""
        while chunk := s.recv(4096):
            data += chunk
        out.append(json.loads(data.split(b"\r\n\r\n", 1)[1])["pod"])
    except OSError as e:
        out.append("error: " + type(e).__name__)
print(json.dumps(out))
"""


def test_nodeport_reaches_backends_on_other_nodes(cluster: Cluster) -> None:
    """externalTrafficPolicy Cluster: a NodePort connection whose backend is on the other node is
    SNATed to the node address (Cilium's SNAT mode), so the reply comes back through the node the
    client talked to: every connection succeeds, on either node, whichever backend is picked."""
    tendril("apply", "-f", "-", "--lab", cluster.lab.name,
            input=NODEPORTS.format(n1=cluster.n1, n2=cluster.n2))  # fmt: skip
    try:
        cluster.lab.wait_running("alpha", ["np1", "np2"], timeout=40)
        ips = [n["underlay_ip"] for n in cluster.record()["nodes"]]

        def curl(node_ip: str, port: int, n: int) -> list[str]:
            r = subprocess.run(
                nsenter_argv(
                    f"tnd-{cluster.lab.name}-world",
                    [sys.executable, "-c", NODEPORT_CLIENT, node_ip, str(port), str(n)],
                ),
                capture_output=True,
                text=True,
                timeout=120,
                check=True,
            )
            return json.loads(r.stdout)

        # the services reach both agents (and the kvstore) before the first request
        wait_for("np-both has both backends on node 1",
                 lambda: set(curl(ips[0], 30092, 6)) == {"np1", "np2"}, timeout=30)  # fmt: skip
        # the only backend is on node 2: node 1 must SNAT, node 2 only DNATs
        assert curl(ips[0], 30091, 10) == ["server"] * 10
        assert curl(ips[1], 30091, 10) == ["server"] * 10
        # backends on both nodes: every connection succeeds, and both are used, from either node
        for ip in ips:
            got = curl(ip, 30092, 20)
            assert sorted(set(got)) == ["np1", "np2"], got
        # the backend sees the node the client talked to (remote-node), on a SNAT port
        flows = [
            f
            for f in cluster.flows(cluster.n2)
            if (f.get("destination") or {}).get("pod_name") == "server"
            and f["source_ip"] == ips[0]
            and f["destination_port"] == 8080
        ]
        assert flows and {f["verdict"] for f in flows} == {"FORWARDED"}
        assert all(61000 <= f["source_port"] <= 65535 for f in flows)
    finally:
        tendril("delete", "-f", "-", "--lab", cluster.lab.name,
                input=NODEPORTS.format(n1=cluster.n1, n2=cluster.n2), check=False)  # fmt: skip


def test_relay_merges_nodes(cluster: Cluster) -> None:
    from tendril.hubble.api import observer_pb2, observer_pb2_grpc, relay_pb2

    cluster.probe("client", [("tcp", cluster.ip("server"), 8080)] * 3)
    cluster.probe("near", [("tcp", cluster.ip("server"), 8080)] * 3)
    with cluster.relay() as ch:
        stub = observer_pb2_grpc.ObserverStub(ch)
        st = wait_for(
            "relay connected to both nodes",
            lambda: (s := stub.ServerStatus(observer_pb2.ServerStatusRequest(), timeout=5))
            and s.num_connected_nodes.value == 2
            and s,
        )
        assert st.num_unavailable_nodes.value == 0 and st.num_flows > 0
        nodes = stub.GetNodes(observer_pb2.GetNodesRequest(), timeout=5).nodes
        assert sorted(n.name for n in nodes) == [cluster.n1, cluster.n2]
        assert all(n.state == relay_pb2.NODE_CONNECTED and n.tls.enabled for n in nodes)
        assert {n.address for n in nodes} == {f"{n['underlay_ip']}:4244" for n in cluster.record()["nodes"]}
        flows = [
            r
            for r in stub.GetFlows(observer_pb2.GetFlowsRequest(number=20), timeout=10)
            if r.HasField("flow")
        ]
        by_node = {r.node_name for r in flows}
        assert by_node == {cluster.n1, cluster.n2}
        assert len(flows) <= 40 and all(sum(1 for r in flows if r.node_name == n) <= 20 for n in by_node)
        times = [r.flow.time.ToNanoseconds() for r in flows]
        assert times == sorted(times)
        namespaces = stub.GetNamespaces(observer_pb2.GetNamespacesRequest(), timeout=5).namespaces
        assert "alpha" in {n.namespace for n in namespaces}


def test_etcd_restart_agents_resync_nothing_lost(cluster: Cluster) -> None:
    from tendril.kvstore.server import stop_etcd
    from tendril.lab.cluster import ensure_lab_etcd

    rec = cluster.record()
    before = json.loads(tendril("identity", "list", "-o", "json", "--lab", cluster.lab.name).stdout)
    stop_etcd(rec["etcd"])
    wait_for(
        "agents notice etcd is gone",
        lambda: not cluster.status(cluster.n1)["cluster"]["kvstore"]["connected"],
        timeout=20,
    )
    # the datapath keeps working and enforcing while etcd is away
    assert cluster.probe("client", [("tcp", cluster.ip("server"), 8080)]) == [True]
    ensure_lab_etcd(cluster.lab.name)  # same data dir and ports, as a restarted etcd would have
    for node in (cluster.n1, cluster.n2):
        wait_for(
            f"{node} reconnected",
            lambda node=node: (s := cluster.status(node))["cluster"]["kvstore"]["connected"]
            and s["cluster"]["nodes"] == [cluster.n1, cluster.n2]
            and s["cluster"]["remote_endpoints"] >= 2,
            timeout=40,
        )
    after = json.loads(tendril("identity", "list", "-o", "json", "--lab", cluster.lab.name).stdout)
    assert {i["id"]: i["labels"] for i in before if i["endpoints"]} == {
        i["id"]: i["labels"] for i in after if i["endpoints"]
    }
    # and the cluster converges again: a policy applied now reaches the other node
    tendril("apply", "-f", "-", "--lab", cluster.lab.name, input=ALLOW_CLIENT)
    try:
        assert cluster.probe("other", [("tcp", cluster.ip("server"), 8080)]) == [False]
    finally:
        tendril("policy", "delete", "--all", "--lab", cluster.lab.name)


def test_node_stopped_entries_expire_relay_reports_it(cluster: Cluster) -> None:
    """Last in the module: it kills node 2's agent (a process this lab started)."""
    from tendril.hubble.api import observer_pb2, observer_pb2_grpc
    from tendril.lab import runtime

    node2 = next(n for n in cluster.record()["nodes"] if n["name"] == cluster.n2)
    assert runtime.process_alive(node2["agent_pid"], node2["agent_start_time"])
    os.kill(node2["agent_pid"], signal.SIGKILL)
    with cluster.relay() as ch:
        stub = observer_pb2_grpc.ObserverStub(ch)
        st = wait_for(
            "relay marks node 2 unavailable",
            lambda: (s := stub.ServerStatus(observer_pb2.ServerStatusRequest(), timeout=5))
            and cluster.n2 in s.unavailable_nodes
            and s,
            timeout=30,
        )
        assert st.num_connected_nodes.value == 1
        # node 1's entries for node 2 expire with its lease
        wait_for(
            "node 2 expired from node 1's view",
            lambda: (s := cluster.status(cluster.n1))["cluster"]["nodes"] == [cluster.n1]
            and s["cluster"]["remote_endpoints"] == 0,
            timeout=30,
        )
        # flows from node 1 keep coming through the relay
        cluster.probe("client", [("tcp", cluster.ip("other"), 1)])
        flows = [
            r
            for r in stub.GetFlows(observer_pb2.GetFlowsRequest(number=50), timeout=10)
            if r.HasField("flow")
        ]
        assert flows and {r.node_name for r in flows} == {cluster.n1}


def test_unreachable_etcd_is_one_clear_error() -> None:
    _require_root()
    name = "m" + "".join(random.choices("0123456789abcdef", k=5))
    r = tendril("lab", "up", "--name", name, "--nodes", "2", "--kvstore", "etcd://127.0.0.1:1", check=False)
    try:
        assert r.returncode != 0
        assert "127.0.0.1:1" in r.stderr and "unreachable" in r.stderr
        from tendril.lab.topology import lab_exists

        assert not lab_exists(name), "nothing may be created when the kvstore is unreachable"
    finally:
        tendril("lab", "down", "--name", name, check=False)
