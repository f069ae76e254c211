"""`tendril lab up/down`: the lab's topology plus one agent per node, and the record that ties them.

The lab record (/var/run/tendril/labs/<lab>.json) lists what this lab started (agent pids with their
start times) so `lab down` stops exactly those processes and nothing else.
"""

from __future__ import annotations

import ipaddress
import logging
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tendril.agent.config import ROUTING_MODES, NodeConfig
from tendril.bpf.bpffs import ensure_bpffs, remove_pins
from tendril.cli.client import agent_healthy
from tendril.common import paths
from tendril.common.errors import TendrilError, require_root
from tendril.common.jsonfile import read_json, write_json
from tendril.datapath import netns as netns_mod
from tendril.lab import runtime, topology

log = logging.getLogger(__name__)

Progress = Callable[[str], None]

# What the lab enables by default: the set in Cilium's Helm example, so dashboards have data.
DEFAULT_RELAY_PORT = 4245
DEFAULT_LAB_METRICS = "dns drop tcp flow port-distribution icmp flows-to-world httpV2"


def _tendril_exe() -> str:
    exe = Path(sys.executable).parent / "tendril"
    return str(exe) if exe.exists() else (shutil.which("tendril") or "tendril")


def load_lab(lab: str) -> dict[str, Any] | None:
    return read_json(paths.lab_state_file(lab))


def start_agent(cfg: NodeConfig, wait: float = 30.0) -> dict[str, int]:
    """Start the node's agent inside the node netns (nsenter keeps /sys/fs/bpf visible)."""
    run_dir = paths.node_run_dir(cfg.name)
    run_dir.mkdir(parents=True, exist_ok=True)
    logf = open(run_dir / "agent.log", "ab")  # noqa: SIM115 - handed to the child
    argv = [*netns_mod.nsenter_argv(cfg.netns or "", [_tendril_exe(), "agent", "--node", cfg.name])]
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=logf, stderr=logf, start_new_session=True)
    logf.close()
    start = runtime.process_start_time(proc.pid) or 0
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            tail = (run_dir / "agent.log").read_text(errors="replace").strip().splitlines()[-5:]
            raise TendrilError(f"agent for {cfg.name} exited ({proc.returncode}): " + " | ".join(tail))
        if agent_healthy(cfg.name):
            return {"pid": proc.pid, "start_time": start}
        time.sleep(0.1)
    raise TendrilError(
        f"agent for {cfg.name} did not become ready in {wait:.0f}s (see {run_dir / 'agent.log'})"
    )


def _validate_agent_options(opts: dict[str, Any]) -> None:
    """Reject bad agent options before anything is created (an agent would only fail later)."""
    from tendril.loadbalancer import is_prime

    size = opts.get("bpf_lb_maglev_table_size")
    if size is not None and not is_prime(int(size)):
        raise TendrilError(f"--bpf-lb-maglev-table-size {size}: must be a prime number (e.g. 16381 or 65521)")
    capacity = opts.get("hubble_buffer_capacity")
    if capacity is not None:
        from tendril.hubble.container.ring import RingError, validate_capacity

        try:
            validate_capacity(int(capacity))
        except RingError as e:
            raise TendrilError(str(e)) from None
    spec = opts.get("hubble_metrics")
    if spec:
        from tendril.hubble.metrics import HubbleMetrics

        try:
            HubbleMetrics(spec)
        except ValueError as e:
            raise TendrilError(f"--hubble-metrics: {e}") from None


def lab_up(
    lab: str = "tendril",
    nodes: int = 1,
    underlay: str = str(topology.DEFAULT_UNDERLAY),
    trace_level: str = "medium",
    progress: Progress = lambda s: None,
    hubble: dict[str, Any] | None = None,
    routing: str = "native",
    kvstore: str | None = None,
    relay_port: int = DEFAULT_RELAY_PORT,
    hubble_tls: bool | None = None,
    kvstore_lease_ttl: float = 10.0,
    ui_port: int = 0,
) -> dict[str, Any]:
    """Build (or converge) the lab and start what it runs: etcd when it has several nodes (or the
    given kvstore), one agent per node, TLS certificates between Hubble Relay and the agents, the
    relay on 127.0.0.1:<relay_port> (0: no relay) and Hubble UI on 127.0.0.1:<ui_port> (0: none)."""
    from tendril.cli.agent_cmd import apply_hubble_options
    from tendril.hubble.container.ring import RingError, validate_capacity

    require_root("lab up")
    ensure_bpffs()
    obj = paths.bpf_object_dir() / "lxc.o"
    if not obj.exists():
        raise TendrilError(f"BPF object {obj} is missing: run scripts/setup.sh (it builds bpf/)")
    spec = topology.LabSpec(name=lab, underlay=ipaddress.IPv4Network(underlay), nodes=nodes)
    try:
        spec.validate()
    except topology.LabError as e:
        raise TendrilError(str(e)) from None
    _validate_agent_options(hubble or {})
    if routing not in ROUTING_MODES:
        raise TendrilError(f"--routing {routing!r}: one of {', '.join(ROUTING_MODES)}")
    if kvstore and kvstore not in ("embedded",):
        check_kvstore(kvstore)  # an unreachable etcd is reported before anything is created
    existing = load_lab(lab) or {}
    if existing and existing.get("routing", routing) != routing:
        raise TendrilError(
            f"lab {lab!r} runs with --routing {existing['routing']}: `tendril lab down --name {lab}` first"
        )
    progress(f"creating lab {lab!r}: {nodes} node(s) on underlay {spec.underlay}, {routing} routing")
    try:
        infos = topology.create_lab(spec)
    except topology.LabError as e:
        raise TendrilError(str(e)) from None
    record: dict[str, Any] = {
        "name": lab,
        "underlay": str(spec.underlay),
        "routing": routing,
        "nodes": [],
        "created": time.time(),
    }
    record["created"] = existing.get("created", record["created"])
    record["etcd"] = existing.get("etcd")
    kv_url, record["etcd"] = _lab_kvstore(lab, spec, nodes, kvstore, record["etcd"], progress)
    record["kvstore"] = kv_url
    write_json(paths.lab_state_file(lab), record)
    tls_dir = ""
    if hubble_tls if hubble_tls is not None else nodes > 1:
        from tendril.hubble.tls import ensure_certs, lab_tls_dir

        tls_dir = str(lab_tls_dir(lab))
        progress(f"hubble enable: TLS certificates for {nodes} node(s) in {tls_dir}")
        ensure_certs(Path(tls_dir), lab, [i.name for i in infos], {i.name: str(i.underlay_ip) for i in infos})
    record["hubble_tls_dir"] = tls_dir
    for info in infos:
        cfg = NodeConfig(
            name=info.name,
            netns=info.netns,
            index=info.index,
            pod_cidr_v4=str(info.pod_cidr_v4),
            pod_cidr_v6=str(info.pod_cidr_v6),
            underlay_ip=str(info.underlay_ip),
            mtu=spec.mtu,
            lab=lab,
            trace_level=trace_level,
            underlay_ip6=str(getattr(info, "underlay_ip6", "") or ""),
            cluster=lab,
            routing=routing,
            kvstore=kv_url,
            kvstore_lease_ttl=kvstore_lease_ttl,
            hubble_tls_dir=tls_dir,
        )
        if routing == "vxlan":
            from tendril.datapath.overlay import VXLAN_OVERHEAD

            cfg.mtu = spec.mtu - VXLAN_OVERHEAD  # pods leave room for the outer headers
        apply_hubble_options(cfg, hubble or {})
        try:
            validate_capacity(cfg.hubble_buffer_capacity)
        except RingError as e:
            raise TendrilError(str(e)) from None
        old = next((n for n in existing.get("nodes", []) if n["name"] == info.name), None)
        if (
            old
            and runtime.process_alive(old["agent_pid"], old["agent_start_time"])
            and agent_healthy(info.name)
        ):
            progress(f"node {info.name}: agent already running (pid {old['agent_pid']})")
            agent = {"pid": old["agent_pid"], "start_time": old["agent_start_time"]}
        else:
            cfg.save()
            progress(f"node {info.name}: starting agent ({info.pod_cidr_v4}, {info.pod_cidr_v6})")
            agent = start_agent(cfg)
        record["nodes"].append(
            {
                "name": info.name,
                "netns": info.netns,
                "index": info.index,
                "underlay_ip": str(info.underlay_ip),
                "pod_cidr_v4": str(info.pod_cidr_v4),
                "pod_cidr_v6": str(info.pod_cidr_v6),
                "agent_pid": agent["pid"],
                "agent_start_time": agent["start_time"],
            }
        )
        write_json(paths.lab_state_file(lab), record)
    deploy_cluster_dns(record["nodes"][0]["name"], progress)
    record["relay"] = _lab_relay(lab, record, relay_port, existing.get("relay"), progress)
    write_json(paths.lab_state_file(lab), record)
    if record["relay"] and ui_port:
        record["ui"] = _lab_ui(lab, ui_port, existing.get("ui"), progress)
        write_json(paths.lab_state_file(lab), record)
    return record


def check_kvstore(url: str) -> None:
    """Connect once (from here) so a wrong or dead address fails `lab up` with one clear line."""
    from tendril.kvstore import KvStoreError, open_store

    try:
        open_store(url, connect_timeout=5.0).close(revoke_lease=True)
    except KvStoreError as e:
        raise TendrilError(str(e)) from None


def _lab_kvstore(
    lab: str,
    spec: topology.LabSpec,
    nodes: int,
    kvstore: str | None,
    etcd: dict[str, Any] | None,
    progress: Progress,
) -> tuple[str, dict[str, Any] | None]:
    """The kvstore URL the agents use, starting the lab's own etcd when it needs one.

    The agents live in the node namespaces, where the host's loopback is not theirs: the lab's etcd
    listens on 127.0.0.1 (for tools on the host) and on the lab bridge's address (for the agents),
    which only the host and the lab's namespaces can reach.
    """
    if kvstore and kvstore != "embedded":
        return kvstore, etcd
    if kvstore == "embedded" or nodes == 1:
        return "", etcd
    gateway = str(topology.underlay_gateway(spec).ip)
    etcd = _start_lab_etcd(lab, gateway, etcd, progress)
    return f"etcd://{gateway}:{etcd['client_port']}", etcd


def _start_lab_etcd(
    lab: str, gateway: str, etcd: dict[str, Any] | None, progress: Progress
) -> dict[str, Any]:
    from tendril.kvstore.server import etcd_alive, start_etcd

    if etcd and etcd_alive(etcd):
        progress(f"etcd already running (pid {etcd['pid']})")
        return etcd
    progress("starting etcd (the lab's kvstore)")
    proc = start_etcd(
        f"{lab}-etcd",
        paths.labs_dir() / f"{lab}-etcd",
        client_port=(etcd or {}).get("client_port"),
        peer_port=(etcd or {}).get("peer_port"),
        listen_hosts=[gateway],
    )
    return _etcd_record(proc)


def ensure_lab_etcd(lab: str, progress: Progress = lambda s: None) -> dict[str, Any]:
    """(Re)start the lab's etcd with its data directory and ports (after it died or was stopped)."""
    record = load_lab(lab)
    if not record or not record.get("etcd"):
        raise TendrilError(f"lab {lab!r} has no etcd of its own")
    gateway = str(topology.underlay_gateway(topology.LabSpec(name=lab, underlay=record["underlay"])).ip)
    record["etcd"] = _start_lab_etcd(lab, gateway, record["etcd"], progress)
    write_json(paths.lab_state_file(lab), record)
    return record["etcd"]


def _etcd_record(proc: Any) -> dict[str, Any]:
    d = proc.to_dict()
    d["client_port"] = int(str(d["client_url"]).rsplit(":", 1)[1])
    d["peer_port"] = int(str(d["peer_url"]).rsplit(":", 1)[1])
    return d


def _lab_relay(
    lab: str, record: dict[str, Any], port: int, old: dict[str, Any] | None, progress: Progress
) -> dict[str, Any] | None:
    """Hubble Relay on 127.0.0.1:<port> in the host namespace, reaching every node's Observer over
    the underlay (mTLS when the lab has certificates), found through the nodes' Peer service."""
    argv = [_tendril_exe(), "hubble", "relay", "--listen-address", f"127.0.0.1:{port}", "--cluster", lab]
    for n in record["nodes"]:
        argv += ["--peer-service", f"unix://{paths.hubble_socket(n['name'])}"]
    if record.get("hubble_tls_dir"):
        argv += ["--tls-dir", record["hubble_tls_dir"]]
    return _start_lab_service(lab, "hubble relay", "relay", argv, port, old, progress)


def _lab_ui(lab: str, port: int, old: dict[str, Any] | None, progress: Progress) -> dict[str, Any] | None:
    """Hubble UI on http://127.0.0.1:<port>/, reading from the lab's relay."""
    argv = [_tendril_exe(), "hubble", "ui", "--lab", lab, "--port", str(port)]
    return _start_lab_service(lab, "hubble ui", "ui", argv, port, old, progress)


def _start_lab_service(
    lab: str,
    what: str,
    slug: str,
    argv: list[str],
    port: int,
    old: dict[str, Any] | None,
    progress: Progress,
) -> dict[str, Any] | None:
    """A long-running helper of the lab, detached, logging to labs/<lab>-<slug>.log, listening on
    127.0.0.1:<port> (0: not wanted). A busy port is reported and skipped, not fatal: another lab
    may hold the default port. Returns what `lab down` needs to stop exactly this process."""
    if port == 0:
        return None
    if old and runtime.process_alive(old["pid"], old["start_time"]) and old.get("port") == port:
        progress(f"{what} already running on 127.0.0.1:{port} (pid {old['pid']})")
        return old
    import socket

    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError as e:
            progress(f"{what} not started: 127.0.0.1:{port} is in use ({e.strerror})")
            return None
    log_path = paths.labs_dir() / f"{lab}-{slug}.log"
    with open(log_path, "ab") as logf:
        proc = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=logf, stderr=logf, start_new_session=True
        )
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            tail = log_path.read_text(errors="replace").strip().splitlines()[-3:]
            raise TendrilError(f"{what} exited ({proc.returncode}): " + " | ".join(tail))
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                break
        time.sleep(0.1)
    progress(f"{what} listening on 127.0.0.1:{port} (pid {proc.pid})")
    return {"pid": proc.pid, "start_time": runtime.process_start_time(proc.pid) or 0, "port": port}


CLUSTER_DNS = """
apiVersion: v1
kind: Service
metadata: {{name: kube-dns, namespace: kube-system, labels: {{k8s-app: kube-dns}}}}
spec:
  selector: {{k8s-app: kube-dns}}
  clusterIPs: [10.96.0.10, "fd00:10:96::a"]
  ipFamilyPolicy: RequireDualStack
  ports:
    - {{name: dns, port: 53, protocol: UDP}}
    - {{name: dns-tcp, port: 53, protocol: TCP}}
"""


def deploy_cluster_dns(node: str, progress: Progress) -> None:
    """kube-system/coredns (Tendril's DNS server) behind kube-dns 10.96.0.10, like a cluster's DNS
    add-on; pods created afterwards get a resolv.conf pointing at it."""
    from tendril.cli.client import AgentClient

    records = paths.node_run_dir(node) / "dns-records.json"
    with AgentClient(node) as c:
        c.put("/v1/services", {"text": CLUSTER_DNS.format(), "source": "cluster-dns"})
        pods = {p["name"] for p in c.get("/v1/pods", namespace="kube-system")}
        if "coredns" not in pods:
            progress(f"node {node}: starting cluster DNS (kube-system/coredns, kube-dns 10.96.0.10)")
        argv = ["tendril", "workload", "dns-server", "--port", "53", "--records", str(records)]
        c.put(
            "/v1/pods/kube-system/coredns",
            {
                "labels": {"k8s-app": "kube-dns"},
                "annotations": {},
                "owner": "",
                "containers": [
                    {
                        "name": "coredns",
                        "argv": argv,
                        "env": [],
                        "ports": [
                            {"containerPort": 53, "name": "dns", "protocol": "UDP"},
                            {"containerPort": 53, "name": "dns-tcp", "protocol": "TCP"},
                        ],
                    }
                ],
            },
        )


def lab_down(lab: str = "tendril", progress: Progress = lambda s: None) -> None:
    require_root("lab down")
    record = load_lab(lab) or {"nodes": []}
    names = [n["name"] for n in record["nodes"]]
    for what in ("ui", "relay"):
        svc = record.get(what)
        if svc:
            progress(f"stopping hubble {what} (pid {svc['pid']})")
            runtime.stop(svc["pid"], svc["start_time"], timeout=5.0)
    for n in record["nodes"]:
        progress(f"node {n['name']}: stopping agent (pid {n['agent_pid']})")
        runtime.stop(n["agent_pid"], n["agent_start_time"], timeout=5.0)
    progress(f"removing lab {lab!r}: pods, nodes, bridge, cgroups")
    try:
        topology.destroy_lab(lab)
    except topology.LabError as e:
        raise TendrilError(str(e)) from None
    for node in {*names, *(p.name for p in paths.RUN_ROOT.glob(f"{lab}-node*"))}:
        remove_pins(node)
        shutil.rmtree(paths.node_run_dir(node), ignore_errors=True)
    etcd = record.get("etcd")
    if etcd:
        from tendril.kvstore.server import stop_etcd

        progress(f"stopping etcd (pid {etcd['pid']})")
        stop_etcd(etcd)
    shutil.rmtree(paths.labs_dir() / f"{lab}-etcd", ignore_errors=True)
    shutil.rmtree(paths.labs_dir() / f"{lab}-tls", ignore_errors=True)
    for slug in ("relay", "ui", "etcd"):
        (paths.labs_dir() / f"{lab}-{slug}.log").unlink(missing_ok=True)
    paths.lab_state_file(lab).unlink(missing_ok=True)
