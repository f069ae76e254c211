"""tendril.datapath.routes on the real kernel: routes to remote nodes' pod CIDRs, tagged with our
protocol, synced (added, changed, removed) without touching any other route.

Each test gets its own node-like netns ``tnd-rt<random>-node`` with an ``eth0`` (one end of a veth
pair whose other end stays in the same netns) carrying an IPv4 and an IPv6 underlay address, and
removes it afterwards. Native-routing traffic between two real nodes is tested in
tests/test_overlay_bpf.py.
"""

from __future__ import annotations

import os
import secrets
import socket
import subprocess
from collections.abc import Iterator
from ipaddress import IPv4Address, IPv6Address, ip_address, ip_network

import pytest

from tendril.datapath import netns, routes, veth
from tendril.datapath.routes import RTPROT_TENDRIL, RemoteNodeRoutes

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (network namespaces)")

RTPROT_STATIC = 4


class Node:
    def __init__(self) -> None:
        self.name = f"tnd-rt{secrets.token_hex(3)}-node"
        self.x = secrets.randbelow(250) + 1
        self.v4 = IPv4Address(f"198.18.{self.x}.11")
        self.v6 = IPv6Address("fd00:198:18::b")

    def gw4(self, i: int) -> str:
        return f"198.18.{self.x}.{10 + i}"

    def gw6(self, i: int) -> str:
        return f"fd00:198:18::{10 + i:x}"

    def remote(self, i: int, v6: bool = True, gw_offset: int = 0) -> RemoteNodeRoutes:
        return RemoteNodeRoutes(
            f"node{i}",
            self.gw4(i + gw_offset),
            self.gw6(i + gw_offset) if v6 else "",
            f"10.244.{i}.0/24",
            f"fd00:10:244:{i}::/64",
        )

    def routes(self, family: int) -> dict[str, tuple[str | None, int]]:
        """dst -> (gateway, protocol) of every main-table route of a family except kernel/local ones."""
        out = {}
        with netns.iproute(self.name) as ipr:
            for r in ipr.get_routes(family=family):
                if r.get("RTA_TABLE", r["table"]) != 254 or r["proto"] == 2:  # RTPROT_KERNEL
                    continue
                dst = r.get("RTA_DST") or ("::" if family == socket.AF_INET6 else "0.0.0.0")
                out[f"{dst}/{r['dst_len']}"] = (r.get("RTA_GATEWAY"), r["proto"])
        return out

    def ours(self) -> dict[str, str]:
        return {
            dst: gw
            for fam in (socket.AF_INET, socket.AF_INET6)
            for dst, (gw, proto) in self.routes(fam).items()
            if proto == RTPROT_TENDRIL
        }


@pytest.fixture
def node() -> Iterator[Node]:
    n = Node()
    netns.create(n.name)
    try:
        with netns.iproute(n.name) as ipr:
            veth.create_veth(ipr, "eth0", "rtpeer")
            veth.set_up(ipr, "lo")
            veth.set_up(ipr, "rtpeer")
            veth.set_up(ipr, "eth0")
            veth.add_address(ipr, "eth0", n.v4, 24)
            veth.add_address(ipr, "eth0", n.v6, 64, nodad=True)
            # Routes of someone else: a static one per family, and a connected one on rtpeer.
            veth.replace_route(ipr, ip_network("10.99.0.0/16"), "eth0", gateway=ip_address(n.gw4(99)))
            veth.replace_route(ipr, ip_network("fd00:99::/64"), "eth0", gateway=ip_address(n.gw6(99)))
            veth.replace_route(ipr, ip_network("10.98.0.0/16"), "rtpeer")
        yield n
    finally:
        netns.delete(n.name)


def foreign(n: Node) -> dict[str, tuple[str | None, int]]:
    return {
        dst: v
        for fam in (socket.AF_INET, socket.AF_INET6)
        for dst, v in n.routes(fam).items()
        if v[1] != RTPROT_TENDRIL
    }


def test_sync_installs_tagged_routes_via_underlay(node: Node) -> None:
    before = foreign(node)
    assert "10.99.0.0/16" in before and "fd00:99::/64" in before and "10.98.0.0/16" in before
    routes.sync_remote_routes(node.name, [node.remote(2), node.remote(3)])
    assert node.ours() == {
        "10.244.2.0/24": node.gw4(2),
        "10.244.3.0/24": node.gw4(3),
        "fd00:10:244:2::/64": node.gw6(2),
        "fd00:10:244:3::/64": node.gw6(3),
    }
    assert foreign(node) == before
    # what `ip route` shows: via the underlay address, on eth0, with our protocol number
    out = netns.run_in_netns(node.name, ["ip", "-4", "route", "show", "proto", str(RTPROT_TENDRIL)]).stdout
    assert f"10.244.2.0/24 via {node.gw4(2)} dev eth0" in out
    out6 = netns.run_in_netns(node.name, ["ip", "-6", "route", "show", "proto", "0xb7"]).stdout
    assert f"fd00:10:244:3::/64 via {node.gw6(3)} dev eth0" in out6
    # the kernel really uses them
    get = netns.run_in_netns(node.name, ["ip", "route", "get", "10.244.3.7"]).stdout
    assert f"via {node.gw4(3)} dev eth0" in get
    listed = {(str(r.dst), str(r.gateway)) for r in routes.list_remote_routes(node.name)}
    assert ("10.244.2.0/24", node.gw4(2)) in listed and len(listed) == 4


def test_sync_is_idempotent(node: Node) -> None:
    remote = [node.remote(2), node.remote(3)]
    routes.sync_remote_routes(node.name, remote)
    first = node.routes(socket.AF_INET), node.routes(socket.AF_INET6)
    routes.sync_remote_routes(node.name, remote)
    routes.sync_remote_routes(node.name, list(reversed(remote)))
    assert (node.routes(socket.AF_INET), node.routes(socket.AF_INET6)) == first


def test_sync_removes_gone_nodes_and_updates_changed_ones(node: Node) -> None:
    before = foreign(node)
    routes.sync_remote_routes(node.name, [node.remote(2), node.remote(3), node.remote(4)])
    # node3 is gone, node2 moved to another underlay address, node4 lost its IPv6 underlay
    routes.sync_remote_routes(node.name, [node.remote(2, gw_offset=20), node.remote(4, v6=False)])
    assert node.ours() == {
        "10.244.2.0/24": node.gw4(22),
        "fd00:10:244:2::/64": node.gw6(22),
        "10.244.4.0/24": node.gw4(4),
    }
    assert foreign(node) == before
    routes.sync_remote_routes(node.name, [])
    assert node.ours() == {}
    assert foreign(node) == before
    assert routes.flush_remote_routes(node.name) == 0


def test_sync_takes_over_but_never_deletes_foreign_routes(node: Node) -> None:
    # An administrator's route to a CIDR no remote node has is left alone by every sync; flush
    # removes only ours.
    routes.sync_remote_routes(node.name, [node.remote(2)])
    subprocess.run(
        [
            "nsenter",
            f"--net=/run/netns/{node.name}",
            "ip",
            "route",
            "add",
            "10.244.9.0/24",
            "via",
            node.gw4(9),
        ],
        check=True,
    )
    routes.sync_remote_routes(node.name, [node.remote(3)])
    v4 = node.routes(socket.AF_INET)
    assert "10.244.9.0/24" in v4 and v4["10.244.9.0/24"][1] != RTPROT_TENDRIL
    assert "10.244.2.0/24" not in v4 and v4["10.244.3.0/24"] == (node.gw4(3), RTPROT_TENDRIL)
    assert routes.flush_remote_routes(node.name) == 2
    assert node.ours() == {}
    assert "10.244.9.0/24" in node.routes(socket.AF_INET)


def test_bad_input_is_refused_or_skipped(node: Node) -> None:
    with pytest.raises(ValueError, match="not IPv4"):
        routes.sync_remote_routes(node.name, [RemoteNodeRoutes("n", node.gw4(2), "", "fd00:1::/64", None)])
    with pytest.raises(ValueError, match="not IPv6"):
        routes.sync_remote_routes(
            node.name, [RemoteNodeRoutes("n", node.gw4(2), node.gw4(3), None, "fd00:1::/64")]
        )
    # a pod CIDR claimed by two nodes: the first one keeps it
    routes.sync_remote_routes(
        node.name,
        [
            RemoteNodeRoutes("a", node.gw4(2), None, "10.244.2.0/24", None),
            RemoteNodeRoutes("b", node.gw4(3), None, "10.244.2.0/24", None),
        ],
    )
    assert node.ours() == {"10.244.2.0/24": node.gw4(2)}
    with pytest.raises(veth.LinkError):
        routes.sync_remote_routes(node.name, [node.remote(2)], dev="nosuchdev")
