"""Node plumbing for the L7 redirect: policy routing and the proxy's transparent listeners.

The datapath assigns a redirected packet to the proxy's socket with bpf_sk_assign at tc ingress of
the pod's veth and marks it TND_MARK_MAGIC_TO_PROXY. The kernel still routes it: without a local
route, a packet to another pod's address would be forwarded (and an skb that already has a socket
is dropped by ip_forward). So marked packets look up a table whose only route is `local default
dev lo` (IPv4 and IPv6), as Cilium's proxy routing does. The listeners need IP_TRANSPARENT to
accept connections to addresses that are not the node's; the accepted socket's getsockname() is
then the original destination. We chose bpf_sk_assign over an iptables/nft TPROXY rule because the
decision already happens in tc (the policy lookup), no netfilter rule has to mirror it, and the
assign also keeps working for established connections through bpf_skc_lookup_tcp (measured on
these kernels, see /work/shared/reference/ebpf-platform.md).
"""

from __future__ import annotations

import socket
import subprocess

from tendril.bpf import abi

IP_TRANSPARENT = getattr(socket, "IP_TRANSPARENT", 19)
IPV6_TRANSPARENT = 75
SO_MARK = getattr(socket, "SO_MARK", 36)
FWMARK = f"{abi.MARK_MAGIC_TO_PROXY:#x}/{abi.MARK_MAGIC_MASK:#x}"
RULE_PRIORITY = 100


def _ip(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", *args], capture_output=True, text=True, check=False)


def ensure_policy_routing() -> None:
    """`ip rule fwmark 0xe6/0xff lookup 2004` + `local default dev lo table 2004`, both families
    (idempotent; run in the node's network namespace, where the agent lives)."""
    table = str(abi.PROXY_ROUTE_TABLE)
    for family in ("-4", "-6"):
        rules = _ip(family, "rule", "show").stdout
        if f"lookup {table}" not in rules:
            r = _ip(family, "rule", "add", "pref", str(RULE_PRIORITY), "fwmark", FWMARK, "lookup", table)
            if r.returncode != 0:
                raise OSError(f"ip {family} rule add fwmark {FWMARK}: {r.stderr.strip()}")
        r = _ip(family, "route", "replace", "local", "default", "dev", "lo", "table", table)
        if r.returncode != 0:
            raise OSError(f"ip {family} route replace local default table {table}: {r.stderr.strip()}")


def wildcard(family: socket.AddressFamily) -> str:
    return "::" if family == socket.AF_INET6 else "0.0.0.0"


def family_of(address: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in address else socket.AF_INET


def transparent_socket(
    family: socket.AddressFamily, kind: socket.SocketKind, addr: tuple[str, int]
) -> socket.socket:
    """A socket bound with IP(V6)_TRANSPARENT (to any address, local or not: the wildcard for the
    listeners, an original destination for answers sent in its name), marked
    TND_MARK_MAGIC_FROM_PROXY so tnd_to_container reports its packets at from-proxy."""
    sock = socket.socket(family, kind)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, SO_MARK, abi.MARK_MAGIC_FROM_PROXY)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.setsockopt(socket.IPPROTO_IPV6, IPV6_TRANSPARENT, 1)
        else:
            sock.setsockopt(socket.SOL_IP, IP_TRANSPARENT, 1)
        sock.bind(addr)
    except BaseException:
        sock.close()
        raise
    return sock


def transparent_listener(family: socket.AddressFamily, port: int) -> socket.socket:
    """A listening TCP socket on the wildcard address that accepts redirected connections."""
    sock = transparent_socket(family, socket.SOCK_STREAM, (wildcard(family), port))
    try:
        sock.listen(1024)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


def upstream_socket(family: socket.AddressFamily) -> socket.socket:
    """A socket for the proxy's connection to the original destination (from the node's address),
    marked like the listener's."""
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, SO_MARK, abi.MARK_MAGIC_FROM_PROXY)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.setblocking(False)
    return sock
