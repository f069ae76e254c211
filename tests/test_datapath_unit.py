"""Unit tests of the C datapath (bpf/lxc.c) on the real kernel with BPF_PROG_TEST_RUN.

Every test loads build/bpf/lxc.o into its own pin root (/sys/fs/bpf/tndut-<random>/, removed
afterwards), registers an endpoint for the loopback ifindex (BPF_PROG_TEST_RUN runs tc programs with
skb->ifindex = 1 unless the ctx names another existing device), sends hand-built packets through
tnd_from_container (pod -> world) / tnd_to_container (world -> pod), and checks the verdict, the
ring-buffer events, the conntrack entries and the metrics counters. No mocks.
"""

from __future__ import annotations

import errno
import ipaddress
import secrets
import shutil
import socket
import struct
import subprocess
from pathlib import Path

import numpy as np
import pytest

from tendril.bpf import BpfError, BpfObject, RingBufferReader, TypedMap, abi, test_run
from tendril.bpf.bpffs import ensure_bpffs

ROOT = Path(__file__).resolve().parents[1]
OBJ = ROOT / "build" / "bpf" / "lxc.o"

TC_ACT_OK = 0
TC_ACT_SHOT = 2
IFINDEX = 1  # loopback: the only device every netns has
EP_ID = 1234
POD4 = "10.0.0.1"
PEER4 = "10.0.0.2"
POD6 = "fd00::1"
PEER6 = "fd00::2"
SEC_NS = 1_000_000_000

FROM = abi.PROG_FROM_CONTAINER
TO = abi.PROG_TO_CONTAINER

SYN, ACK, FIN, RST, PSH = (
    int(f) for f in (abi.TcpFlags.SYN, abi.TcpFlags.ACK, abi.TcpFlags.FIN, abi.TcpFlags.RST, abi.TcpFlags.PSH)
)
EVF = abi.EventFlags
CTF = abi.CtFlags
DROP = abi.DropReason


# ---- packet construction (struct.pack; checksums are irrelevant to the datapath) ----------------


def eth(ethertype: int, payload: bytes) -> bytes:
    return b"\x02\x00\x00\x00\x00\x02" + b"\x02\x00\x00\x00\x00\x01" + struct.pack("!H", ethertype) + payload


def ip4(
    src: str, dst: str, proto: int, payload: bytes, ihl: int = 5, frag: int = 0, options: bytes | None = None
) -> bytes:
    opts = options if options is not None else bytes(max(0, ihl - 5) * 4)
    tot = 4 * ihl + len(payload)
    hdr = struct.pack(
        "!BBHHHBBH4s4s",
        0x40 | ihl,
        0,
        tot,
        0x1234,
        frag,
        64,
        proto,
        0,
        ipaddress.IPv4Address(src).packed,
        ipaddress.IPv4Address(dst).packed,
    )
    return hdr + opts + payload


def ip6(src: str, dst: str, nexthdr: int, payload: bytes) -> bytes:
    return (
        struct.pack(
            "!IHBB16s16s",
            6 << 28,
            len(payload),
            nexthdr,
            64,
            ipaddress.IPv6Address(src).packed,
            ipaddress.IPv6Address(dst).packed,
        )
        + payload
    )


def ext6(nexthdr: int, body_len: int = 6) -> bytes:
    """A hop-by-hop / routing / dest-opts header: (hdrlen + 1) * 8 bytes, options all Pad1."""
    assert (body_len + 2) % 8 == 0 and body_len + 2 <= 2048
    return struct.pack("!BB", nexthdr, (body_len + 2) // 8 - 1) + bytes(body_len)


def frag6(nexthdr: int, offset: int = 0, more: bool = False) -> bytes:
    return struct.pack("!BBHI", nexthdr, 0, (offset << 3) | int(more), 0xABCD)


def tcp(sport: int, dport: int, flags: int, doff: int = 5, payload: bytes = b"") -> bytes:
    return (
        struct.pack("!HHIIBBHHH", sport, dport, 1000, 2000, doff << 4, flags, 65535, 0, 0)
        + bytes(max(0, doff - 5) * 4)
        + payload
    )


def udp(sport: int, dport: int, payload: bytes = b"hello") -> bytes:
    return struct.pack("!HHHH", sport, dport, 8 + len(payload), 0) + payload


def icmp(type_: int, code: int = 0, ident: int = 0, seq: int = 1, payload: bytes = b"") -> bytes:
    return struct.pack("!BBHHH", type_, code, 0, ident, seq) + payload


def tcp4(src, dst, sport, dport, flags, **kw) -> bytes:
    return eth(0x0800, ip4(src, dst, 6, tcp(sport, dport, flags, **kw)))


def udp4(src, dst, sport, dport, payload=b"hello") -> bytes:
    return eth(0x0800, ip4(src, dst, 17, udp(sport, dport, payload)))


def udp6(src, dst, sport, dport, payload=b"hello") -> bytes:
    return eth(0x86DD, ip6(src, dst, 17, udp(sport, dport, payload)))


def addr(a: str) -> bytes:
    """An address as the datapath stores it: 16 bytes, IPv4 in the first 4."""
    p = ipaddress.ip_address(a).packed
    return p + bytes(16 - len(p))


# ---- fixture --------------------------------------------------------------------------------------


class Datapath:
    """One loaded lxc.o with typed views of its maps."""

    def __init__(self, obj: BpfObject) -> None:
        self.obj = obj
        self.ct = TypedMap(obj.map(abi.MAP_CT), abi.CT_KEY_DTYPE, abi.CT_VALUE_DTYPE)
        self.endpoints = TypedMap(obj.map(abi.MAP_ENDPOINTS), abi.ENDPOINT_KEY_DTYPE, abi.ENDPOINT_INFO_DTYPE)
        self.metrics_map = TypedMap(obj.map(abi.MAP_METRICS), abi.METRICS_KEY_DTYPE, abi.METRICS_VALUE_DTYPE)
        self.settings_map = TypedMap(obj.map(abi.MAP_SETTINGS), abi.SETTINGS_KEY_DTYPE, abi.SETTINGS_DTYPE)
        self.lost_map = TypedMap(obj.map(abi.MAP_LOST), abi.LOST_KEY_DTYPE, abi.LOST_VALUE_DTYPE)
        self.reader = RingBufferReader(obj.map(abi.MAP_EVENTS), abi.EVENT_DTYPE)

    def close(self) -> None:
        self.reader.close()
        self.obj.close()

    # setup
    def add_endpoint(
        self, ifindex: int = IFINDEX, ep_id: int = EP_ID, ipv4: str | None = POD4, ipv6: str | None = POD6
    ) -> None:
        v = np.zeros((), abi.ENDPOINT_INFO_DTYPE)
        v["ep_id"] = ep_id
        if ipv4:
            v["ipv4"] = np.frombuffer(ipaddress.IPv4Address(ipv4).packed, np.uint8)
        if ipv6:
            v["ipv6"] = np.frombuffer(ipaddress.IPv6Address(ipv6).packed, np.uint8)
        self.endpoints.update(ifindex, v)

    def set(self, level: int = abi.TraceLevel.MEDIUM, flags: int = abi.SETTINGS_SOURCE_IP_CHECK) -> None:
        s = np.zeros((), abi.SETTINGS_DTYPE)
        s["trace_level"] = int(level)
        s["flags"] = int(flags)
        self.settings_map.update(0, s)

    # traffic
    def run(self, prog: str, pkt: bytes, ifindex: int = IFINDEX) -> int:
        ctx = bytearray(192)  # struct __sk_buff
        struct.pack_into("<I", ctx, 40, ifindex)  # __sk_buff.ifindex
        r = test_run(self.obj.program(prog), pkt, ctx=bytes(ctx))
        assert r.data_out == pkt, "the datapath must not modify packets"
        self.progs_run = getattr(self, "progs_run", set()) | {prog}
        return r.retval

    def events(self) -> np.ndarray:
        """Drained events; the INGRESS flag (which program emitted them) is checked here, then cleared."""
        ev = self.reader.drain()
        ingress = (ev["flags"] & int(EVF.INGRESS)) != 0
        traces = ev["type"] == abi.EventType.TRACE
        assert (ingress[traces] == (ev["subtype"][traces] == abi.TracePoint.TO_LXC)).all(), ev
        progs, self.progs_run = getattr(self, "progs_run", set()), set()
        if len(progs) == 1:  # drops carry no trace point: check them when only one program ran
            assert (ingress == (progs == {TO})).all(), ev
        ev["flags"] &= ~np.uint16(EVF.INGRESS)
        return ev

    def one_event(self) -> np.void:
        ev = self.events()
        assert len(ev) == 1, ev
        return ev[0]

    # state
    def ct_key(self, src, dst, sport, dport, proto, ifindex=IFINDEX) -> np.void:
        k = np.zeros((), abi.CT_KEY_DTYPE)
        k["ifindex"] = ifindex
        k["saddr"] = np.frombuffer(addr(src), np.uint8)
        k["daddr"] = np.frombuffer(addr(dst), np.uint8)
        k["sport"], k["dport"], k["proto"] = sport, dport, proto
        k["ip_version"] = ipaddress.ip_address(src).version
        return k

    def ct_get(self, *a, **kw):
        return self.ct.lookup(self.ct_key(*a, **kw))

    def metric(self, reason: int, direction: int) -> tuple[int, int]:
        v = self.metrics_map.lookup(abi.metrics_index(reason, direction))
        return int(v["packets"].sum()), int(v["bytes"].sum())

    def lost(self) -> int:
        return int(self.lost_map.lookup(0).sum())


_built = False


def _open(map_sizes: dict[str, int] | None = None):
    global _built
    if not _built:  # never test a stale object: make is a no-op when it is up to date
        subprocess.run(["make", "-s", "-C", str(ROOT / "bpf")], check=True)
        _built = True
    ensure_bpffs()
    root = Path(f"/sys/fs/bpf/tndut-{secrets.token_hex(6)}")
    obj = None
    try:
        obj = BpfObject.open(OBJ, pin_root=root, map_sizes=map_sizes)
        obj.load()
        return Datapath(obj), root
    except BaseException:
        if obj is not None:
            obj.close()
        shutil.rmtree(root, ignore_errors=True)
        raise


@pytest.fixture
def dp():
    d, root = _open()
    try:
        d.add_endpoint()
        d.set()  # the agent's defaults: MEDIUM, source IP check on
        yield d
    finally:
        d.close()
        shutil.rmtree(root, ignore_errors=True)


def check_event(
    e,
    *,
    type_,
    subtype,
    ct_state,
    src,
    dst,
    sport,
    dport,
    proto,
    flags=0,
    tcp_flags=0,
    pkt=None,
    icmp_type=0,
    icmp_code=0,
    remote_id=abi.Identity.WORLD,
):
    assert e["type"] == type_
    assert e["subtype"] == subtype
    assert e["ip_version"] == ipaddress.ip_address(src).version
    assert e["l4_proto"] == proto
    assert e["ct_state"] == ct_state
    assert e["tcp_flags"] == tcp_flags
    assert (e["icmp_type"], e["icmp_code"]) == (icmp_type, icmp_code)
    assert (e["sport"], e["dport"]) == (sport, dport)
    assert e["ep_id"] == EP_ID
    assert e["flags"] == int(flags)
    assert e["ifindex"] == IFINDEX
    assert e["remote_id"] == remote_id  # the peer's identity: world when the ipcache has no entry
    assert bytes(e["saddr"]) == addr(src)
    assert bytes(e["daddr"]) == addr(dst)
    assert e["ts_ns"] > 0
    if pkt is not None:
        assert e["pkt_len"] == len(pkt)


# ---- TCP ------------------------------------------------------------------------------------------


def handshake(dp: Datapath, sport=40000, dport=80):
    assert dp.run(FROM, tcp4(POD4, PEER4, sport, dport, SYN)) == TC_ACT_OK
    assert dp.run(TO, tcp4(PEER4, POD4, dport, sport, SYN | ACK)) == TC_ACT_OK
    assert dp.run(FROM, tcp4(POD4, PEER4, sport, dport, ACK)) == TC_ACT_OK


def test_tcp_syn_creates_new_entry_and_trace(dp):
    pkt = tcp4(POD4, PEER4, 40000, 80, SYN)
    assert dp.run(FROM, pkt) == TC_ACT_OK

    e = dp.one_event()
    check_event(
        e,
        type_=abi.EventType.TRACE,
        subtype=abi.TracePoint.FROM_LXC,
        ct_state=abi.CtState.NEW,
        src=POD4,
        dst=PEER4,
        sport=40000,
        dport=80,
        proto=6,
        tcp_flags=SYN,
        pkt=pkt,
    )

    items = list(dp.ct.items())
    assert len(items) == 1
    k, v = items[0]
    assert bytes(k.tobytes()) == dp.ct_key(POD4, PEER4, 40000, 80, 6).tobytes()
    assert v["scope"] == abi.CtScope.EGRESS
    assert (v["tx_packets"], v["tx_bytes"], v["rx_packets"], v["rx_bytes"]) == (1, len(pkt), 0, 0)
    assert v["tx_flags_seen"] == SYN and v["rx_flags_seen"] == 0
    assert v["flags"] == 0  # SYN only: not SEEN_NON_SYN
    assert v["ep_id"] == EP_ID
    assert v["created_ns"] == v["last_seen_ns"] > 0
    assert v["expires_ns"] - v["last_seen_ns"] == abi.CT_LIFETIME_TCP_SYN * SEC_NS


def test_syn_ack_in_other_program_is_reply(dp):
    dp.run(FROM, tcp4(POD4, PEER4, 40000, 80, SYN))
    dp.events()
    pkt = tcp4(PEER4, POD4, 80, 40000, SYN | ACK)
    assert dp.run(TO, pkt) == TC_ACT_OK

    e = dp.one_event()
    check_event(
        e,
        type_=abi.EventType.TRACE,
        subtype=abi.TracePoint.TO_LXC,
        ct_state=abi.CtState.REPLY,
        src=PEER4,
        dst=POD4,
        sport=80,
        dport=40000,
        proto=6,
        tcp_flags=SYN | ACK,
        flags=EVF.IS_REPLY,
        pkt=pkt,
    )
    v = dp.ct_get(POD4, PEER4, 40000, 80, 6)
    assert (v["rx_packets"], v["rx_bytes"]) == (1, len(pkt))
    assert v["rx_flags_seen"] == SYN | ACK
    assert v["flags"] == CTF.SEEN_REPLY
    assert len(dp.ct) == 1  # no entry for the reversed tuple


def test_connection_started_by_peer_has_ingress_scope(dp):
    dp.run(TO, tcp4(PEER4, POD4, 50000, 8080, SYN))
    e = dp.one_event()
    assert (e["subtype"], e["ct_state"]) == (abi.TracePoint.TO_LXC, abi.CtState.NEW)
    assert dp.ct_get(PEER4, POD4, 50000, 8080, 6)["scope"] == abi.CtScope.INGRESS
    dp.run(FROM, tcp4(POD4, PEER4, 8080, 50000, SYN | ACK))
    e = dp.one_event()
    assert (e["subtype"], e["ct_state"], e["flags"]) == (
        abi.TracePoint.FROM_LXC,
        abi.CtState.REPLY,
        EVF.IS_REPLY,
    )


def test_established_ack_traced_only_at_level_all(dp):
    handshake(dp)
    evs = dp.events()
    assert len(evs) == 2  # SYN (new), SYN-ACK (first reply + SYN); the final ACK is not traced
    v = dp.ct_get(POD4, PEER4, 40000, 80, 6)
    assert v["flags"] == CTF.SEEN_REPLY | CTF.SEEN_NON_SYN
    assert v["expires_ns"] - v["last_seen_ns"] == abi.CT_LIFETIME_TCP * SEC_NS
    assert v["tx_flags_seen"] == SYN | ACK

    # data both ways: ESTABLISHED / REPLY, nothing traced at MEDIUM
    dp.run(FROM, tcp4(POD4, PEER4, 40000, 80, ACK | PSH, payload=b"x" * 100))
    dp.run(TO, tcp4(PEER4, POD4, 80, 40000, ACK))
    assert len(dp.events()) == 0

    dp.set(abi.TraceLevel.ALL)
    pkt = tcp4(POD4, PEER4, 40000, 80, ACK)
    dp.run(FROM, pkt)
    e = dp.one_event()
    check_event(
        e,
        type_=abi.EventType.TRACE,
        subtype=abi.TracePoint.FROM_LXC,
        ct_state=abi.CtState.ESTABLISHED,
        src=POD4,
        dst=PEER4,
        sport=40000,
        dport=80,
        proto=6,
        tcp_flags=ACK,
        pkt=pkt,
    )
    dp.run(TO, tcp4(PEER4, POD4, 80, 40000, ACK))
    e = dp.one_event()
    assert (e["ct_state"], e["flags"]) == (abi.CtState.REPLY, EVF.IS_REPLY)
    v = dp.ct_get(POD4, PEER4, 40000, 80, 6)
    assert (v["tx_packets"], v["rx_packets"]) == (4, 3)


def test_fin_and_rst_set_closing_lifetime(dp):
    handshake(dp)
    dp.events()
    dp.run(FROM, tcp4(POD4, PEER4, 40000, 80, FIN | ACK))
    e = dp.one_event()  # FIN is always traced at MEDIUM
    assert e["tcp_flags"] == FIN | ACK and e["ct_state"] == abi.CtState.ESTABLISHED
    v = dp.ct_get(POD4, PEER4, 40000, 80, 6)
    assert v["flags"] & CTF.TX_CLOSING and not v["flags"] & CTF.RX_CLOSING
    assert v["expires_ns"] - v["last_seen_ns"] == abi.CT_LIFETIME_TCP_CLOSE * SEC_NS

    dp.run(TO, tcp4(PEER4, POD4, 80, 40000, FIN | ACK))
    v = dp.ct_get(POD4, PEER4, 40000, 80, 6)
    assert v["flags"] & CTF.RX_CLOSING
    assert v["rx_flags_seen"] == SYN | ACK | FIN
    assert v["expires_ns"] - v["last_seen_ns"] == abi.CT_LIFETIME_TCP_CLOSE * SEC_NS
    # an ACK after the close does not bring the long lifetime back
    dp.run(FROM, tcp4(POD4, PEER4, 40000, 80, ACK))
    v = dp.ct_get(POD4, PEER4, 40000, 80, 6)
    assert v["expires_ns"] - v["last_seen_ns"] == abi.CT_LIFETIME_TCP_CLOSE * SEC_NS

    handshake(dp, sport=40001)
    dp.events()
    dp.run(TO, tcp4(PEER4, POD4, 80, 40001, RST))
    e = dp.one_event()
    assert e["tcp_flags"] == RST and e["ct_state"] == abi.CtState.REPLY
    v = dp.ct_get(POD4, PEER4, 40001, 80, 6)
    assert (
        v["flags"] & (CTF.RST | CTF.TX_CLOSING | CTF.RX_CLOSING) == CTF.RST | CTF.TX_CLOSING | CTF.RX_CLOSING
    )
    assert v["expires_ns"] - v["last_seen_ns"] == abi.CT_LIFETIME_TCP_CLOSE * SEC_NS


def test_syn_on_closing_entry_reopens_it(dp):
    handshake(dp)
    dp.run(FROM, tcp4(POD4, PEER4, 40000, 80, RST))
    dp.events()
    pkt = tcp4(POD4, PEER4, 40000, 80, SYN)
    dp.run(FROM, pkt)
    e = dp.one_event()
    assert e["ct_state"] == abi.CtState.NEW
    v = dp.ct_get(POD4, PEER4, 40000, 80, 6)
    assert v["flags"] == 0 and (v["tx_packets"], v["rx_packets"]) == (1, 0)
    assert v["expires_ns"] - v["last_seen_ns"] == abi.CT_LIFETIME_TCP_SYN * SEC_NS


def test_tcp_with_options_and_data(dp):
    pkt = tcp4(POD4, PEER4, 40000, 443, SYN, doff=10)
    assert dp.run(FROM, pkt) == TC_ACT_OK
    e = dp.one_event()
    assert (e["sport"], e["dport"], e["tcp_flags"]) == (40000, 443, SYN)


# ---- UDP ------------------------------------------------------------------------------------------


def test_udp_v4_request_reply(dp):
    req = udp4(POD4, PEER4, 33333, 53)
    assert dp.run(FROM, req) == TC_ACT_OK
    check_event(
        dp.one_event(),
        type_=abi.EventType.TRACE,
        subtype=abi.TracePoint.FROM_LXC,
        ct_state=abi.CtState.NEW,
        src=POD4,
        dst=PEER4,
        sport=33333,
        dport=53,
        proto=17,
        pkt=req,
    )
    rep = udp4(PEER4, POD4, 53, 33333, b"answer!!")
    assert dp.run(TO, rep) == TC_ACT_OK
    check_event(
        dp.one_event(),
        type_=abi.EventType.TRACE,
        subtype=abi.TracePoint.TO_LXC,
        ct_state=abi.CtState.REPLY,
        src=PEER4,
        dst=POD4,
        sport=53,
        dport=33333,
        proto=17,
        flags=EVF.IS_REPLY,
        pkt=rep,
    )
    # second exchange: nothing new to report at MEDIUM
    dp.run(FROM, req)
    dp.run(TO, rep)
    assert len(dp.events()) == 0
    v = dp.ct_get(POD4, PEER4, 33333, 53, 17)
    assert (v["tx_packets"], v["tx_bytes"], v["rx_packets"], v["rx_bytes"]) == (
        2,
        2 * len(req),
        2,
        2 * len(rep),
    )
    assert v["flags"] == CTF.SEEN_REPLY
    assert v["expires_ns"] - v["last_seen_ns"] == abi.CT_LIFETIME_NONTCP * SEC_NS


def test_udp_v6_request_reply(dp):
    req = udp6(POD6, PEER6, 33333, 53)
    assert dp.run(FROM, req) == TC_ACT_OK
    check_event(
        dp.one_event(),
        type_=abi.EventType.TRACE,
        subtype=abi.TracePoint.FROM_LXC,
        ct_state=abi.CtState.NEW,
        src=POD6,
        dst=PEER6,
        sport=33333,
        dport=53,
        proto=17,
        flags=EVF.IPV6,
        pkt=req,
    )
    rep = udp6(PEER6, POD6, 53, 33333)
    assert dp.run(TO, rep) == TC_ACT_OK
    check_event(
        dp.one_event(),
        type_=abi.EventType.TRACE,
        subtype=abi.TracePoint.TO_LXC,
        ct_state=abi.CtState.REPLY,
        src=PEER6,
        dst=POD6,
        sport=53,
        dport=33333,
        proto=17,
        flags=EVF.IPV6 | EVF.IS_REPLY,
        pkt=rep,
    )
    v = dp.ct_get(POD6, PEER6, 33333, 53, 17)
    assert v["scope"] == abi.CtScope.EGRESS and (v["tx_packets"], v["rx_packets"]) == (1, 1)


def test_ipv4_options_and_sctp_ports(dp):
    pkt = eth(0x0800, ip4(POD4, PEER4, 17, udp(1111, 2222), ihl=7, options=b"\x01" * 8))  # 8 NOP options
    assert dp.run(FROM, pkt) == TC_ACT_OK
    e = dp.one_event()
    assert (e["sport"], e["dport"]) == (1111, 2222)
    sctp = struct.pack("!HHII", 3868, 3869, 0xDEADBEEF, 0) + bytes(16)
    assert dp.run(FROM, eth(0x0800, ip4(POD4, PEER4, 132, sctp))) == TC_ACT_OK
    e = dp.one_event()
    assert (e["l4_proto"], e["sport"], e["dport"]) == (132, 3868, 3869)


def test_other_l4_protocols_tracked_per_address_pair(dp):
    gre = struct.pack("!HH", 0, 0x0800) + bytes(20)
    assert dp.run(FROM, eth(0x0800, ip4(POD4, PEER4, 47, gre))) == TC_ACT_OK
    assert dp.run(TO, eth(0x0800, ip4(PEER4, POD4, 47, gre))) == TC_ACT_OK
    evs = dp.events()
    assert [(int(e["ct_state"]), int(e["sport"]), int(e["dport"])) for e in evs] == [
        (abi.CtState.NEW, 0, 0),
        (abi.CtState.REPLY, 0, 0),
    ]
    assert dp.ct_get(POD4, PEER4, 0, 0, 47)["rx_packets"] == 1


# ---- IPv6 extension headers and fragments ----------------------------------------------------------


def test_ipv6_hop_by_hop_and_dest_opts_reach_l4(dp):
    # HBH (8 bytes) -> dest-opts (16 bytes) -> UDP
    payload = ext6(60, 6) + ext6(17, 14) + udp(1111, 2222)
    pkt = eth(0x86DD, ip6(POD6, PEER6, 0, payload))
    assert dp.run(FROM, pkt) == TC_ACT_OK
    e = dp.one_event()
    assert (e["l4_proto"], e["sport"], e["dport"]) == (17, 1111, 2222)
    assert dp.ct_get(POD6, PEER6, 1111, 2222, 17) is not None


def test_ipv6_routing_and_first_fragment(dp):
    # routing -> fragment (offset 0, more) -> TCP: ports are read, the event says FRAGMENT
    payload = ext6(44, 6) + frag6(6, 0, more=True) + tcp(5555, 80, SYN)
    pkt = eth(0x86DD, ip6(POD6, PEER6, 43, payload))
    assert dp.run(FROM, pkt) == TC_ACT_OK
    e = dp.one_event()
    assert (e["l4_proto"], e["sport"], e["dport"], e["tcp_flags"]) == (6, 5555, 80, SYN)
    assert e["flags"] == EVF.IPV6 | EVF.FRAGMENT


def test_ipv6_non_first_fragment_has_no_ports_and_no_ct(dp):
    dp.set(abi.TraceLevel.ALL)
    pkt = eth(0x86DD, ip6(POD6, PEER6, 44, frag6(17, 185, more=False) + b"\x00" * 64))
    assert dp.run(FROM, pkt) == TC_ACT_OK
    e = dp.one_event()
    assert (e["l4_proto"], e["sport"], e["dport"]) == (17, 0, 0)
    assert e["flags"] == EVF.IPV6 | EVF.FRAGMENT
    assert len(dp.ct) == 0


@pytest.mark.parametrize(
    "nexthdr, payload",
    [
        (60, ext6(0) + udp(1, 2)),  # hop-by-hop not first
        (0, ext6(59) + b"\x00" * 8),  # No Next Header
        (  # nine extension headers, one more than the walk allows
            0,
            ext6(60) + ext6(60) + ext6(60) + ext6(60) + ext6(60) + ext6(60) + ext6(60) + ext6(60) + udp(1, 2),
        ),
        (0, ext6(60)[:8] + b"\x3c\x05"),  # dest-opts header cut short
        (0, b"\x11\x00\x01\x04"),  # hop-by-hop cut short
    ],
    ids=["hbh-not-first", "no-next-header", "too-long", "cut-second", "cut-first"],
)
def test_ipv6_invalid_extension_chain_dropped(dp, nexthdr, payload):
    pkt = eth(0x86DD, ip6(POD6, PEER6, nexthdr, payload))
    assert dp.run(FROM, pkt) == TC_ACT_SHOT
    e = dp.one_event()
    assert (e["type"], e["subtype"]) == (abi.EventType.DROP, DROP.INVALID_IPV6_EXTHDR)
    assert dp.metric(DROP.INVALID_IPV6_EXTHDR, abi.MetricDirection.EGRESS) == (1, len(pkt))


def test_ipv4_fragments(dp):
    dp.set(abi.TraceLevel.ALL)
    first = eth(0x0800, ip4(POD4, PEER4, 17, udp(7000, 8000, b"x" * 32), frag=0x2000))
    assert dp.run(FROM, first) == TC_ACT_OK
    e = dp.one_event()
    assert (e["sport"], e["dport"], e["flags"], e["ct_state"]) == (7000, 8000, EVF.FRAGMENT, abi.CtState.NEW)

    later = eth(0x0800, ip4(POD4, PEER4, 17, b"y" * 40, frag=5))  # offset 40 bytes, last fragment
    assert dp.run(FROM, later) == TC_ACT_OK
    e = dp.one_event()
    assert (e["l4_proto"], e["sport"], e["dport"], e["flags"]) == (17, 0, 0, EVF.FRAGMENT)
    assert len(dp.ct) == 1  # only the first fragment's flow

    dp.set(abi.TraceLevel.MEDIUM)
    dp.run(FROM, later)
    assert len(dp.events()) == 0


# ---- ICMP ----------------------------------------------------------------------------------------


def test_icmp_echo_request_reply_pairing(dp):
    req = eth(0x0800, ip4(POD4, PEER4, 1, icmp(8, 0, ident=0x4242, payload=b"ping")))
    assert dp.run(FROM, req) == TC_ACT_OK
    check_event(
        dp.one_event(),
        type_=abi.EventType.TRACE,
        subtype=abi.TracePoint.FROM_LXC,
        ct_state=abi.CtState.NEW,
        src=POD4,
        dst=PEER4,
        sport=0x4242,
        dport=0,
        proto=1,
        icmp_type=8,
        pkt=req,
    )
    rep = eth(0x0800, ip4(PEER4, POD4, 1, icmp(0, 0, ident=0x4242, payload=b"ping")))
    assert dp.run(TO, rep) == TC_ACT_OK
    check_event(
        dp.one_event(),
        type_=abi.EventType.TRACE,
        subtype=abi.TracePoint.TO_LXC,
        ct_state=abi.CtState.REPLY,
        src=PEER4,
        dst=POD4,
        sport=0,
        dport=0x4242,
        proto=1,
        flags=EVF.IS_REPLY,
        pkt=rep,
    )
    v = dp.ct_get(POD4, PEER4, 0x4242, 0, 1)
    assert (v["tx_packets"], v["rx_packets"]) == (1, 1) and len(dp.ct) == 1


def test_icmpv6_echo_request_reply_pairing(dp):
    req = eth(0x86DD, ip6(POD6, PEER6, 58, icmp(128, 0, ident=7)))
    dp.run(FROM, req)
    e = dp.one_event()
    assert (e["ct_state"], e["sport"], e["dport"], e["icmp_type"]) == (abi.CtState.NEW, 7, 0, 128)
    rep = eth(0x86DD, ip6(PEER6, POD6, 58, icmp(129, 0, ident=7)))
    dp.run(TO, rep)
    e = dp.one_event()
    assert (e["ct_state"], e["sport"], e["dport"], e["flags"]) == (
        abi.CtState.REPLY,
        0,
        7,
        EVF.IPV6 | EVF.IS_REPLY,
    )
    assert len(dp.ct) == 1


def test_icmp_port_unreachable_is_related(dp):
    req = udp4(POD4, PEER4, 33333, 53)
    dp.run(FROM, req)
    dp.events()
    inner = ip4(POD4, PEER4, 17, udp(33333, 53))[:28]  # IP header + first 8 bytes of L4
    err = eth(0x0800, ip4(PEER4, POD4, 1, icmp(3, 3, payload=inner)))
    assert dp.run(TO, err) == TC_ACT_OK
    check_event(
        dp.one_event(),
        type_=abi.EventType.TRACE,
        subtype=abi.TracePoint.TO_LXC,
        ct_state=abi.CtState.RELATED,
        src=PEER4,
        dst=POD4,
        sport=0,
        dport=0,
        proto=1,
        icmp_type=3,
        icmp_code=3,
        flags=EVF.ICMP_ERROR | EVF.IS_REPLY,
        pkt=err,
    )
    assert len(dp.ct) == 1
    v = dp.ct_get(POD4, PEER4, 33333, 53, 17)
    assert (v["tx_packets"], v["rx_packets"], v["rx_bytes"]) == (1, 1, len(err))
    assert not v["flags"] & CTF.SEEN_REPLY  # an error is not a reply


def test_icmp_error_about_a_reply_matches_reversed(dp):
    # The pod connected out; the pod then reports an error about the peer's reply packet.
    dp.run(FROM, udp4(POD4, PEER4, 33333, 53))
    dp.events()
    inner = ip4(PEER4, POD4, 17, udp(53, 33333))[:28]
    err = eth(0x0800, ip4(POD4, PEER4, 1, icmp(11, 0, payload=inner)))
    assert dp.run(FROM, err) == TC_ACT_OK
    e = dp.one_event()
    assert (e["ct_state"], e["flags"], e["icmp_type"]) == (abi.CtState.RELATED, EVF.ICMP_ERROR, 11)
    v = dp.ct_get(POD4, PEER4, 33333, 53, 17)
    assert (v["tx_packets"], v["rx_packets"]) == (2, 0)


def test_icmp_error_without_entry_creates_nothing(dp):
    inner = ip4(POD4, PEER4, 6, tcp(1000, 2000, SYN))[:28]
    err = eth(0x0800, ip4(PEER4, POD4, 1, icmp(3, 1, payload=inner)))
    assert dp.run(TO, err) == TC_ACT_OK
    e = dp.one_event()
    assert (e["ct_state"], e["flags"]) == (abi.CtState.NEW, EVF.ICMP_ERROR)
    assert len(dp.ct) == 0


def test_icmpv6_dest_unreachable_is_related(dp):
    dp.run(FROM, udp6(POD6, PEER6, 44444, 5353))
    dp.events()
    # inner packet with a destination-options header before UDP
    inner = ip6(POD6, PEER6, 60, ext6(17) + udp(44444, 5353, b"data"))
    err = eth(0x86DD, ip6(PEER6, POD6, 58, icmp(1, 4, payload=inner)))
    assert dp.run(TO, err) == TC_ACT_OK
    e = dp.one_event()
    check_event(
        e,
        type_=abi.EventType.TRACE,
        subtype=abi.TracePoint.TO_LXC,
        ct_state=abi.CtState.RELATED,
        src=PEER6,
        dst=POD6,
        sport=0,
        dport=0,
        proto=58,
        icmp_type=1,
        icmp_code=4,
        flags=EVF.IPV6 | EVF.ICMP_ERROR | EVF.IS_REPLY,
        pkt=err,
    )
    assert len(dp.ct) == 1


def test_icmp_error_for_ping_is_related(dp):
    dp.run(FROM, eth(0x0800, ip4(POD4, PEER4, 1, icmp(8, 0, ident=99))))
    dp.events()
    inner = ip4(POD4, PEER4, 1, icmp(8, 0, ident=99))[:28]
    dp.run(TO, eth(0x0800, ip4("10.9.9.9", POD4, 1, icmp(11, 0, payload=inner))))
    assert dp.one_event()["ct_state"] == abi.CtState.RELATED


# ---- malformed packets -----------------------------------------------------------------------------


def ipv4_header_only(ihl_byte: int, proto: int = 6) -> bytes:
    return struct.pack(
        "!BBHHHBBH4s4s",
        ihl_byte,
        0,
        20,
        0,
        0,
        64,
        proto,
        0,
        ipaddress.IPv4Address(POD4).packed,
        ipaddress.IPv4Address(PEER4).packed,
    )


@pytest.mark.parametrize(
    "pkt, reason",
    [
        (eth(0x0800, ipv4_header_only(0x44) + tcp(1, 2, SYN)), DROP.INVALID_PACKET),  # ihl < 5
        (eth(0x0800, ipv4_header_only(0x4F) + b"\x00" * 8), DROP.INVALID_PACKET),  # options past the end
        (eth(0x0800, ipv4_header_only(0x65) + tcp(1, 2, SYN)), DROP.INVALID_PACKET),  # version 6 in 0x0800
        (eth(0x0800, ip4(POD4, PEER4, 6, tcp(1, 2, SYN)[:10])), DROP.CT_TRUNCATED),  # cut TCP
        (eth(0x0800, ip4(POD4, PEER4, 6, tcp(1, 2, SYN, doff=4)[:20])), DROP.CT_TRUNCATED),  # doff < 5
        (eth(0x0800, ip4(POD4, PEER4, 17, udp(1, 2)[:6])), DROP.CT_TRUNCATED),  # cut UDP
        (eth(0x0800, ip4(POD4, PEER4, 1, icmp(8)[:4])), DROP.CT_TRUNCATED),  # cut ICMP
        (eth(0x86DD, ip6(POD6, PEER6, 6, tcp(1, 2, SYN)[:19])), DROP.CT_TRUNCATED),  # cut TCP over v6
        (
            eth(0x0800, ip4(PEER4, POD4, 1, icmp(3, 3, payload=ipv4_header_only(0x45, 17)[:16]))),
            DROP.CT_TRUNCATED,
        ),  # ICMP error with a cut inner header
        (
            eth(0x0800, ip4(PEER4, POD4, 1, icmp(3, 3, payload=ipv4_header_only(0x45, 17) + b"\x00\x35"))),
            DROP.CT_TRUNCATED,
        ),  # ICMP error with inner L4 cut short
        (eth(0x88CC, b"\x00" * 46), DROP.UNSUPPORTED_L3),  # LLDP
        (eth(0x8100, b"\x00" * 46), DROP.UNSUPPORTED_L3),  # VLAN tag
    ],
    ids=[
        "ihl-4",
        "ipv4-options-cut",
        "bad-version",
        "cut-tcp",
        "tcp-doff-4",
        "cut-udp",
        "cut-icmp",
        "cut-tcp-v6",
        "icmp-error-cut-inner-ip",
        "icmp-error-cut-inner-l4",
        "lldp",
        "vlan",
    ],
)
@pytest.mark.parametrize("prog", [FROM, TO])
def test_malformed_packets_dropped_with_reason(dp, pkt, reason, prog):
    if prog == TO:
        dp.set(flags=0)  # both directions parse the same way
    assert dp.run(prog, pkt) == TC_ACT_SHOT
    e = dp.one_event()
    assert (e["type"], e["subtype"]) == (abi.EventType.DROP, reason)
    assert (e["ep_id"], e["ifindex"], e["pkt_len"]) == (EP_ID, IFINDEX, len(pkt))
    direction = abi.MetricDirection.EGRESS if prog == FROM else abi.MetricDirection.INGRESS
    assert dp.metric(reason, direction) == (1, len(pkt))
    assert dp.metric(0, direction) == (0, 0)
    assert len(dp.ct) == 0


def test_truncated_l4_drop_event_carries_l3_info(dp):
    pkt = eth(0x0800, ip4(POD4, PEER4, 6, tcp(1, 2, SYN)[:10]))
    dp.run(FROM, pkt)
    e = dp.one_event()
    assert (e["ip_version"], e["l4_proto"]) == (4, 6)
    assert bytes(e["saddr"]) == addr(POD4) and bytes(e["daddr"]) == addr(PEER4)


def test_test_run_refuses_cut_l2_l3_headers(dp):
    # BPF_PROG_TEST_RUN itself rejects (EINVAL) tc input shorter than Ethernet, and IPv4/IPv6
    # frames whose base IP header is cut, so those cases go through a real veth below
    # (test_cut_l3_headers_on_a_real_veth).
    for pkt in (
        b"\x00" * 13,
        eth(0x0800, b""),
        eth(0x0800, ipv4_header_only(0x45)[:12]),
        eth(0x86DD, ip6(POD6, PEER6, 17, b"")[:30]),
    ):
        with pytest.raises(BpfError) as ei:
            dp.run(FROM, pkt)
        assert ei.value.errno == errno.EINVAL
    assert len(dp.events()) == 0


# ---- source IP verification ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "pkt",
    [
        udp4("10.0.0.66", PEER4, 1, 2),
        udp6("fd00::66", PEER6, 1, 2),
        tcp4("10.0.0.66", PEER4, 1, 2, SYN),
        eth(0x86DD, ip6("fd00::66", PEER6, 58, icmp(128, ident=1))),
    ],
    ids=["udp4", "udp6", "tcp4", "icmp6"],
)
def test_spoofed_source_dropped(dp, pkt):
    assert dp.run(FROM, pkt) == TC_ACT_SHOT
    e = dp.one_event()
    assert (e["type"], e["subtype"]) == (abi.EventType.DROP, DROP.INVALID_SOURCE_IP)
    assert e["sport"] != 0 or e["l4_proto"] == 58  # the event carries the parsed packet
    assert dp.metric(DROP.INVALID_SOURCE_IP, abi.MetricDirection.EGRESS) == (1, len(pkt))
    assert len(dp.ct) == 0


def test_malformed_spoofed_packet_is_dropped_as_malformed(dp):
    # parsing comes first: a cut TCP header is reported as such, whatever its source
    assert dp.run(FROM, eth(0x0800, ip4("10.0.0.66", PEER4, 6, tcp(1, 2, SYN)[:4]))) == TC_ACT_SHOT
    assert dp.one_event()["subtype"] == DROP.CT_TRUNCATED


@pytest.mark.parametrize(
    "pkt",
    [
        udp4("0.0.0.0", "255.255.255.255", 68, 67),
        udp6("::", "ff02::1:ff00:1", 1, 2),
        eth(0x86DD, ip6("fe80::1234", "ff02::2", 58, icmp(133))),
        udp6("febf::1", PEER6, 1, 2),
    ],
    ids=["dhcp", "unspecified-v6", "link-local-rs", "link-local-top-of-range"],
)
def test_exempt_sources_pass(dp, pkt):
    assert dp.run(FROM, pkt) == TC_ACT_OK


def test_source_check_details(dp):
    # fec0::/10 is not link-local
    assert dp.run(FROM, udp6("fec0::1", PEER6, 1, 2)) == TC_ACT_SHOT
    # traffic into the pod is not source-checked
    assert dp.run(TO, udp4("10.0.0.66", POD4, 1, 2)) == TC_ACT_OK
    # an endpoint without IPv6 may not send from a global IPv6
    dp.add_endpoint(ipv6=None)
    assert dp.run(FROM, udp6(POD6, PEER6, 1, 2)) == TC_ACT_SHOT
    # the check can be turned off
    dp.set(flags=0)
    assert dp.run(FROM, udp4("10.0.0.66", PEER4, 1, 2)) == TC_ACT_OK
    evs = dp.events()
    assert list(evs["subtype"][evs["type"] == abi.EventType.DROP]) == [DROP.INVALID_SOURCE_IP] * 2


# ---- endpoints, ARP, metrics, levels, loss ---------------------------------------------------------


def test_non_endpoint_interface_passes_untouched(dp):
    dp.endpoints.delete(IFINDEX)
    dp.add_endpoint(ifindex=999_999)  # some other veth
    dp.set(abi.TraceLevel.ALL)
    for pkt in (
        tcp4(POD4, PEER4, 1, 2, SYN),
        udp4("10.0.0.66", PEER4, 1, 2),
        eth(0x0800, ipv4_header_only(0x44) + tcp(1, 2, SYN)),
        eth(0x88CC, bytes(46)),
    ):
        assert dp.run(FROM, pkt) == TC_ACT_OK
        assert dp.run(TO, pkt) == TC_ACT_OK
    assert len(dp.events()) == 0
    assert len(dp.ct) == 0
    _, vals = dp.metrics_map.to_arrays()
    assert int(vals["packets"].sum()) == 0


def test_arp_passes_without_event(dp):
    arp = eth(
        0x0806,
        struct.pack(
            "!HHBBH6s4s6s4s",
            1,
            0x0800,
            6,
            4,
            1,
            b"\x02" * 6,
            ipaddress.IPv4Address(POD4).packed,
            bytes(6),
            ipaddress.IPv4Address(PEER4).packed,
        ),
    )
    dp.set(abi.TraceLevel.ALL)
    assert dp.run(FROM, arp) == TC_ACT_OK
    assert dp.run(TO, arp) == TC_ACT_OK
    assert len(dp.events()) == 0 and len(dp.ct) == 0
    assert dp.metric(0, abi.MetricDirection.EGRESS) == (1, len(arp))


def test_metrics_count_packets_and_bytes(dp):
    sent = {abi.MetricDirection.EGRESS: [0, 0], abi.MetricDirection.INGRESS: [0, 0]}
    drops = [0, 0]
    for i in range(20):
        out = udp4(POD4, PEER4, 1000 + i % 3, 53, b"q" * i)
        back = udp4(PEER4, POD4, 53, 1000 + i % 3, b"r" * (2 * i))
        assert dp.run(FROM, out) == TC_ACT_OK
        assert dp.run(TO, back) == TC_ACT_OK
        sent[abi.MetricDirection.EGRESS][0] += 1
        sent[abi.MetricDirection.EGRESS][1] += len(out)
        sent[abi.MetricDirection.INGRESS][0] += 1
        sent[abi.MetricDirection.INGRESS][1] += len(back)
        if i % 5 == 0:
            bad = udp4("10.6.6.6", PEER4, 1, 2, b"z" * i)
            assert dp.run(FROM, bad) == TC_ACT_SHOT
            drops[0] += 1
            drops[1] += len(bad)
    for d, (n, b) in sent.items():
        assert dp.metric(0, d) == (n, b)
    assert dp.metric(DROP.INVALID_SOURCE_IP, abi.MetricDirection.EGRESS) == tuple(drops)
    assert dp.metric(DROP.INVALID_SOURCE_IP, abi.MetricDirection.INGRESS) == (0, 0)


def test_trace_level_none_emits_only_drops(dp):
    dp.set(abi.TraceLevel.NONE)
    handshake(dp)
    dp.run(FROM, tcp4(POD4, PEER4, 40000, 80, FIN | ACK))
    dp.run(FROM, udp4(POD4, PEER4, 5, 6))
    dp.run(FROM, udp4("10.0.0.66", PEER4, 5, 6))
    dp.run(TO, eth(0x88CC, bytes(46)))
    evs = dp.events()
    assert list(evs["type"]) == [abi.EventType.DROP] * 2
    assert list(evs["subtype"]) == [DROP.INVALID_SOURCE_IP, DROP.UNSUPPORTED_L3]


def test_medium_emits_exactly_the_documented_events(dp):
    handshake(dp)  # SYN: new; SYN-ACK: first reply
    dp.run(FROM, tcp4(POD4, PEER4, 40000, 80, ACK | PSH))  # nothing
    dp.run(TO, tcp4(PEER4, POD4, 80, 40000, ACK))  # nothing
    dp.run(FROM, udp4(POD4, PEER4, 9, 9))  # new
    dp.run(FROM, udp4(POD4, PEER4, 9, 9))  # nothing
    dp.run(TO, udp4(PEER4, POD4, 9, 9))  # first reply
    dp.run(TO, udp4(PEER4, POD4, 9, 9))  # nothing
    dp.run(TO, tcp4(PEER4, POD4, 80, 40000, SYN | ACK))  # SYN (retransmit): traced
    dp.run(FROM, tcp4(POD4, PEER4, 40000, 80, FIN | ACK))  # FIN
    evs = dp.events()
    got = [(int(e["subtype"]), int(e["ct_state"]), int(e["l4_proto"]), int(e["tcp_flags"])) for e in evs]
    assert got == [
        (abi.TracePoint.FROM_LXC, abi.CtState.NEW, 6, SYN),
        (abi.TracePoint.TO_LXC, abi.CtState.REPLY, 6, SYN | ACK),
        (abi.TracePoint.FROM_LXC, abi.CtState.NEW, 17, 0),
        (abi.TracePoint.TO_LXC, abi.CtState.REPLY, 17, 0),
        (abi.TracePoint.TO_LXC, abi.CtState.REPLY, 6, SYN | ACK),
        (abi.TracePoint.FROM_LXC, abi.CtState.ESTABLISHED, 6, FIN | ACK),
    ]


def test_event_hash_is_stable_per_flow(dp):
    dp.set(abi.TraceLevel.ALL)
    for _ in range(3):
        dp.run(FROM, tcp4(POD4, PEER4, 40000, 80, ACK))
    dp.run(FROM, tcp4(POD4, PEER4, 40001, 80, ACK))
    h = [int(x) for x in dp.events()["hash"]]
    assert h[0] == h[1] == h[2] != h[3]


def test_ring_full_lost_events_are_counted_exactly():
    d, root = _open(map_sizes={abi.MAP_EVENTS: 4096})  # one page: 51 records of 80 bytes
    try:
        d.add_endpoint()
        d.set(abi.TraceLevel.ALL)
        produced = 200
        for i in range(produced):
            d.run(FROM, udp4(POD4, PEER4, 1000 + i, 53))
        drained = len(d.events())
        assert 0 < drained < produced
        assert d.lost() == produced - drained
        # after draining there is room again
        d.run(FROM, udp4(POD4, PEER4, 1, 53))
        assert len(d.events()) == 1 and d.lost() == produced - drained
    finally:
        d.close()
        shutil.rmtree(root, ignore_errors=True)


def test_ct_entries_are_per_endpoint(dp):
    # The same tuple seen on another endpoint's veth is another entry; test_run can only use
    # existing devices, so insert the other endpoint's entry by hand and check it is not matched.
    k = dp.ct_key(POD4, PEER4, 40000, 80, 6, ifindex=999_999)
    v = np.zeros((), abi.CT_VALUE_DTYPE)
    v["scope"] = abi.CtScope.EGRESS
    dp.ct.update(k, v)
    dp.run(TO, tcp4(PEER4, POD4, 80, 40000, SYN | ACK))
    assert dp.one_event()["ct_state"] == abi.CtState.NEW
    assert len(dp.ct) == 2


# ---- through a real veth (what BPF_PROG_TEST_RUN cannot build) ---------------------------------------
#
# An AF_PACKET socket's frames leave through dev_queue_xmit, so they pass the tcx egress hook where
# tnd_to_container sits. That reaches two cases test_run cannot: IP frames whose base header is cut
# (test_run refuses them) and headers outside the skb's linear area (test_run skbs are all linear;
# AF_PACKET puts only the 14-byte Ethernet header in the linear area of a frame of a page or more,
# the rest in page fragments, so the parser's bpf_skb_load_bytes() path does the work).


@pytest.fixture
def veth_dp():
    from pyroute2.netns import popns, pushns

    from tendril.bpf import attach_tc

    ns = f"tndut-{secrets.token_hex(4)}"
    subprocess.run(["ip", "netns", "add", ns], check=True)
    d = root = link = None
    try:
        # no IPv6 on the veth: no DAD/RS/MLD frames of the kernel's own in the way
        subprocess.run(
            [
                "ip",
                "netns",
                "exec",
                ns,
                "sysctl",
                "-qw",
                "net.ipv6.conf.all.disable_ipv6=1",
                "net.ipv6.conf.default.disable_ipv6=1",
            ],
            check=True,
        )
        subprocess.run(
            [
                "ip",
                "-n",
                ns,
                "link",
                "add",
                "tndh",
                "mtu",
                "9000",
                "type",
                "veth",
                "peer",
                "name",
                "tndp",
                "mtu",
                "9000",
            ],
            check=True,
        )
        subprocess.run(["ip", "-n", ns, "link", "set", "tndh", "up"], check=True)
        subprocess.run(["ip", "-n", ns, "link", "set", "tndp", "up"], check=True)
        pushns(ns)
        try:
            ifindex = socket.if_nametoindex("tndh")
            d, root = _open()
            d.add_endpoint(ifindex=ifindex)
            d.set(abi.TraceLevel.ALL)
            link = attach_tc(d.obj.program(TO), ifindex, "egress")
            sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
            sock.bind(("tndh", 0))
        finally:
            popns()

        def send(frame: bytes) -> np.ndarray:
            try:
                sock.send(frame)
            except OSError as e:  # a tc drop comes back as NET_XMIT_DROP = ENOBUFS
                if e.errno != errno.ENOBUFS:
                    raise
            return d.events()

        with sock:
            yield d, ifindex, send
    finally:
        if link is not None:
            link.detach()
        if d is not None:
            d.close()
        if root is not None:
            shutil.rmtree(root, ignore_errors=True)
        subprocess.run(["ip", "netns", "del", ns], check=False)


def test_cut_l3_headers_on_a_real_veth(veth_dp):
    d, ifindex, send = veth_dp
    for frame in (
        eth(0x0800, b""),
        eth(0x0800, ipv4_header_only(0x45)[:12]),
        eth(0x86DD, ip6(POD6, PEER6, 17, b"")[:30]),
    ):
        evs = send(frame)
        assert len(evs) == 1, evs
        e = evs[0]
        assert (e["type"], e["subtype"], e["ifindex"], e["pkt_len"]) == (
            abi.EventType.DROP,
            DROP.INVALID_PACKET,
            ifindex,
            len(frame),
        )
    assert d.metric(DROP.INVALID_PACKET, abi.MetricDirection.INGRESS) == (3, 14 + 26 + 44)


def test_headers_outside_the_linear_area(veth_dp):
    d, ifindex, send = veth_dp
    big = b"x" * 5000
    e4 = send(udp4(PEER4, POD4, 5353, 7777, big))
    assert len(e4) == 1
    assert (e4[0]["type"], e4[0]["ct_state"], e4[0]["sport"], e4[0]["dport"]) == (
        abi.EventType.TRACE,
        abi.CtState.NEW,
        5353,
        7777,
    )
    assert e4[0]["pkt_len"] == 14 + 20 + 8 + 5000

    # IPv6 with hop-by-hop + dest-opts, all in page fragments
    e6 = send(eth(0x86DD, ip6(PEER6, POD6, 0, ext6(60) + ext6(6, 14) + tcp(443, 50000, SYN, payload=big))))
    assert len(e6) == 1
    assert (e6[0]["l4_proto"], e6[0]["sport"], e6[0]["dport"], e6[0]["tcp_flags"]) == (6, 443, 50000, SYN)

    # an ICMP error whose inner headers are in fragments too, for an entry of this endpoint
    k = d.ct_key(POD4, PEER4, 7777, 5353, 17, ifindex=ifindex)
    v = np.zeros((), abi.CT_VALUE_DTYPE)
    v["scope"], v["ep_id"], v["tx_packets"] = abi.CtScope.EGRESS, EP_ID, 1
    d.ct.update(k, v)
    inner = ip4(POD4, PEER4, 17, udp(7777, 5353))[:28]
    ee = send(eth(0x0800, ip4(PEER4, POD4, 1, icmp(3, 3, payload=inner + big))))
    assert len(ee) == 1
    assert (ee[0]["ct_state"], ee[0]["flags"], ee[0]["icmp_type"]) == (
        abi.CtState.RELATED,
        EVF.ICMP_ERROR | EVF.IS_REPLY,
        3,
    )
    assert d.ct.lookup(k)["rx_packets"] == 1

    # extension headers past the directly-read range, then a TCP header cut short by the frame's end
    frame = eth(0x86DD, ip6(PEER6, POD6, 0, ext6(60, 2046) + ext6(6, 2046) + tcp(1, 2, SYN)[:4]))
    e = send(frame)
    assert len(e) == 1 and (e[0]["type"], e[0]["subtype"]) == (abi.EventType.DROP, DROP.CT_TRUNCATED)
    # and the same chain with the whole TCP header is fine
    e = send(eth(0x86DD, ip6(PEER6, POD6, 0, ext6(60, 2046) + ext6(6, 2046) + tcp(1, 2, SYN))))
    assert len(e) == 1 and (e[0]["type"], e[0]["sport"], e[0]["dport"]) == (abi.EventType.TRACE, 1, 2)
