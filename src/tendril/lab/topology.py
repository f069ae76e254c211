"""The lab: N "nodes" (network namespaces) on one underlay bridge.

::

    root netns:  <lab>-br  (bridge, <underlay>.1/24)  -- lets the host reach agents
                   |-- <lab>-n1 ==veth== eth0 (<underlay>.11, <underlay6>::b)  in netns tnd-<lab>-node1
                   |-- <lab>-n2 ==veth== eth0 (<underlay>.12, <underlay6>::c)  in netns tnd-<lab>-node2
    node netns:  lo; eth0; tnd_host ==veth== tnd_net (like cilium_host/cilium_net)
                 tnd_host: 10.244.<i>.1/32, fd00:10:244:<i>::1/128 (the pods' router)
                 ip_forward=1, ipv6 forwarding=1, rp_filter=0, no default route

The lab is sealed: the only root-namespace change is the bridge (and its
connected route) plus the root ends of the veths; nothing is forwarded or
NATed to the host's real interfaces, and root sysctls are never written.
The IPv6 underlay (a ULA /64, node i = ::(10+i)) lives on the nodes' eth0
only: the bridge has no IPv6 address, so the host's routing never sees it.
Everything is named with the lab's prefix so ``destroy_lab`` can find and
remove it even after a crash half-way through ``create_lab``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Interface, IPv4Network, IPv6Address, IPv6Network

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from tendril.datapath import cgroup, sysctl, veth
from tendril.datapath import netns as _netns

# 192.0.2.0/24 is the machines' *real* network (eth0 and the default gateway live
# there), so the lab defaults to a benchmarking range instead (RFC 2544).
DEFAULT_UNDERLAY = IPv4Network("198.18.0.0/24")
# IPv6 underlay between the nodes (native routing of pod IPv6 CIDRs): a ULA, on node eth0s only.
DEFAULT_UNDERLAY6 = IPv6Network("fd00:198:18::/64")
DEFAULT_POD_V4_TEMPLATE = "10.244.{i}.0/24"
DEFAULT_POD_V6_TEMPLATE = "fd00:10:244:{i}::/64"
NETNS_PREFIX = "tnd-"
NODE_UNDERLAY_OFFSET = 10
HOST_IFNAME = "tnd_host"
NET_IFNAME = "tnd_net"
NODE_UPLINK = "eth0"
IFNAMSIZ = 15
_LAB_NAME_RE = re.compile(r"^[a-z][a-z0-9]*$")


class LabError(RuntimeError):
    """Invalid lab specification or a lab operation that failed."""


@dataclass(frozen=True)
class LabSpec:
    """What a lab looks like: its name (prefix of every object), underlay subnet and node count."""

    name: str
    underlay: IPv4Network = DEFAULT_UNDERLAY
    nodes: int = 2
    pod_v4_template: str = DEFAULT_POD_V4_TEMPLATE
    pod_v6_template: str = DEFAULT_POD_V6_TEMPLATE
    mtu: int = 1500
    underlay6: IPv6Network = DEFAULT_UNDERLAY6

    def validate(self) -> None:
        """Raise ``LabError`` naming the field and the fix."""
        if not _LAB_NAME_RE.match(self.name):
            raise LabError(
                f"lab name {self.name!r}: use lowercase letters and digits, starting with a letter"
            )
        if len(bridge_name(self.name)) > IFNAMSIZ:
            raise LabError(
                f"lab name {self.name!r} is too long: bridge name {bridge_name(self.name)!r} exceeds "
                f"{IFNAMSIZ} chars; use at most {IFNAMSIZ - 3} chars"
            )
        if self.nodes < 1:
            raise LabError(f"lab nodes={self.nodes}: need at least 1 node")
        longest = root_veth_name(self.name, self.nodes)
        if len(longest) > IFNAMSIZ:
            raise LabError(
                f"lab name {self.name!r} with {self.nodes} nodes gives veth name {longest!r} "
                f"longer than {IFNAMSIZ} chars; shorten the lab name"
            )
        underlay = IPv4Network(self.underlay)
        if underlay.num_addresses - 2 < NODE_UNDERLAY_OFFSET + self.nodes:
            raise LabError(f"underlay {underlay} too small for {self.nodes} nodes (hosts from .11 up)")
        underlay6 = IPv6Network(self.underlay6)
        if underlay6.num_addresses - 1 < NODE_UNDERLAY_OFFSET + self.nodes:
            raise LabError(f"IPv6 underlay {underlay6} too small for {self.nodes} nodes (hosts from ::b up)")
        if self.nodes > 254 and "{i}" in self.pod_v4_template:
            raise LabError("at most 254 nodes with the default pod CIDR template")


@dataclass(frozen=True)
class NodeInfo:
    """Addressing of one lab node, derivable from (spec, index) alone."""

    name: str
    netns: str
    index: int
    underlay_ip: IPv4Address
    underlay: IPv4Network
    underlay_ip6: IPv6Address
    underlay6: IPv6Network
    pod_cidr_v4: IPv4Network
    pod_cidr_v6: IPv6Network
    router_v4: IPv4Address
    router_v6: IPv6Address
    root_ifname: str = field(default="")


def bridge_name(lab: str) -> str:
    """``<lab>-br`` in the root netns."""
    return f"{lab}-br"


def root_veth_name(lab: str, index: int) -> str:
    """``<lab>-n<i>``: root end of node i's uplink veth."""
    return f"{lab}-n{index}"


def node_name(lab: str, index: int) -> str:
    """``<lab>-node<i>``."""
    return f"{lab}-node{index}"


def node_netns_name(node: str) -> str:
    """``tnd-<node>``."""
    return f"{NETNS_PREFIX}{node}"


def node_info(lab: str | LabSpec, index: int) -> NodeInfo:
    """Addressing for node ``index`` (1-based); a bare lab name uses the default spec values."""
    spec = lab if isinstance(lab, LabSpec) else LabSpec(name=lab, nodes=max(index, 1))
    underlay = IPv4Network(spec.underlay)
    underlay6 = IPv6Network(spec.underlay6)
    v4 = IPv4Network(spec.pod_v4_template.format(i=index))
    v6 = IPv6Network(spec.pod_v6_template.format(i=index))
    name = node_name(spec.name, index)
    return NodeInfo(
        name=name,
        netns=node_netns_name(name),
        index=index,
        underlay_ip=underlay.network_address + NODE_UNDERLAY_OFFSET + index,
        underlay=underlay,
        underlay_ip6=underlay6.network_address + NODE_UNDERLAY_OFFSET + index,
        underlay6=underlay6,
        pod_cidr_v4=v4,
        pod_cidr_v6=v6,
        router_v4=v4.network_address + 1,
        router_v6=v6.network_address + 1,
        root_ifname=root_veth_name(spec.name, index),
    )


def underlay_gateway(spec: LabSpec) -> IPv4Interface:
    """The bridge's address: first host of the underlay."""
    net = IPv4Network(spec.underlay)
    return IPv4Interface(f"{net.network_address + 1}/{net.prefixlen}")


def _check_underlay_free(ipr: IPRoute, spec: LabSpec) -> None:
    """Refuse an underlay that overlaps any root-namespace route not owned by this lab's bridge.

    Putting the lab on the host's real subnet would hijack its gateway.
    """
    underlay = IPv4Network(spec.underlay)
    br = ipr.link_lookup(ifname=bridge_name(spec.name))
    br_idx = br[0] if br else None
    for table in (254, 255):
        for r in ipr.get_routes(family=2, table=table):
            if r.get("RTA_OIF") == br_idx and br_idx is not None:
                continue
            dst = r.get("RTA_DST")
            if dst is None:
                continue  # default route: does not "overlap" a specific subnet
            net = IPv4Network(f"{dst}/{r['dst_len']}", strict=False)
            if net.prefixlen == 0 or net.is_loopback or net.network_address.is_loopback:
                continue
            if net.overlaps(underlay) and net.prefixlen > 0:
                raise LabError(
                    f"underlay {underlay} overlaps existing host route {net} (oif {r.get('RTA_OIF')}); "
                    "pick another subnet, e.g. --underlay 198.18.7.0/24"
                )


def _create_bridge(spec: LabSpec) -> int:
    br = bridge_name(spec.name)
    gw = underlay_gateway(spec)
    with _netns.iproute(None) as ipr:
        _check_underlay_free(ipr, spec)
        if veth.get_link(ipr, br) is None:
            try:
                ipr.link("add", ifname=br, kind="bridge")
            except NetlinkError as exc:
                raise LabError(f"cannot create bridge {br!r}: {exc}") from exc
        idx = veth.set_up(ipr, br)
        veth.add_address(ipr, br, gw.ip, gw.network.prefixlen)
        return idx


def _create_node(spec: LabSpec, info: NodeInfo, br_idx: int) -> None:
    _netns.create(info.netns)
    sysctl.set_many(
        info.netns,
        {
            "net.ipv4.ip_forward": 1,
            "net.ipv6.conf.all.forwarding": 1,
            "net.ipv6.conf.default.forwarding": 1,
            "net.ipv4.conf.all.rp_filter": 0,
            "net.ipv4.conf.default.rp_filter": 0,
            "net.ipv6.conf.default.accept_dad": 0,
            "net.ipv6.conf.all.accept_dad": 0,
        },
    )
    # Uplink: root end on the bridge, node end is eth0.
    with _netns.iproute(None) as root_ipr, _netns.iproute(info.netns) as ipr:
        root_end = veth.get_link(root_ipr, info.root_ifname)
        node_end = veth.get_link(ipr, NODE_UPLINK)
        paired = (
            root_end is not None
            and node_end is not None
            and root_end.peer_ifindex == node_end.ifindex
            and node_end.peer_ifindex == root_end.ifindex
        )
        if not paired:
            veth.delete_link(root_ipr, info.root_ifname)
            veth.delete_link(ipr, NODE_UPLINK)
            veth.create_veth(root_ipr, info.root_ifname, NODE_UPLINK, peer_netns=info.netns, mtu=spec.mtu)
        veth.set_up(root_ipr, info.root_ifname, master=br_idx)

        veth.set_up(ipr, "lo")
        veth.set_up(ipr, NODE_UPLINK)
        veth.add_address(ipr, NODE_UPLINK, info.underlay_ip, info.underlay.prefixlen)
        veth.add_address(ipr, NODE_UPLINK, info.underlay_ip6, info.underlay6.prefixlen, nodad=True)

        # cilium_host / cilium_net equivalent; the router addresses live on tnd_host.
        h, n = veth.get_link(ipr, HOST_IFNAME), veth.get_link(ipr, NET_IFNAME)
        if not (h and n and h.peer_ifindex == n.ifindex and n.peer_ifindex == h.ifindex):
            veth.delete_link(ipr, HOST_IFNAME)
            veth.delete_link(ipr, NET_IFNAME)
            veth.create_veth(ipr, HOST_IFNAME, NET_IFNAME, mtu=spec.mtu)
        veth.set_up(ipr, HOST_IFNAME)
        veth.set_up(ipr, NET_IFNAME)
        veth.add_address(ipr, HOST_IFNAME, info.router_v4, 32)
        veth.add_address(ipr, HOST_IFNAME, info.router_v6, 128, nodad=True)


# "The world": a lab namespace that stands in for the internet, with documentation addresses.
WORLD_CIDR = IPv4Network("203.0.113.0/24")
WORLD_UNDERLAY_OFFSET = 254  # its address on the underlay: <underlay>.254


def world_netns_name(lab: str) -> str:
    return f"{NETNS_PREFIX}{lab}-world"


def world_underlay_ip(spec: LabSpec) -> IPv4Address:
    return IPv4Network(spec.underlay).network_address + WORLD_UNDERLAY_OFFSET


def _create_world(spec: LabSpec, infos: list[NodeInfo], br_idx: int) -> None:
    """The world namespace answers every 203.0.113.0/24 address (they sit on its lo), routes the
    pod CIDRs back to their nodes, and has no other route: it is as sealed as the rest of the lab."""
    ns = world_netns_name(spec.name)
    _netns.create(ns)
    root_if = f"{spec.name}-w"
    wip = world_underlay_ip(spec)
    with _netns.iproute(None) as root_ipr, _netns.iproute(ns) as ipr:
        root_end, world_end = veth.get_link(root_ipr, root_if), veth.get_link(ipr, NODE_UPLINK)
        if not (root_end and world_end and root_end.peer_ifindex == world_end.ifindex):
            veth.delete_link(root_ipr, root_if)
            veth.delete_link(ipr, NODE_UPLINK)
            veth.create_veth(root_ipr, root_if, NODE_UPLINK, peer_netns=ns, mtu=spec.mtu)
        veth.set_up(root_ipr, root_if, master=br_idx)
        veth.set_up(ipr, "lo")
        veth.set_up(ipr, NODE_UPLINK)
        veth.add_address(ipr, NODE_UPLINK, wip, IPv4Network(spec.underlay).prefixlen)
        veth.add_address(ipr, "lo", WORLD_CIDR.network_address + 1, WORLD_CIDR.prefixlen)
        for info in infos:
            veth.replace_route(ipr, info.pod_cidr_v4, gateway=info.underlay_ip)
    for info in infos:
        with _netns.iproute(info.netns) as ipr:
            veth.replace_route(ipr, WORLD_CIDR, gateway=wip)


def create_lab(spec: LabSpec) -> list[NodeInfo]:
    """Build (or converge) the lab; idempotent.  Returns the nodes' addressing."""
    spec.validate()
    br_idx = _create_bridge(spec)
    infos = [node_info(spec, i) for i in range(1, spec.nodes + 1)]
    for info in infos:
        _create_node(spec, info, br_idx)
    _create_world(spec, infos, br_idx)
    return infos


def lab_netns(lab: str) -> list[str]:
    """Every netns belonging to the lab (nodes and pods)."""
    return _netns.list_netns(f"{NETNS_PREFIX}{lab}-")


def destroy_lab(lab: str) -> None:
    """Remove everything the lab owns; idempotent, tolerant of partial state.

    Order: pod/node processes (via their cgroups), then every ``tnd-<lab>-*``
    netns (their interfaces and the node ends of the uplinks die with them),
    then any remaining root-side ``<lab>-n*`` veth and the bridge.
    Errors are collected so one failure does not leave the rest behind.
    """
    if not _LAB_NAME_RE.match(lab):
        raise LabError(f"lab name {lab!r} is invalid")
    errors: list[str] = []
    try:
        tendril_cg = cgroup.cgroup2_root() / cgroup.TENDRIL_DIR
        if tendril_cg.is_dir():
            for node_dir in sorted(tendril_cg.glob(f"{lab}-node*")):
                try:
                    cgroup.remove(node_dir, stop_at=tendril_cg.parent)
                except Exception as exc:  # keep going: the rest must still be removed
                    errors.append(f"cgroup {node_dir}: {exc}")
    except cgroup.CgroupError:
        pass
    for name in lab_netns(lab):
        try:
            _netns.delete(name)
        except Exception as exc:
            errors.append(f"netns {name}: {exc}")
    with _netns.iproute(None) as ipr:
        veth_re = re.compile(rf"^{re.escape(lab)}-(n\d+|w)$")
        for link in ipr.get_links():
            ifname = link.get("IFLA_IFNAME") or ""
            if veth_re.match(ifname) or ifname == bridge_name(lab):
                try:
                    veth.delete_link(ipr, ifname)
                except Exception as exc:
                    errors.append(f"link {ifname}: {exc}")
    if errors:
        raise LabError("destroy_lab left state behind: " + "; ".join(errors))


def lab_exists(lab: str) -> bool:
    """True if any trace of the lab (bridge or netns) is present."""
    if lab_netns(lab):
        return True
    with _netns.iproute(None) as ipr:
        return bool(ipr.link_lookup(ifname=bridge_name(lab)))
