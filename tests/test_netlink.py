"""Pod networking, netns/sysctl/veth/cgroup helpers, workload runtime and IPAM.

The datapath tests send real packets between real namespaces: a TCP/UDP echo
server runs as a workload inside pod B (started with ``runtime.spawn``, so it
is also in B's cgroup) and a client in pod A checks the echoed payload.
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network, IPv6Address
from pathlib import Path

import pytest

from tendril.datapath import cgroup, netns, podnet, sysctl, veth
from tendril.endpoint.ipam import IPAM, IPAMError, IPAMExhausted
from tendril.lab import runtime
from tendril.lab import topology as T

root_only = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (network namespaces)")

ECHO_SERVER = textwrap.dedent(
    """
    import socket, sys, threading
    port = int(sys.argv[1])
    def tcp():
        s = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
        s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("::", port)); s.listen(16)
        while True:
            c, _ = s.accept()
            with c:
                data = c.recv(1024)
                c.sendall(b"echo:" + data)
    def udp():
        s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
        s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        s.bind(("::", port))
        while True:
            data, peer = s.recvfrom(1024)
            s.sendto(b"echo:" + data, peer)
    threading.Thread(target=udp, daemon=True).start()
    print("ready", flush=True)
    tcp()
    """
)

ECHO_CLIENT = textwrap.dedent(
    """
    import socket, sys, time
    host, port, proto = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    fam = socket.AF_INET6 if ":" in host else socket.AF_INET
    deadline = time.time() + 10
    while True:
        try:
            if proto == "tcp":
                s = socket.socket(fam, socket.SOCK_STREAM); s.settimeout(2)
                s.connect((host, port)); s.sendall(b"hi"); print(s.recv(1024).decode(), s.getsockname()[0])
            else:
                s = socket.socket(fam, socket.SOCK_DGRAM); s.settimeout(1)
                s.sendto(b"hi", (host, port)); data, peer = s.recvfrom(1024)
                print(data.decode(), peer[0])
            break
        except (ConnectionRefusedError, TimeoutError, OSError):
            if time.time() > deadline:
                raise
            time.sleep(0.1)
    """
)

# Reaching the node's router address: a RST (refused) proves the packet was
# delivered to the node's stack and the answer came back.
PROBE_CLIENT = textwrap.dedent(
    """
    import socket, sys
    host = sys.argv[1]
    fam = socket.AF_INET6 if ":" in host else socket.AF_INET
    s = socket.socket(fam, socket.SOCK_STREAM); s.settimeout(3)
    try:
        s.connect((host, 9)); print("open")
    except ConnectionRefusedError:
        print("refused")
    """
)


# --------------------------------------------------------------------------- IPAM (no root needed)


def test_ipam_skips_reserved_and_is_idempotent() -> None:
    ipam = IPAM("10.244.1.0/24", "fd00:10:244:1::/64")
    assert ipam.router_v4 == IPv4Address("10.244.1.1") and ipam.router_v6 == IPv6Address("fd00:10:244:1::1")
    a = ipam.allocate("default/a")
    assert a == (IPv4Address("10.244.1.2"), IPv6Address("fd00:10:244:1::2"))
    assert ipam.allocate("default/a") == a
    b = ipam.allocate("default/b")
    assert b[0] == IPv4Address("10.244.1.3") and b[1] == IPv6Address("fd00:10:244:1::3")
    assert ipam.release("default/a") and not ipam.release("default/a")
    assert ipam.get("default/a") is None


def test_ipam_exhaustion_and_never_hands_out_reserved() -> None:
    ipam = IPAM("10.0.0.0/29", "fd00::/64")  # hosts .1-.6, .1 is the router -> 5 pods
    got = {ipam.allocate(f"p{i}")[0] for i in range(5)}
    assert got == {IPv4Address(f"10.0.0.{i}") for i in range(2, 7)}
    with pytest.raises(IPAMExhausted, match="full"):
        ipam.allocate("p5")
    ipam.release("p2")
    assert ipam.allocate("p5")[0] not in {ipam.get(f"p{i}")[0] for i in (0, 1, 3, 4)}


def test_ipam_roundtrip_and_restore_validation() -> None:
    ipam = IPAM(IPv4Network("10.244.3.0/24"), "fd00:10:244:3::/64")
    for o in ("x/a", "x/b", "x/c"):
        ipam.allocate(o)
    ipam.release("x/b")
    state = json.loads(json.dumps(ipam.to_dict()))
    again = IPAM.from_dict(state)
    assert again.owners() == ipam.owners()
    new = again.allocate("x/d")
    assert new[0] not in {v4 for v4, _ in ipam.owners().values()}
    with pytest.raises(IPAMError, match="already allocated"):
        again.restore({"y/z": ("10.244.3.2", "fd00:10:244:3::2")})
    with pytest.raises(IPAMError, match="not in"):
        again.restore({"y/z": ("10.9.9.9", "fd00:10:244:3::9")})
    with pytest.raises(IPAMError, match="reserved"):
        again.restore({"y/z": ("10.244.3.1", "fd00:10:244:3::1")})
    with pytest.raises(IPAMError, match="different host offsets"):
        again.restore({"y/z": ("10.244.3.50", "fd00:10:244:3::51")})


# --------------------------------------------------------------------------- helpers and fixtures


def _unique(prefix: str = "tt") -> str:
    return prefix + secrets.token_hex(2)


@dataclass
class PodCtx:
    name: str
    net: podnet.PodNetwork
    cgroup: Path


@dataclass
class LabCtx:
    spec: T.LabSpec
    node: T.NodeInfo
    ipam: IPAM
    pods: dict[str, PodCtx]


def _make_pod(lab: LabCtx, pod: str, namespace: str = "default") -> PodCtx:
    v4, v6 = lab.ipam.allocate(f"{namespace}/{pod}")
    net = podnet.create_pod_network(
        lab.node.netns,
        podnet.pod_netns_name(lab.node.name, namespace, pod),
        podnet.host_ifname_for(lab.node.name, namespace, pod),
        v4,
        v6,
        lab.node.router_v4,
    )
    cg = cgroup.create_pod_cgroup(lab.node.name, podnet.pod_key(namespace, pod))
    return PodCtx(pod, net, cg)


@pytest.fixture
def lab() -> Iterator[LabCtx]:
    spec = T.LabSpec(
        name=_unique(), underlay=IPv4Network(f"198.18.{secrets.randbelow(254) + 1}.0/24"), nodes=1
    )
    try:
        node = T.create_lab(spec)[0]
        ctx = LabCtx(spec, node, IPAM(node.pod_cidr_v4, node.pod_cidr_v6), {})
        for p in ("a", "b"):
            ctx.pods[p] = _make_pod(ctx, p)
        yield ctx
    finally:
        T.destroy_lab(spec.name)
        assert T.lab_netns(spec.name) == []
        assert not (cgroup.cgroup2_root() / "tendril" / f"{spec.name}-node1").exists()


def _start_echo(pod: PodCtx, port: int, tmp_path: Path) -> tuple[int, int]:
    pid = runtime.spawn(
        pod.net.pod_netns,
        pod.cgroup,
        [sys.executable, "-c", ECHO_SERVER, str(port)],
        {},
        tmp_path / "echo.log",
    )
    start = runtime.process_start_time(pid)
    assert start is not None
    return pid, start


def _client(pod: PodCtx, host: str, port: int, proto: str) -> str:
    r = netns.run_in_netns(
        pod.net.pod_netns, [sys.executable, "-c", ECHO_CLIENT, host, str(port), proto], check=False
    )
    assert r.returncode == 0, r.stderr
    return r.stdout.strip()


# --------------------------------------------------------------------------- netns / sysctl / veth


@root_only
def test_netns_lifecycle_and_call_in_netns() -> None:
    name = f"tnd-{_unique()}-unit"
    try:
        assert not netns.exists(name)
        netns.create(name)
        netns.create(name)  # idempotent
        assert name in netns.list_netns("tnd-")
        assert netns.inode(name) != netns.inode(None)
        # The callable really runs inside: its own netns inode is the named one.
        ino = netns.call_in_netns(name, lambda: os.stat("/proc/thread-self/ns/net").st_ino)
        assert ino == netns.inode(name)
        assert netns.inode(None) == os.stat("/proc/self/ns/net").st_ino  # caller untouched
        sysctl.set(name, "net.ipv4.ip_forward", 1)
        assert sysctl.get(name, "net.ipv4.ip_forward") == "1"
        r = netns.run_in_netns(name, ["readlink", "/proc/self/ns/net"])
        assert str(netns.inode(name)) in r.stdout
        with netns.iproute(name) as ipr:
            veth.create_veth(ipr, "va", "vb", mtu=1400)
            veth.set_up(ipr, "va")
            info = veth.get_link(ipr, "va")
            assert info is not None and info.mtu == 1400 and info.kind == "veth" and info.up
            assert info.peer_ifindex == veth.ifindex(ipr, "vb")
            assert veth.delete_link(ipr, "va") and not veth.delete_link(ipr, "va")
            assert veth.get_link(ipr, "vb") is None
        with pytest.raises(netns.NetnsError):
            netns.call_in_netns(name + "-missing", lambda: None)
        with pytest.raises(netns.NetnsError), netns.iproute(name + "-missing"):
            pass
        assert not netns.exists(name + "-missing")  # never created by accident
        with pytest.raises(ValueError):
            sysctl.set_many(None, {"net.ipv4.ip_forward": 1})  # type: ignore[arg-type]
    finally:
        netns.delete(name)
        netns.delete(name)  # idempotent
    assert not netns.exists(name)


def test_names() -> None:
    n = podnet.host_ifname_for("tendril-node1", "default", "web")
    assert n.startswith("lxc") and len(n) == 15
    assert n == podnet.host_ifname_for("tendril-node1", "default", "web")
    assert n != podnet.host_ifname_for("tendril-node2", "default", "web")
    assert podnet.pod_key("default", "web") == "default_web"
    long_key = podnet.pod_key("ns", "x" * 100)
    assert len(long_key) <= 48 and long_key != podnet.pod_key("ns", "x" * 99)
    assert "/" not in podnet.pod_key("a/b", "c d")
    assert podnet.pod_netns_name("tt1-node1", "default", "web") == "tnd-tt1-node1-default_web"


# --------------------------------------------------------------------------- pods


@root_only
def test_pods_reach_each_other_v4_v6_tcp_udp(lab: LabCtx, tmp_path: Path) -> None:
    a, b = lab.pods["a"], lab.pods["b"]
    pid, start = _start_echo(b, 8080, tmp_path)
    try:
        for host in (str(b.net.ipv4), str(b.net.ipv6)):
            for proto in ("tcp", "udp"):
                out = _client(a, host, 8080, proto)
                reply, src = out.split()
                assert reply == "echo:hi"
                # The pod's own address is the source: no NAT, routed through the node.
                assert src in (str(a.net.ipv4), str(a.net.ipv6)) if proto == "tcp" else src == host
    finally:
        assert runtime.stop(pid, start, timeout=2)
    assert not runtime.process_alive(pid, start)


@root_only
def test_pod_reaches_node_router_and_has_expected_routes(lab: LabCtx) -> None:
    a = lab.pods["a"]
    for host in (str(lab.node.router_v4), str(lab.node.router_v6)):
        r = netns.run_in_netns(a.net.pod_netns, [sys.executable, "-c", PROBE_CLIENT, host])
        assert r.stdout.strip() in ("refused", "open"), (host, r.stdout, r.stderr)
    v4 = netns.run_in_netns(a.net.pod_netns, ["ip", "-4", "route"]).stdout
    assert f"default via {lab.node.router_v4} dev eth0" in v4
    assert f"{lab.node.router_v4} dev eth0" in v4 and "scope link" in v4
    v6 = netns.run_in_netns(a.net.pod_netns, ["ip", "-6", "route"]).stdout
    assert "default via fe80::1 dev eth0" in v6
    # The router's MAC, as learnt by the pod, is the host-side veth's.
    neigh = netns.run_in_netns(a.net.pod_netns, ["ip", "neigh", "show", str(lab.node.router_v4)]).stdout
    assert a.net.host_mac in neigh
    node_routes = netns.run_in_netns(lab.node.netns, ["ip", "-4", "route"]).stdout
    assert f"{a.net.ipv4} dev {a.net.host_ifname}" in node_routes
    assert "default" not in node_routes
    node_v6 = netns.run_in_netns(lab.node.netns, ["ip", "-6", "route"]).stdout
    assert f"{a.net.ipv6} dev {a.net.host_ifname}" in node_v6
    with netns.iproute(a.net.pod_netns) as ipr:
        addrs = veth.addresses(ipr, "eth0")
        assert (a.net.ipv4, 32) in addrs and (a.net.ipv6, 128) in addrs
    assert sysctl.get(a.net.pod_netns, "net/ipv6/conf/eth0/accept_dad") == "0"


@root_only
def test_create_pod_network_idempotent_and_repairs(lab: LabCtx) -> None:
    a = lab.pods["a"]
    again = _make_pod(lab, "a")
    assert again.net == a.net  # same ifindexes and MACs: converged in place
    # Half-created: the pod side of the veth vanished (deleting it removes the host side too),
    # then a stray host-side veth with the right name but a wrong peer appears.
    with netns.iproute(a.net.pod_netns) as ipr:
        veth.delete_link(ipr, "eth0")
    with netns.iproute(lab.node.netns) as ipr:
        veth.create_veth(ipr, a.net.host_ifname, "strayp")
    repaired = _make_pod(lab, "a").net
    assert repaired.host_ifname == a.net.host_ifname and repaired.ipv4 == a.net.ipv4
    assert podnet.get_pod_network(lab.node.netns, a.net.pod_netns, a.net.host_ifname) is not None
    with netns.iproute(lab.node.netns) as ipr:
        assert veth.get_link(ipr, "strayp") is None
    b = lab.pods["b"]
    r = netns.run_in_netns(a.net.pod_netns, [sys.executable, "-c", PROBE_CLIENT, str(b.net.ipv4)])
    assert r.stdout.strip() in ("refused", "open")
    # Re-addressed pod: stale /32, /128 routes and pod addresses are removed.
    v4, v6 = lab.ipam.allocate("default/a-new")
    moved = podnet.create_pod_network(
        lab.node.netns, a.net.pod_netns, a.net.host_ifname, v4, v6, lab.node.router_v4
    )
    node_routes = netns.run_in_netns(lab.node.netns, ["ip", "-4", "route"]).stdout
    node_v6 = netns.run_in_netns(lab.node.netns, ["ip", "-6", "route"]).stdout
    assert f"{v4} dev {moved.host_ifname}" in node_routes and f"{a.net.ipv4} dev" not in node_routes
    assert f"{v6} dev {moved.host_ifname}" in node_v6 and f"{a.net.ipv6} dev" not in node_v6
    with netns.iproute(a.net.pod_netns) as ipr:
        glob = [x for x in veth.addresses(ipr, "eth0") if not x[0].is_link_local]
    assert sorted(map(str, glob)) == sorted(map(str, [(v4, 32), (v6, 128)]))


@root_only
def test_delete_pod_network_is_idempotent(lab: LabCtx) -> None:
    a = lab.pods["a"]
    podnet.delete_pod_network(lab.node.netns, a.net.pod_netns, a.net.host_ifname)
    podnet.delete_pod_network(lab.node.netns, a.net.pod_netns, a.net.host_ifname)
    assert not netns.exists(a.net.pod_netns)
    node_routes = netns.run_in_netns(lab.node.netns, ["ip", "route"]).stdout
    assert str(a.net.ipv4) not in node_routes
    assert podnet.get_pod_network(lab.node.netns, a.net.pod_netns, a.net.host_ifname) is None


# --------------------------------------------------------------------------- workloads and cgroups


@root_only
def test_spawned_process_is_in_pod_cgroup_and_netns_and_survives_parent(lab: LabCtx, tmp_path: Path) -> None:
    b = lab.pods["b"]
    log = tmp_path / "sleep.log"
    # The parent that spawns the workload exits immediately; the workload must live on.
    parent = textwrap.dedent(
        f"""
        from tendril.lab import runtime
        pid = runtime.spawn({b.net.pod_netns!r}, {str(b.cgroup)!r},
                            ["sh", "-c", "echo started $$; exec sleep 60"], {{"X": "1"}}, {str(log)!r})
        print(pid)
        """
    )
    out = subprocess.run([sys.executable, "-c", parent], capture_output=True, text=True, check=True)
    pid = int(out.stdout.strip())
    start = runtime.process_start_time(pid)
    assert start is not None
    time.sleep(0.2)
    assert runtime.process_alive(pid, start)
    assert not runtime.process_alive(pid, start + 1)  # a different start time = a different process
    cg_line = Path(f"/proc/{pid}/cgroup").read_text()
    rel = "/" + str(b.cgroup.relative_to(cgroup.cgroup2_root()))
    assert f"0::{rel}\n" in cg_line, cg_line
    assert os.stat(f"/proc/{pid}/ns/net").st_ino == netns.inode(b.net.pod_netns)
    assert cgroup.pids(b.cgroup) == [pid]
    assert os.getsid(pid) == pid  # own session: not killed with our terminal / process group
    assert f"started {pid}" in log.read_text()
    assert runtime.stop(pid, start, timeout=2)
    assert not runtime.process_alive(pid)


@root_only
def test_stop_refuses_on_start_time_mismatch(lab: LabCtx, tmp_path: Path) -> None:
    b = lab.pods["b"]
    pid = runtime.spawn(b.net.pod_netns, b.cgroup, ["sleep", "60"], {}, tmp_path / "s.log")
    start = runtime.process_start_time(pid)
    assert start is not None
    assert runtime.stop(pid, start + 12345, timeout=0.2)  # "already gone" as far as that identity goes
    assert runtime.process_alive(pid, start)  # ... and the real process was not signalled
    cgroup.kill_all(b.cgroup)
    assert not runtime.process_alive(pid, start)
    assert cgroup.pids(b.cgroup) == []


@root_only
def test_cgroup_lifecycle() -> None:
    node = f"{_unique()}-node1"
    path = cgroup.create_pod_cgroup(node, "default_x")
    try:
        assert cgroup.create_pod_cgroup(node, "default_x") == path
        assert path.is_dir() and path.parent.name == node and path.parent.parent.name == "tendril"
        proc = subprocess.Popen(["sleep", "60"])
        cgroup.add_pid(path, proc.pid)
        assert cgroup.pids(path) == [proc.pid]
        assert cgroup.pids(path.parent) == [proc.pid]  # includes descendants
        cgroup.kill_all(path)
        assert proc.wait(timeout=5) != 0
        cgroup.remove(path)
        assert not path.exists() and not path.parent.exists()
        cgroup.remove(path)  # idempotent
    finally:
        cgroup.remove(path)
    with pytest.raises(cgroup.CgroupError):
        cgroup.pod_cgroup_path("..", "x")
