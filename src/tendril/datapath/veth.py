"""veth pairs, addresses and routes, each end in its own namespace.

Every helper takes an open ``IPRoute`` (see ``netns.iproute``) instead of a
namespace name: opening a netns-bound netlink socket forks a helper process
in pyroute2 0.9, so callers open one per namespace and reuse it.

All "add" helpers are idempotent (existing state is accepted or replaced)
because pod and lab set-up must be safely re-runnable after a crash.
"""

from __future__ import annotations

import errno
import socket
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network, ip_address, ip_network

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

IFA_F_NODAD = 0x02
IFNAMSIZ_MAX = 15
RT_SCOPE_UNIVERSE = 0
RT_SCOPE_LINK = 253
RT_SCOPE_NOWHERE = 255
IFF_UP = 0x1

IPAddress = IPv4Address | IPv6Address
IPNetwork = IPv4Network | IPv6Network


class LinkError(RuntimeError):
    """A link operation failed; the message names the interface and namespace."""


@dataclass(frozen=True)
class LinkInfo:
    """What callers need to know about one interface (as seen in its netns)."""

    ifname: str
    ifindex: int
    mac: str
    mtu: int
    up: bool
    kind: str | None
    # For a veth: ifindex of the peer *in the peer's namespace* (IFLA_LINK).
    peer_ifindex: int | None


def check_ifname(name: str) -> None:
    """Reject names the kernel would refuse, with a message that says why."""
    if not name or len(name) > IFNAMSIZ_MAX or "/" in name or any(c.isspace() for c in name):
        raise LinkError(f"invalid interface name {name!r}: need 1-{IFNAMSIZ_MAX} chars, no '/' or spaces")


def get_link(ipr: IPRoute, ifname: str) -> LinkInfo | None:
    """The interface called ``ifname`` in ``ipr``'s namespace, or ``None``."""
    idx = ipr.link_lookup(ifname=ifname)
    if not idx:
        return None
    msg = ipr.get_links(idx[0])[0]
    linkinfo = msg.get("IFLA_LINKINFO")
    kind = linkinfo.get("IFLA_INFO_KIND") if linkinfo else None
    return LinkInfo(
        ifname=ifname,
        ifindex=msg["index"],
        mac=msg.get("IFLA_ADDRESS") or "",
        mtu=msg.get("IFLA_MTU") or 0,
        up=bool(msg["flags"] & IFF_UP),
        kind=kind,
        peer_ifindex=msg.get("IFLA_LINK"),
    )


def ifindex(ipr: IPRoute, ifname: str) -> int:
    """ifindex of ``ifname``; raises ``LinkError`` if absent."""
    info = get_link(ipr, ifname)
    if info is None:
        raise LinkError(f"interface {ifname!r} not found")
    return info.ifindex


def create_veth(
    ipr: IPRoute,
    ifname: str,
    peer_ifname: str,
    peer_netns: str | None = None,
    mtu: int = 1500,
) -> None:
    """Create veth ``ifname`` in ``ipr``'s netns with its peer born in ``peer_netns``.

    The peer is created directly in its target namespace (IFLA_NET_NS_FD in
    the peer info) rather than created here and moved: the usual peer name is
    ``eth0``, which already exists in node namespaces and in the root one.
    """
    check_ifname(ifname)
    check_ifname(peer_ifname)
    peer: dict[str, object] = {"ifname": peer_ifname, "mtu": mtu}
    if peer_netns is not None:
        peer["net_ns_fd"] = peer_netns
    try:
        ipr.link("add", ifname=ifname, kind="veth", mtu=mtu, peer=peer)
    except NetlinkError as exc:
        raise LinkError(
            f"cannot create veth {ifname!r} (peer {peer_ifname!r} in netns {peer_netns!r}): {exc}"
        ) from exc


def set_up(ipr: IPRoute, ifname: str, mtu: int | None = None, master: int | None = None) -> int:
    """Bring ``ifname`` up (optionally setting MTU / bridge master); return its ifindex."""
    idx = ifindex(ipr, ifname)
    kwargs: dict[str, object] = {"state": "up"}
    if mtu is not None:
        kwargs["mtu"] = mtu
    if master is not None:
        kwargs["master"] = master
    ipr.link("set", index=idx, **kwargs)
    return idx


def delete_link(ipr: IPRoute, ifname: str) -> bool:
    """Delete ``ifname`` if present (a veth takes its peer with it). True if deleted."""
    idx = ipr.link_lookup(ifname=ifname)
    if not idx:
        return False
    try:
        ipr.link("del", index=idx[0])
    except NetlinkError as exc:
        if exc.code != errno.ENODEV:
            raise
        return False
    return True


def add_address(ipr: IPRoute, ifname: str, address: IPAddress, prefixlen: int, nodad: bool = True) -> None:
    """Add ``address/prefixlen`` to ``ifname``; an existing identical address is fine.

    ``nodad`` sets IFA_F_NODAD so IPv6 addresses are usable at once instead
    of sitting "tentative" for a second or two (pods start talking immediately).
    """
    idx = ifindex(ipr, ifname)
    flags = IFA_F_NODAD if (nodad and address.version == 6) else 0
    try:
        ipr.addr("add", index=idx, address=str(address), prefixlen=prefixlen, flags=flags)
    except NetlinkError as exc:
        if exc.code != errno.EEXIST:
            raise LinkError(f"cannot add {address}/{prefixlen} to {ifname!r}: {exc}") from exc


def addresses(ipr: IPRoute, ifname: str) -> list[tuple[IPAddress, int]]:
    """(address, prefixlen) pairs configured on ``ifname``."""
    idx = ifindex(ipr, ifname)
    out: list[tuple[IPAddress, int]] = []
    for msg in ipr.get_addr(index=idx):
        addr = msg.get("IFA_ADDRESS")
        if addr:
            out.append((ip_address(addr.split("%")[0]), msg["prefixlen"]))
    return out


def replace_route(
    ipr: IPRoute,
    dst: IPNetwork | str,
    ifname: str | None = None,
    gateway: IPAddress | None = None,
    scope: int | None = None,
) -> None:
    """Install (or overwrite) a route in the main table of ``ipr``'s netns.

    ``replace`` rather than ``add`` so that re-running set-up converges
    instead of failing on EEXIST.
    """
    net = ip_network(dst) if isinstance(dst, str) else dst
    family = socket.AF_INET6 if net.version == 6 else socket.AF_INET
    kwargs: dict[str, object] = {"dst": str(net), "family": family}
    if ifname is not None:
        kwargs["oif"] = ifindex(ipr, ifname)
    if gateway is not None:
        kwargs["gateway"] = str(gateway)
    if scope is not None:
        kwargs["scope"] = scope
    elif gateway is None and ifname is not None:
        kwargs["scope"] = RT_SCOPE_LINK if net.version == 4 else RT_SCOPE_UNIVERSE
    try:
        ipr.route("replace", **kwargs)
    except NetlinkError as exc:
        raise LinkError(f"cannot install route {net} dev {ifname} via {gateway}: {exc}") from exc


def delete_route(ipr: IPRoute, dst: IPNetwork | str) -> None:
    """Delete a route in the main table; absent routes are ignored.

    pyroute2 sends scope 0 (universe) unless told otherwise, and the kernel
    then only matches universe-scope routes: a ``scope link`` route would be
    reported as missing (ESRCH).  RT_SCOPE_NOWHERE is the wildcard that
    ``ip route del`` uses.
    """
    net = ip_network(dst) if isinstance(dst, str) else dst
    family = socket.AF_INET6 if net.version == 6 else socket.AF_INET
    try:
        ipr.route("del", dst=str(net), family=family, scope=RT_SCOPE_NOWHERE)
    except NetlinkError as exc:
        if exc.code not in (errno.ESRCH, errno.ENOENT):
            raise
