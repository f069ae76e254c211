"""The multi-node datapath on the real kernel: VXLAN overlay with the source identity in the VNI, and
native routing.

Part 1, BPF_PROG_TEST_RUN on hand-built packets (like tests/test_datapath_unit.py, whose packet
builders this reuses): build/bpf/lxc.o, overlay.o and sock.o loaded into their own pin root
/sys/fs/bpf/tndov-<random>/ (removed afterwards), the endpoint on the loopback ifindex.
  - tnd_from_container: a destination whose ipcache entry has a tunnel endpoint, with the overlay
    ifindex set, is rewritten (inner MACs) and redirected (TC_ACT_REDIRECT) with a TO_OVERLAY trace;
    without a tunnel endpoint, or without an overlay, nothing changes.
  - tnd_to_container: the identity tnd_from_overlay leaves in skb->mark is the peer identity for
    policy and events, and the mark is cleared.
  - tnd_from_overlay: BPF_PROG_TEST_RUN cannot attach tunnel metadata to its skb, so
    bpf_skb_get_tunnel_key() fails there and all it can show is the drop (Error retrieving tunnel
    key, 147). Reading the VNI is covered by part 2, on a real VXLAN device.
  - tnd_from_netdev: VXLAN packets (UDP 8472) pass untouched even when a NodePort would match.
  - the agent's Datapath: configure() and set_overlay() keep each other's settings, and an older
    8-byte tnd_settings pin is migrated.

Part 2, two lab nodes (tendril.lab.topology, random name and underlay) with one pod each
(tendril.datapath.podnet), the datapath loaded by the agent's Datapath class and its maps written by
hand (endpoints, ipcache, one ingress policy): ping and TCP, IPv4 and IPv6, between the pods across
nodes through tnd_vxlan (no route between the pod CIDRs exists: only the tunnel carries them), then
in native-routing mode through routes.sync_remote_routes. Node 2's ipcache deliberately gives pod 1
a different identity than its endpoint has, and pod 2 admits only pod 1's real identity: through the
overlay it is admitted (the VNI carries the identity), natively it is denied until the ipcache is
corrected.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import secrets
import shutil
import struct
import subprocess
import sys
from ipaddress import IPv4Network
from pathlib import Path

import numpy as np
import pytest

from conftest import free_underlay
from tendril.agent.datapath import Datapath as AgentDatapath
from tendril.bpf import BpfObject, Map, RingBufferReader, TypedMap, abi, attach_tc, create_map, test_run
from tendril.bpf import libbpf as lb
from tendril.bpf.bpffs import ensure_bpffs, remove_pins
from tendril.bpf.links import Link, link_info, prog_id
from tendril.datapath import netns, overlay, podnet, routes
from tendril.lab import topology
from test_datapath_policy import rule
from test_datapath_unit import (
    ACK,
    EP_ID,
    FROM,
    IFINDEX,
    POD4,
    POD6,
    ROOT,
    SYN,
    TC_ACT_OK,
    TC_ACT_SHOT,
    TO,
    eth,
    icmp,
    ip4,
    ip6,
    tcp4,
    udp4,
    udp6,
)

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (eBPF, network namespaces)")

TC_ACT_REDIRECT = 7
EVF = abi.EventFlags
ET = abi.EventType
TP = abi.TracePoint
DROP = abi.DropReason
MT = abi.MatchType
ID = abi.Identity

OBJ_DIR = ROOT / "build" / "bpf"
OVERLAY_IFINDEX = 1  # any ifindex: BPF_PROG_TEST_RUN returns the redirect verdict without doing it
LOCAL_ID = 1500  # the endpoint's own identity (the VNI it sends with)
REMOTE4, REMOTE6 = "10.0.0.2", "fd00::2"  # a pod on node 2 of the underlay
REMOTE_ID = 2000
REMOTE_NODE = "198.18.0.12"
LOCAL4, LOCAL6 = "10.0.0.3", "fd00::3"  # a pod on this node
LOCAL_PEER_ID = 2001
OVERLAY_MAC = bytes.fromhex(abi.OVERLAY_MAC_ADDR.replace(":", ""))


def icmp4(src: str, dst: str, type_: int = 8, ident: int = 77) -> bytes:
    return eth(0x0800, ip4(src, dst, 1, icmp(type_, ident=ident)))


def icmp6(src: str, dst: str, type_: int = 128, ident: int = 77) -> bytes:
    return eth(0x86DD, ip6(src, dst, 58, icmp(type_, ident=ident)))


def tcp6(src: str, dst: str, sport: int, dport: int, flags: int) -> bytes:
    from test_datapath_unit import tcp

    return eth(0x86DD, ip6(src, dst, 6, tcp(sport, dport, flags)))


# ---- part 1: BPF_PROG_TEST_RUN ---------------------------------------------------------------------


class OverlayDP:
    """lxc.o + overlay.o + sock.o sharing one pin root, with typed views of the maps used here."""

    def __init__(self, root: Path) -> None:
        self.objs: list[BpfObject] = []
        for name in ("lxc.o", "overlay.o", "sock.o"):
            obj = BpfObject.open(OBJ_DIR / name, pin_root=root)
            self.objs.append(obj)
            obj.load()
        self.lxc, self.ovl, self.sock = self.objs
        m = self.lxc.map
        self.endpoints = TypedMap(m(abi.MAP_ENDPOINTS), abi.ENDPOINT_KEY_DTYPE, abi.ENDPOINT_INFO_DTYPE)
        self.settings = TypedMap(m(abi.MAP_SETTINGS), abi.SETTINGS_KEY_DTYPE, abi.SETTINGS_DTYPE)
        self.ipcache = TypedMap(m(abi.MAP_IPCACHE), abi.IPCACHE_KEY_DTYPE, abi.IPCACHE_VALUE_DTYPE)
        self.metrics = TypedMap(m(abi.MAP_METRICS), abi.METRICS_KEY_DTYPE, abi.METRICS_VALUE_DTYPE)
        self.ct = TypedMap(m(abi.MAP_CT), abi.CT_KEY_DTYPE, abi.CT_VALUE_DTYPE)
        self.policy_outer: Map = m(abi.MAP_POLICY)
        self.reader = RingBufferReader(m(abi.MAP_EVENTS), abi.EVENT_DTYPE)

    def close(self) -> None:
        self.reader.close()
        for obj in self.objs:
            obj.close()

    def setup(self, overlay_ifindex: int = OVERLAY_IFINDEX, level: int = abi.TraceLevel.MEDIUM) -> None:
        ep = np.zeros((), abi.ENDPOINT_INFO_DTYPE)
        ep["ep_id"], ep["identity"] = EP_ID, LOCAL_ID
        ep["ipv4"] = np.frombuffer(ipaddress.IPv4Address(POD4).packed, np.uint8)
        ep["ipv6"] = np.frombuffer(ipaddress.IPv6Address(POD6).packed, np.uint8)
        self.endpoints.update(IFINDEX, ep)
        self.set(overlay_ifindex, level)
        for ip in (POD4, POD6):
            self.ipcache.update(abi.ipcache_key(ip), abi.ipcache_value(LOCAL_ID))
        for ip in (REMOTE4, REMOTE6):
            self.ipcache.update(abi.ipcache_key(ip), abi.ipcache_value(REMOTE_ID, REMOTE_NODE))
        for ip in (LOCAL4, LOCAL6):
            self.ipcache.update(abi.ipcache_key(ip), abi.ipcache_value(LOCAL_PEER_ID))

    def set(self, overlay_ifindex: int, level: int = abi.TraceLevel.MEDIUM) -> None:
        s = np.zeros((), abi.SETTINGS_DTYPE)
        s["trace_level"], s["flags"] = int(level), abi.SETTINGS_SOURCE_IP_CHECK
        s["overlay_ifindex"] = overlay_ifindex
        self.settings.update(0, s)

    def install_policy(self, entries, egress: bool = False, ingress: bool = False) -> None:
        from tendril.bpf import create_policy_map

        with create_policy_map(name="tndov_pol") as pm:
            t = TypedMap(pm, abi.POLICY_KEY_DTYPE, abi.POLICY_VALUE_DTYPE)
            for direction, on in ((True, egress), (False, ingress)):
                if on:
                    t.update(abi.policy_enforced_key(direction), abi.policy_value(MT.NONE))
            for k, v in entries:
                t.update(k, v)
            self.policy_outer.set_inner(EP_ID, pm)

    def run(self, prog: str, pkt: bytes, mark: int = 0) -> tuple[int, bytes, int]:
        """(verdict, packet after the program, skb->mark after the program)."""
        ctx = bytearray(192)  # struct __sk_buff
        struct.pack_into("<I", ctx, 8, mark)  # __sk_buff.mark
        struct.pack_into("<I", ctx, 40, IFINDEX)  # __sk_buff.ifindex
        obj = {abi.PROG_FROM_OVERLAY: self.ovl, abi.PROG_FROM_NETDEV: self.sock}.get(prog, self.lxc)
        r = test_run(obj.program(prog), pkt, ctx=bytes(ctx))
        assert r.ctx_out is not None
        return r.retval, r.data_out, struct.unpack_from("<I", r.ctx_out, 8)[0]

    def events(self) -> np.ndarray:
        return self.reader.drain()

    def metric(self, reason: int, direction: int) -> int:
        v = self.metrics.lookup(abi.metrics_index(reason, direction))
        return int(v["packets"].sum())


_built = False


def _build() -> None:
    global _built
    if not _built:  # never test a stale object: make is a no-op when it is up to date
        subprocess.run(["make", "-s", "-C", str(ROOT / "bpf")], check=True)
        _built = True


@pytest.fixture
def odp():
    _build()
    ensure_bpffs()
    root = Path(f"/sys/fs/bpf/tndov-{secrets.token_hex(6)}")
    d = None
    try:
        d = OverlayDP(root)
        d.setup()
        yield d
    finally:
        if d is not None:
            d.close()
        shutil.rmtree(root, ignore_errors=True)


def addr16(a: str) -> bytes:
    p = ipaddress.ip_address(a).packed
    return p + bytes(16 - len(p))


def check_encapsulated(pkt: bytes, out: bytes) -> None:
    """Inner destination MAC = the overlay MAC, source = the MAC the pod sent to, the rest unchanged."""
    assert out[0:6] == OVERLAY_MAC
    assert out[6:12] == pkt[0:6]
    assert out[12:] == pkt[12:]


ENCAP_CASES = {
    "tcp4": (tcp4(POD4, REMOTE4, 40000, 80, SYN), REMOTE4, 6),
    "tcp6": (tcp6(POD6, REMOTE6, 40000, 80, SYN), REMOTE6, 6),
    "udp4": (udp4(POD4, REMOTE4, 40001, 53), REMOTE4, 17),
    "udp6": (udp6(POD6, REMOTE6, 40001, 53), REMOTE6, 17),
    "icmp4": (icmp4(POD4, REMOTE4), REMOTE4, 1),
    "icmp6": (icmp6(POD6, REMOTE6), REMOTE6, 58),
}


@pytest.mark.parametrize("case", sorted(ENCAP_CASES))
def test_from_container_encapsulates_to_remote_node(odp, case):
    pkt, dst, proto = ENCAP_CASES[case]
    verdict, out, _ = odp.run(FROM, pkt)
    assert verdict == TC_ACT_REDIRECT
    check_encapsulated(pkt, out)
    ev = odp.events()
    assert len(ev) == 1, ev
    e = ev[0]
    assert (e["type"], e["subtype"]) == (ET.TRACE, TP.TO_OVERLAY)
    assert e["ep_id"] == EP_ID and e["ifindex"] == IFINDEX
    assert e["remote_id"] == REMOTE_ID  # the destination's identity; the source is the endpoint
    assert e["ct_state"] == abi.CtState.NEW and e["l4_proto"] == proto
    assert not e["flags"] & EVF.INGRESS
    assert bytes(e["daddr"]) == addr16(dst)
    assert odp.metric(0, abi.MetricDirection.EGRESS) == 1
    # conntrack as for any connection leaving the pod
    (k, v), *_ = list(odp.ct.items())
    assert v["scope"] == abi.CtScope.EGRESS and bytes(k["daddr"]) == addr16(dst)


@pytest.mark.parametrize("pkt", [tcp4(POD4, LOCAL4, 40000, 80, SYN), udp6(POD6, LOCAL6, 1, 2)])
def test_from_container_without_tunnel_endpoint_is_unchanged(odp, pkt):
    verdict, out, _ = odp.run(FROM, pkt)
    assert verdict == TC_ACT_OK and out == pkt
    (e,) = odp.events()
    assert (e["type"], e["subtype"], e["remote_id"]) == (ET.TRACE, TP.FROM_LXC, LOCAL_PEER_ID)


def test_from_container_without_overlay_is_native(odp):
    odp.set(overlay_ifindex=0)
    for pkt in (tcp4(POD4, REMOTE4, 40000, 80, SYN), icmp6(POD6, REMOTE6)):
        verdict, out, _ = odp.run(FROM, pkt)
        assert verdict == TC_ACT_OK and out == pkt
        (e,) = odp.events()
        assert (e["type"], e["subtype"], e["remote_id"]) == (ET.TRACE, TP.FROM_LXC, REMOTE_ID)


def test_world_destination_is_not_tunnelled(odp):
    pkt = udp4(POD4, "203.0.113.9", 1000, 53)
    verdict, out, _ = odp.run(FROM, pkt)
    assert verdict == TC_ACT_OK and out == pkt
    (e,) = odp.events()
    assert (e["subtype"], e["remote_id"]) == (TP.FROM_LXC, ID.WORLD)


def test_egress_policy_decides_before_the_tunnel(odp):
    odp.install_policy(rule(REMOTE_ID, True, 6, 80), egress=True)
    denied = tcp4(POD4, REMOTE4, 40000, 81, SYN)
    verdict, out, _ = odp.run(FROM, denied)
    assert verdict == TC_ACT_SHOT and out == denied
    ev = odp.events()
    drops = ev[ev["type"] == ET.DROP]
    assert len(drops) == 1 and drops[0]["subtype"] == DROP.POLICY_DENIED
    assert drops[0]["remote_id"] == REMOTE_ID

    allowed = tcp4(POD4, REMOTE4, 40000, 80, SYN)
    verdict, out, _ = odp.run(FROM, allowed)
    assert verdict == TC_ACT_REDIRECT
    check_encapsulated(allowed, out)
    ev = odp.events()
    assert [int(t) for t in ev["type"]] == [ET.POLICY_VERDICT, ET.TRACE]
    assert ev[1]["subtype"] == TP.TO_OVERLAY and (ev["remote_id"] == REMOTE_ID).all()


def test_trace_level_applies_to_overlay_traces(odp):
    odp.run(FROM, tcp4(POD4, REMOTE4, 40000, 80, SYN))
    odp.run(FROM, tcp4(POD4, REMOTE4, 40000, 80, ACK))  # established, no flag of interest
    ev = odp.events()
    assert len(ev) == 1 and ev[0]["tcp_flags"] == SYN
    odp.set(OVERLAY_IFINDEX, abi.TraceLevel.NONE)
    verdict, _, _ = odp.run(FROM, tcp4(POD4, REMOTE4, 40002, 80, SYN))
    assert verdict == TC_ACT_REDIRECT and len(odp.events()) == 0


def test_mark_identity_is_the_peer_for_ingress_policy(odp):
    """Pod 2000's identity came in the VNI; the ipcache says something else about its address."""
    odp.ipcache.update(abi.ipcache_key(REMOTE4), abi.ipcache_value(3000, REMOTE_NODE))
    odp.install_policy(rule(REMOTE_ID, False), ingress=True)  # only identity 2000 may come in

    syn = tcp4(REMOTE4, POD4, 40000, 80, SYN)
    verdict, out, mark = odp.run(TO, syn, mark=abi.overlay_mark(REMOTE_ID))
    assert verdict == TC_ACT_OK and out == syn
    assert mark == 0  # consumed
    ev = odp.events()
    assert [int(t) for t in ev["type"]] == [ET.POLICY_VERDICT, ET.TRACE]
    assert not ev[0]["flags"] & EVF.POLICY_DENY and ev[0]["subtype"] == MT.L3_ONLY
    assert ev[1]["subtype"] == TP.TO_LXC and ev[1]["flags"] & EVF.INGRESS
    assert (ev["remote_id"] == REMOTE_ID).all()

    # Another identity in the mark: denied, and reported with that identity.
    syn2 = tcp4(REMOTE4, POD4, 40001, 80, SYN)
    verdict, out, mark = odp.run(TO, syn2, mark=abi.overlay_mark(4242))
    assert verdict == TC_ACT_SHOT and mark == 0
    ev = odp.events()
    assert [int(t) for t in ev["type"]] == [ET.POLICY_VERDICT, ET.DROP]
    assert ev[0]["flags"] & EVF.POLICY_DENY and ev[1]["subtype"] == DROP.POLICY_DENIED
    assert (ev["remote_id"] == 4242).all()

    # No mark: the ipcache's identity (3000), denied.
    verdict, _, _ = odp.run(TO, tcp4(REMOTE4, POD4, 40002, 80, SYN))
    assert verdict == TC_ACT_SHOT
    ev = odp.events()
    assert (ev["remote_id"] == 3000).all() and ev[-1]["subtype"] == DROP.POLICY_DENIED


def test_mark_identity_in_events_without_policy_and_replies_go_back_through_the_tunnel(odp):
    ping = icmp6(REMOTE6, POD6, 128, ident=9)
    verdict, _, mark = odp.run(TO, ping, mark=abi.overlay_mark(REMOTE_ID + 1))
    assert verdict == TC_ACT_OK and mark == 0
    (e,) = odp.events()
    assert (e["subtype"], e["remote_id"], e["ct_state"]) == (TP.TO_LXC, REMOTE_ID + 1, abi.CtState.NEW)

    pong = icmp6(POD6, REMOTE6, 129, ident=9)
    verdict, out, _ = odp.run(FROM, pong)
    assert verdict == TC_ACT_REDIRECT
    check_encapsulated(pong, out)
    (e,) = odp.events()
    assert (e["subtype"], e["ct_state"]) == (TP.TO_OVERLAY, abi.CtState.REPLY)
    assert e["flags"] & EVF.IS_REPLY and e["remote_id"] == REMOTE_ID


def test_marks_without_the_magic_are_left_alone(odp):
    for mark in (0x1234, abi.overlay_mark(REMOTE_ID) ^ 1):
        verdict, _, out_mark = odp.run(TO, udp4(REMOTE4, POD4, 5000 + mark % 100, 53), mark=mark)
        assert verdict == TC_ACT_OK and out_mark == mark
        (e,) = odp.events()
        assert e["remote_id"] == REMOTE_ID  # from the ipcache
    # tnd_from_container never reads a mark
    verdict, _, out_mark = odp.run(FROM, udp4(POD4, LOCAL4, 1, 2), mark=abi.overlay_mark(7))
    assert verdict == TC_ACT_OK and out_mark == abi.overlay_mark(7)


def test_from_overlay_without_tunnel_metadata_drops(odp):
    """BPF_PROG_TEST_RUN gives the skb no tunnel info: bpf_skb_get_tunnel_key() fails, which is the
    only path it can exercise (the VNI path runs on a real device in part 2)."""
    pkt = tcp4(REMOTE4, POD4, 40000, 80, SYN)
    verdict, out, mark = odp.run(abi.PROG_FROM_OVERLAY, pkt)
    assert verdict == TC_ACT_SHOT and out == pkt and mark == 0
    (e,) = odp.events()
    assert (e["type"], e["subtype"]) == (ET.DROP, DROP.NO_TUNNEL_KEY)
    assert e["remote_id"] == ID.WORLD and e["ep_id"] == 0 and bytes(e["saddr"]) == addr16(REMOTE4)
    assert odp.metric(DROP.NO_TUNNEL_KEY, abi.MetricDirection.INGRESS) == 1


def test_vni_identity_and_mark_helpers():
    assert abi.overlay_vni_identity(0) == ID.WORLD
    assert abi.overlay_vni_identity(1) == ID.REMOTE_NODE
    assert abi.overlay_vni_identity(70000) == 70000
    assert abi.overlay_mark(70000) == 70000 << 8 | 0xE5
    with pytest.raises(ValueError):
        abi.overlay_mark(1 << 24)
    assert abi.OVERLAY_MAC_ADDR == "02:74:6e:64:00:01" and abi.VXLAN_PORT == 8472


def test_netdev_passes_vxlan_even_if_a_nodeport_matches(odp):
    """A (silly) NodePort on UDP 8472 would DNAT tunnel packets; the VXLAN port check comes first."""
    node_ip, backend = "198.18.0.11", "10.0.0.1"
    odp.ipcache.update(abi.ipcache_key(node_ip), abi.ipcache_value(ID.HOST))
    odp.ipcache.update(
        abi.ipcache_key(backend), abi.ipcache_value(300, "", 1)
    )  # a pod of this node: DNAT only
    lbs = TypedMap(odp.lxc.map(abi.MAP_LB_SERVICES), abi.LB_KEY_DTYPE, abi.LB_VALUE_DTYPE)
    lbb = TypedMap(odp.lxc.map(abi.MAP_LB_BACKENDS), abi.LB_BACKEND_KEY_DTYPE, abi.LB_BACKEND_DTYPE)
    lbb.update(5, abi.lb_backend(backend, 8000, 17))
    for port, rev in ((abi.VXLAN_PORT, 7), (abi.VXLAN_PORT + 1, 8)):
        lbs.update(abi.lb_key(None, port, 17, 1), abi.lb_slot(5, rev))
        lbs.update(abi.lb_key(None, port, 17, 0), abi.lb_master(1, rev, abi.ServiceFlags.NODEPORT))
    vxlan_pkt = udp4("198.18.0.12", node_ip, 40000, abi.VXLAN_PORT, b"\x08" + bytes(15))
    verdict, out, _ = odp.run(abi.PROG_FROM_NETDEV, vxlan_pkt)
    assert verdict == TC_ACT_OK and out == vxlan_pkt
    other = udp4("198.18.0.12", node_ip, 40000, abi.VXLAN_PORT + 1)
    verdict, out, _ = odp.run(abi.PROG_FROM_NETDEV, other)
    assert verdict == TC_ACT_OK and out[30:34] == ipaddress.IPv4Address(backend).packed  # DNATed
    assert len(odp.events()) == 0


# ---- the agent's Datapath: settings -------------------------------------------------------------------


@pytest.fixture
def agent_dp():
    _build()
    node = f"tndov{secrets.token_hex(4)}"
    dp = AgentDatapath(node)
    try:
        yield dp
    finally:
        dp.close()
        remove_pins(node)


def test_configure_and_set_overlay_keep_each_other(agent_dp):
    agent_dp.load()
    agent_dp.configure(abi.TraceLevel.NONE, audit=True)
    agent_dp.set_overlay(42)
    s = agent_dp.settings.lookup(0)
    assert (s["trace_level"], s["flags"], s["overlay_ifindex"]) == (
        abi.TraceLevel.NONE,
        abi.SETTINGS_SOURCE_IP_CHECK | abi.SETTINGS_POLICY_AUDIT,
        42,
    )
    agent_dp.configure(abi.TraceLevel.MEDIUM, source_ip_check=False)
    s = agent_dp.settings.lookup(0)
    assert (s["trace_level"], s["flags"], s["overlay_ifindex"]) == (abi.TraceLevel.MEDIUM, 0, 42)
    assert agent_dp.overlay_ifindex() == 42
    agent_dp.set_overlay(0)
    assert agent_dp.settings.lookup(0)["trace_level"] == abi.TraceLevel.MEDIUM
    assert agent_dp.overlay_ifindex() == 0
    with pytest.raises(ValueError):
        agent_dp.set_overlay(-1)


def test_settings_pinned_by_an_older_datapath_are_migrated(agent_dp):
    """Before the overlay, tnd_settings had 8-byte values: libbpf cannot reuse such a pin, so load()
    replaces it, keeping trace level and flags."""
    agent_dp.pin_dir.mkdir(parents=True, exist_ok=True)
    old = create_map(lb.BPF_MAP_TYPE_ARRAY, 4, 8, 1, name="tnd_settings")
    try:
        old.update(bytes(4), struct.pack("<II", abi.TraceLevel.NONE, abi.SETTINGS_POLICY_AUDIT))
        old.pin(agent_dp.pin_dir / abi.MAP_SETTINGS)
    finally:
        old.close()
    agent_dp.load()
    s = agent_dp.settings.lookup(0)
    assert (s["trace_level"], s["flags"], s["overlay_ifindex"]) == (
        abi.TraceLevel.NONE,
        abi.SETTINGS_POLICY_AUDIT,
        0,
    )
    assert Map.open_pinned(agent_dp.pin_dir / abi.MAP_SETTINGS).value_size == abi.SETTINGS_DTYPE.itemsize


# ---- part 2: two nodes, real VXLAN and native routing ----------------------------------------------

POD_MTU = 1450  # underlay 1500 - VXLAN's 50
ECHO_PORT = 5201
ID1, ID2 = 1000, 2000  # the pods' endpoint identities
ID1_SEEN_BY_IPCACHE2 = 3000  # what node 2's ipcache says about pod 1's addresses (deliberately wrong)
EP1, EP2 = 11, 22

ECHO_SERVER = r"""
import socket, sys
s = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
s.bind(("::", int(sys.argv[1])))
s.listen(16)
print("ready", flush=True)
while True:
    c, _ = s.accept()
    n = 0
    while True:
        b = c.recv(65536)
        if not b:
            break
        n += len(b)
    c.sendall(str(n).encode())
    c.close()
"""

ECHO_CLIENT = r"""
import socket, sys, time
host, port, size = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
deadline = time.monotonic() + 10
while True:
    try:
        c = socket.create_connection((host, port), timeout=5)
        break
    except OSError:
        if time.monotonic() > deadline:
            raise
        time.sleep(0.1)
c.settimeout(20)
c.sendall(b"x" * size)
c.shutdown(socket.SHUT_WR)
r = b""
while True:
    b = c.recv(100)
    if not b:
        break
    r += b
print(r.decode())
"""


class Node:
    def __init__(self, info: topology.NodeInfo, index: int, identity: int, ep_id: int) -> None:
        self.info = info
        self.dp = AgentDatapath(info.name)
        self.identity = identity
        self.ep_id = ep_id
        self.ipv4 = info.pod_cidr_v4.network_address + 10
        self.ipv6 = info.pod_cidr_v6.network_address + 10
        self.pod: podnet.PodNetwork | None = None
        self.reader: RingBufferReader | None = None
        self.ipcache: TypedMap | None = None
        self.policy: Map | None = None

    @property
    def netns(self) -> str:
        return self.info.netns

    def start(self) -> None:
        self.pod = podnet.create_pod_network(
            self.netns,
            podnet.pod_netns_name(self.info.name, "default", "p"),
            podnet.host_ifname_for(self.info.name, "default", "p"),
            self.ipv4,
            self.ipv6,
            self.info.router_v4,
            mtu=POD_MTU,
        )
        self.dp.load()
        self.dp.configure(abi.TraceLevel.MEDIUM)
        # Attaching names the device by ifindex, which the kernel reads in the caller's netns: the
        # agent runs in its node's netns; this test does the attaching from a thread that joined it.
        self.in_netns(
            self.dp.attach_endpoint,
            self.pod.host_ifindex,
            self.pod.host_ifname,
            self.ep_id,
            str(self.ipv4),
            str(self.ipv6),
            self.identity,
        )
        assert self.dp.obj is not None
        self.ipcache = TypedMap(
            self.dp.obj.map(abi.MAP_IPCACHE), abi.IPCACHE_KEY_DTYPE, abi.IPCACHE_VALUE_DTYPE
        )
        self.policy = self.dp.obj.map(abi.MAP_POLICY)
        self.reader = RingBufferReader(self.dp.events_map, abi.EVENT_DTYPE)
        for ip in (self.ipv4, self.ipv6):
            self.ipcache.update(abi.ipcache_key(str(ip)), abi.ipcache_value(self.identity))
        # The NodePort program on the underlay device, as the agent attaches it: tunnel packets pass it.
        sock = BpfObject.open(OBJ_DIR / "sock.o", pin_root=self.dp.pin_dir)
        try:
            sock.load()
            with netns.iproute(self.netns) as ipr:
                eth0 = ipr.link_lookup(ifname="eth0")[0]
            self.in_netns(
                lambda: attach_tc(
                    sock.program(abi.PROG_FROM_NETDEV),
                    eth0,
                    "ingress",
                    pin_path=self.dp.link_dir / "netdev-ingress",
                ).close()
            )
        finally:
            sock.close()

    def in_netns(self, fn, *args):  # noqa: ANN001, ANN002, ANN201
        return netns.call_in_netns(self.netns, fn, *args)

    def learn(self, peer: Node, identity: int, tunnel: bool) -> None:
        assert self.ipcache is not None
        endpoint = str(peer.info.underlay_ip) if tunnel else ""
        for ip in (peer.ipv4, peer.ipv6):
            self.ipcache.update(abi.ipcache_key(str(ip)), abi.ipcache_value(identity, endpoint))

    def admit_only(self, identity: int) -> None:
        """Ingress policy of the pod: only this peer identity (the enforcement marker + one L3 rule)."""
        from tendril.bpf import create_policy_map

        assert self.policy is not None
        with create_policy_map(name="tndov_pol") as pm:
            t = TypedMap(pm, abi.POLICY_KEY_DTYPE, abi.POLICY_VALUE_DTYPE)
            t.update(abi.policy_enforced_key(False), abi.policy_value(MT.NONE))
            for k, v in rule(identity, False):
                t.update(k, v)
            self.policy.set_inner(self.ep_id, pm)

    def vxlan_stats(self) -> tuple[int, int]:
        """(tx_packets, rx_packets) of tnd_vxlan."""
        with netns.iproute(self.netns) as ipr:
            idx = ipr.link_lookup(ifname=overlay.VXLAN_IFNAME)[0]
            st = ipr.get_links(idx)[0].get("IFLA_STATS64")
            return st["tx_packets"], st["rx_packets"]

    def events(self) -> np.ndarray:
        assert self.reader is not None
        return self.reader.drain()

    def stop(self) -> None:
        if self.reader is not None:
            self.reader.close()
        self.dp.close()


def _ping(src: Node, dst: str) -> subprocess.CompletedProcess[str]:
    assert src.pod is not None
    return netns.run_in_netns(
        src.pod.pod_netns, ["ping", "-c", "2", "-i", "0.2", "-W", "2", dst], check=False, timeout=20
    )


def _tcp(src: Node, dst: str, size: int) -> subprocess.CompletedProcess[str]:
    assert src.pod is not None
    return netns.run_in_netns(
        src.pod.pod_netns,
        [sys.executable, "-c", ECHO_CLIENT, dst, str(ECHO_PORT), str(size)],
        check=False,
        timeout=40,
    )


class TwoNodes:
    def __init__(self, lab: str, infos: list[topology.NodeInfo]) -> None:
        self.lab = lab
        self.n1 = Node(infos[0], 1, ID1, EP1)
        self.n2 = Node(infos[1], 2, ID2, EP2)
        self.server: subprocess.Popen[str] | None = None

    def start(self) -> None:
        self.n1.start()
        self.n2.start()
        self.n2.admit_only(ID1)
        assert self.n2.pod is not None
        self.server = subprocess.Popen(
            netns.nsenter_argv(self.n2.pod.pod_netns, [sys.executable, "-c", ECHO_SERVER, str(ECHO_PORT)]),
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.server.stdout is not None and self.server.stdout.readline().strip() == "ready"

    def use_vxlan(self) -> None:
        for node, peer, peer_id in ((self.n1, self.n2, ID2), (self.n2, self.n1, ID1_SEEN_BY_IPCACHE2)):
            routes.sync_remote_routes(node.netns, [])  # nothing but the tunnel between the pod CIDRs
            node.in_netns(node.dp.attach_overlay, overlay.ensure_vxlan(node.netns, POD_MTU))
            node.learn(peer, peer_id, tunnel=True)

    def use_native(self) -> None:
        for node, peer, peer_id in ((self.n1, self.n2, ID2), (self.n2, self.n1, ID1_SEEN_BY_IPCACHE2)):
            node.in_netns(node.dp.detach_overlay)
            overlay.remove_vxlan(node.netns)
            node.learn(peer, peer_id, tunnel=False)
            p = peer.info
            routes.sync_remote_routes(
                node.netns,
                [
                    routes.RemoteNodeRoutes(
                        p.name, p.underlay_ip, p.underlay_ip6, p.pod_cidr_v4, p.pod_cidr_v6
                    )
                ],
            )

    def stop(self) -> None:
        if self.server is not None:
            self.server.kill()  # the process this test started, by its handle
            self.server.wait(timeout=10)
        for n in (self.n1, self.n2):
            n.stop()


@pytest.fixture(scope="module")
def two_nodes():
    if os.geteuid() != 0:
        pytest.skip("needs root")
    _build()
    lab = "ov" + secrets.token_hex(3)
    spec = topology.LabSpec(name=lab, nodes=2, underlay=IPv4Network(free_underlay()))
    env = None
    try:
        env = TwoNodes(lab, topology.create_lab(spec))
        env.start()
        yield env
    finally:
        if env is not None:
            with contextlib.suppress(Exception):
                env.stop()
        try:
            topology.destroy_lab(lab)
        finally:
            for i in (1, 2):
                remove_pins(topology.node_name(lab, i))


def _pods(env: TwoNodes) -> list[tuple[str, str]]:
    return [("v4", str(env.n2.ipv4)), ("v6", str(env.n2.ipv6))]


def _between(ev: np.ndarray, src: Node, dst: Node) -> np.ndarray:
    """The events of packets from src's pod to dst's pod (either family)."""

    def col(name: str, node: Node) -> np.ndarray:
        a = ev[name]
        return np.array(
            [(a == np.frombuffer(addr16(str(ip)), np.uint8)).all(axis=1) for ip in (node.ipv4, node.ipv6)]
        ).any(axis=0)

    if len(ev) == 0:
        return ev
    return ev[col("saddr", src) & col("daddr", dst)]


def test_vxlan_carries_pod_traffic_with_the_identity_in_the_vni(two_nodes):
    env = two_nodes
    env.use_vxlan()
    n1, n2 = env.n1, env.n2
    n1.events(), n2.events()
    tx1, rx1 = n1.vxlan_stats()
    tx2, rx2 = n2.vxlan_stats()

    for fam, dst in _pods(env):
        r = _ping(n1, dst)
        assert r.returncode == 0, f"ping {fam} {dst}: {r.stdout}{r.stderr}"
        r = _tcp(n1, dst, 2_000_000)  # bigger than any packet: segmentation at the pod MTU
        assert r.returncode == 0 and r.stdout.strip() == "2000000", f"tcp {fam}: {r.stdout}{r.stderr}"

    # The tunnel carried it both ways (no route between the pod CIDRs exists in this mode).
    tx1b, rx1b = n1.vxlan_stats()
    tx2b, rx2b = n2.vxlan_stats()
    # (GSO: a 64 KiB TCP super-packet counts once on the device)
    assert tx1b - tx1 >= 20 and rx2b - rx2 >= 20, (tx1b - tx1, rx2b - rx2)  # node 1 -> node 2
    assert rx1b - rx1 >= 4 and tx2b - tx2 >= 4  # replies and ACKs: node 2 -> node 1
    assert routes.list_remote_routes(n1.netns) == []

    ev1, ev2 = _between(n1.events(), n1, n2), n2.events()
    back = _between(ev2, n2, n1)
    ev2 = _between(ev2, n1, n2)
    # Node 1: the pod's packets reported at to-overlay, towards pod 2's identity.
    to_ovl = ev1[(ev1["type"] == ET.TRACE) & (ev1["subtype"] == TP.TO_OVERLAY)]
    assert len(to_ovl) >= 4
    assert (to_ovl["ep_id"] == EP1).all() and (to_ovl["remote_id"] == ID2).all()
    # Node 2: from-overlay with the VNI's identity, and to-endpoint with it (not the ipcache's 3000).
    from_ovl = ev2[(ev2["type"] == ET.TRACE) & (ev2["subtype"] == TP.FROM_OVERLAY)]
    assert len(from_ovl) >= 2 and (from_ovl["remote_id"] == ID1).all()
    to_lxc = ev2[(ev2["type"] == ET.TRACE) & (ev2["subtype"] == TP.TO_LXC)]
    assert len(to_lxc) >= 4 and (to_lxc["remote_id"] == ID1).all()
    verdicts = ev2[ev2["type"] == ET.POLICY_VERDICT]
    assert len(verdicts) >= 4 and (verdicts["remote_id"] == ID1).all()
    assert not (verdicts["flags"] & EVF.POLICY_DENY).any()
    assert not (ev2["type"] == ET.DROP).any(), ev2[ev2["type"] == ET.DROP]
    # Replies went back through the tunnel from node 2 too, reported at to-overlay.
    back = back[(back["type"] == ET.TRACE) & (back["subtype"] == TP.TO_OVERLAY)]
    assert len(back) >= 2 and (back["remote_id"] == ID1_SEEN_BY_IPCACHE2).all()
    assert (back["flags"] & EVF.IS_REPLY).all()


def test_vxlan_device_is_idempotent_and_attach_survives_reload(two_nodes):
    env = two_nodes
    env.use_vxlan()
    n1 = env.n1
    idx = overlay.vxlan_ifindex(n1.netns)
    assert overlay.ensure_vxlan(n1.netns, POD_MTU) == idx
    out = netns.run_in_netns(n1.netns, ["ip", "-d", "link", "show", overlay.VXLAN_IFNAME]).stdout
    assert "vxlan external" in out and "dstport 8472" in out and "nolearning" in out
    assert abi.OVERLAY_MAC_ADDR in out and f"mtu {POD_MTU}" in out
    # An agent restart: a new Datapath re-points the pinned link to its program (same link).
    pin = n1.dp.link_dir / "overlay-ingress"
    with Link.open_pinned(pin) as before:
        info = link_info(before.fd)
        assert (before.kind, before.ifindex, before.direction) == ("tcx", idx, "ingress")
    dp = AgentDatapath(n1.info.name)
    try:
        dp.load()
        n1.in_netns(dp.attach_overlay, idx)
        assert dp.overlay_ifindex() == idx and dp.overlay_obj is not None
        with Link.open_pinned(pin) as after:
            now = link_info(after.fd)
            assert now.id == info.id and now.prog_id == prog_id(dp.overlay_obj.program(abi.PROG_FROM_OVERLAY))
            assert now.prog_id != info.prog_id
    finally:
        dp.close()
    r = _ping(n1, str(env.n2.ipv4))
    assert r.returncode == 0, r.stdout


def test_native_routing_between_nodes(two_nodes):
    env = two_nodes
    env.use_native()
    n1, n2 = env.n1, env.n2
    assert overlay.vxlan_ifindex(n1.netns) is None and n1.dp.overlay_ifindex() == 0
    n1.events(), n2.events()

    # Node 2's ipcache has pod 1 as 3000, which pod 2 does not admit: natively that is what counts.
    r = _ping(n1, str(n2.ipv4))
    assert r.returncode != 0
    ev2 = _between(n2.events(), n1, n2)
    drops = ev2[ev2["type"] == ET.DROP]
    assert len(drops) >= 1 and (drops["subtype"] == DROP.POLICY_DENIED).all()
    assert (drops["remote_id"] == ID1_SEEN_BY_IPCACHE2).all()

    for ip in (n1.ipv4, n1.ipv6):
        n2.ipcache.update(abi.ipcache_key(str(ip)), abi.ipcache_value(ID1))
    for fam, dst in _pods(env):
        r = _ping(n1, dst)
        assert r.returncode == 0, f"ping {fam} {dst}: {r.stdout}{r.stderr}"
        r = _tcp(n1, dst, 2_000_000)
        assert r.returncode == 0 and r.stdout.strip() == "2000000", f"tcp {fam}: {r.stdout}{r.stderr}"
    ev1, ev2 = _between(n1.events(), n1, n2), _between(n2.events(), n1, n2)
    assert not ((ev1["type"] == ET.TRACE) & (ev1["subtype"] == TP.TO_OVERLAY)).any()
    assert ((ev1["type"] == ET.TRACE) & (ev1["subtype"] == TP.FROM_LXC)).any()
    to_lxc = ev2[(ev2["type"] == ET.TRACE) & (ev2["subtype"] == TP.TO_LXC)]
    assert len(to_lxc) >= 4 and (to_lxc["remote_id"] == ID1).all()
    # The packets took the routes: node 1 routes pod 2's CIDRs via node 2's underlay addresses.
    for dst, via in ((n2.ipv4, n2.info.underlay_ip), (n2.ipv6, n2.info.underlay_ip6)):
        got = netns.run_in_netns(n1.netns, ["ip", "route", "get", str(dst)]).stdout
        assert f"via {via} dev eth0" in got, got
    # Back to no overlay routes at all: pod traffic between the nodes stops.
    routes.sync_remote_routes(n1.netns, [])
    assert _ping(n1, str(n2.ipv4)).returncode != 0
    # restore the ipcache for later tests in this module
    for ip in (n1.ipv4, n1.ipv6):
        n2.ipcache.update(abi.ipcache_key(str(ip)), abi.ipcache_value(ID1_SEEN_BY_IPCACHE2))
