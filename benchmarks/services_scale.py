#!/usr/bin/env python3
"""Connect latency and connections/s to a ClusterIP at 1, 1,000 and 10,000 services: Tendril's socket LB
vs kube-proxy-style iptables DNAT chains vs a direct connection to the backend, in the same run.

What runs (all traffic stays inside namespaces that the lab or this script creates):
  * Tendril: `tendril lab up` creates a one-node lab (name bs<4 hex>, a random 198.18.X.0/24 underlay).
    `tendril apply` creates two idle pods, bench/server (app=svc-server, containerPort 8080 named tcp)
    and bench/client, and the Service bench/target (port 80 -> targetPort tcp). The "filler" Services
    filler-00001... are added with one `tendril apply -f -` per level (timed; --chunk splits it; if the
    CLI gives up waiting for the agent, the script waits until the LB map holds them). Each filler
    selects the same server pod, so every Service has one backend. All Services are
    `ipFamilyPolicy: SingleStack` IPv4: the Kubernetes default, and the same as the iptables side (the
    lab's default, PreferDualStack, would add an IPv6 frontend per Service). Path: client pod -> veth
    -> node netns -> veth -> server pod, with tnd_from_container / tnd_to_container on both host-side
    veths; for the ClusterIP, the socket LB (cgroup/connect4 on the node cgroup) rewrites
    connect(10.96.x.y:80) to the server's 10.244.1.z:8080 before the SYN exists.
  * iptables: four throwaway netns, bs<hex>-ipt-{cli,kp,bare,srv}, deleted at the end. The client and
    the server are each connected by veths to two routers: "kp" holds kube-proxy's rules (loaded with
    iptables-restore: nat and filter tables as kube-proxy's iptables mode writes them: KUBE-SERVICES with
    one rule per service VIP -> KUBE-SVC-<hash> -> KUBE-SEP-<hash> DNAT, `-m statistic --mode random
    --probability` for services with several endpoints, KUBE-MARK-MASQ, KUBE-POSTROUTING, KUBE-NODEPORTS,
    KUBE-FORWARD, chain names hashed as kube-proxy does, comments dropped above 1,000 endpoints as in
    its large-cluster mode); "bare" is a plain router with no rules (no conntrack either). Filler
    services get 1-3 endpoints each at addresses that are never used; the tested service has the real
    server as its only endpoint, and its rule is the LAST service rule in KUBE-SERVICES (before the
    NODEPORTS rule): kube-proxy walks that chain linearly for the first packet of every connection, so
    this is the worst case. DNAT happens in the kp router's PREROUTING, as on a node for pod traffic.
  * Backend: a raw TCP server (S forked Python processes accepting on one socket, accept + close),
    in the server pod and in the iptables server netns.
  * Client: one Python process per run, for a fixed time (bounded count): socket, SO_LINGER {on, 0},
    connect() timed with perf_counter_ns, close (an RST, so no TIME_WAIT anywhere and the client never
    runs out of ports; conntrack and Tendril's CT keep the entry for their 10 s close lifetime).
    For the lab, the client process joins the client pod's cgroup (as `tendril exec` does) before it
    enters the pod netns: the socket LB only sees processes in the pods' cgroups.
  * Arms, in rotating order for R rounds at every level (1, 1,000, 10,000 services):
      - "direct (pod -> pod)": lab client -> server pod IP:8080 (the connect4 hook runs and misses);
      - "tendril ClusterIP": lab client -> the target VIP:80;
      - "direct (plain router)": iptables client -> server via the bare router (the iptables baseline);
      - "iptables ClusterIP": iptables client -> target VIP:80 via the kp router (DNAT);
      - "pod IP via kube-proxy node": iptables client -> server IP via the kp router: no VIP, but the
        first packet still walks all of KUBE-SERVICES.
    "vs direct" ratios are against the direct arm of the same path, measured in the same rounds.
  * Checks: client errors; the DNAT counter of the tested KUBE-SEP rule against connections made to
    the iptables VIP; tnd_lb_services entries; the agent's CPU and the trace events it read during
    runs; and, per level, the agent's CPU with no traffic for 10 s (--idle-seconds): its resync every
    10 s recomputes every Service, so it grows with the count.

Needs root, `bash scripts/setup.sh` (build/bpf/*.o) and the Debian `iptables` package
(`apt-get install -y iptables`; either backend: --iptables nft|legacy, default what `iptables` is).

    sudo .venv/bin/python benchmarks/services_scale.py            # about 4.5 minutes
    sudo .venv/bin/python benchmarks/services_scale.py --quick    # 1 and 1,000 services, about 70 s
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import hashlib
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import benchlib
from benchlib import cpu_seconds, loadavg
from tendril.bpf import TypedMap, abi
from tendril.bpf.maps import Map
from tendril.common import paths
from tendril.datapath.netns import netns_path
from tendril.loadbalancer import MAP_SERVICES

TENDRIL = str(Path(sys.executable).parent / "tendril")
NS = "bench"
PORT = 8080  # the backend's port; the services' port is 80
SVC_PORT = 80
CLUSTER_CIDR = "10.245.0.0/16"  # the iptables side's pod CIDR (kube-proxy --cluster-cidr)
SINGLE = "ipFamilyPolicy: SingleStack, ipFamilies: [IPv4]"
PODS = f"""
apiVersion: v1
kind: Namespace
metadata: {{name: {NS}}}
---
apiVersion: v1
kind: Pod
metadata: {{name: server, namespace: {NS}, labels: {{app: svc-server}}}}
spec:
  containers: [{{name: idle, ports: [{{containerPort: {PORT}, name: tcp}}]}}]
---
apiVersion: v1
kind: Pod
metadata: {{name: client, namespace: {NS}, labels: {{app: svc-client}}}}
spec:
  containers: [{{name: idle}}]
---
apiVersion: v1
kind: Service
metadata: {{name: target, namespace: {NS}}}
spec:
  {{{SINGLE}, selector: {{app: svc-server}}, ports: [{{name: tcp, port: {SVC_PORT}, targetPort: tcp}}]}}
"""


def filler(i: int) -> str:
    return f"""---
apiVersion: v1
kind: Service
metadata: {{name: filler-{i:05d}, namespace: {NS}}}
spec: {{{SINGLE}, selector: {{app: svc-server}}, ports: [{{name: tcp, port: {SVC_PORT}, targetPort: tcp}}]}}
"""


# Runs in the server pod / netns: S processes accept on one socket and close.
SERVER = r"""
import os, socket, sys
port, procs = int(sys.argv[1]), int(sys.argv[2])
ls = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
ls.bind(("0.0.0.0", port))
ls.listen(4096)
for _ in range(procs):
    if os.fork() == 0:
        accept = ls.accept
        while True:
            try:
                accept()[0].close()
            except OSError:
                pass
print("ready", flush=True)
os.wait()
"""

# Runs in the client pod / netns: a connect/close loop for `seconds` (at most `cap` connections).
# Prints one JSON line with every connect() time in ns.
CLIENT = r"""
import gc, json, socket, struct, sys, time
ip, port, seconds, cap = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), int(sys.argv[4])
gc.disable()
linger = struct.pack("ii", 1, 0)
sock, AF, ST = socket.socket, socket.AF_INET, socket.SOCK_STREAM
SOL, LINGER = socket.SOL_SOCKET, socket.SO_LINGER
ns = time.perf_counter_ns
addr = (ip, port)
lat, err, last = [], 0, ""
app = lat.append
t0 = ns()
end = t0 + int(seconds * 1e9)
while True:
    s = sock(AF, ST)
    s.setsockopt(SOL, LINGER, linger)
    a = ns()
    try:
        s.connect(addr)
        b = ns()
        app(b - a)
    except OSError as e:
        b = ns()
        err += 1
        last = str(e)
    s.close()
    if b >= end or len(lat) >= cap or err > 100:
        break
print(json.dumps({"n": len(lat), "err": err, "last_error": last, "elapsed": (ns() - t0) / 1e9, "lat": lat}))
"""

LAB_DIRECT, TENDRIL_VIP = "direct (pod -> pod)", "tendril ClusterIP"
NET_DIRECT, IPT_VIP, KP_DIRECT = "direct (plain router)", "iptables ClusterIP", "pod IP via kube-proxy node"
ARMS = [LAB_DIRECT, TENDRIL_VIP, NET_DIRECT, IPT_VIP, KP_DIRECT]
BASELINE = {TENDRIL_VIP: LAB_DIRECT, IPT_VIP: NET_DIRECT, KP_DIRECT: NET_DIRECT}


def run(*argv: str, input: str | None = None, timeout: float = 120) -> str:
    r = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, input=input)
    if r.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed ({r.returncode}):\n{r.stdout}{r.stderr}")
    return r.stdout


def tendril(*args: str, timeout: float = 300, input: str | None = None) -> str:
    return run(TENDRIL, *args, input=input, timeout=timeout)


def percentile(sorted_values: list[int], q: float) -> float:
    if not sorted_values:
        return float("nan")
    return float(sorted_values[min(len(sorted_values) - 1, int(q * len(sorted_values)))])


def join_cgroup(cgroup: str | None) -> Callable[[], None] | None:
    if not cgroup:
        return None
    procs = os.path.join(cgroup, "cgroup.procs")

    def join() -> None:
        with open(procs, "w") as f:
            f.write(str(os.getpid()))

    return join


def start_server(netns: str, cgroup: str | None, procs: int) -> subprocess.Popen:
    p = subprocess.Popen(
        ["nsenter", f"--net={netns_path(netns)}", "--", sys.executable, "-c", SERVER, str(PORT), str(procs)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
        preexec_fn=join_cgroup(cgroup),
    )
    assert p.stdout is not None
    if p.stdout.readline().strip() != "ready":
        raise RuntimeError(f"server in {netns} did not start: {p.stderr.read() if p.stderr else ''}")
    return p


def stop_server(p: subprocess.Popen | None) -> None:
    if p is None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(p.pid, signal.SIGTERM)  # the server and the processes it forked
    with contextlib.suppress(subprocess.TimeoutExpired):
        p.wait(timeout=5)


def client_run(netns: str, cgroup: str | None, ip: str, port: int, seconds: float, cap: int) -> dict:
    argv = ["nsenter", f"--net={netns_path(netns)}", "--", sys.executable, "-c", CLIENT, ip, str(port)]
    r = subprocess.run(
        [*argv, str(seconds), str(cap)],
        capture_output=True,
        text=True,
        timeout=seconds + 60,
        preexec_fn=join_cgroup(cgroup),
    )
    if r.returncode != 0:
        raise RuntimeError(f"client failed ({r.returncode}): {r.stderr.strip()}")
    return json.loads(r.stdout)


# ---- the Tendril lab ------------------------------------------------------------------------------
class Lab:
    def __init__(self, name: str, underlay: str) -> None:
        self.name = name
        self.underlay = underlay
        self.node = f"{name}-node1"
        self.services = 1  # bench/target
        self.agent_pid = 0
        self.pods: dict[str, dict] = {}
        self.vip = ""

    def agent(self, method: str, path: str, **kw: object) -> object:
        from tendril.cli.client import AgentClient

        with AgentClient(self.node) as c:
            return getattr(c, method)(path, **kw)

    def setup(self) -> None:
        tendril("apply", "-f", "-", "--lab", self.name, input=PODS)
        deadline = time.monotonic() + 30
        while True:
            pods = {p["name"]: p for p in self.agent("get", "/v1/pods", namespace=NS)}  # type: ignore[union-attr]
            if all(pods.get(n, {}).get("phase") == "Running" for n in ("server", "client")):
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"pods not running after 30 s: {pods}")
            time.sleep(0.2)
        self.pods = pods
        svcs = self.agent("get", "/v1/services")["services"]  # type: ignore[index]
        target = next(s for s in svcs if s["namespace"] == NS and s["name"] == "target")
        self.vip = target["cluster_ips"][0]
        self.agent_pid = int(self.agent("get", "/v1/status")["pid"])  # type: ignore[index]

    def events_read(self) -> int:
        """Trace events the agent has read from the ring buffer."""
        return int(self.agent("get", "/v1/status")["events_read"])  # type: ignore[index]

    def grow(self, total: int, chunk: int) -> tuple[list[float], int]:
        """Add filler Services with `tendril apply -f -`, `chunk` per call, until `total` exist.

        Returns the seconds per call and how many calls timed out in the CLI (it waits 30 s for the
        agent); after such a timeout this waits until the agent's LB map holds the new Services (two
        entries each: the service slot and its one backend), which the seconds then include.
        """
        times, timeouts = [], 0
        while self.services < total:
            n = min(chunk, total - self.services)
            text = "".join(filler(i) for i in range(self.services, self.services + n))
            want = self.lb_entries() + 2 * n
            t = time.monotonic()
            try:
                tendril("apply", "-f", "-", "--lab", self.name, input=text)
            except RuntimeError as e:
                if "timed out" not in str(e):
                    raise
                timeouts += 1
                while self.lb_entries() < want:
                    if time.monotonic() - t > 600:
                        raise RuntimeError(f"the agent did not add {n} Services in 600 s") from e
                    time.sleep(0.5)
            times.append(time.monotonic() - t)
            self.services += n
        return times, timeouts

    def lb_entries(self) -> int:
        m = TypedMap(
            Map.open_pinned(paths.bpf_pin_dir(self.node) / MAP_SERVICES), abi.LB_KEY_DTYPE, abi.LB_VALUE_DTYPE
        )
        try:
            return len(m.to_arrays()[0])
        finally:
            m.map.close()


def lab_up(aggregation: str) -> Lab:
    return Lab(*benchlib.lab_up("bs", "--monitor-aggregation", aggregation))


# ---- kube-proxy's iptables rules -----------------------------------------------------------------
def _hash16(text: str) -> str:
    return base64.b32encode(hashlib.sha256(text.encode()).digest()).decode()[:16]


def kube_proxy_rules(services: list[tuple[str, str, list[str]]], cluster_cidr: str) -> str:
    """iptables-restore input for the nat and filter tables, as kube-proxy (iptables mode) writes them.

    services: (namespace/name:port, cluster IP, ["ip:port" endpoint, ...]), in KUBE-SERVICES order.
    """
    n_endpoints = sum(len(eps) for _, _, eps in services)
    large = n_endpoints > 1000  # kube-proxy's largeClusterEndpointsThreshold: no comments then

    def comment(text: str) -> str:
        return "" if large else f' -m comment --comment "{text}"'

    chains = ["KUBE-SERVICES", "KUBE-NODEPORTS", "KUBE-POSTROUTING", "KUBE-MARK-MASQ"]
    rules = [
        '-A PREROUTING -m comment --comment "kubernetes service portals" -j KUBE-SERVICES',
        '-A OUTPUT -m comment --comment "kubernetes service portals" -j KUBE-SERVICES',
        '-A POSTROUTING -m comment --comment "kubernetes postrouting rules" -j KUBE-POSTROUTING',
        "-A KUBE-MARK-MASQ -j MARK --or-mark 0x4000",
        "-A KUBE-POSTROUTING -m mark ! --mark 0x4000/0x4000 -j RETURN",
        "-A KUBE-POSTROUTING -j MARK --xor-mark 0x4000",
        '-A KUBE-POSTROUTING -m comment --comment "kubernetes service traffic requiring SNAT" '
        "-j MASQUERADE --random-fully",
    ]
    body = []
    for spn, vip, eps in services:
        svc = f"KUBE-SVC-{_hash16(spn + 'tcp')}"
        chains.append(svc)
        rules.append(
            f"-A KUBE-SERVICES -d {vip}/32 -p tcp{comment(f'{spn} cluster IP')} -m tcp --dport {SVC_PORT} "
            f"-j {svc}"
        )
        body.append(
            f"-A {svc} ! -s {cluster_cidr} -d {vip}/32 -p tcp{comment(f'{spn} cluster IP')} -m tcp "
            f"--dport {SVC_PORT} -j KUBE-MARK-MASQ"
        )
        for i, ep in enumerate(eps):
            sep = f"KUBE-SEP-{_hash16(spn + 'tcp' + ep)}"
            chains.append(sep)
            left = len(eps) - i
            stat = f" -m statistic --mode random --probability {1.0 / left:.10f}" if left > 1 else ""
            body.append(f"-A {svc}{comment(f'{spn} -> {ep}')}{stat} -j {sep}")
            body.append(f"-A {sep} -s {ep.split(':')[0]}/32{comment(spn)} -j KUBE-MARK-MASQ")
            body.append(f"-A {sep} -p tcp{comment(spn)} -m tcp -j DNAT --to-destination {ep}")
    rules.append(
        '-A KUBE-SERVICES -m comment --comment "kubernetes service nodeports; NOTE: this must be the last '
        'rule in this chain" -m addrtype --dst-type LOCAL -j KUBE-NODEPORTS'
    )
    nat = (
        ["*nat", ":PREROUTING ACCEPT [0:0]", ":INPUT ACCEPT [0:0]", ":OUTPUT ACCEPT [0:0]"]
        + [":POSTROUTING ACCEPT [0:0]"]
        + [f":{c} - [0:0]" for c in chains]
        + rules
        + body
        + ["COMMIT"]
    )
    new = "-m conntrack --ctstate NEW"
    filt = [
        "*filter",
        ":INPUT ACCEPT [0:0]",
        ":FORWARD ACCEPT [0:0]",
        ":OUTPUT ACCEPT [0:0]",
        *(
            f":{c} - [0:0]"
            for c in (
                "KUBE-EXTERNAL-SERVICES",
                "KUBE-FORWARD",
                "KUBE-NODEPORTS",
                "KUBE-PROXY-FIREWALL",
                "KUBE-SERVICES",
            )
        ),
        f'-A INPUT {new} -m comment --comment "kubernetes load balancer firewall" -j KUBE-PROXY-FIREWALL',
        '-A INPUT -m comment --comment "kubernetes health check service ports" -j KUBE-NODEPORTS',
        f'-A INPUT {new} -m comment --comment "kubernetes externally-visible service portals" '
        "-j KUBE-EXTERNAL-SERVICES",
        f'-A FORWARD {new} -m comment --comment "kubernetes load balancer firewall" -j KUBE-PROXY-FIREWALL',
        '-A FORWARD -m comment --comment "kubernetes forwarding rules" -j KUBE-FORWARD',
        f'-A FORWARD {new} -m comment --comment "kubernetes service portals" -j KUBE-SERVICES',
        f'-A FORWARD {new} -m comment --comment "kubernetes externally-visible service portals" '
        "-j KUBE-EXTERNAL-SERVICES",
        f'-A OUTPUT {new} -m comment --comment "kubernetes load balancer firewall" -j KUBE-PROXY-FIREWALL',
        f'-A OUTPUT {new} -m comment --comment "kubernetes service portals" -j KUBE-SERVICES',
        "-A KUBE-FORWARD -m conntrack --ctstate INVALID -j DROP",
        '-A KUBE-FORWARD -m comment --comment "kubernetes forwarding rules" -m mark --mark 0x4000/0x4000 '
        "-j ACCEPT",
        '-A KUBE-FORWARD -m comment --comment "kubernetes forwarding conntrack rule" -m conntrack '
        "--ctstate RELATED,ESTABLISHED -j ACCEPT",
        "COMMIT",
    ]
    return "\n".join(nat + filt) + "\n"


class IptablesNet:
    """client -- kp (kube-proxy rules) -- server, and client -- bare (plain router) -- server."""

    CLIENT_KP, KP_CLIENT, KP_SERVER, SERVER_KP = "10.245.0.2", "10.245.0.1", "10.245.1.1", "10.245.1.2"
    CLIENT_BARE, BARE_CLIENT, BARE_SERVER, SERVER_BARE = (
        "10.246.0.2",
        "10.246.0.1",
        "10.246.1.1",
        "10.246.1.2",
    )
    VIP = "10.96.255.250"  # the tested service; fillers count up from 10.96.0.1

    def __init__(self, prefix: str, backend: str) -> None:
        self.cli, self.kp, self.bare, self.srv = (f"{prefix}-ipt-{x}" for x in ("cli", "kp", "bare", "srv"))
        self.restore = f"iptables-{backend}-restore"
        self.save = f"iptables-{backend}-save"
        self.created: list[str] = []
        self.target_sep = ""

    def ip(self, *args: str) -> None:
        run("ip", *args)

    def setup(self) -> None:
        for ns in (self.cli, self.kp, self.bare, self.srv):
            self.ip("netns", "add", ns)
            self.created.append(ns)
            self.ip("-n", ns, "link", "set", "lo", "up")
        pairs = [  # (netns, dev, address, peer netns, peer dev, peer address)
            (self.cli, "kp0", self.CLIENT_KP, self.kp, "cli0", self.KP_CLIENT),
            (self.cli, "bare0", self.CLIENT_BARE, self.bare, "cli0", self.BARE_CLIENT),
            (self.srv, "kp0", self.SERVER_KP, self.kp, "srv0", self.KP_SERVER),
            (self.srv, "bare0", self.SERVER_BARE, self.bare, "srv0", self.BARE_SERVER),
        ]
        for ns, dev, addr, peer_ns, peer_dev, peer_addr in pairs:
            self.ip("-n", ns, "link", "add", dev, "type", "veth", "peer", "name", peer_dev, "netns", peer_ns)
            for n, d, a in ((ns, dev, addr), (peer_ns, peer_dev, peer_addr)):
                self.ip("-n", n, "addr", "add", f"{a}/24", "dev", d)
                self.ip("-n", n, "link", "set", d, "up")
        for router in (self.kp, self.bare):
            run("nsenter", f"--net={netns_path(router)}", "--", "sysctl", "-qw", "net.ipv4.ip_forward=1")
        self.ip("-n", self.cli, "route", "add", "default", "via", self.KP_CLIENT)  # VIPs and 10.245.1.0/24
        self.ip("-n", self.cli, "route", "add", "10.246.1.0/24", "via", self.BARE_CLIENT)
        self.ip("-n", self.srv, "route", "add", "10.245.0.0/24", "via", self.KP_SERVER)
        self.ip("-n", self.srv, "route", "add", "10.246.0.0/24", "via", self.BARE_SERVER)

    def load(self, n_services: int) -> tuple[float, int]:
        """kube-proxy's rules for n services (n - 1 fillers, then the target); returns (seconds, rules)."""
        services = []
        for i in range(1, n_services):
            vip = f"10.96.{i // 250}.{i % 250 + 1}"
            eps = [
                f"10.245.{100 + (3 * i + j) // 250}.{(3 * i + j) % 250 + 1}:{PORT}" for j in range(i % 3 + 1)
            ]
            services.append((f"{NS}/filler-{i:05d}:tcp", vip, eps))
        target = (f"{NS}/target:tcp", self.VIP, [f"{self.SERVER_KP}:{PORT}"])
        services.append(target)
        self.target_sep = f"KUBE-SEP-{_hash16(target[0] + 'tcp' + target[2][0])}"
        text = kube_proxy_rules(services, CLUSTER_CIDR)
        t = time.monotonic()
        run("nsenter", f"--net={netns_path(self.kp)}", "--", self.restore, input=text, timeout=600)
        took = time.monotonic() - t
        return took, sum(line.startswith("-A ") for line in text.splitlines())

    def dnat_hits(self) -> int:
        """Packets counted by the tested service's DNAT rule (one per new connection)."""
        out = run("nsenter", f"--net={netns_path(self.kp)}", "--", self.save, "-c", "-t", "nat")
        m = re.search(rf"^\[(\d+):\d+\] -A {self.target_sep} -p tcp .*-j DNAT", out, re.M)
        return int(m.group(1)) if m else -1

    def service_rules(self) -> int:
        out = run("nsenter", f"--net={netns_path(self.kp)}", "--", self.save, "-t", "nat")
        return sum(line.startswith("-A KUBE-SERVICES -d ") for line in out.splitlines())

    def cleanup(self) -> None:
        for ns in reversed(self.created):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=60)
        self.created.clear()


def pick_backend(choice: str) -> str:
    if choice != "auto":
        return choice
    out = run("iptables", "-V")
    return "nft" if "nf_tables" in out else "legacy"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="1 and 1,000 services, 2 rounds of 1.5 s")
    ap.add_argument("--levels", help="comma-separated service counts (default 1,1000,10000; quick 1,1000)")
    ap.add_argument(
        "--rounds", type=int, help="rounds per level, each running every arm once (default 5, quick 2)"
    )
    ap.add_argument("--seconds", type=float, help="seconds per run (default 2, quick 1.5)")
    ap.add_argument("--servers", type=int, default=2, help="server processes (default 2)")
    ap.add_argument("--max-conns", type=int, default=200_000, help="cap per run")
    ap.add_argument(
        "--idle-seconds",
        type=float,
        default=10.0,
        help="per level, measure the agent's CPU with no traffic for this long (its resync runs every 10 s)",
    )
    ap.add_argument("--chunk", type=int, default=10_000, help="Services per `tendril apply` (default: all)")
    ap.add_argument("--iptables", choices=["auto", "nft", "legacy"], default="auto", help="iptables backend")
    ap.add_argument(
        "--monitor-aggregation",
        choices=["medium", "none", "all"],
        default="medium",
        help="the lab's trace events (default medium, the agent's default)",
    )
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("needs root (network namespaces, eBPF, iptables)", file=sys.stderr)
        return 2
    backend = pick_backend(args.iptables) if shutil.which("iptables") else ""
    if not backend or not shutil.which(f"iptables-{backend}-restore"):
        print("iptables is not installed (apt-get install -y iptables)", file=sys.stderr)
        return 2
    levels = [int(x) for x in (args.levels or ("1,1000" if args.quick else "1,1000,10000")).split(",")]
    if levels != sorted(levels) or levels[0] < 1:
        print("--levels must be increasing and >= 1", file=sys.stderr)
        return 2
    rounds = args.rounds or (2 if args.quick else 5)
    seconds = args.seconds or (1.5 if args.quick else 2.0)
    t_start = time.monotonic()
    print(
        f"connect() to a ClusterIP at {', '.join(f'{n:,}' for n in levels)} services: {rounds} rounds x "
        f"{len(ARMS)} arms x {seconds:g} s per level; iptables {backend}; "
        f"monitor aggregation {args.monitor_aggregation}; {args.servers} server processes; "
        f"{os.cpu_count()} CPUs, load average {loadavg()}",
        flush=True,
    )
    lab = lab_up(args.monitor_aggregation)
    net = IptablesNet(lab.name, backend)
    servers: list[subprocess.Popen] = []
    # results[level][arm] = list of runs
    results: dict[int, dict[str, list[dict]]] = {}
    setup_log: list[str] = []
    checks: list[str] = []
    try:
        print(f"lab {lab.name} (underlay {lab.underlay}) up; applying pods and bench/target", flush=True)
        lab.setup()
        net.setup()
        server_pod, client_pod = lab.pods["server"], lab.pods["client"]
        servers.append(start_server(server_pod["netns"], server_pod["cgroup"], args.servers))
        servers.append(start_server(net.srv, None, args.servers))
        targets = {  # arm -> (netns, cgroup, address, port)
            LAB_DIRECT: (client_pod["netns"], client_pod["cgroup"], server_pod["podIP"], PORT),
            TENDRIL_VIP: (client_pod["netns"], client_pod["cgroup"], lab.vip, SVC_PORT),
            NET_DIRECT: (net.cli, None, net.SERVER_BARE, PORT),
            IPT_VIP: (net.cli, None, net.VIP, SVC_PORT),
            KP_DIRECT: (net.cli, None, net.SERVER_KP, PORT),
        }
        print(
            f"lab: client {client_pod['podIP']} -> server {server_pod['podIP']}:{PORT}, target VIP "
            f"{lab.vip}:{SVC_PORT}; iptables netns {net.cli} -> {net.kp} (VIP {net.VIP}) / {net.bare} -> "
            f"{net.srv}",
            flush=True,
        )
        hdr = f"{'level':>6} {'round':>5}  {'arm':<28}{'p50 µs':>8}{'p99 µs':>8}{'conn/s':>8}"
        hdr += f"{'errs':>6}{'agent':>7}"
        for level in levels:
            before = lab.services
            times, timeouts = lab.grow(level, args.chunk)
            if times:
                setup_log.append(
                    f"tendril: {before:,} -> {level:,} Services with {len(times)} `tendril apply -f -` "
                    f"call(s) in {sum(times):.1f} s (each: {', '.join(f'{x:.1f}' for x in times)} s)"
                    + (f"; {timeouts} timed out in the CLI (the agent finished them)" if timeouts else "")
                )
            ipt_s, ipt_rules = net.load(level)
            kube_services = net.service_rules()
            lb = lab.lb_entries()
            setup_log.append(
                f"iptables-restore ({backend}) of {level:,} services, {ipt_rules:,} rules: {ipt_s:.1f} s "
                f"(KUBE-SERVICES service rules: {kube_services:,}); tnd_lb_services entries: {lb:,}"
            )
            print(f"\n{setup_log[-2] if times else ''}\n{setup_log[-1]}".lstrip("\n"), flush=True)
            if args.idle_seconds > 0:  # the agent with no traffic: its periodic resync of every Service
                a0 = cpu_seconds(lab.agent_pid)
                time.sleep(args.idle_seconds)
                idle = 100 * (cpu_seconds(lab.agent_pid) - a0) / args.idle_seconds
                setup_log.append(
                    f"tendril agent CPU with no traffic at {level:,} services: {idle:.1f}% of a CPU "
                    f"(over {args.idle_seconds:g} s)"
                )
                print(setup_log[-1], flush=True)
            # warm-up (and check every path answers)
            for arm, (ns, cg, ip, port) in targets.items():
                warm = client_run(ns, cg, ip, port, 0.2, 2000)
                if warm["n"] == 0 or warm["err"]:
                    raise RuntimeError(
                        f"{arm} at {level} services: {warm['err']} errors ({warm['last_error']})"
                    )
            hits0 = net.dnat_hits()
            print(hdr, flush=True)
            results[level] = {a: [] for a in ARMS}
            ipt_conns = 0
            for rnd in range(rounds):
                order = ARMS[rnd % len(ARMS) :] + ARMS[: rnd % len(ARMS)]
                for arm in order:
                    ns, cg, ip, port = targets[arm]
                    a0, e0 = cpu_seconds(lab.agent_pid), lab.events_read()
                    r = client_run(ns, cg, ip, port, seconds, args.max_conns)
                    r["agent_cpu"] = cpu_seconds(lab.agent_pid) - a0
                    r["events"] = lab.events_read() - e0
                    lat = sorted(r.pop("lat"))
                    r["lat"] = lat
                    r["rate"] = r["n"] / r["elapsed"] if r["elapsed"] > 0 else 0.0
                    if arm == IPT_VIP:
                        ipt_conns += r["n"] + r["err"]
                    results[level][arm].append(r)
                    print(
                        f"{level:>6} {rnd + 1:>5}  {arm:<28}{percentile(lat, 0.5) / 1e3:8.1f}"
                        f"{percentile(lat, 0.99) / 1e3:8.1f}{r['rate']:8.0f}{r['err']:6d}"
                        f"{100 * r['agent_cpu'] / r['elapsed']:6.0f}%",
                        flush=True,
                    )
            hits = net.dnat_hits() - hits0
            checks.append(
                f"{level:,} services: DNAT hits on the target's KUBE-SEP {hits:,} for {ipt_conns:,} "
                "connections to the iptables VIP"
            )
    finally:
        for s in servers:
            stop_server(s)
        net.cleanup()
        subprocess.run([TENDRIL, "lab", "down", "--name", lab.name], capture_output=True, timeout=300)

    # ---- summary ----
    def agg(level: int, arm: str) -> dict[str, float]:
        rs = results[level][arm]
        lat = sorted(x for r in rs for x in r["lat"])
        return {
            "p50": percentile(lat, 0.5) / 1e3,
            "p99": percentile(lat, 0.99) / 1e3,
            "rate": statistics.median(r["rate"] for r in rs),
            "errors": sum(r["err"] for r in rs),
            "slow": sum(x >= 1e9 for x in lat),
            "agent": sum(r["agent_cpu"] for r in rs) / sum(r["elapsed"] for r in rs),
            "events": sum(r["events"] for r in rs) / max(1, sum(r["n"] for r in rs)),
        }

    stats = {lv: {a: agg(lv, a) for a in ARMS} for lv in levels}
    print(
        f"\nsummary: connect() p50/p99 pooled over the {rounds} runs of {seconds:g} s; conn/s the median "
        "run; 'vs direct' against the direct arm of the same path at the same level\n(tendril: pod -> pod; "
        "iptables: the plain router); >=1s = connect() calls of a second or more (a SYN retransmitted);\n"
        "agent = the Tendril agent's CPU during the runs, events/conn = trace events it read per connection"
    )
    print(
        f"  {'arm':<28}{'services':>9}{'p50 µs':>8}{'p99 µs':>8}{'conn/s':>8}{'p50 vs':>8}{'conn/s vs':>10}"
        f"{'errors':>7}{'>=1s':>6}{'agent':>7}{'events':>8}"
    )
    print(
        f"  {'':<28}{'':>9}{'':>8}{'':>8}{'':>8}{'direct':>8}{'direct':>10}{'':>7}{'':>6}{'':>7}{'/conn':>8}"
    )
    rows = (
        [(LAB_DIRECT, lv) for lv in levels]
        + [(TENDRIL_VIP, lv) for lv in levels]
        + [(NET_DIRECT, lv) for lv in levels]
        + [(IPT_VIP, lv) for lv in levels]
        + [(KP_DIRECT, lv) for lv in levels]
    )
    for arm, lv in rows:
        s = stats[lv][arm]
        base = stats[lv][BASELINE.get(arm, arm)]
        print(
            f"  {arm:<28}{lv:>9,}{s['p50']:8.1f}{s['p99']:8.1f}{s['rate']:8.0f}{s['p50'] / base['p50']:8.2f}"
            f"{s['rate'] / base['rate']:10.2f}{s['errors']:7d}{s['slow']:6d}{100 * s['agent']:6.0f}%"
            + (f"{s['events']:8.1f}" if arm in (LAB_DIRECT, TENDRIL_VIP) else "")
        )
    lo, hi = levels[0], levels[-1]
    if hi != lo:
        print(f"\n  growth from {lo:,} to {hi:,} services (value at {hi:,} / value at {lo:,}):")
        for arm in ARMS:
            a, b = stats[lo][arm], stats[hi][arm]
            slope = (b["p50"] - a["p50"]) / (hi - lo) * 1000
            print(
                f"    {arm:<28} p50 x{b['p50'] / a['p50']:.2f} ({slope:+.2f} µs per 1,000 services), "
                f"p99 x{b['p99'] / a['p99']:.2f}, conn/s x{b['rate'] / a['rate']:.2f}"
            )
    print("\n  setup:")
    for line in setup_log:
        print(f"    {line}")
    print("  checks:")
    for line in checks:
        print(f"    {line}")
    print(f"  total time {time.monotonic() - t_start:.0f} s; load average now {loadavg()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
