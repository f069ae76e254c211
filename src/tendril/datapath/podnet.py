"""The pod's network plumbing (what a CNI plugin does), Cilium-style.

Layout for one pod on one node::

    pod netns  tnd-<node>-<podkey>          node netns  tnd-<node>
      eth0  <ipv4>/32, <ipv6>/128   <== veth ==>  lxc<hash>  fe80::1/64
        <router_v4> dev eth0 scope link          routes: <ipv4>/32 dev lxc<hash>
        default via <router_v4> dev eth0                 <ipv6>/128 dev lxc<hash>
        default via fe80::1 dev eth0 (v6)        tnd_host holds <router_v4>/32, <router_v6>/128

As in Cilium, the pod sees a /32 (and /128) so *all* its traffic goes to the
node through the veth, where routing (and later the BPF programs attached
to ``lxc*``) decides.  IPv4 ARP for the router is answered by the node
kernel with the lxc's MAC because the router address is local to the node
netns (it lives on tnd_host) and arp_ignore=0 (the netns default) answers
for any local address on any interface -- verified, so proxy_arp stays off
(it would also make the node answer for other pods' addresses).  IPv6 uses
the link-local gateway fe80::1 present on every host veth (like Cilium's
per-endpoint router MAC).
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network

from pyroute2 import IPRoute

from tendril.datapath import netns as _netns
from tendril.datapath import sysctl, veth
from tendril.datapath.veth import RT_SCOPE_LINK, RT_SCOPE_UNIVERSE

POD_IFNAME = "eth0"
HOST_LINK_LOCAL_V6 = IPv6Address("fe80::1")
NETNS_PREFIX = "tnd-"
_PODKEY_MAX = 48


@dataclass(frozen=True)
class PodNetwork:
    """The result of setting up a pod's interface: what the datapath needs to attach and route."""

    node_netns: str
    pod_netns: str
    host_ifname: str
    host_ifindex: int
    host_mac: str
    pod_ifname: str
    pod_ifindex: int
    pod_mac: str
    ipv4: IPv4Address
    ipv6: IPv6Address
    router_v4: IPv4Address
    router_v6_link_local: IPv6Address
    mtu: int


def host_ifname_for(node: str, namespace: str, pod: str) -> str:
    """Stable host-side veth name: ``lxc`` + 12 hex chars of sha256(node/namespace/pod) (15 chars)."""
    digest = hashlib.sha256(f"{node}/{namespace}/{pod}".encode()).hexdigest()
    return "lxc" + digest[:12]


def pod_key(namespace: str, pod: str) -> str:
    """Filesystem/netns-safe key for a pod: ``<namespace>_<pod>``.

    Kubernetes names never contain ``_``, so the key is unambiguous.  Other
    characters outside ``[A-Za-z0-9.-]`` become ``-``; over-long keys are
    cut and suffixed with a hash so they stay unique.
    """
    raw = f"{namespace}_{pod}"
    key = re.sub(r"[^A-Za-z0-9._-]", "-", raw)
    if len(key) > _PODKEY_MAX or key != raw:
        digest = hashlib.sha256(raw.encode()).hexdigest()[:8]
        key = key[: _PODKEY_MAX - 9] + "-" + digest
    return key


def pod_netns_name(node: str, namespace: str, pod: str) -> str:
    """``tnd-<node>-<podkey>``: lab teardown removes every netns under ``tnd-<lab>-``."""
    return f"{NETNS_PREFIX}{node}-{pod_key(namespace, pod)}"


def _is_pair(host: veth.LinkInfo | None, pod: veth.LinkInfo | None) -> bool:
    """True when the two links exist and are each other's veth peer."""
    return (
        host is not None
        and pod is not None
        and host.kind == "veth"
        and pod.kind == "veth"
        and host.peer_ifindex == pod.ifindex
        and pod.peer_ifindex == host.ifindex
    )


def _configure_pod_side(
    ipr: IPRoute, ipv4: IPv4Address, ipv6: IPv6Address, router_v4: IPv4Address, mtu: int
) -> None:
    veth.set_up(ipr, "lo")
    veth.set_up(ipr, POD_IFNAME, mtu=mtu)
    # Drop addresses a previous incarnation of this pod may have left.
    for addr, plen in veth.addresses(ipr, POD_IFNAME):
        keep = (addr == ipv4 and plen == 32) or (addr == ipv6 and plen == 128) or addr.is_link_local
        if not keep:
            idx = veth.ifindex(ipr, POD_IFNAME)
            ipr.addr("del", index=idx, address=str(addr), prefixlen=plen)
    veth.add_address(ipr, POD_IFNAME, ipv4, 32)
    veth.add_address(ipr, POD_IFNAME, ipv6, 128, nodad=True)
    veth.replace_route(ipr, IPv4Network(f"{router_v4}/32"), POD_IFNAME, scope=RT_SCOPE_LINK)
    veth.replace_route(ipr, IPv4Network("0.0.0.0/0"), POD_IFNAME, gateway=router_v4, scope=RT_SCOPE_UNIVERSE)
    veth.replace_route(ipr, IPv6Network("::/0"), POD_IFNAME, gateway=HOST_LINK_LOCAL_V6)


def _configure_host_side(
    ipr: IPRoute, host_ifname: str, ipv4: IPv4Address, ipv6: IPv6Address, mtu: int
) -> None:
    veth.set_up(ipr, host_ifname, mtu=mtu)
    veth.add_address(ipr, host_ifname, HOST_LINK_LOCAL_V6, 64, nodad=True)
    idx = veth.ifindex(ipr, host_ifname)
    want = {IPv4Network(f"{ipv4}/32"), IPv6Network(f"{ipv6}/128")}
    # Remove stale /32 or /128 routes through this veth (pod re-addressed).
    for family in (2, 10):
        for r in ipr.get_routes(family=family, oif=idx):
            dst = r.get("RTA_DST")
            if dst is None or r["dst_len"] not in (32, 128) or r.get("RTA_TABLE") != 254:
                continue
            net = IPv4Network(f"{dst}/32") if family == 2 else IPv6Network(f"{dst}/128")
            if net not in want and not net.network_address.is_link_local:
                veth.delete_route(ipr, net)
    for net in want:
        veth.replace_route(ipr, net, host_ifname)


def create_pod_network(
    node_netns: str,
    pod_netns: str,
    host_ifname: str,
    ipv4: IPv4Address,
    ipv6: IPv6Address,
    router_v4: IPv4Address,
    mtu: int = 1500,
) -> PodNetwork:
    """Create (or converge) the pod netns, its veth and addressing; idempotent.

    If the pair already exists it is re-configured in place (no link flap,
    so attached BPF programs survive); a half-created state (only one end,
    or ends that are not peers) is torn down and rebuilt.
    """
    ipv4, ipv6, router_v4 = IPv4Address(ipv4), IPv6Address(ipv6), IPv4Address(router_v4)
    veth.check_ifname(host_ifname)
    if not _netns.exists(node_netns):
        raise _netns.NetnsError(f"node netns {node_netns!r} does not exist; create the lab first")
    _netns.create(pod_netns)
    # DAD off by default in the pod netns so eth0 (created below) inherits it.
    # ping_group_range: unprivileged ICMP echo sockets, as container runtimes enable in every pod.
    sysctl.set_many(
        pod_netns,
        {
            "net.ipv6.conf.default.accept_dad": 0,
            "net.ipv6.conf.all.accept_dad": 0,
            "net.ipv4.ping_group_range": "0 2147483647",
        },
    )

    with _netns.iproute(node_netns) as node_ipr, _netns.iproute(pod_netns) as pod_ipr:
        host = veth.get_link(node_ipr, host_ifname)
        pod = veth.get_link(pod_ipr, POD_IFNAME)
        if not _is_pair(host, pod):
            veth.delete_link(node_ipr, host_ifname)
            veth.delete_link(pod_ipr, POD_IFNAME)
            veth.create_veth(node_ipr, host_ifname, POD_IFNAME, peer_netns=pod_netns, mtu=mtu)

        sysctl.set_many(
            node_netns,
            {
                sysctl.iface_key("ipv6", host_ifname, "accept_dad"): 0,
                sysctl.iface_key("ipv4", host_ifname, "rp_filter"): 0,
                sysctl.iface_key("ipv4", host_ifname, "arp_ignore"): 0,
                sysctl.iface_key("ipv4", host_ifname, "forwarding"): 1,
            },
        )
        sysctl.set_many(pod_netns, {sysctl.iface_key("ipv6", POD_IFNAME, "accept_dad"): 0})

        _configure_host_side(node_ipr, host_ifname, ipv4, ipv6, mtu)
        _configure_pod_side(pod_ipr, ipv4, ipv6, router_v4, mtu)

        host = veth.get_link(node_ipr, host_ifname)
        pod = veth.get_link(pod_ipr, POD_IFNAME)
        assert host is not None and pod is not None
        return PodNetwork(
            node_netns=node_netns,
            pod_netns=pod_netns,
            host_ifname=host_ifname,
            host_ifindex=host.ifindex,
            host_mac=host.mac,
            pod_ifname=POD_IFNAME,
            pod_ifindex=pod.ifindex,
            pod_mac=pod.mac,
            ipv4=ipv4,
            ipv6=ipv6,
            router_v4=router_v4,
            router_v6_link_local=HOST_LINK_LOCAL_V6,
            mtu=mtu,
        )


def get_pod_network(
    node_netns: str, pod_netns: str, host_ifname: str
) -> tuple[veth.LinkInfo, veth.LinkInfo] | None:
    """(host link, pod link) if the pod's veth pair is intact, else None."""
    if not (_netns.exists(node_netns) and _netns.exists(pod_netns)):
        return None
    with _netns.iproute(node_netns) as node_ipr, _netns.iproute(pod_netns) as pod_ipr:
        host = veth.get_link(node_ipr, host_ifname)
        pod = veth.get_link(pod_ipr, POD_IFNAME)
    if host is None or pod is None or not _is_pair(host, pod):
        return None
    return host, pod


def delete_pod_network(node_netns: str, pod_netns: str, host_ifname: str, delete_netns: bool = True) -> None:
    """Remove the pod's veth (its /32 and /128 routes go with it) and, by default, its netns.

    Idempotent and tolerant of partial state: any missing piece is skipped.
    """
    if _netns.exists(node_netns):
        with _netns.iproute(node_netns) as node_ipr:
            veth.delete_link(node_ipr, host_ifname)
    if delete_netns:
        _netns.delete(pod_netns)
    elif _netns.exists(pod_netns):
        with _netns.iproute(pod_netns) as pod_ipr:
            veth.delete_link(pod_ipr, POD_IFNAME)
