"""The test's workloads: the lab it runs on, the pods and services it deploys, and the world.

Like cilium-cli, the deployment is one namespace (`tendril-test`) with two clients and two echo
servers (one on the clients' node, one on another node), ClusterIP services for the echo
servers, one NodePort service, and an external HTTP server: here `tendril workload http-echo` in
the lab's world namespace, which answers every 203.0.113.0/24 address, with world names in the
cluster DNS for the run (cilium-cli's one.one.one.one). Everything goes through the agents' REST
API, as `tendril apply` does; creating again what exists changes nothing.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tendril.cli.client import AgentClient, cluster_write
from tendril.common import paths
from tendril.common.errors import NotFoundError, TendrilError
from tendril.connectivity.model import Host, Pod

NAMESPACE = "tendril-test"
ECHO_PORT = 8080
EXTERNAL_CIDR = "203.0.113.0/24"  # the lab world (documentation range), stands in for the internet
EXTERNAL_IP = "203.0.113.10"  # cilium-cli's ExternalTarget / ExternalIP (one.one.one.one, 1.1.1.1)
EXTERNAL_OTHER_IP = "203.0.113.11"  # cilium-cli's ExternalOtherIP (1.0.0.1)
EXTERNAL_TARGET = "world.lab.test."  # cilium-cli's ExternalTarget (one.one.one.one.): EXTERNAL_IP
EXTERNAL_OTHER_TARGET = "other.world.lab.test."  # cilium-cli's cilium.io: EXTERNAL_OTHER_IP
# the cluster DNS's extra names (dns-hosts.json beside each node's records) while the world runs
WORLD_HOSTS = [
    {"name": EXTERNAL_TARGET.rstrip("."), "ips": [EXTERNAL_IP]},
    {"name": "*." + EXTERNAL_TARGET.rstrip("."), "ips": [EXTERNAL_OTHER_IP]},
]
WORLD_PORTS = (80, 443)  # plain HTTP on both: the lab has no TLS server
KUBE_DNS = ("kube-system", "kube-dns")
NODEPORT_SERVICE = "echo-nodeport"
OWNER_LABELS = {"app.kubernetes.io/name": "tendril-connectivity-test"}  # on the namespace we create

Progress = Callable[[str], None]


# ---- the lab -------------------------------------------------------------------------------


@dataclass
class Lab:
    name: str
    nodes: list[dict[str, Any]]  # the lab record's nodes (name, netns, underlay_ip, pod CIDRs)
    routing: str
    relay_port: int | None
    underlay: str

    @property
    def node_names(self) -> list[str]:
        return [n["name"] for n in self.nodes]

    def hosts(self) -> list[Host]:
        out = []
        for n in self.nodes:
            v4 = ipaddress.ip_network(n["pod_cidr_v4"])
            v6 = ipaddress.ip_network(n["pod_cidr_v6"])
            ips = [n["underlay_ip"], str(v4.network_address + 1), str(v6.network_address + 1)]
            out.append(Host(node=n["name"], netns=n["netns"], ip=n["underlay_ip"], ips=ips))
        return out


def load_lab(name: str) -> Lab:
    """The lab record, and agents that answer; one clear error otherwise."""
    from tendril.lab.cluster import load_lab as load_record

    record = load_record(name)
    if not record or not record.get("nodes"):
        raise TendrilError(f"lab {name!r} is not up: run `tendril lab up --name {name}` first")
    down = []
    for n in record["nodes"]:
        with AgentClient(n["name"], timeout=5.0) as c:
            if not c.healthy():
                down.append(n["name"])
    if down:
        raise TendrilError(
            f"lab {name!r}: the agent of {', '.join(down)} does not answer "
            f"(see `tendril lab status --name {name}`; `tendril lab up --name {name}` restarts it)"
        )
    relay = record.get("relay") or {}
    return Lab(
        name=name,
        nodes=record["nodes"],
        routing=record.get("routing", "native"),
        relay_port=relay.get("port"),
        underlay=record.get("underlay", ""),
    )


# ---- the world -----------------------------------------------------------------------------


class World:
    """`tendril workload http-echo` on WORLD_PORTS in the lab's world namespace, and WORLD_HOSTS
    in the cluster DNS, for the run only.

    The processes are ours: started here, in their own session (a Ctrl-C on the terminal reaches
    them only through stop()), and stopped by pid. Their pids and start times are recorded next to
    the lab record, so servers left by a run that was killed are stopped by the next run. The
    names are added to each node's dns-hosts.json (other entries stay) and removed by stop()."""

    def __init__(self, lab: Lab) -> None:
        from tendril.lab.topology import world_netns_name

        self.netns = world_netns_name(lab.name)
        self.record = paths.labs_dir() / f"{lab.name}-connectivity-world.pids"  # JSON; not a lab record
        self.hosts_files = [paths.node_run_dir(n) / "dns-hosts.json" for n in lab.node_names]
        self.procs: dict[int, subprocess.Popen[bytes]] = {}

    def start(self, timeout: float = 30.0) -> None:
        from tendril.common.jsonfile import write_json
        from tendril.datapath import netns as netns_mod
        from tendril.lab import runtime

        if not netns_mod.exists(self.netns):
            raise TendrilError(f"the lab's world namespace {self.netns} is missing: run `tendril lab up`")
        self._stop_leftovers()
        for port in WORLD_PORTS:
            argv = [_tendril_exe(), "workload", "http-echo", "--port", str(port)]
            self.procs[port] = subprocess.Popen(
                netns_mod.nsenter_argv(self.netns, argv),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        pids = [{"pid": p.pid, "start_time": runtime.process_start_time(p.pid)} for p in self.procs.values()]
        write_json(self.record, {"netns": self.netns, "processes": pids})
        for port, proc in self.procs.items():
            self._wait_listening(port, proc, timeout)
        self._set_hosts(WORLD_HOSTS)

    def _set_hosts(self, ours: list[dict[str, Any]]) -> None:
        """Each node's dns-hosts.json with our names replaced by `ours` (none: removed)."""
        from tendril.common.jsonfile import read_json, write_json

        names = {h["name"] for h in WORLD_HOSTS}
        for path in self.hosts_files:
            data = read_json(path) or {}
            hosts = [h for h in data.get("hosts", []) if h.get("name") not in names] + ours
            if hosts:
                write_json(path, {**data, "hosts": hosts}, mode=0o644)
            else:
                path.unlink(missing_ok=True)

    def _stop_leftovers(self) -> None:
        from tendril.common.jsonfile import read_json
        from tendril.lab import runtime

        old = read_json(self.record) or {}
        for p in old.get("processes", []):
            if p.get("start_time") is not None:  # never a pid whose start time is unknown
                runtime.stop(p["pid"], p["start_time"])
        self.record.unlink(missing_ok=True)

    def _wait_listening(self, port: int, proc: subprocess.Popen[bytes], timeout: float) -> None:
        lines: list[str] = []
        done = threading.Event()

        def read() -> None:
            assert proc.stdout is not None
            for raw in proc.stdout:
                lines.append(raw.decode(errors="replace").rstrip())
                if "listening" in lines[-1]:
                    done.set()
            done.set()  # EOF: the server exited

        threading.Thread(target=read, daemon=True).start()
        if not done.wait(timeout) or proc.poll() is not None:
            tail = " | ".join(lines[-3:]) or "no output"
            raise TendrilError(f"the world's http-echo on port {port} did not start: {tail}")

    def stop(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(proc.pid, signal.SIGTERM)
        for proc in self.procs.values():
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(proc.pid, signal.SIGKILL)
                proc.wait(5)
            if proc.stdout is not None:
                proc.stdout.close()
        self.procs.clear()
        self.record.unlink(missing_ok=True)
        self._set_hosts([])


def _tendril_exe() -> str:
    exe = Path(sys.executable).parent / "tendril"
    return str(exe) if exe.exists() else (shutil.which("tendril") or "tendril")


# ---- the deployment ------------------------------------------------------------------------


@dataclass
class Service:
    namespace: str
    name: str
    type: str
    cluster_ips: list[str]
    port: int
    target_port: int
    node_port: int = 0
    backends: list[Pod] = field(default_factory=list)


@dataclass
class Deployment:
    """What the scenarios work with."""

    lab: Lab
    namespace: str
    clients: list[Pod]
    echos: list[Pod]
    hosts: list[Host]
    services: list[Service]  # the echo ClusterIP services
    nodeport: Service | None
    kube_dns: Service
    external_ip: str = EXTERNAL_IP
    external_other_ip: str = EXTERNAL_OTHER_IP
    external_target: str = EXTERNAL_TARGET
    external_other_target: str = EXTERNAL_OTHER_TARGET
    external_cidr: str = EXTERNAL_CIDR

    def host_of(self, node: str) -> Host:
        return next(h for h in self.hosts if h.node == node)


def _pod_specs(lab: Lab) -> list[tuple[str, dict[str, str], str, list[str]]]:
    """(name, labels, node, argv) of every pod, as cilium-cli deploys them."""
    first, last = lab.node_names[0], lab.node_names[-1]
    echo = ["tendril", "workload", "http-echo", "--port", str(ECHO_PORT)]
    pause = ["tendril", "workload", "pause"]
    specs = [
        ("client", {"name": "client", "kind": "client"}, first, pause),
        ("client2", {"name": "client2", "other": "client", "kind": "client"}, first, pause),
        ("echo-same-node", {"name": "echo-same-node", "kind": "echo"}, first, echo),
    ]
    if len(lab.nodes) > 1:
        specs.append(("echo-other-node", {"name": "echo-other-node", "kind": "echo"}, last, echo))
    return specs


def _services_yaml(namespace: str, echo_names: list[str]) -> str:
    docs = []
    for name in echo_names:
        docs.append(
            f"apiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: {namespace}, "
            f"labels: {{kind: echo}}}}\nspec:\n  selector: {{name: {name}}}\n"
            f"  ports: [{{name: http, port: {ECHO_PORT}}}]\n"
        )
    # The NodePort service's backend is the echo server on the last node: reached on that node's
    # address it is DNATed there, on any other node's it is SNATed to the node and sent across.
    docs.append(
        f"apiVersion: v1\nkind: Service\nmetadata: {{name: {NODEPORT_SERVICE}, namespace: {namespace}, "
        f"labels: {{kind: echo}}}}\nspec:\n  type: NodePort\n  selector: {{name: {echo_names[-1]}}}\n"
        f"  ports: [{{name: http, port: {ECHO_PORT}}}]\n"
    )
    return "---\n".join(docs)


def check_namespace(lab: Lab, namespace: str) -> None:
    """The namespace must be ours (or not exist): the test deletes it, and every policy in it."""
    with AgentClient(lab.node_names[0]) as c:
        existing = c.get("/v1/namespaces")
    labels = existing.get(namespace)
    if labels is not None and any(labels.get(k) != v for k, v in OWNER_LABELS.items()):
        raise TendrilError(
            f'namespace "{namespace}" exists and was not created by `tendril connectivity test` '
            f"(the test deletes its namespace at the end): choose another --namespace"
        )


def deploy(lab: Lab, namespace: str, progress: Progress, timeout: float = 60.0) -> Deployment:
    """Create (or converge) the namespace, services and pods; wait until they serve."""
    nodes = lab.node_names
    specs = _pod_specs(lab)
    progress(f"✨ [{lab.name}] Deploying {namespace} namespace...")
    cluster_write(nodes, "PUT", f"/v1/namespaces/{namespace}", {"labels": dict(OWNER_LABELS)})
    echo_names = [s[0] for s in specs if s[1]["kind"] == "echo"]
    progress(f"✨ [{lab.name}] Deploying services {', '.join([*echo_names, NODEPORT_SERVICE])}...")
    text = _services_yaml(namespace, echo_names)
    cluster_write(nodes, "PUT", "/v1/services", {"text": text, "source": "tendril connectivity test"})
    progress(f"✨ [{lab.name}] Deploying pods {', '.join(s[0] for s in specs)}...")

    def put(spec: tuple[str, dict[str, str], str, list[str]]) -> None:
        name, labels, node, argv = spec
        ports = (
            [{"containerPort": ECHO_PORT, "name": "http", "protocol": "TCP"}] if "http-echo" in argv else []
        )
        body = {
            "labels": labels,
            "annotations": {},
            "owner": "",
            "containers": [{"name": name, "argv": argv, "env": [], "ports": ports}],
        }
        with AgentClient(node) as c:
            c.put(f"/v1/pods/{namespace}/{name}", body)

    with ThreadPoolExecutor(max_workers=len(specs)) as pool:
        for f in [pool.submit(put, s) for s in specs]:
            f.result()
    pods = _wait_running(lab, namespace, [s[0] for s in specs], timeout)
    return _describe(lab, namespace, pods)


def _list_pods(lab: Lab, namespace: str | None) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for node in lab.node_names:
        with AgentClient(node) as c:
            out.extend(c.get("/v1/pods", namespace=namespace))
    return out


def _wait_running(lab: Lab, namespace: str, names: list[str], timeout: float) -> dict[str, dict[str, Any]]:
    deadline = time.monotonic() + timeout
    while True:
        pods = {p["name"]: p for p in _list_pods(lab, namespace)}
        if all(n in pods and pods[n]["phase"] == "Running" for n in names):
            return pods
        if time.monotonic() > deadline:
            state = ", ".join(f"{n}={pods[n]['phase'] if n in pods else 'missing'}" for n in names)
            raise TendrilError(f"pods of {namespace} not running after {timeout:.0f}s: {state}")
        time.sleep(0.2)


def _pod(p: dict[str, Any]) -> Pod:
    resolv = paths.node_run_dir(p["node"]) / "pods" / f"{p['namespace']}_{p['name']}.resolv.conf"
    return Pod(
        namespace=p["namespace"],
        name=p["name"],
        node=p["node"],
        labels=dict(p["labels"]),
        ips=list(p["podIPs"]),
        netns=p.get("netns", ""),
        cgroup=p.get("cgroup", ""),
        resolv_conf=str(resolv) if resolv.exists() else "",
    )


def _describe(lab: Lab, namespace: str, raw: dict[str, dict[str, Any]]) -> Deployment:
    pods = {name: _pod(p) for name, p in raw.items()}
    clients = [pods[n] for n in ("client", "client2")]
    echos = [pods[n] for n in ("echo-same-node", "echo-other-node") if n in pods]
    with AgentClient(lab.node_names[0]) as c:
        svcs = {(s["namespace"], s["name"]): s for s in c.get("/v1/services")["services"]}
    dns_pods = [_pod(p) for p in _list_pods(lab, KUBE_DNS[0]) if p["labels"].get("k8s-app") == "kube-dns"]

    def service(ns: str, name: str, backends: list[Pod], port_name: str = "") -> Service:
        s = svcs.get((ns, name))
        if s is None:
            raise NotFoundError(f'service "{ns}/{name}" not found')
        port = next((p for p in s["ports"] if not port_name or p["name"] == port_name), s["ports"][0])
        target = port["targetPort"] if isinstance(port["targetPort"], int) else port["port"]
        node_port = s["node_ports"].get(f"{port['port']}/{port['protocol']}", 0)
        return Service(ns, name, s["type"], list(s["cluster_ips"]), port["port"], target, node_port, backends)

    services = [service(namespace, e.name, [e]) for e in echos]
    nodeport = service(namespace, NODEPORT_SERVICE, [echos[-1]])
    kube_dns = service(*KUBE_DNS, dns_pods, port_name="dns")
    return Deployment(
        lab=lab,
        namespace=namespace,
        clients=clients,
        echos=echos,
        hosts=lab.hosts(),
        services=services,
        nodeport=nodeport,
        kube_dns=kube_dns,
    )


# ---- readiness -----------------------------------------------------------------------------

_WAIT_TCP = """
import socket, sys, time
deadline = time.monotonic() + float(sys.argv[3])
while True:
    try:
        socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=1).close()
        sys.exit(0)
    except OSError as e:
        if time.monotonic() > deadline:
            sys.exit(f"{sys.argv[1]}:{sys.argv[2]}: {e}")
        time.sleep(0.1)
"""

_WAIT_DNS = """
import socket, sys, time
deadline = time.monotonic() + float(sys.argv[2])
while True:
    try:
        socket.getaddrinfo(sys.argv[1], None, socket.AF_INET)
        sys.exit(0)
    except OSError as e:
        if time.monotonic() > deadline:
            sys.exit(f"{sys.argv[1]}: {e}")
        time.sleep(0.2)
"""


def wait_ready(d: Deployment, progress: Progress, timeout: float = 30.0) -> None:
    """Echo servers listening, the other nodes knowing every pod (identities for policy), and the
    cluster DNS answering for the test's services, as cilium-cli waits before it runs tests."""
    from tendril.connectivity.actions import run_in

    waits: list[tuple[str, Callable[[], str]]] = []
    for e in d.echos:
        progress(f"⌛ [{d.lab.name}] Waiting for pod {e.key} to serve on :{ECHO_PORT}...")
        argv = [sys.executable, "-c", _WAIT_TCP, e.ipv4, str(ECHO_PORT), str(timeout)]
        waits.append((e.key, lambda argv=argv, e=e: _check(run_in(e, argv, timeout + 5, with_dns=False))))
    client = d.clients[0]
    name = f"{d.services[0].name}.{d.namespace}.svc.cluster.local."
    progress(f"⌛ [{d.lab.name}] Waiting for pod {client.key} to resolve {name}...")
    argv = [sys.executable, "-c", _WAIT_DNS, name, str(timeout)]
    waits.append((client.key, lambda: _check(run_in(client, argv, timeout + 5, with_dns=True))))
    if len(d.lab.nodes) > 1:
        progress(f"⌛ [{d.lab.name}] Waiting for every node to know every pod of the cluster...")
    with ThreadPoolExecutor(max_workers=len(waits) + 1) as pool:
        futures = [(what, pool.submit(fn)) for what, fn in waits]
        converged = pool.submit(_wait_remote_endpoints, d.lab, timeout) if len(d.lab.nodes) > 1 else None
        errors = [f"{what}: {err}" for what, fut in futures if (err := fut.result())]
        lagging = converged.result() if converged is not None else ""
    if errors:
        raise TendrilError("the test deployment is not ready: " + "; ".join(errors))
    if lagging:  # the counts include other workloads' pods: worth a warning, not a stop
        progress(f"⚠️  [{d.lab.name}] {lagging}: cross-node policy tests may fail")


def _check(res: Any) -> str:
    return "" if res.exit_code == 0 else (res.stderr.strip().splitlines() or [f"exit {res.exit_code}"])[-1]


def _wait_remote_endpoints(lab: Lab, timeout: float) -> str:
    """Every node counts, among its remote endpoints, at least the pods the other nodes run."""
    deadline = time.monotonic() + timeout
    while True:
        per_node = {n: len(_list_pods_on(n)) for n in lab.node_names}
        lagging = []
        for n in lab.node_names:
            with AgentClient(n) as c:
                known = int(c.get("/v1/status").get("cluster", {}).get("remote_endpoints", 0))
            if known < sum(v for m, v in per_node.items() if m != n):
                lagging.append(n)
        if not lagging:
            return ""
        if time.monotonic() > deadline:
            return f"{', '.join(lagging)} do not know every remote pod yet"
        time.sleep(0.2)


def _list_pods_on(node: str) -> list[dict[str, Any]]:
    with AgentClient(node) as c:
        return c.get("/v1/pods")


# ---- clean-up ------------------------------------------------------------------------------


@contextlib.contextmanager
def ignore_missing() -> Any:
    """Deleting what is already gone is fine (the agents answer 404, which the client raises as
    a TendrilError naming what is "not found")."""
    try:
        yield
    except TendrilError as e:
        if not isinstance(e, NotFoundError) and "not found" not in str(e):
            raise


def delete_policies(lab: Lab, namespace: str) -> list[str]:
    """Remove every policy in the test namespace (left by an interrupted run, or ours)."""
    with AgentClient(lab.node_names[0]) as c:
        policies = c.get("/v1/policies")["policies"]
    deleted = []
    for p in policies:
        doc = p["document"]
        meta = doc.get("metadata", {})
        if meta.get("namespace") == namespace:
            kind, name = doc.get("kind", ""), meta.get("name", "")
            with ignore_missing():
                cluster_write(lab.node_names, "DELETE", f"/v1/policies/{kind}/{namespace}/{name}")
            deleted.append(f"{kind}/{name}")
    return deleted


def teardown(lab: Lab, namespace: str, progress: Progress) -> None:
    """Delete the test's policies, services and namespace (with its pods), on every node."""
    progress(f"🔥 [{lab.name}] Deleting connectivity check deployments...")
    delete_policies(lab, namespace)
    with AgentClient(lab.node_names[0]) as c:
        svcs = [s["name"] for s in c.get("/v1/services")["services"] if s["namespace"] == namespace]
    for name in svcs:
        with ignore_missing():
            cluster_write(lab.node_names, "DELETE", f"/v1/services/{namespace}/{name}")
    with ignore_missing():
        cluster_write(lab.node_names, "DELETE", f"/v1/namespaces/{namespace}")
    for p in _list_pods(lab, namespace):  # a node that missed the namespace deletion
        with AgentClient(p["node"]) as c, ignore_missing():
            c.delete(f"/v1/pods/{namespace}/{p['name']}")
