"""Services on real traffic: socket LB for ClusterIP, packet LB for NodePort, DNS, affinity,
backend removal, fail-fast without backends, and bad Service manifests."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest

from conftest import Lab, tendril
from tendril.datapath.netns import nsenter_argv

APP = """
apiVersion: apps/v1
kind: Deployment
metadata: {name: web}
spec:
  replicas: 3
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec:
      containers:
        - name: http
          command: [tendril, workload, http-echo, --port, "8080"]
          ports: [{containerPort: 8080, name: http}]
        - name: udp
          command: [tendril, workload, udp-echo, --port, "9000"]
---
apiVersion: v1
kind: Service
metadata: {name: web}
spec:
  selector: {app: web}
  ports:
    - {name: http, port: 80, targetPort: http}
    - {name: udp, port: 53, targetPort: 9000, protocol: UDP}
---
apiVersion: v1
kind: Service
metadata: {name: sticky}
spec:
  selector: {app: web}
  sessionAffinity: ClientIP
  ports: [{port: 80, targetPort: 8080}]
---
apiVersion: v1
kind: Service
metadata: {name: web-np}
spec:
  type: NodePort
  selector: {app: web}
  ports: [{port: 80, targetPort: 8080, nodePort: 30080}]
---
apiVersion: v1
kind: Service
metadata: {name: empty}
spec:
  selector: {app: nothing}
  ports: [{port: 80, targetPort: 8080}]
---
apiVersion: v1
kind: Service
metadata: {name: web-headless}
spec:
  clusterIP: None
  selector: {app: web}
  ports: [{port: 8080}]
---
apiVersion: v1
kind: Pod
metadata: {name: client, labels: {app: client}}
spec: {containers: [{name: c}]}
"""

# Runs in the client pod (its netns and cgroup: the socket LB hooks the pod cgroups): N requests,
# each on a new connection, prints which backend pod answered each.
ASK = r"""
import json, socket, sys
host, port, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
out = []
for _ in range(n):
    s = socket.create_connection((host, port), timeout=3)
    s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    data = b""
    while chunk := s.recv(4096):
        data += chunk
    out.append(json.loads(data.split(b"\r\n\r\n", 1)[1])["pod"])
    s.close()
print(json.dumps(out))
"""


def in_client(lab: Lab, code: str, *args: str, timeout: float = 60) -> str:
    return tendril(
        "exec", "--lab", lab.name, "client", "--", sys.executable, "-c", code, *args, timeout=timeout
    ).stdout


@pytest.fixture(scope="module")
def svc(lab: Lab) -> Iterator[dict]:
    lab.apply(APP)
    pods = lab.wait_running("default", ["client"])
    deadline = time.monotonic() + 20
    while len([p for p in lab.pods() if p.startswith("web-")]) < 3 or any(
        p["status"]["phase"] != "Running" for p in lab.pods().values()
    ):
        assert time.monotonic() < deadline
        time.sleep(0.3)
    services = {
        s["name"]: s for s in json.loads(tendril("get", "svc", "-o", "json", "--lab", lab.name).stdout)
    }
    vip4, vip6 = services["web"]["cluster_ips"]
    deadline = time.monotonic() + 20
    while True:  # the http servers bind a moment after their pods start
        try:
            json.loads(in_client(lab, ASK, vip4, "80", "3"))
            break
        except AssertionError:
            assert time.monotonic() < deadline
            time.sleep(0.5)
    yield {"services": services, "vip4": vip4, "vip6": vip6, "pods": pods}


def test_clusterip_tcp_spreads_over_backends_v4_and_v6(lab: Lab, svc: dict) -> None:
    for vip in (svc["vip4"], svc["vip6"]):
        answered = json.loads(in_client(lab, ASK, vip, "80", "24"))
        assert len(answered) == 24 and all(p.startswith("web-") for p in answered)
        assert len(set(answered)) >= 2, answered  # random over 3 backends: 24 picks never all alike
    out = tendril("service", "list", "--lab", lab.name).stdout
    assert f"{svc['vip4']}:80/TCP" in out and "ClusterIP" in out and "(active)" in out
    lb = tendril("bpf", "lb", "list", "--lab", lab.name).stdout
    assert "[ClusterIP, non-routable]" in lb
    flows = tendril("observe", "--type", "trace-sock", "--last", "20", "--lab", lab.name).stdout
    assert "default/web:80 (world) pre-xlate-fwd TRANSLATED" in flows
    assert "post-xlate-fwd TRANSLATED" in flows


def test_clusterip_udp_replies_come_from_the_vip(lab: Lab, svc: dict) -> None:
    code = r"""
import socket, sys
fam = socket.AF_INET6 if ":" in sys.argv[1] else socket.AF_INET
s = socket.socket(fam, socket.SOCK_DGRAM); s.settimeout(3)
s.sendto(b"ping", (sys.argv[1], 53))
data, peer = s.recvfrom(64)
print(data.decode(), peer[0], peer[1])
"""
    for vip in (svc["vip4"], svc["vip6"]):
        assert in_client(lab, code, vip).split() == ["ping", vip, "53"]


def test_session_affinity_keeps_one_backend(lab: Lab, svc: dict) -> None:
    vip = svc["services"]["sticky"]["cluster_ips"][0]
    answered = json.loads(in_client(lab, ASK, vip, "80", "12"))
    assert len(set(answered)) == 1, answered


def test_service_without_backends_fails_fast(lab: Lab, svc: dict) -> None:
    vip = svc["services"]["empty"]["cluster_ips"][0]
    code = r"""
import socket, sys, time
t = time.monotonic()
try:
    socket.create_connection((sys.argv[1], 80), timeout=5)
    print("connected")
except OSError as e:
    print(type(e).__name__, round(time.monotonic() - t, 3))
"""
    kind, seconds = in_client(lab, code, vip).split()
    assert kind == "PermissionError" and float(seconds) < 0.5
    deadline = time.monotonic() + 5
    while True:  # the agent drains the ring every few milliseconds
        out = tendril("observe", "--type", "drop", "-o", "json", "--lab", lab.name).stdout
        drops = [json.loads(x)["flow"] for x in out.splitlines()]
        if drops or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert [d["drop_reason_desc"] for d in drops] == ["SERVICE_BACKEND_NOT_FOUND"]
    assert drops[0]["source"]["pod_name"] == "client"
    assert drops[0]["destination_service"]["name"] == "empty"


def test_nodeport_from_the_underlay(lab: Lab, svc: dict) -> None:
    node_ip = json.loads(tendril("lab", "status", "--name", lab.name, "-o", "json").stdout)["nodes"][0][
        "underlay_ip"
    ]
    code = r"""
import json, socket, sys
got = set()
for _ in range(9):
    s = socket.create_connection((sys.argv[1], 30080), timeout=3)
    s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    data = b""
    while chunk := s.recv(4096):
        data += chunk
    got.add(json.loads(data.split(b"\r\n\r\n", 1)[1])["pod"])
print(json.dumps(sorted(got)))
"""
    # from the lab's world namespace, which sits on the underlay like an outside client
    r = subprocess.run(
        nsenter_argv(f"tnd-{lab.name}-world", [sys.executable, "-c", code, node_ip]),
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert all(p.startswith("web-") for p in json.loads(r.stdout))


def test_dns_names_resolve_through_the_cluster_dns(lab: Lab, svc: dict) -> None:
    out = tendril("exec", "--lab", lab.name, "client", "--", "getent", "ahostsv4", "web").stdout
    assert svc["vip4"] in out
    out = tendril(
        "exec", "--lab", lab.name, "client", "--", "getent", "ahostsv4", "web.default.svc.cluster.local"
    ).stdout
    assert svc["vip4"] in out
    out = tendril("exec", "--lab", lab.name, "client", "--", "getent", "ahostsv4", "web-headless").stdout
    pod_ips = {p["status"]["podIP"] for n, p in lab.pods().items() if n.startswith("web-")}
    assert {line.split()[0] for line in out.splitlines()} == pod_ips
    body = tendril(
        "exec", "--lab", lab.name, "client", "--", "tendril", "workload", "curl", "http://web/"
    ).stdout
    assert json.loads(body)["pod"].startswith("web-")


def test_backend_removal_spares_existing_connections(lab: Lab, svc: dict) -> None:
    """A pod that leaves the selector gets no new connections; one already open keeps working."""
    code = r"""
import json, socket, sys
s = socket.create_connection((sys.argv[1], 80), timeout=3)
def ask():
    s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    head = b""
    while b"\r\n\r\n" not in head:
        head += s.recv(4096)
    h, _, body = head.partition(b"\r\n\r\n")
    n = int([x for x in h.split(b"\r\n") if x.lower().startswith(b"content-length")][0].split(b":")[1])
    while len(body) < n:
        body += s.recv(4096)
    return json.loads(body)["pod"]
print(ask(), flush=True)
sys.stdin.readline()
print(ask(), flush=True)
"""
    argv = ["exec", "--lab", lab.name, "client", "--", sys.executable, "-c", code, svc["vip4"]]
    p = subprocess.Popen(
        [sys.executable, "-m", "tendril.cli.main", *argv],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert p.stdin is not None and p.stdout is not None
    first = p.stdout.readline().strip()
    assert first.startswith("web-")
    # relabel that backend out of the service: labels change in place, the pod keeps running
    from tendril.cli.client import AgentClient

    with AgentClient(lab.node) as c:
        rec = next(x for x in c.get("/v1/pods") if x["name"] == first)
        c.put(
            f"/v1/pods/default/{first}",
            {
                "labels": {"app": "web-retired"},
                "annotations": {},
                "containers": rec["containers"],
                "owner": rec["owner"],
            },
        )
    newcomers = json.loads(in_client(lab, ASK, svc["vip4"], "80", "15"))
    assert first not in newcomers and len(newcomers) == 15
    p.stdin.write("\n")
    p.stdin.flush()
    assert p.stdout.readline().strip() == first  # the open connection still reaches it
    p.wait(10)
    assert first not in tendril("service", "list", "--lab", lab.name).stdout


BAD = [
    ("apiVersion: v1\nkind: Service\nmetadata: {name: x}\nspec: {ports: [{port: 70000}]}\n", "port"),
    (
        "apiVersion: v1\nkind: Service\nmetadata: {name: x}\nspec:\n  selector: {app: web}\n"
        "  ports: [{port: 80, targetPort: nosuchport}]\n",
        "targetPort",
    ),
    (
        "apiVersion: v1\nkind: Service\nmetadata: {name: x}\n"
        "spec: {clusterIP: 10.96.0.10, ports: [{port: 80}]}\n",
        "10.96.0.10",
    ),
]


@pytest.mark.parametrize(("text", "needle"), BAD)
def test_bad_services_are_refused_and_change_nothing(lab: Lab, svc: dict, text: str, needle: str) -> None:
    before = tendril("get", "svc", "-o", "json", "--lab", lab.name).stdout
    bundle = (
        "apiVersion: v1\nkind: Service\nmetadata: {name: first}\nspec: {ports: [{port: 81}]}\n---\n" + text
    )
    r = tendril("apply", "-f", "-", "--lab", lab.name, input=bundle, check=False)
    assert r.returncode == 1 and needle in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert tendril("get", "svc", "-o", "json", "--lab", lab.name).stdout == before
