"""Service load balancing in the C datapath: bpf/sock.c, bpf/include/lb.h and the NodePort reverse NAT
in bpf/lxc.c, on the real kernel. No mocks.

Every test loads build/bpf/lxc.o and build/bpf/sock.o into one scratch pin root
/sys/fs/bpf/tndlb-<random>/ (the two objects share every map by name, as on a node) and removes it
afterwards.

Socket LB: the cgroup programs are attached as links to a fresh cgroup v2
/sys/fs/cgroup/unified/tndlb-<random>/; client processes placed in that cgroup (before they exec)
connect to service addresses nothing listens on, and the backends are sockets of this test process
on loopback addresses (outside the cgroup, so untouched by the hooks).

Packet LB (NodePort): BPF_PROG_TEST_RUN of tnd_from_netdev and tnd_from_container on hand-built
packets whose checksums are valid going in and are verified coming out; then real traffic through
three network namespaces (client, node, pod).
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import secrets
import shutil
import socket
import struct
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from tendril.bpf import (
    BpfObject,
    Map,
    RingBufferReader,
    TypedMap,
    abi,
    attach_cgroup,
    attach_tc,
    create_map,
    test_run,
)
from tendril.bpf import libbpf as lb
from tendril.bpf.bpffs import ensure_bpffs
from tendril.datapath import netns

ROOT = Path(__file__).resolve().parents[1]
LXC_OBJ = ROOT / "build" / "bpf" / "lxc.o"
SOCK_OBJ = ROOT / "build" / "bpf" / "sock.o"
CGROUP2 = Path("/sys/fs/cgroup/unified")

TC_ACT_OK = 0
TC_ACT_SHOT = 2
TC_ACT_REDIRECT = 7
IFINDEX = 1  # BPF_PROG_TEST_RUN: the loopback device
EP_ID = 321
TCP, UDP = 6, 17
SYN, ACK = int(abi.TcpFlags.SYN), int(abi.TcpFlags.ACK)
SO_COOKIE = 57
SO_NETNS_COOKIE = 71
ET = abi.EventType
XL = abi.SockXlatePoint
SVC = abi.ServiceFlags
NAT = abi.LbNatDir

VIP4, VIP6 = "10.96.0.10", "fd00:10:96::a"
NODE4, NODE6 = "192.0.2.1", "2001:db8:1::1"  # the node's addresses (ipcache: host)
CLIENT4, CLIENT6 = "198.51.100.7", "2001:db8:2::7"
POD4, POD6 = "10.244.1.5", "fd00:244:1::5"
POD4B, POD6B = "10.244.1.6", "fd00:244:1::6"
REMOTE4, REMOTE6 = "10.244.2.7", "fd00:244:2::7"  # pods of another node (ipcache without ep_id)
NODE2_4 = "192.0.2.2"  # that node's underlay address
POD_ID, REMOTE_POD_ID = 20001, 20002  # identities of the pods

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (BPF, cgroups, network namespaces)")


# ---- the datapath -----------------------------------------------------------------------------------

_built = False


class Lb:
    """lxc.o + sock.o loaded into one pin root, with typed views of the maps."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.objs: list[BpfObject] = []
        for path in (LXC_OBJ, SOCK_OBJ):
            obj = BpfObject.open(path, pin_root=root)
            self.objs.append(obj)
            obj.load()
        self.lxc, self.sock = self.objs
        m = self.sock.map
        self.services = TypedMap(m(abi.MAP_LB_SERVICES), abi.LB_KEY_DTYPE, abi.LB_VALUE_DTYPE)
        self.backends = TypedMap(m(abi.MAP_LB_BACKENDS), abi.LB_BACKEND_KEY_DTYPE, abi.LB_BACKEND_DTYPE)
        self.revnat = TypedMap(m(abi.MAP_LB_REVNAT), abi.LB_REVNAT_KEY_DTYPE, abi.LB_REVNAT_DTYPE)
        self.affinity = TypedMap(
            m(abi.MAP_LB_AFFINITY), abi.LB_AFFINITY_KEY_DTYPE, abi.LB_AFFINITY_VALUE_DTYPE
        )
        self.sock_revnat = TypedMap(m(abi.MAP_LB_SOCK_REVNAT), abi.LB_SOCK_KEY_DTYPE, abi.LB_SOCK_VALUE_DTYPE)
        self.nat = TypedMap(m(abi.MAP_LB_NAT), abi.LB_NAT_KEY_DTYPE, abi.LB_NAT_VALUE_DTYPE)
        self.snat = TypedMap(m(abi.MAP_LB_SNAT), abi.LB_NAT_KEY_DTYPE, abi.LB_SNAT_VALUE_DTYPE)
        self.cgroups = TypedMap(m(abi.MAP_LB_CGROUPS), abi.LB_CGROUP_KEY_DTYPE, abi.LB_CGROUP_DTYPE)
        self.settings = TypedMap(m(abi.MAP_SETTINGS), abi.SETTINGS_KEY_DTYPE, abi.SETTINGS_DTYPE)
        self.endpoints = TypedMap(m(abi.MAP_ENDPOINTS), abi.ENDPOINT_KEY_DTYPE, abi.ENDPOINT_INFO_DTYPE)
        self.ipcache = TypedMap(m(abi.MAP_IPCACHE), abi.IPCACHE_KEY_DTYPE, abi.IPCACHE_VALUE_DTYPE)
        self.metrics = TypedMap(m(abi.MAP_METRICS), abi.METRICS_KEY_DTYPE, abi.METRICS_VALUE_DTYPE)
        self.ct = TypedMap(m(abi.MAP_CT), abi.CT_KEY_DTYPE, abi.CT_VALUE_DTYPE)
        self.maglev: Map = m(abi.MAP_LB_MAGLEV)
        self.reader = RingBufferReader(m(abi.MAP_EVENTS), abi.EVENT_DTYPE)
        self.next_backend = 1
        self.set_level(abi.TraceLevel.MEDIUM)

    def close(self) -> None:
        self.reader.close()
        for obj in self.objs:
            obj.close()

    def set_level(self, level: int, flags: int = abi.SETTINGS_SOURCE_IP_CHECK) -> None:
        s = np.zeros((), abi.SETTINGS_DTYPE)
        s["trace_level"], s["flags"] = int(level), int(flags)
        self.settings.update(0, s)

    # ---- services, as the agent writes them ----

    def add_service(
        self,
        addr: str | None,
        port: int,
        proto: int,
        backends: list[tuple[str, int]],
        *,
        rev_nat_id: int,
        flags: int = SVC.CLUSTERIP,
        timeout: int = 0,
        family: int | None = None,
    ) -> list[int]:
        """Backends, slots 1..n, then the master entry (as the agent must: no count past the slots)."""
        ids = []
        for slot, (baddr, bport) in enumerate(backends, 1):
            bid = self.next_backend
            self.next_backend += 1
            self.backends.update(bid, abi.lb_backend(baddr, bport, proto))
            self.services.update(abi.lb_key(addr, port, proto, slot, family), abi.lb_slot(bid, rev_nat_id))
            ids.append(bid)
        self.services.update(
            abi.lb_key(addr, port, proto, 0, family),
            abi.lb_master(len(backends), rev_nat_id, int(flags), timeout),
        )
        if addr:
            self.revnat.update(np.uint16(rev_nat_id), abi.lb_revnat(addr, port))
        return ids

    def set_maglev(self, rev_nat_id: int, table: list[int]) -> None:
        """A new inner array of len(table) (any prime) swapped in for the service."""
        inner = create_map(lb.BPF_MAP_TYPE_ARRAY, 4, 4, len(table), flags=abi.MAP_F_INNER_MAP)
        try:
            for i, bid in enumerate(table):
                inner.update(struct.pack("<I", i), struct.pack("<I", bid))
            self.maglev.set_inner(struct.pack("<H", rev_nat_id), inner)
        finally:
            inner.close()

    def set_host_ip(self, *ips: str, identity: int = abi.Identity.HOST) -> None:
        for ip in ips:
            self.ipcache.update(abi.ipcache_key(ip), abi.ipcache_value(identity))

    def set_local_pods(self, *ips: str) -> None:
        """Pods of this node as the agent writes them (ipcache with their endpoint ID): the NodePort
        LB only DNATs to these; any other backend is SNATed. Default: POD4/POD6 and POD4B/POD6B."""
        for ip in ips or (POD4, POD6, POD4B, POD6B):
            self.ipcache.update(abi.ipcache_key(ip), abi.ipcache_value(POD_ID, "", EP_ID))

    def add_endpoint(self, ifindex: int, ep_id: int, ipv4: str, ipv6: str) -> None:
        v = np.zeros((), abi.ENDPOINT_INFO_DTYPE)
        v["ep_id"] = ep_id
        v["ipv4"] = np.frombuffer(ipaddress.IPv4Address(ipv4).packed, np.uint8)
        v["ipv6"] = np.frombuffer(ipaddress.IPv6Address(ipv6).packed, np.uint8)
        self.endpoints.update(ifindex, v)

    def metric(self, reason: int, direction: int) -> int:
        v = self.metrics.lookup(abi.metrics_index(reason, direction))
        return int(v["packets"].sum())

    def events(self) -> np.ndarray:
        return self.reader.drain()

    def run(self, prog: str, pkt: bytes, ifindex: int = IFINDEX):
        ctx = bytearray(192)  # struct __sk_buff
        struct.pack_into("<I", ctx, 40, ifindex)  # __sk_buff.ifindex
        obj = self.sock if prog == abi.PROG_FROM_NETDEV else self.lxc
        return test_run(obj.program(prog), pkt, ctx=bytes(ctx))


def _open_lb() -> tuple[Lb, Path]:
    global _built
    if not _built:  # never test a stale object: make is a no-op when it is up to date
        subprocess.run(["make", "-s", "-C", str(ROOT / "bpf")], check=True)
        _built = True
    ensure_bpffs()
    root = Path(f"/sys/fs/bpf/tndlb-{secrets.token_hex(6)}")
    try:
        return Lb(root), root
    except BaseException:
        shutil.rmtree(root, ignore_errors=True)
        raise


@pytest.fixture
def dp() -> Iterator[Lb]:
    d, root = _open_lb()
    try:
        yield d
    finally:
        d.close()
        shutil.rmtree(root, ignore_errors=True)


# ---- murmur3 as lb.h computes it ----------------------------------------------------------------------


def _murmur_words(words: list[int], nbytes: int) -> int:
    m32 = 0xFFFFFFFF
    h = 0
    for k in words:
        k = (k * 0xCC9E2D51) & m32
        k = ((k << 15) | (k >> 17)) & m32
        k = (k * 0x1B873593) & m32
        h ^= k
        h = ((h << 13) | (h >> 19)) & m32
        h = (h * 5 + 0xE6546B64) & m32
    h ^= nbytes
    h ^= h >> 16
    h = (h * 0x85EBCA6B) & m32
    h ^= h >> 13
    h = (h * 0xC2B2AE35) & m32
    h ^= h >> 16
    return h


def cookie_hash(cookie: int) -> int:
    return _murmur_words([cookie & 0xFFFFFFFF, cookie >> 32], 8)


def tuple_hash(fwd_key: np.void) -> int:
    raw = fwd_key.tobytes()
    return _murmur_words(list(struct.unpack(f"<{len(raw) // 4}I", raw)), len(raw))


def test_hash_mirror_is_murmur3():
    # murmur3_x86_32 reference values (seed 0) for little-endian word input
    assert _murmur_words([], 0) == 0
    assert _murmur_words([int.from_bytes(b"abcd", "little")], 4) == 0x43ED676A


# ---- socket LB: cgroup, backends, clients -------------------------------------------------------------


class Cgroup:
    """A cgroup v2 with the socket-LB programs attached as links; removed on close."""

    def __init__(self, dp: Lb) -> None:
        self.path = CGROUP2 / f"tndlb-{secrets.token_hex(5)}"
        self.path.mkdir()
        self.links = []
        try:
            for name, attach_type in abi.SOCK_PROGRAMS.items():
                self.links.append(attach_cgroup(dp.sock.program(name), self.path, attach_type))
        except BaseException:
            self.close()
            raise
        self.id = os.stat(self.path).st_ino  # what bpf_get_current_cgroup_id() returns

    def close(self) -> None:
        for link in self.links:
            link.detach()
        procs = self.path / "cgroup.procs"
        for _ in range(50):
            with contextlib.suppress(FileNotFoundError):
                for pid in procs.read_text().split():
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(int(pid), 9)
            try:
                self.path.rmdir()
                return
            except FileNotFoundError:
                return
            except OSError:
                time.sleep(0.05)

    def _join(self) -> None:  # in the child, before exec
        fd = os.open(str(self.path / "cgroup.procs"), os.O_WRONLY)
        try:
            os.write(fd, b"0")
        finally:
            os.close(fd)

    def popen(self, argv: list[str], netns: str | None = None, **kw) -> subprocess.Popen:  # noqa: ANN003
        if netns:
            argv = ["nsenter", f"--net=/run/netns/{netns}", "--", *argv]
        return subprocess.Popen(argv, preexec_fn=self._join, **kw)  # noqa: PLW1509 - join before exec


@pytest.fixture
def cg(dp: Lb) -> Iterator[Cgroup]:
    if not CGROUP2.is_dir():
        pytest.skip(f"no cgroup v2 at {CGROUP2}")
    c = Cgroup(dp)
    try:
        dp.cgroups.update(np.uint64(c.id), abi.lb_cgroup(EP_ID))
        yield c
    finally:
        c.close()


class Backend:
    """A TCP and a UDP server of this process (outside the test cgroup) answering with their name."""

    def __init__(self, name: str, addr: str, port: int = 0) -> None:
        fam = socket.AF_INET6 if ":" in addr else socket.AF_INET
        self.name = name
        self.addr = addr
        self.tcp = socket.socket(fam, socket.SOCK_STREAM)
        self.tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.tcp.bind((addr, port))
        self.port = self.tcp.getsockname()[1]
        self.tcp.listen(64)
        self.udp = socket.socket(fam, socket.SOCK_DGRAM)
        self.udp.bind((addr, self.port))
        self.peers: list = []
        for target in (self._serve_tcp, self._serve_udp):
            threading.Thread(target=target, daemon=True).start()

    def _serve_tcp(self) -> None:
        with contextlib.suppress(OSError):
            while True:
                conn, peer = self.tcp.accept()
                self.peers.append(peer)
                with conn:
                    conn.sendall(self.name.encode())

    def _serve_udp(self) -> None:
        with contextlib.suppress(OSError):
            while True:
                data, peer = self.udp.recvfrom(256)
                if peer is None:  # shut down
                    return
                self.peers.append(peer)
                self.udp.sendto(self.name.encode(), peer)

    def close(self) -> None:
        for s in (self.tcp, self.udp):
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
            s.close()


@pytest.fixture
def backends() -> Iterator[list[Backend]]:
    """Two backends per family: A and B on 127.0.0.2 / 127.0.0.3, A6 and B6 on ::1 (different ports)."""
    made: list[Backend] = []
    try:
        made += [Backend("A", "127.0.0.2"), Backend("B", "127.0.0.3")]
        made += [Backend("A6", "::1"), Backend("B6", "::1")]
        yield made
    finally:
        for b in made:
            b.close()


CLIENT = textwrap.dedent(
    """
    import json, socket, sys, time
    SO_COOKIE, SO_NETNS_COOKIE = 57, 71

    def sock(host, kind):
        fam = socket.AF_INET6 if ":" in host else socket.AF_INET
        s = socket.socket(fam, kind)
        s.settimeout(3)
        return s

    def info(s, r):
        r["cookie"] = int.from_bytes(s.getsockopt(socket.SOL_SOCKET, SO_COOKIE, 8), "little")
        r["netns"] = int.from_bytes(s.getsockopt(socket.SOL_SOCKET, SO_NETNS_COOKIE, 8), "little")
        return r

    out = []
    for op in json.loads(sys.argv[1]):
        for _ in range(op.get("n", 1)):
            r = {}
            kind = socket.SOCK_STREAM if op["op"] == "tcp" else socket.SOCK_DGRAM
            s = sock(op["host"], kind)
            if op.get("bind"):
                s.bind((op["bind"], 0))
                r["bound"] = list(s.getsockname()[:2])
            t0 = time.monotonic()
            try:
                dst = (op["host"], op["port"])
                if op["op"] == "tcp":
                    s.connect(dst)
                    r["peer"] = list(s.getpeername()[:2])
                    r["backend"] = s.recv(64).decode()
                else:
                    if op.get("connect"):
                        s.connect(dst)
                        r["peer"] = list(s.getpeername()[:2])
                    for i in range(op.get("sends", 1)):
                        if op.get("connect"):
                            s.send(b"q")
                        else:
                            s.sendto(b"q", dst)
                        if op.get("wait"):
                            print("sent", flush=True)
                            sys.stdin.readline()
                        data, src = s.recvfrom(64)
                        r.setdefault("backends", []).append(data.decode())
                        r.setdefault("srcs", []).append(list(src[:2]))
                r["local"] = list(s.getsockname()[:2])
            except OSError as e:
                r["errno"] = e.errno
            r["elapsed"] = time.monotonic() - t0
            out.append(info(s, r))
            s.close()
    print(json.dumps(out), flush=True)
    """
)


def client(cg: Cgroup, *ops: dict, netns: str | None = None) -> list[dict]:
    p = cg.popen([sys.executable, "-c", CLIENT, json.dumps(ops)], netns, stdout=subprocess.PIPE, text=True)
    out, _ = p.communicate(timeout=60)
    assert p.returncode == 0, out
    return json.loads(out.splitlines()[-1])


def addr16(ip: str) -> bytes:
    p = ipaddress.ip_address(ip).packed
    return p + bytes(16 - len(p))


def by_name(bes: list[Backend]) -> dict[str, Backend]:
    return {b.name: b for b in bes}


def sock_events(ev: np.ndarray) -> np.ndarray:
    return ev[ev["type"] == ET.TRACE_SOCK]


# ---- socket LB tests ------------------------------------------------------------------------------------


@pytest.mark.parametrize("family", [4, 6])
def test_tcp_connect_to_service_spreads_and_peer_is_the_vip(dp, cg, backends, family):
    b = by_name(backends)
    a_, b_ = (b["A"], b["B"]) if family == 4 else (b["A6"], b["B6"])
    vip = VIP4 if family == 4 else VIP6
    ids = dp.add_service(vip, 80, TCP, [(a_.addr, a_.port), (b_.addr, b_.port)], rev_nat_id=5)
    res = client(cg, {"op": "tcp", "host": vip, "port": 80, "n": 24})
    assert all("errno" not in r for r in res), res
    seen = {r["backend"] for r in res}
    assert seen == {a_.name, b_.name}, "24 connections should reach both backends"
    assert all(r["peer"] == [vip, 80] for r in res), "getpeername() shows the service address"
    # every socket chose by its cookie hash: slot hash % 2 + 1
    for r in res:
        slot = cookie_hash(r["cookie"]) % 2
        assert r["backend"] == (a_.name, b_.name)[slot]
    # reverse entries {cookie, backend} -> {VIP, 80, rev_nat_id}
    r = res[0]
    be = a_ if r["backend"] == a_.name else b_
    k = np.zeros((), abi.LB_SOCK_KEY_DTYPE)
    k["cookie"], k["addr"], k["port"], k["family"] = (
        r["cookie"],
        np.frombuffer(addr16(be.addr), np.uint8),
        be.port,
        family,
    )
    v = dp.sock_revnat.lookup(k)
    assert v is not None and bytes(v["addr"]) == addr16(vip) and v["port"] == 80 and v["rev_nat_id"] == 5
    assert ids == [1, 2]


def test_trace_sock_events_pre_and_post(dp, cg, backends):
    b = by_name(backends)["A"]
    dp.add_service(VIP4, 80, TCP, [(b.addr, b.port)], rev_nat_id=6)
    dp.set_host_ip(f"{b.addr}/32", identity=12345)  # the backend's identity, as for a pod
    dp.events()
    (r,) = client(cg, {"op": "tcp", "host": VIP4, "port": 80})
    (r2,) = client(cg, {"op": "tcp", "host": VIP4, "port": 80, "bind": "127.0.0.1"})
    ev = sock_events(dp.events())
    assert len(ev) == 4, ev
    for (pre, post), res in ((ev[:2], r), (ev[2:], r2)):
        assert (pre["subtype"], post["subtype"]) == (XL.PRE_FWD, XL.POST_FWD)
        for e in (pre, post):
            assert e["ip_version"] == 4 and e["l4_proto"] == TCP and e["ep_id"] == EP_ID
            assert e["hash"] == res["cookie"] & 0xFFFFFFFF  # the socket cookie's low 32 bits
            assert e["ifindex"] == 0 and e["pkt_len"] == 0 and e["flags"] == 0 and e["ts_ns"] > 0
        assert bytes(pre["daddr"]) == addr16(VIP4) and pre["dport"] == 80
        assert pre["remote_id"] == abi.Identity.WORLD
        assert bytes(post["daddr"]) == addr16(b.addr) and post["dport"] == b.port
        assert post["remote_id"] == 12345
    # unbound socket: no source yet; bound: its address and port
    assert bytes(ev[0]["saddr"]) == bytes(16) and ev[0]["sport"] == 0
    assert bytes(ev[2]["saddr"]) == addr16("127.0.0.1") and ev[2]["sport"] == r2["bound"][1]


def test_events_ipv6_flag_and_unknown_cgroup(dp, cg, backends):
    b = by_name(backends)["A6"]
    dp.add_service(VIP6, 80, TCP, [(b.addr, b.port)], rev_nat_id=7)
    dp.cgroups.delete(np.uint64(cg.id))
    (r,) = client(cg, {"op": "tcp", "host": VIP6, "port": 80})
    assert r["backend"] == "A6" and r["peer"] == [VIP6, 80]
    pre, post = sock_events(dp.events())
    assert pre["flags"] == abi.EventFlags.IPV6 and pre["ip_version"] == 6
    assert pre["ep_id"] == 0, "a cgroup without tnd_lb_cgroups entry reports endpoint 0"
    assert bytes(post["daddr"]) == addr16("::1")


@pytest.mark.parametrize("family", [4, 6])
def test_udp_replies_come_from_the_vip(dp, cg, backends, family):
    b = by_name(backends)["A" if family == 4 else "A6"]
    vip = VIP4 if family == 4 else VIP6
    dp.add_service(vip, 53, UDP, [(b.addr, b.port)], rev_nat_id=8)
    unconnected, connected = client(
        cg,
        {"op": "udp", "host": vip, "port": 53, "sends": 3},
        {"op": "udp", "host": vip, "port": 53, "sends": 2, "connect": True},
    )
    assert unconnected["backends"] == [b.name] * 3 and connected["backends"] == [b.name] * 2
    assert unconnected["srcs"] == [[vip, 53]] * 3, "recvfrom() shows the service address (recvmsg hook)"
    assert connected["srcs"] == [[vip, 53]] * 2 and connected["peer"] == [vip, 53]
    # MEDIUM: one PRE/POST pair per socket and backend (connect, first sendmsg), none for replies
    ev = sock_events(dp.events())
    assert list(ev["subtype"]) == [XL.PRE_FWD, XL.POST_FWD] * 2
    assert all(e["l4_proto"] == UDP for e in ev)


def test_udp_trace_level_all_reports_every_translation(dp, cg, backends):
    b = by_name(backends)["A"]
    dp.add_service(VIP4, 53, UDP, [(b.addr, b.port)], rev_nat_id=9)
    dp.set_level(abi.TraceLevel.ALL)
    (r,) = client(cg, {"op": "udp", "host": VIP4, "port": 53, "sends": 2})
    assert r["srcs"] == [[VIP4, 53]] * 2
    ev = sock_events(dp.events())
    fwd, rev = [XL.PRE_FWD, XL.POST_FWD], [XL.PRE_REV, XL.POST_REV]
    assert list(ev["subtype"]) == (fwd + rev) * 2
    pre_rev, post_rev = ev[2], ev[3]
    assert bytes(pre_rev["daddr"]) == addr16(b.addr) and pre_rev["dport"] == b.port
    assert bytes(post_rev["daddr"]) == addr16(VIP4) and post_rev["dport"] == 53
    dp.set_level(abi.TraceLevel.NONE)
    client(cg, {"op": "udp", "host": VIP4, "port": 53, "sends": 2})
    assert len(sock_events(dp.events())) == 0


def test_ipv4_mapped_destination_on_ipv6_socket(dp, cg, backends):
    b = by_name(backends)["B"]
    dp.add_service(VIP4, 80, TCP, [(b.addr, b.port)], rev_nat_id=10)
    dp.add_service(VIP4, 53, UDP, [(b.addr, b.port)], rev_nat_id=11)
    mapped = f"::ffff:{VIP4}"
    tcp_r, udp_r = client(
        cg, {"op": "tcp", "host": mapped, "port": 80}, {"op": "udp", "host": mapped, "port": 53, "sends": 1}
    )
    assert tcp_r["backend"] == "B" and tcp_r["peer"] == [mapped, 80]
    assert udp_r["backends"] == ["B"] and udp_r["srcs"] == [[mapped, 53]]
    pre, post = sock_events(dp.events())[:2]
    assert pre["ip_version"] == 4 and bytes(pre["daddr"]) == addr16(VIP4)
    assert bytes(post["daddr"]) == addr16(b.addr)


def test_session_affinity_keeps_one_backend_per_netns(dp, cg, backends):
    b = by_name(backends)
    dp.add_service(
        VIP4,
        80,
        TCP,
        [(b["A"].addr, b["A"].port), (b["B"].addr, b["B"].port)],
        rev_nat_id=12,
        flags=SVC.CLUSTERIP | SVC.AFFINITY,
        timeout=600,
    )
    res = client(cg, {"op": "tcp", "host": VIP4, "port": 80, "n": 16})
    first = res[0]["backend"]
    assert {r["backend"] for r in res} == {first}
    (k, v), *rest = list(dp.affinity.items())
    assert not rest
    assert int.from_bytes(bytes(k["client"][:8]), "little") == res[0]["netns"]  # the netns cookie
    assert bytes(k["client"][8:]) == bytes(8)
    assert (k["rev_nat_id"], k["family"], k["flags"]) == (12, 4, abi.LbAffinityFlags.NETNS)
    assert v["backend_id"] == (1 if first == "A" else 2) and v["last_used_s"] > 0
    # the datapath follows the map: point the client at the other backend
    other = 2 if first == "A" else 1
    v["backend_id"] = other
    dp.affinity.update(k, v)
    res = client(cg, {"op": "tcp", "host": VIP4, "port": 80, "n": 4})
    assert {r["backend"] for r in res} == {"B" if other == 2 else "A"}
    # an entry is followed as long as its backend exists and is active (as in Cilium): backend 99,
    # in no slot and with nothing listening, refuses the connection
    dp.backends.update(99, abi.lb_backend("127.0.0.4", 9, TCP))
    v["backend_id"] = 99
    dp.affinity.update(k, v)
    (r,) = client(cg, {"op": "tcp", "host": VIP4, "port": 80})
    assert r["errno"] == 111  # ECONNREFUSED from 127.0.0.4:9
    # an expired entry is not: a new choice among the slots, recorded
    v["last_used_s"] -= 601
    dp.affinity.update(k, v)
    (r,) = client(cg, {"op": "tcp", "host": VIP4, "port": 80})
    assert r["backend"] in ("A", "B")
    v2 = dp.affinity.lookup(k)
    assert (
        v2["backend_id"] == (1 if r["backend"] == "A" else 2) and v2["last_used_s"] >= v["last_used_s"] + 601
    )


def test_maglev_table_picks_the_backend(dp, cg, backends):
    b = by_name(backends)
    ids = dp.add_service(
        VIP4,
        80,
        TCP,
        [(b["A"].addr, b["A"].port), (b["B"].addr, b["B"].port)],
        rev_nat_id=13,
        flags=SVC.CLUSTERIP | SVC.MAGLEV,
    )
    m = 251  # any prime: inner arrays carry BPF_F_INNER_MAP, the program reads M from the map
    table = [ids[0] if i % 3 else ids[1] for i in range(m)]
    dp.set_maglev(13, table)
    res = client(cg, {"op": "tcp", "host": VIP4, "port": 80, "n": 16})
    for r in res:
        want = table[cookie_hash(r["cookie"]) % m]
        assert r["backend"] == ("A" if want == ids[0] else "B"), r
    # a table of B only: every connection to B although the slots hold A and B
    dp.set_maglev(13, [ids[1]] * 13)
    res = client(cg, {"op": "tcp", "host": VIP4, "port": 80, "n": 8})
    assert {r["backend"] for r in res} == {"B"}


def test_terminating_backend_is_not_picked(dp, cg, backends):
    b = by_name(backends)
    ids = dp.add_service(
        VIP4, 80, TCP, [(b["A"].addr, b["A"].port), (b["B"].addr, b["B"].port)], rev_nat_id=14
    )
    dp.backends.update(ids[0], abi.lb_backend(b["A"].addr, b["A"].port, TCP, abi.BackendState.TERMINATING))
    res = client(cg, {"op": "tcp", "host": VIP4, "port": 80, "n": 10})
    assert {r["backend"] for r in res} == {"B"}


def test_service_without_backends_refuses_at_once(dp, cg, backends):
    dp.add_service(VIP4, 80, TCP, [], rev_nat_id=15)
    dp.add_service(VIP6, 53, UDP, [], rev_nat_id=16)
    t, u = client(cg, {"op": "tcp", "host": VIP4, "port": 80}, {"op": "udp", "host": VIP6, "port": 53})
    assert t["errno"] == 1 and u["errno"] == 1  # EPERM from the cgroup hook
    assert t["elapsed"] < 0.5 and u["elapsed"] < 0.5
    ev = dp.events()
    drops = ev[ev["type"] == ET.DROP]
    assert len(drops) == 2 and len(sock_events(ev)) == 0
    for d, res, vip, port, proto, ver in ((drops[0], t, VIP4, 80, TCP, 4), (drops[1], u, VIP6, 53, UDP, 6)):
        assert d["subtype"] == abi.DropReason.NO_SERVICE_BACKEND == 158
        assert bytes(d["daddr"]) == addr16(vip) and d["dport"] == port
        assert d["l4_proto"] == proto and d["ip_version"] == ver and d["ep_id"] == EP_ID
        assert d["hash"] == res["cookie"] & 0xFFFFFFFF


def test_other_destinations_are_untouched(dp, cg, backends):
    b = by_name(backends)["A"]
    dp.add_service(VIP4, 80, TCP, [(b.addr, b.port)], rev_nat_id=17)
    dp.add_service(None, b.port, TCP, [(b.addr, b.port + 1)], rev_nat_id=18, flags=SVC.NODEPORT)  # wildcard
    (r,) = client(cg, {"op": "tcp", "host": b.addr, "port": b.port})
    assert r["backend"] == "A" and r["peer"] == [b.addr, b.port]
    assert len(dp.events()) == 0 and len(list(dp.sock_revnat.items())) == 0


def test_stale_reverse_entry_is_dropped(dp, cg, backends):
    b = by_name(backends)["A"]
    dp.add_service(VIP4, 53, UDP, [(b.addr, b.port)], rev_nat_id=19)
    op = {"op": "udp", "host": VIP4, "port": 53, "sends": 2, "wait": True}
    p = cg.popen(
        [sys.executable, "-c", CLIENT, json.dumps([op])],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert p.stdout.readline() == "sent\n"
        p.stdin.write("\n")
        p.stdin.flush()
        assert p.stdout.readline() == "sent\n"
        # the service is replaced (new rev_nat_id) while the reply is in flight: not translated any more
        dp.services.update(abi.lb_key(VIP4, 53, UDP), abi.lb_master(1, 20))
        p.stdin.write("\n")
        p.stdin.flush()
        out, _ = p.communicate(timeout=30)
    finally:
        if p.poll() is None:
            p.kill()
    (r,) = json.loads(out.splitlines()[-1])
    assert r["srcs"] == [[VIP4, 53], [b.addr, b.port]]
    assert len(list(dp.sock_revnat.items())) == 0, "the stale entry is deleted"


# ---- NodePort: packets --------------------------------------------------------------------------------


def csum16(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    s = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF


def _pseudo(src: str, dst: str, proto: int, length: int) -> bytes:
    s, d = ipaddress.ip_address(src), ipaddress.ip_address(dst)
    if s.version == 4:
        return s.packed + d.packed + struct.pack("!BBH", 0, proto, length)
    return s.packed + d.packed + struct.pack("!I3xB", length, proto)


def frame(
    src: str,
    dst: str,
    proto: int,
    sport: int,
    dport: int,
    flags: int = SYN,
    payload: bytes = b"data",
    udp_csum: bool = True,
) -> bytes:
    """Ethernet + IPv4/IPv6 + TCP/UDP with correct checksums (UDP over IPv4 may have none)."""
    if proto == TCP:
        seg = struct.pack("!HHIIBBHHH", sport, dport, 1000, 2000, 5 << 4, flags, 65535, 0, 0) + payload
        coff = 16
    else:
        seg = struct.pack("!HHHH", sport, dport, 8 + len(payload), 0) + payload
        coff = 6
    c = csum16(_pseudo(src, dst, proto, len(seg)) + seg)
    if proto == UDP:
        c = (c or 0xFFFF) if udp_csum or ":" in src else 0
    seg = seg[:coff] + struct.pack("!H", c) + seg[coff + 2 :]
    s, d = ipaddress.ip_address(src), ipaddress.ip_address(dst)
    if s.version == 4:
        hdr = struct.pack(
            "!BBHHHBBH4s4s", 0x45, 0, 20 + len(seg), 0x1234, 0, 64, proto, 0, s.packed, d.packed
        )
        hdr = hdr[:10] + struct.pack("!H", csum16(hdr)) + hdr[12:]
        ethertype = 0x0800
    else:
        hdr = struct.pack("!IHBB16s16s", 6 << 28, len(seg), proto, 64, s.packed, d.packed)
        ethertype = 0x86DD
    return b"\x02\x00\x00\x00\x00\x02\x02\x00\x00\x00\x00\x01" + struct.pack("!H", ethertype) + hdr + seg


def check_checksums(pkt: bytes) -> None:
    """Verify the IPv4 header checksum and the TCP/UDP checksum of a frame built like frame()."""
    ethertype = struct.unpack("!H", pkt[12:14])[0]
    if ethertype == 0x0800:
        hdr = pkt[14:34]
        assert csum16(hdr) == 0, "bad IPv4 header checksum"
        proto, src, dst, seg = (
            hdr[9],
            str(ipaddress.IPv4Address(hdr[12:16])),
            str(ipaddress.IPv4Address(hdr[16:20])),
            pkt[34:],
        )
    else:
        hdr = pkt[14:54]
        proto, src, dst, seg = (
            hdr[6],
            str(ipaddress.IPv6Address(hdr[8:24])),
            str(ipaddress.IPv6Address(hdr[24:40])),
            pkt[54:],
        )
    if proto == UDP and ethertype == 0x0800 and seg[6:8] == b"\0\0":
        return  # no checksum
    assert csum16(_pseudo(src, dst, proto, len(seg)) + seg) == 0, "bad L4 checksum"


def nat_key(saddr, daddr, sport, dport, proto, direction) -> np.void:
    return abi.lb_nat_key(saddr, daddr, sport, dport, proto, direction)


@pytest.mark.parametrize(
    ("client_ip", "node_ip", "pod", "proto"),
    [
        (CLIENT4, NODE4, POD4, TCP),
        (CLIENT4, NODE4, POD4, UDP),
        (CLIENT6, NODE6, POD6, TCP),
        (CLIENT6, NODE6, POD6, UDP),
    ],
)
def test_nodeport_dnat_with_valid_checksums(dp, client_ip, node_ip, pod, proto):
    dp.set_host_ip(node_ip)
    dp.set_local_pods()
    fam = ipaddress.ip_address(node_ip).version
    ids = dp.add_service(None, 30080, proto, [(pod, 8080)], rev_nat_id=30, flags=SVC.NODEPORT, family=fam)
    pkt = frame(client_ip, node_ip, proto, 40000, 30080)
    check_checksums(pkt)
    r = dp.run(abi.PROG_FROM_NETDEV, pkt)
    assert r.retval == TC_ACT_OK
    assert r.data_out == frame(client_ip, pod, proto, 40000, 8080), "DNAT to the backend, checksums updated"
    check_checksums(r.data_out)
    fwd = dp.nat.lookup(nat_key(client_ip, node_ip, 40000, 30080, proto, NAT.FWD))
    assert bytes(fwd["addr"]) == addr16(pod) and fwd["port"] == 8080
    assert (fwd["backend_id"], fwd["rev_nat_id"]) == (ids[0], 30)
    rev = dp.nat.lookup(nat_key(pod, client_ip, 8080, 40000, proto, NAT.REV))
    assert bytes(rev["addr"]) == addr16(node_ip) and rev["port"] == 30080
    assert (rev["backend_id"], rev["rev_nat_id"], rev["ifindex"]) == (ids[0], 30, IFINDEX)
    assert len(dp.events()) == 0


def test_nodeport_udp_without_checksum_keeps_none(dp):
    dp.set_host_ip(NODE4)
    dp.set_local_pods()
    dp.add_service(None, 30053, UDP, [(POD4, 53)], rev_nat_id=31, flags=SVC.NODEPORT)
    r = dp.run(abi.PROG_FROM_NETDEV, frame(CLIENT4, NODE4, UDP, 5000, 30053, udp_csum=False))
    assert r.retval == TC_ACT_OK
    assert r.data_out == frame(CLIENT4, POD4, UDP, 5000, 53, udp_csum=False)


def test_nodeport_frontend_selection(dp):
    dp.set_host_ip(NODE4)
    dp.set_local_pods()
    dp.add_service(None, 30080, TCP, [(POD4, 8080)], rev_nat_id=32, flags=SVC.NODEPORT)
    # routed through the node, not to it: the wildcard does not apply
    pkt = frame(CLIENT4, "203.0.113.9", TCP, 40000, 30080)
    assert dp.run(abi.PROG_FROM_NETDEV, pkt).data_out == pkt
    # a ClusterIP frontend is not reachable from the network
    dp.add_service(VIP4, 80, TCP, [(POD4, 8080)], rev_nat_id=33)
    pkt = frame(CLIENT4, VIP4, TCP, 40000, 80)
    assert dp.run(abi.PROG_FROM_NETDEV, pkt).data_out == pkt
    # other port / other protocol / not IP: untouched
    for pkt in (frame(CLIENT4, NODE4, TCP, 40000, 30081), frame(CLIENT4, NODE4, UDP, 40000, 30080)):
        assert dp.run(abi.PROG_FROM_NETDEV, pkt).data_out == pkt
    arp = b"\xff" * 6 + b"\x02" * 6 + b"\x08\x06" + bytes(28)
    assert dp.run(abi.PROG_FROM_NETDEV, arp).retval == TC_ACT_OK
    assert len(list(dp.nat.items())) == 0
    # an exact node-address frontend needs no ipcache entry
    dp.add_service("203.0.113.9", 30080, TCP, [(POD4B, 9090)], rev_nat_id=34, flags=SVC.NODEPORT)
    r = dp.run(abi.PROG_FROM_NETDEV, frame(CLIENT4, "203.0.113.9", TCP, 40000, 30080))
    assert r.data_out == frame(CLIENT4, POD4B, TCP, 40000, 9090)


def test_nodeport_connection_keeps_its_backend(dp):
    dp.set_host_ip(NODE4)
    dp.set_local_pods()
    ids = dp.add_service(None, 30080, TCP, [(POD4, 8080), (POD4B, 8080)], rev_nat_id=35, flags=SVC.NODEPORT)
    first = dp.run(abi.PROG_FROM_NETDEV, frame(CLIENT4, NODE4, TCP, 40000, 30080)).data_out
    pod = POD4 if first == frame(CLIENT4, POD4, TCP, 40000, 8080) else POD4B
    assert first == frame(CLIENT4, pod, TCP, 40000, 8080)
    for _ in range(20):  # random selection would move some of these
        r = dp.run(abi.PROG_FROM_NETDEV, frame(CLIENT4, NODE4, TCP, 40000, 30080, flags=ACK))
        assert r.data_out == frame(CLIENT4, pod, TCP, 40000, 8080, flags=ACK)
    # its backend terminates: the connection finishes there, new ones go elsewhere
    bid = ids[0] if pod == POD4 else ids[1]
    dp.backends.update(bid, abi.lb_backend(pod, 8080, TCP, abi.BackendState.TERMINATING))
    r = dp.run(abi.PROG_FROM_NETDEV, frame(CLIENT4, NODE4, TCP, 40000, 30080, flags=ACK))
    assert r.data_out == frame(CLIENT4, pod, TCP, 40000, 8080, flags=ACK)
    other = POD4B if pod == POD4 else POD4
    for sport in range(41000, 41010):
        r = dp.run(abi.PROG_FROM_NETDEV, frame(CLIENT4, NODE4, TCP, sport, 30080))
        assert r.data_out == frame(CLIENT4, other, TCP, sport, 8080)
    # random selection spreads new connections
    dp.backends.update(bid, abi.lb_backend(pod, 8080, TCP))
    seen = set()
    for sport in range(42000, 42030):
        out = dp.run(abi.PROG_FROM_NETDEV, frame(CLIENT4, NODE4, TCP, sport, 30080)).data_out
        seen.add(out[30:34])
    assert seen == {ipaddress.IPv4Address(POD4).packed, ipaddress.IPv4Address(POD4B).packed}


def test_nodeport_maglev_uses_the_tuple_hash(dp):
    dp.set_host_ip(NODE6)
    dp.set_local_pods()
    ids = dp.add_service(
        None,
        30443,
        TCP,
        [(POD6, 443), (POD6B, 443)],
        rev_nat_id=36,
        flags=SVC.NODEPORT | SVC.MAGLEV,
        family=6,
    )
    m = 1021
    table = [ids[(i * 7) % 5 == 0] for i in range(m)]
    dp.set_maglev(36, table)
    for sport in range(50000, 50040):
        r = dp.run(abi.PROG_FROM_NETDEV, frame(CLIENT6, NODE6, TCP, sport, 30443))
        want = table[tuple_hash(nat_key(CLIENT6, NODE6, sport, 30443, TCP, NAT.FWD)) % m]
        assert r.data_out == frame(CLIENT6, POD6 if want == ids[0] else POD6B, TCP, sport, 443)


def test_nodeport_affinity_by_client_address(dp):
    dp.set_host_ip(NODE4)
    dp.set_local_pods()
    ids = dp.add_service(
        None,
        30080,
        TCP,
        [(POD4, 8080), (POD4B, 8080)],
        rev_nat_id=37,
        flags=SVC.NODEPORT | SVC.AFFINITY,
        timeout=60,
    )
    outs = {
        dp.run(abi.PROG_FROM_NETDEV, frame(CLIENT4, NODE4, TCP, sp, 30080)).data_out[30:34]
        for sp in range(100, 120)
    }
    assert len(outs) == 1
    (k, v), *rest = list(dp.affinity.items())
    assert not rest and bytes(k["client"]) == addr16(CLIENT4)
    assert (k["rev_nat_id"], k["family"], k["flags"]) == (37, 4, 0)
    assert v["backend_id"] == (ids[0] if outs == {ipaddress.IPv4Address(POD4).packed} else ids[1])


def test_nodeport_without_backends_drops(dp):
    dp.set_host_ip(NODE4)
    dp.set_local_pods()
    dp.add_service(None, 30080, TCP, [], rev_nat_id=38, flags=SVC.NODEPORT)
    pkt = frame(CLIENT4, NODE4, TCP, 40000, 30080)
    assert dp.run(abi.PROG_FROM_NETDEV, pkt).retval == TC_ACT_SHOT
    (e,) = dp.events()
    assert (e["type"], e["subtype"]) == (ET.DROP, abi.DropReason.NO_SERVICE_BACKEND)
    assert bytes(e["saddr"]) == addr16(CLIENT4) and bytes(e["daddr"]) == addr16(NODE4)
    assert (e["sport"], e["dport"], e["l4_proto"], e["tcp_flags"]) == (40000, 30080, TCP, SYN)
    assert (e["ifindex"], e["ep_id"], e["pkt_len"], e["remote_id"]) == (
        IFINDEX,
        0,
        len(pkt),
        abi.Identity.WORLD,
    )
    assert dp.metric(158, abi.MetricDirection.INGRESS) == 1


@pytest.mark.parametrize(
    ("client_ip", "node_ip", "pod", "proto"),
    [(CLIENT4, NODE4, POD4, TCP), (CLIENT6, NODE6, POD6, UDP)],
)
def test_nodeport_reply_reverse_nat_in_from_container(dp, client_ip, node_ip, pod, proto):
    dp.set_host_ip(node_ip)
    dp.set_local_pods()
    dp.add_endpoint(IFINDEX, EP_ID, POD4, POD6)
    fam = ipaddress.ip_address(node_ip).version
    dp.add_service(None, 30080, proto, [(pod, 8080)], rev_nat_id=39, flags=SVC.NODEPORT, family=fam)
    syn = dp.run(abi.PROG_FROM_NETDEV, frame(client_ip, node_ip, proto, 40000, 30080)).data_out
    assert dp.run(abi.PROG_TO_CONTAINER, syn).retval == TC_ACT_OK  # into the pod: CT entry (ingress)
    dp.events()
    reply = frame(pod, client_ip, proto, 8080, 40000, flags=SYN | ACK)
    r = dp.run(abi.PROG_FROM_CONTAINER, reply)
    assert r.retval == TC_ACT_REDIRECT, "sent out of the device the request came in on"
    assert r.data_out == frame(node_ip, client_ip, proto, 30080, 40000, flags=SYN | ACK)
    check_checksums(r.data_out)
    (e,) = dp.events()  # the trace shows the packet as the pod sent it
    assert (e["type"], e["subtype"], e["ct_state"]) == (ET.TRACE, abi.TracePoint.FROM_LXC, abi.CtState.REPLY)
    assert bytes(e["saddr"]) == addr16(pod) and e["sport"] == 8080
    # other replies of the pod are untouched
    other = frame(pod, client_ip, proto, 8081, 40000, flags=ACK)
    r = dp.run(abi.PROG_FROM_CONTAINER, other)
    assert r.retval == TC_ACT_OK and r.data_out == other


# ---- NodePort: SNAT to a backend on another node ------------------------------------------------------

SNAT_RANGE = abi.LB_SNAT_PORT_MAX - abi.LB_SNAT_PORT_MIN + 1


def snat_port(client: str, node: str, sport: int, dport: int, proto: int, attempt: int = 0) -> int:
    """The SNAT port sock.c tries first (attempt 0) for a connection, then the next candidates."""
    h = tuple_hash(nat_key(client, node, sport, dport, proto, NAT.FWD))
    return abi.LB_SNAT_PORT_MIN + (h + attempt * 7919) % (1 << 32) % SNAT_RANGE


def set_remote_pods(dp: Lb) -> None:
    for ip in (REMOTE4, REMOTE6):
        dp.ipcache.update(abi.ipcache_key(ip), abi.ipcache_value(REMOTE_POD_ID, NODE2_4))


@pytest.mark.parametrize(
    ("client_ip", "node_ip", "pod", "proto"),
    [
        (CLIENT4, NODE4, REMOTE4, TCP),
        (CLIENT4, NODE4, REMOTE4, UDP),
        (CLIENT6, NODE6, REMOTE6, TCP),
        (CLIENT6, NODE6, REMOTE6, UDP),
    ],
)
def test_nodeport_snat_to_remote_backend_and_back(dp, client_ip, node_ip, pod, proto):
    dp.set_host_ip(node_ip)
    set_remote_pods(dp)
    fam = ipaddress.ip_address(node_ip).version
    ids = dp.add_service(None, 30080, proto, [(pod, 8080)], rev_nat_id=45, flags=SVC.NODEPORT, family=fam)
    port = snat_port(client_ip, node_ip, 40000, 30080, proto)
    assert abi.LB_SNAT_PORT_MIN <= port <= abi.LB_SNAT_PORT_MAX

    r = dp.run(abi.PROG_FROM_NETDEV, frame(client_ip, node_ip, proto, 40000, 30080))
    assert r.retval == TC_ACT_REDIRECT, "sent towards the other node (bpf_redirect_neigh), not to the stack"
    assert r.data_out == frame(node_ip, pod, proto, port, 8080), "SNAT to the node address + DNAT"
    check_checksums(r.data_out)
    fwd = dp.snat.lookup(nat_key(client_ip, node_ip, 40000, 30080, proto, NAT.FWD))
    assert bytes(fwd["addr"]) == addr16(pod) and fwd["port"] == 8080
    assert bytes(fwd["nat_addr"]) == addr16(node_ip) and fwd["nat_port"] == port
    assert (fwd["backend_id"], fwd["rev_nat_id"]) == (ids[0], 45)
    rev = dp.snat.lookup(nat_key(pod, node_ip, 8080, port, proto, NAT.REV))
    assert bytes(rev["addr"]) == addr16(client_ip) and rev["port"] == 40000
    assert bytes(rev["nat_addr"]) == addr16(node_ip) and rev["nat_port"] == 30080
    assert (rev["backend_id"], rev["rev_nat_id"], rev["ifindex"]) == (ids[0], 45, IFINDEX)
    assert len(list(dp.nat.items())) == 0, "no DNAT-only entries for a remote backend"
    assert len(list(dp.snat.items())) == 2

    # later packets keep the mapping, even when the backend set changes
    dp.add_service(
        None,
        30080,
        proto,
        [(REMOTE4 if fam == 4 else REMOTE6, 9999)] * 2,
        rev_nat_id=45,
        flags=SVC.NODEPORT,
        family=fam,
    )
    r = dp.run(abi.PROG_FROM_NETDEV, frame(client_ip, node_ip, proto, 40000, 30080, flags=ACK))
    assert r.retval == TC_ACT_REDIRECT
    assert r.data_out == frame(node_ip, pod, proto, port, 8080, flags=ACK)

    # the backend's reply, arriving from the other node: back to the client, from the frontend
    reply = frame(pod, node_ip, proto, 8080, port, flags=SYN | ACK)
    r = dp.run(abi.PROG_FROM_NETDEV, reply)
    assert r.retval == TC_ACT_REDIRECT, "out of the device the request came in on"
    assert r.data_out == frame(node_ip, client_ip, proto, 30080, 40000, flags=SYN | ACK)
    check_checksums(r.data_out)
    # another port of the node, or another backend port: not a SNATed reply, untouched
    for other in (
        frame(pod, node_ip, proto, 8080, port + 1 if port < abi.LB_SNAT_PORT_MAX else port - 1),
        frame(pod, node_ip, proto, 8081, port),
    ):
        r = dp.run(abi.PROG_FROM_NETDEV, other)
        assert (r.retval, r.data_out) == (TC_ACT_OK, other)
    assert len(dp.events()) == 0, "translations are not events; nothing was dropped"


def test_nodeport_snat_exact_frontend_and_local_backend_mix(dp):
    """An exact node-address frontend SNATs to that address; a local backend of the same service is
    only DNATed (tnd_lb_nat, reply through tnd_from_container) as before."""
    set_remote_pods(dp)
    dp.set_local_pods()
    front = "203.0.113.9"
    dp.add_service(front, 30080, TCP, [(REMOTE4, 8080)], rev_nat_id=46, flags=SVC.NODEPORT)
    r = dp.run(abi.PROG_FROM_NETDEV, frame(CLIENT4, front, TCP, 40001, 30080))
    assert r.retval == TC_ACT_REDIRECT
    assert r.data_out == frame(front, REMOTE4, TCP, snat_port(CLIENT4, front, 40001, 30080, TCP), 8080)
    dp.add_service(front, 30080, TCP, [(POD4, 8080)], rev_nat_id=46, flags=SVC.NODEPORT)
    r = dp.run(abi.PROG_FROM_NETDEV, frame(CLIENT4, front, TCP, 40002, 30080))
    assert r.retval == TC_ACT_OK and r.data_out == frame(CLIENT4, POD4, TCP, 40002, 8080)
    assert dp.nat.lookup(nat_key(POD4, CLIENT4, 8080, 40002, TCP, NAT.REV)) is not None
    assert dp.snat.lookup(nat_key(CLIENT4, front, 40002, 30080, TCP, NAT.FWD)) is None
    # the earlier SNATed connection still has its remote backend
    r = dp.run(abi.PROG_FROM_NETDEV, frame(CLIENT4, front, TCP, 40001, 30080, flags=ACK))
    assert r.retval == TC_ACT_REDIRECT and r.data_out[30:34] == ipaddress.IPv4Address(REMOTE4).packed
    # a backend that is the node itself (host network) is not SNATed either
    dp.add_service(front, 30080, TCP, [(NODE4, 8080)], rev_nat_id=46, flags=SVC.NODEPORT)
    dp.set_host_ip(NODE4)
    r = dp.run(abi.PROG_FROM_NETDEV, frame(CLIENT4, front, TCP, 40003, 30080))
    assert r.retval == TC_ACT_OK and r.data_out == frame(CLIENT4, NODE4, TCP, 40003, 8080)


def _hold_port(dp: Lb, port: int, last_used_s: int, client: str = "198.51.100.99") -> None:
    """A REV entry of another client's connection on REMOTE4:8080 -> NODE4:port."""
    v = np.zeros((), abi.LB_SNAT_VALUE_DTYPE)
    v["addr"] = np.frombuffer(addr16(client), np.uint8)
    v["nat_addr"] = np.frombuffer(addr16(NODE4), np.uint8)
    v["port"], v["nat_port"], v["last_used_s"] = 50000, 30080, last_used_s
    dp.snat.update(nat_key(REMOTE4, NODE4, 8080, port, TCP, NAT.REV), v)


def test_nodeport_snat_port_collisions(dp):
    dp.set_host_ip(NODE4)
    set_remote_pods(dp)
    dp.add_service(None, 30080, TCP, [(REMOTE4, 8080)], rev_nat_id=47, flags=SVC.NODEPORT)
    now_s = int(time.clock_gettime(6)) - 1  # CLOCK_MONOTONIC_COARSE, as bpf_ktime_get_coarse_ns()
    assert now_s > abi.LB_SNAT_STALE_S + 10, "the machine must have been up for a while"
    # the first candidate is held by a live connection: the second one is used
    _hold_port(dp, snat_port(CLIENT4, NODE4, 40000, 30080, TCP), now_s)
    r = dp.run(abi.PROG_FROM_NETDEV, frame(CLIENT4, NODE4, TCP, 40000, 30080))
    assert r.data_out == frame(NODE4, REMOTE4, TCP, snat_port(CLIENT4, NODE4, 40000, 30080, TCP, 1), 8080)
    # a candidate whose connection has been silent for longer than LB_SNAT_STALE_S is reused
    _hold_port(dp, snat_port(CLIENT4, NODE4, 40001, 30080, TCP), now_s - abi.LB_SNAT_STALE_S - 5)
    r = dp.run(abi.PROG_FROM_NETDEV, frame(CLIENT4, NODE4, TCP, 40001, 30080))
    port = snat_port(CLIENT4, NODE4, 40001, 30080, TCP)
    assert r.data_out == frame(NODE4, REMOTE4, TCP, port, 8080)
    rev = dp.snat.lookup(nat_key(REMOTE4, NODE4, 8080, port, TCP, NAT.REV))
    assert bytes(rev["addr"]) == addr16(CLIENT4) and rev["port"] == 40001
    # every candidate held: dropped with "No mapping for NAT masquerade", event + metric
    for i in range(abi.LB_SNAT_RETRIES):
        _hold_port(dp, snat_port(CLIENT4, NODE4, 40002, 30080, TCP, i), now_s)
    pkt = frame(CLIENT4, NODE4, TCP, 40002, 30080)
    r = dp.run(abi.PROG_FROM_NETDEV, pkt)
    assert r.retval == TC_ACT_SHOT
    (e,) = dp.events()
    assert (e["type"], e["subtype"]) == (ET.DROP, abi.DropReason.NAT_NO_MAPPING)
    assert bytes(e["saddr"]) == addr16(CLIENT4) and (e["sport"], e["dport"]) == (40002, 30080)
    assert dp.metric(abi.DropReason.NAT_NO_MAPPING, abi.MetricDirection.INGRESS) == 1
    assert dp.snat.lookup(nat_key(CLIENT4, NODE4, 40002, 30080, TCP, NAT.FWD)) is None


# ---- NodePort: real traffic through client, node and pod namespaces -----------------------------------


def _ip(ns: str, *args: str) -> None:
    subprocess.run(["ip", "-n", ns, *args], check=True, capture_output=True)


SERVER = textwrap.dedent(
    """
    import socket, sys, threading
    def tcp(fam, addr):
        s = socket.socket(fam, socket.SOCK_STREAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if fam == socket.AF_INET6:
            s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        s.bind((addr, 8080)); s.listen(16)
        while True:
            c, peer = s.accept()
            c.sendall(("pod saw " + peer[0]).encode()); c.close()
    def udp(fam, addr):
        s = socket.socket(fam, socket.SOCK_DGRAM)
        if fam == socket.AF_INET6:
            s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        s.bind((addr, 8080))
        while True:
            d, peer = s.recvfrom(100); s.sendto(("pod saw " + peer[0]).encode(), peer)
    for fam, addr in ((socket.AF_INET, "0.0.0.0"), (socket.AF_INET6, "::")):
        for f in (tcp, udp):
            threading.Thread(target=f, args=(fam, addr), daemon=True).start()
    print("ready", flush=True)
    sys.stdin.read()
    """
)


def test_nodeport_real_traffic(dp):
    tag = secrets.token_hex(3)
    cl, nd, pd = f"tndlb-{tag}-c", f"tndlb-{tag}-n", f"tndlb-{tag}-p"
    links, server = [], None
    try:
        for ns in (cl, nd, pd):
            subprocess.run(["ip", "netns", "add", ns], check=True)
            _ip(ns, "link", "set", "lo", "up")
        subprocess.run(
            [
                "ip",
                "link",
                "add",
                "tlbc" + tag,
                "netns",
                cl,
                "type",
                "veth",
                "peer",
                "name",
                "eth0",
                "netns",
                nd,
            ],
            check=True,
        )
        _ip(cl, "link", "set", "tlbc" + tag, "name", "eth0")
        subprocess.run(
            [
                "ip",
                "link",
                "add",
                "tlbp" + tag,
                "netns",
                pd,
                "type",
                "veth",
                "peer",
                "name",
                "lxc0",
                "netns",
                nd,
            ],
            check=True,
        )
        _ip(pd, "link", "set", "tlbp" + tag, "name", "eth0")
        for ns, dev, addrs in (
            (cl, "eth0", ("198.51.100.2/24", "2001:db8:2::2/64")),
            (nd, "eth0", ("198.51.100.1/24", "2001:db8:2::1/64")),
            (nd, "lxc0", ("10.244.1.1/24", "fd00:244:1::1/64")),
            (pd, "eth0", ("10.244.1.5/24", "fd00:244:1::5/64")),
        ):
            for a in addrs:
                _ip(ns, "addr", "add", a, "dev", dev, *(["nodad"] if ":" in a else []))
            _ip(ns, "link", "set", dev, "up")
        _ip(pd, "route", "add", "default", "via", "10.244.1.1")
        _ip(pd, "-6", "route", "add", "default", "via", "fd00:244:1::1")
        netns.run_in_netns(nd, ["sysctl", "-qw", "net.ipv4.ip_forward=1", "net.ipv6.conf.all.forwarding=1"])

        with netns.iproute(nd) as ipr:
            eth0 = ipr.link_lookup(ifname="eth0")[0]
            lxc0 = ipr.link_lookup(ifname="lxc0")[0]
        dp.add_endpoint(lxc0, EP_ID, "10.244.1.5", "fd00:244:1::5")
        dp.set_host_ip("198.51.100.1", "2001:db8:2::1")
        dp.set_local_pods("10.244.1.5", "fd00:244:1::5")
        for proto in (TCP, UDP):
            dp.add_service(
                None, 30080, proto, [("10.244.1.5", 8080)], rev_nat_id=40 + proto, flags=SVC.NODEPORT
            )
            dp.add_service(
                None,
                30080,
                proto,
                [("fd00:244:1::5", 8080)],
                rev_nat_id=60 + proto,
                flags=SVC.NODEPORT,
                family=6,
            )

        def attach() -> None:
            links.append(attach_tc(dp.sock.program(abi.PROG_FROM_NETDEV), eth0, "ingress", mode="tcx"))
            links.append(attach_tc(dp.lxc.program(abi.PROG_FROM_CONTAINER), lxc0, "ingress", mode="tcx"))
            links.append(attach_tc(dp.lxc.program(abi.PROG_TO_CONTAINER), lxc0, "egress", mode="tcx"))

        netns.call_in_netns(nd, attach)
        server = subprocess.Popen(
            netns.nsenter_argv(pd, [sys.executable, "-c", SERVER]),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert server.stdout.readline() == "ready\n"

        code = textwrap.dedent(
            """
            import json, socket
            out = []
            for host in ("198.51.100.1", "2001:db8:2::1"):
                fam = socket.AF_INET6 if ":" in host else socket.AF_INET
                s = socket.create_connection((host, 30080), timeout=5)
                out.append([s.recv(100).decode(), list(s.getpeername()[:2])]); s.close()
                u = socket.socket(fam, socket.SOCK_DGRAM); u.settimeout(5)
                u.sendto(b"q", (host, 30080)); d, src = u.recvfrom(100)
                out.append([d.decode(), list(src[:2])]); u.close()
            print(json.dumps(out))
            """
        )
        r = netns.run_in_netns(cl, [sys.executable, "-c", code], timeout=60)
        assert json.loads(r.stdout) == [
            ["pod saw 198.51.100.2", ["198.51.100.1", 30080]],
            ["pod saw 198.51.100.2", ["198.51.100.1", 30080]],
            ["pod saw 2001:db8:2::2", ["2001:db8:2::1", 30080]],
            ["pod saw 2001:db8:2::2", ["2001:db8:2::1", 30080]],
        ]
        keys, _ = dp.nat.to_arrays()
        assert sorted(keys["dir"].tolist()) == [1] * 4 + [2] * 4
    finally:
        if server is not None:
            server.kill()
            server.wait()
        for link in links:
            with contextlib.suppress(Exception):
                link.detach()
        for ns in (cl, nd, pd):
            subprocess.run(["ip", "netns", "del", ns], check=False, capture_output=True)
