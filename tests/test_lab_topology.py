"""Lab topology on the real kernel: nodes, underlay bridge, sealing, idempotence, teardown.

Needs root.  Every lab gets a random name (``tt`` + 4 hex) and a random
198.18.x.0/24 underlay, and is destroyed in the fixture's teardown even when
the test fails.
"""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
from collections.abc import Iterator
from ipaddress import IPv4Network

import pytest

from tendril.datapath import netns, sysctl, veth
from tendril.lab import topology as T

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (network namespaces)")


def _root_routes(fam: str) -> set[str]:
    r = subprocess.run(
        ["ip", fam, "route", "show", "table", "all"], capture_output=True, text=True, check=True
    )
    return {line.strip() for line in r.stdout.splitlines() if line.strip()}


def _lab_leftovers(name: str) -> list[str]:
    left = [f"netns {n}" for n in T.lab_netns(name)]
    with netns.iproute(None) as ipr:
        for link in ipr.get_links():
            ifname = link.get("IFLA_IFNAME") or ""
            if ifname.startswith(f"{name}-"):
                left.append(f"link {ifname}")
    return left


def _new_spec(nodes: int = 1) -> T.LabSpec:
    name = "tt" + secrets.token_hex(2)
    underlay = IPv4Network(f"198.18.{secrets.randbelow(254) + 1}.0/24")
    return T.LabSpec(name=name, underlay=underlay, nodes=nodes)


@pytest.fixture
def lab_spec() -> Iterator[T.LabSpec]:
    spec = _new_spec(nodes=2)
    try:
        yield spec
    finally:
        T.destroy_lab(spec.name)
        assert _lab_leftovers(spec.name) == []


def test_create_lab_builds_sealed_nodes(lab_spec: T.LabSpec) -> None:
    before_v4, before_v6 = _root_routes("-4"), _root_routes("-6")
    root_fwd = sysctl.get(None, "net.ipv4.ip_forward")
    nodes = T.create_lab(lab_spec)
    assert [n.index for n in nodes] == [1, 2]

    n1 = nodes[0]
    assert n1.name == f"{lab_spec.name}-node1"
    assert n1.netns == f"tnd-{lab_spec.name}-node1"
    assert str(n1.underlay_ip) == str(lab_spec.underlay.network_address + 11)
    assert str(n1.pod_cidr_v4) == "10.244.1.0/24" and str(n1.pod_cidr_v6) == "fd00:10:244:1::/64"
    assert str(n1.router_v4) == "10.244.1.1" and str(n1.router_v6) == "fd00:10:244:1::1"
    assert str(nodes[1].pod_cidr_v4) == "10.244.2.0/24"

    for n in nodes:
        assert netns.exists(n.netns)
        assert sysctl.get(n.netns, "net.ipv4.ip_forward") == "1"
        assert sysctl.get(n.netns, "net.ipv6.conf.all.forwarding") == "1"
        with netns.iproute(n.netns) as ipr:
            assert (n.underlay_ip, 24) in veth.addresses(ipr, "eth0")
            host_addrs = veth.addresses(ipr, T.HOST_IFNAME)
            assert (n.router_v4, 32) in host_addrs and (n.router_v6, 128) in host_addrs
            assert veth.get_link(ipr, T.HOST_IFNAME).up and veth.get_link(ipr, T.NET_IFNAME).up
        for fam in ("-4", "-6"):
            routes = netns.run_in_netns(n.netns, ["ip", fam, "route"]).stdout
            assert "default" not in routes, routes

    # Root namespace: only the bridge's connected route is new for IPv4; any
    # new IPv6 routes are link-local ones on lab devices; forwarding untouched.
    br = T.bridge_name(lab_spec.name)
    gw = lab_spec.underlay.network_address + 1
    v4_added = _root_routes("-4") - before_v4
    assert v4_added == {
        f"{lab_spec.underlay} dev {br} proto kernel scope link src {gw}",
        f"local {gw} dev {br} table local proto kernel scope host src {gw}",
        f"broadcast {lab_spec.underlay.broadcast_address} dev {br} table local proto kernel scope link "
        f"src {gw}",
    }, v4_added
    for r in _root_routes("-6") - before_v6:
        assert f"dev {lab_spec.name}-" in r, r
        assert r.startswith(("fe80::/64", "multicast ff00::/8", "local fe80::")), r
    assert sysctl.get(None, "net.ipv4.ip_forward") == root_fwd


def test_underlay_connectivity(lab_spec: T.LabSpec) -> None:
    nodes = T.create_lab(lab_spec)
    code = (
        "import socket,sys\n"
        "s=socket.socket(); s.settimeout(3)\n"
        "try:\n s.connect((sys.argv[1], 9)); print('open')\n"
        "except ConnectionRefusedError: print('refused')\n"
    )
    gw = str(lab_spec.underlay.network_address + 1)
    for dst in (str(nodes[1].underlay_ip), gw):
        r = netns.run_in_netns(nodes[0].netns, [sys.executable, "-c", code, dst])
        # A RST (refused) or an accept both prove the packet reached the peer's kernel.
        assert r.stdout.strip() in ("refused", "open"), (dst, r.stdout, r.stderr)


def test_create_lab_is_idempotent_and_repairs(lab_spec: T.LabSpec) -> None:
    first = T.create_lab(lab_spec)
    with netns.iproute(first[0].netns) as ipr:
        eth0_before = veth.ifindex(ipr, "eth0")
    second = T.create_lab(lab_spec)
    assert first == second
    with netns.iproute(first[0].netns) as ipr:
        assert veth.ifindex(ipr, "eth0") == eth0_before  # converged in place, no re-creation
        # Break it: remove tnd_net (takes tnd_host) and the underlay address.
        veth.delete_link(ipr, T.NET_IFNAME)
        ipr.addr("del", index=eth0_before, address=str(first[0].underlay_ip), prefixlen=24)
    T.create_lab(lab_spec)
    with netns.iproute(first[0].netns) as ipr:
        assert (first[0].router_v4, 32) in veth.addresses(ipr, T.HOST_IFNAME)
        assert (first[0].underlay_ip, 24) in veth.addresses(ipr, "eth0")


def test_destroy_after_partial_failure() -> None:
    spec = _new_spec(nodes=2)
    try:
        T.create_lab(spec)
        # Simulate a crash half-way: node2's netns gone (uplink gone with it),
        # a stray pod netns and a stray root veth left behind.
        netns.delete(f"tnd-{spec.name}-node2")
        netns.create(f"tnd-{spec.name}-node1-default_ghost")
        with netns.iproute(None) as ipr:
            veth.create_veth(ipr, f"{spec.name}-n9", "ghostpeer")
        assert T.lab_exists(spec.name)
    finally:
        T.destroy_lab(spec.name)
    assert _lab_leftovers(spec.name) == []
    assert not T.lab_exists(spec.name)
    T.destroy_lab(spec.name)  # idempotent


def test_destroy_only_touches_own_lab(lab_spec: T.LabSpec) -> None:
    T.create_lab(lab_spec)
    T.destroy_lab(lab_spec.name + "x")  # a different lab sharing the prefix text
    assert netns.exists(f"tnd-{lab_spec.name}-node1")


def test_spec_validation() -> None:
    with pytest.raises(T.LabError, match="too long"):
        T.LabSpec(name="abcdefghijklm", nodes=1).validate()
    with pytest.raises(T.LabError, match="veth name"):
        T.LabSpec(name="abcdefghijkl", nodes=10).validate()
    with pytest.raises(T.LabError, match="lowercase"):
        T.LabSpec(name="Bad_Name", nodes=1).validate()
    with pytest.raises(T.LabError, match="at least 1"):
        T.LabSpec(name="ok", nodes=0).validate()
    T.LabSpec(name="abcdefghijkl", nodes=9).validate()


def test_refuses_underlay_overlapping_host_network() -> None:
    with netns.iproute(None) as ipr:
        nets = [
            IPv4Network(f"{r.get('RTA_DST')}/{r['dst_len']}", strict=False)
            for r in ipr.get_routes(family=2, table=254)
            if r.get("RTA_DST") and r["dst_len"] >= 8
        ]
    if not nets:
        pytest.skip("host has no specific IPv4 route to collide with")
    net = nets[0]
    spec = T.LabSpec(
        name="tt" + secrets.token_hex(2),
        underlay=IPv4Network(f"{net.network_address}/24", strict=False),
        nodes=1,
    )
    try:
        with pytest.raises(T.LabError, match="overlaps"):
            T.create_lab(spec)
        assert not T.lab_exists(spec.name)
    finally:
        T.destroy_lab(spec.name)


def test_node_info_matches_create(lab_spec: T.LabSpec) -> None:
    nodes = T.create_lab(lab_spec)
    assert T.node_info(lab_spec, 2) == nodes[1]
    assert T.node_info(lab_spec.name, 1).pod_cidr_v4 == nodes[0].pod_cidr_v4
