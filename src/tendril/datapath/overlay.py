"""The node's VXLAN overlay device, as Cilium's ``cilium_vxlan``.

One device per node netns, ``tnd_vxlan``, in collect-metadata ("external") mode: it has no VNI and
no remote of its own; the datapath gives both per packet (``bpf_skb_set_tunnel_key`` in
tnd_from_container: remote = the destination node's underlay IPv4, VNI = the source pod's security
identity) and reads them back on receive (tnd_from_overlay on its tc ingress). UDP port 8472
(Cilium's), learning off (the datapath decides where packets go, not the FDB), and the same MAC on
every node (``abi.OVERLAY_MAC_ADDR``): the datapath addresses the inner frames to it, so the
receiving device takes them as its own (PACKET_HOST) and the kernel routes them to the pod.

MTU: the device's MTU is the largest inner frame it carries; VXLAN over IPv4 adds 50 bytes
(``VXLAN_OVERHEAD``), so with an underlay MTU of 1500 use 1450 here and for the pods' veths.
Larger inner packets would make the underlay fragment the outer ones.
"""

from __future__ import annotations

import errno

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from tendril.bpf import abi
from tendril.datapath import netns as _netns
from tendril.datapath import sysctl, veth

VXLAN_IFNAME = "tnd_vxlan"
VXLAN_PORT = abi.VXLAN_PORT  # 8472
OVERLAY_MAC = abi.OVERLAY_MAC_ADDR  # "02:74:6e:64:00:01"
VXLAN_OVERHEAD = 50  # outer Ethernet 14 + IPv4 20 + UDP 8 + VXLAN 8


class OverlayError(RuntimeError):
    """The overlay device could not be created or configured."""


def _compatible(ipr: IPRoute, idx: int) -> bool:
    """True when the existing device has what cannot be changed in place: a VXLAN in external mode
    on our port, without learning or a fixed remote."""
    info = ipr.get_links(idx)[0].get("IFLA_LINKINFO")
    if not info or info.get("IFLA_INFO_KIND") != "vxlan":
        return False
    data = info.get("IFLA_INFO_DATA")
    return (
        data is not None
        and bool(data.get("IFLA_VXLAN_COLLECT_METADATA"))
        and data.get("IFLA_VXLAN_PORT") == VXLAN_PORT
        and not data.get("IFLA_VXLAN_LEARNING")
        and not data.get("IFLA_VXLAN_GROUP")
        and not data.get("IFLA_VXLAN_GROUP6")
    )


def ensure_vxlan(netns: str, mtu: int) -> int:
    """Create or converge ``tnd_vxlan`` in ``netns`` and bring it up; returns its ifindex.

    Idempotent: a device that already has the right mode and port is kept (MTU and MAC are set in
    place, so the program attached to it stays), anything else called ``tnd_vxlan`` is replaced.
    """
    if not 68 <= mtu <= 65535:
        raise OverlayError(f"overlay MTU {mtu}: must be 68..65535 (underlay MTU - {VXLAN_OVERHEAD})")
    if not _netns.exists(netns):
        raise OverlayError(f"netns {netns!r} does not exist")
    with _netns.iproute(netns) as ipr:
        link = veth.get_link(ipr, VXLAN_IFNAME)
        if link is not None and not _compatible(ipr, link.ifindex):
            veth.delete_link(ipr, VXLAN_IFNAME)
            link = None
        if link is None:
            try:
                ipr.link(
                    "add",
                    ifname=VXLAN_IFNAME,
                    kind="vxlan",
                    vxlan_collect_metadata=1,
                    vxlan_port=VXLAN_PORT,
                    vxlan_learning=0,
                    address=OVERLAY_MAC,
                    mtu=mtu,
                )
            except NetlinkError as exc:
                if exc.code != errno.EEXIST:
                    raise OverlayError(f"cannot create {VXLAN_IFNAME} in netns {netns!r}: {exc}") from exc
        idx = veth.ifindex(ipr, VXLAN_IFNAME)
        ipr.link("set", index=idx, address=OVERLAY_MAC, mtu=mtu, state="up")
    # Decapsulated packets are routed on to the pods: no reverse-path filter on the device.
    sysctl.set_many(netns, {sysctl.iface_key("ipv4", VXLAN_IFNAME, "rp_filter"): 0})
    return idx


def vxlan_ifindex(netns: str) -> int | None:
    """ifindex of ``tnd_vxlan`` in ``netns``, or None when it does not exist."""
    if not _netns.exists(netns):
        return None
    with _netns.iproute(netns) as ipr:
        link = veth.get_link(ipr, VXLAN_IFNAME)
        return link.ifindex if link is not None else None


def remove_vxlan(netns: str) -> None:
    """Delete ``tnd_vxlan`` from ``netns``; a missing device or netns is fine (idempotent).

    Call ``Datapath.detach_overlay()`` first, so the datapath stops redirecting into it.
    """
    if not _netns.exists(netns):
        return
    with _netns.iproute(netns) as ipr:
        veth.delete_link(ipr, VXLAN_IFNAME)
