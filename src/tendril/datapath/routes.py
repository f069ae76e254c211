"""Routes to the other nodes' pod CIDRs over the underlay (native routing, Cilium's auto-direct-node-routes).

For every remote node: ``<its pod IPv4 CIDR> via <its underlay IPv4> dev eth0`` and
``<its pod IPv6 CIDR> via <its underlay IPv6> dev eth0`` in the node netns' main table, marked with
our own route protocol number (``RTPROT_TENDRIL``, ``ip route`` shows ``proto 183``), so a sync can
find the routes of nodes that are gone and delete them without ever touching another route.

Native-routing mode: pods' traffic to remote pods goes to the stack (no overlay configured in the
datapath) and follows these routes. VXLAN mode: tnd_from_container redirects pod traffic into the
tunnel before any routing, so these routes only carry what the node itself sends to remote pods.
"""

from __future__ import annotations

import errno
import logging
import socket
from collections.abc import Iterable
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network, ip_address, ip_network

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from tendril.datapath import netns as _netns
from tendril.datapath import veth

log = logging.getLogger(__name__)

RTPROT_TENDRIL = 0xB7  # 183: rtm_protocol of every route this module installs (unassigned upstream)
RT_TABLE_MAIN = 254
ROUTE_DEV = "eth0"  # the node's underlay device (tendril.lab.topology.NODE_UPLINK)

IPNetwork = IPv4Network | IPv6Network
IPAddress = IPv4Address | IPv6Address


class RouteError(RuntimeError):
    """A route could not be installed or removed; the message names it and the netns."""


@dataclass(frozen=True)
class RemoteNodeRoutes:
    """What this node needs to know about another node to route to its pods natively.

    Addresses and CIDRs may be given as strings; None (or "") = that family is not routed.
    """

    name: str
    underlay_ip: IPv4Address | str | None
    underlay_ip6: IPv6Address | str | None
    pod_cidr_v4: IPv4Network | str | None
    pod_cidr_v6: IPv6Network | str | None


@dataclass(frozen=True)
class InstalledRoute:
    dst: IPNetwork
    gateway: IPAddress | None
    oif: int


def desired_routes(remote: Iterable[RemoteNodeRoutes]) -> dict[IPNetwork, IPAddress]:
    """pod CIDR -> gateway for every remote node. A CIDR without a gateway of its family is skipped
    (logged); a CIDR claimed twice keeps its first node (logged)."""
    out: dict[IPNetwork, IPAddress] = {}
    owner: dict[IPNetwork, str] = {}
    for node in remote:
        for cidr, gw, version in (
            (node.pod_cidr_v4, node.underlay_ip, 4),
            (node.pod_cidr_v6, node.underlay_ip6, 6),
        ):
            if not cidr:
                continue
            net = ip_network(cidr, strict=False)
            if net.version != version:
                raise ValueError(f"node {node.name}: pod CIDR {net} is not IPv{version}")
            if not gw:
                log.warning("node %s: no IPv%d underlay address, %s not routed", node.name, version, net)
                continue
            gateway = ip_address(gw)
            if gateway.version != version:
                raise ValueError(f"node {node.name}: underlay address {gateway} is not IPv{version}")
            if net in out and out[net] != gateway:
                log.warning(
                    "pod CIDR %s claimed by %s and %s: keeping %s", net, owner[net], node.name, owner[net]
                )
                continue
            out[net] = gateway
            owner[net] = node.name
    return out


def _installed(ipr: IPRoute) -> list[InstalledRoute]:
    out = []
    for family in (socket.AF_INET, socket.AF_INET6):
        for r in ipr.get_routes(family=family):
            if r["proto"] != RTPROT_TENDRIL or r.get("RTA_TABLE", r["table"]) != RT_TABLE_MAIN:
                continue
            dst, gw = r.get("RTA_DST"), r.get("RTA_GATEWAY")
            net = ip_network(f"{dst or ('::' if family == socket.AF_INET6 else '0.0.0.0')}/{r['dst_len']}")
            out.append(InstalledRoute(net, ip_address(gw) if gw else None, r.get("RTA_OIF") or 0))
    return out


def list_remote_routes(netns: str) -> list[InstalledRoute]:
    """The routes this module installed in ``netns`` (protocol RTPROT_TENDRIL, main table)."""
    with _netns.iproute(netns) as ipr:
        return _installed(ipr)


def _delete(ipr: IPRoute, r: InstalledRoute, netns: str) -> None:
    kwargs: dict[str, object] = {
        "dst": str(r.dst),
        "family": socket.AF_INET6 if r.dst.version == 6 else socket.AF_INET,
        "proto": RTPROT_TENDRIL,  # the kernel then deletes only a route of ours
        "table": RT_TABLE_MAIN,
    }
    if r.gateway is not None:
        kwargs["gateway"] = str(r.gateway)
    try:
        ipr.route("del", **kwargs)
    except NetlinkError as exc:
        if exc.code not in (errno.ESRCH, errno.ENOENT):  # already gone
            raise RouteError(f"netns {netns}: cannot delete route {r.dst} via {r.gateway}: {exc}") from exc


def sync_remote_routes(netns: str, remote: list[RemoteNodeRoutes], *, dev: str = ROUTE_DEV) -> None:
    """Make the routes of protocol RTPROT_TENDRIL in ``netns`` exactly those to ``remote``'s pod CIDRs.

    Idempotent: unchanged routes are left alone, changed ones replaced, those of nodes no longer in
    ``remote`` deleted; routes of any other protocol are never deleted. (A route of another protocol
    to the very same pod CIDR would be replaced by ours.)
    """
    want = desired_routes(remote)
    with _netns.iproute(netns) as ipr:
        oif = veth.ifindex(ipr, dev)
        have = {r.dst: r for r in _installed(ipr)}
        for dst, r in have.items():
            if dst not in want:
                _delete(ipr, r, netns)
        for dst, gw in want.items():
            cur = have.get(dst)
            if cur is not None and cur.gateway == gw and cur.oif == oif:
                continue
            try:
                ipr.route(
                    "replace",
                    dst=str(dst),
                    family=socket.AF_INET6 if dst.version == 6 else socket.AF_INET,
                    gateway=str(gw),
                    oif=oif,
                    proto=RTPROT_TENDRIL,
                    table=RT_TABLE_MAIN,
                )
            except NetlinkError as exc:
                raise RouteError(
                    f"netns {netns}: cannot install route {dst} via {gw} dev {dev}: {exc}"
                ) from exc


def flush_remote_routes(netns: str) -> int:
    """Delete every route of ours in ``netns`` (e.g. when leaving the cluster); returns how many."""
    if not _netns.exists(netns):
        return 0
    with _netns.iproute(netns) as ipr:
        routes = _installed(ipr)
        for r in routes:
            _delete(ipr, r, netns)
    return len(routes)
