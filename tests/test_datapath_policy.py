"""Policy enforcement in the C datapath (bpf/include/policy.h), on the real kernel with BPF_PROG_TEST_RUN.

Like tests/test_datapath_unit.py (whose packet builders and Datapath wrapper this reuses): each test
loads build/bpf/lxc.o into its own pin root /sys/fs/bpf/tndut-<random>/ (removed afterwards), registers
the endpoint on the loopback ifindex, and sends hand-built packets through tnd_from_container (egress)
and tnd_to_container (ingress). Policies are built the way the agent builds them: a new LPM inner map
created from Python (tendril.bpf.create_policy_map), filled, then swapped into tnd_policy[ep_id] with
one update; identities come from tnd_ipcache. No mocks.
"""

from __future__ import annotations

import gc
import secrets
import shutil
import struct
import subprocess
from pathlib import Path

import numpy as np
import pytest

from tendril.bpf import BpfError, BpfObject, Map, TypedMap, abi, create_map, create_policy_map, test_run
from tendril.bpf import libbpf as lb
from tendril.bpf.bpffs import ensure_bpffs
from test_datapath_unit import (
    ACK,
    EP_ID,
    FIN,
    FROM,
    IFINDEX,
    OBJ,
    PEER4,
    PEER6,
    POD4,
    POD6,
    ROOT,
    SYN,
    TC_ACT_OK,
    TC_ACT_SHOT,
    TO,
    Datapath,
    eth,
    icmp,
    ip4,
    ip6,
    tcp,
    tcp4,
    udp,
    udp4,
    udp6,
)

EVF = abi.EventFlags
ET = abi.EventType
MT = abi.MatchType
DROP = abi.DropReason
CT = abi.CtState
ID = abi.Identity

WEB = 1000  # identity of PEER4 / PEER6
DB = 1001  # identity of OTHER4
OTHER4 = "10.0.0.3"
OTHER4_6 = "fd00::3"  # no ipcache entry: world
TCP, UDP, ICMP, ICMP6 = 6, 17, 1, 58


# ---- fixture --------------------------------------------------------------------------------------


class PolicyDatapath(Datapath):
    """Datapath plus the ipcache and the policy outer map."""

    def __init__(self, obj: BpfObject) -> None:
        super().__init__(obj)
        self.ipcache = TypedMap(obj.map(abi.MAP_IPCACHE), abi.IPCACHE_KEY_DTYPE, abi.IPCACHE_VALUE_DTYPE)
        self.policy_outer: Map = obj.map(abi.MAP_POLICY)

    def identity(self, cidr: str, identity: int) -> None:
        self.ipcache.update(abi.ipcache_key(cidr), abi.ipcache_value(identity))

    def new_policy(
        self, entries: list[tuple[np.void, np.void]], egress: bool = False, ingress: bool = False
    ) -> Map:
        """A filled inner map (not installed); egress/ingress add the enforcement markers."""
        m = create_policy_map(name="tndut_pol")
        t = TypedMap(m, abi.POLICY_KEY_DTYPE, abi.POLICY_VALUE_DTYPE)
        for direction, on in ((True, egress), (False, ingress)):
            if on:
                t.update(abi.policy_enforced_key(direction), abi.policy_value(MT.NONE))
        for k, v in entries:
            t.update(k, v)
        return m

    def install(
        self, entries: list[tuple[np.void, np.void]], egress: bool = False, ingress: bool = False
    ) -> None:
        """Build a policy and swap it in for the endpoint (the outer map keeps it alive)."""
        with self.new_policy(entries, egress, ingress) as m:
            self.policy_outer.set_inner(EP_ID, m)


def rule(
    identity: int,
    egress: bool,
    proto: int = 0,
    lo: int = 0,
    hi: int = 0,
    deny: bool = False,
    ref: int = 7,
) -> list[tuple[np.void, np.void]]:
    """The entries of one allow (or deny) rule, as the agent would write them."""
    match = abi.policy_match_type(identity, proto, lo)
    value = abi.policy_value(match, deny=deny, rule_ref=ref)
    return [(k, value) for k in abi.policy_entries_for_port_range(identity, egress, proto, lo, hi)]


@pytest.fixture
def pdp():
    d, root = _open_policy()
    try:
        d.add_endpoint()
        d.set()
        d.identity(PEER4, WEB)
        d.identity(PEER6, WEB)
        d.identity(OTHER4, DB)
        yield d
    finally:
        d.close()
        shutil.rmtree(root, ignore_errors=True)


_built = False


def _open_policy():
    global _built
    if not _built:  # never test a stale object: make is a no-op when it is up to date
        subprocess.run(["make", "-s", "-C", str(ROOT / "bpf")], check=True)
        _built = True
    ensure_bpffs()
    root = Path(f"/sys/fs/bpf/tndut-{secrets.token_hex(6)}")
    obj = BpfObject.open(OBJ, pin_root=root)
    try:
        obj.load()
        return PolicyDatapath(obj), root
    except BaseException:
        obj.close()
        shutil.rmtree(root, ignore_errors=True)
        raise


def split(ev: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(policy verdicts, drops, traces)."""
    return ev[ev["type"] == ET.POLICY_VERDICT], ev[ev["type"] == ET.DROP], ev[ev["type"] == ET.TRACE]


def check_verdict(e, match: int, deny: bool = False, audit: bool = False, remote_id: int = WEB, flags=0):
    """A policy verdict event; flags: the other (non-policy) flags, None = not checked."""
    assert e["type"] == ET.POLICY_VERDICT
    assert e["subtype"] == match, e
    policy_bits = int(EVF.POLICY_DENY | EVF.POLICY_AUDIT)
    want = (EVF.POLICY_DENY if deny else 0) | (EVF.POLICY_AUDIT if audit else 0)
    assert e["flags"] & policy_bits == int(want), e
    if flags is not None:
        assert int(e["flags"]) & ~policy_bits == int(flags), e
    assert e["remote_id"] == remote_id
    assert e["ep_id"] == EP_ID and e["ifindex"] == IFINDEX
    assert e["ct_state"] == CT.NEW


def expect_allowed(d: PolicyDatapath, prog: str, pkt: bytes, match: int, remote_id: int = WEB) -> np.void:
    """Forwarded with one ALLOW verdict (and its NEW trace at MEDIUM); returns the verdict."""
    assert d.run(prog, pkt) == TC_ACT_OK
    verdicts, drops, traces = split(d.events())
    assert len(verdicts) == 1 and len(drops) == 0 and len(traces) == 1, (verdicts, drops)
    check_verdict(verdicts[0], match, remote_id=remote_id, flags=None)
    assert traces[0]["remote_id"] == remote_id
    return verdicts[0]


def expect_denied(
    d: PolicyDatapath,
    prog: str,
    pkt: bytes,
    reason: int = DROP.POLICY_DENIED,
    match: int = MT.NONE,
    remote_id: int = WEB,
) -> None:
    """Dropped with a DENY verdict and a drop event at reason."""
    assert d.run(prog, pkt) == TC_ACT_SHOT
    verdicts, drops, traces = split(d.events())
    assert len(verdicts) == 1 and len(drops) == 1 and len(traces) == 0, (verdicts, drops, traces)
    check_verdict(verdicts[0], match, deny=True, remote_id=remote_id, flags=None)
    assert drops[0]["subtype"] == reason
    assert drops[0]["remote_id"] == remote_id


# ---- not enforced -----------------------------------------------------------------------------------


def test_unenforced_endpoint_unchanged(pdp):
    # no inner map at all
    assert pdp.run(FROM, tcp4(POD4, PEER4, 40000, 80, SYN)) == TC_ACT_OK
    (e,) = pdp.events()
    assert e["type"] == ET.TRACE and e["remote_id"] == WEB  # remote_id even without policy
    assert pdp.ct_get(POD4, PEER4, 40000, 80, TCP) is not None
    # an inner map that enforces only ingress leaves egress alone (no verdict events)
    pdp.install([], ingress=True)
    assert pdp.run(FROM, tcp4(POD4, PEER4, 40001, 80, SYN)) == TC_ACT_OK
    (e,) = pdp.events()
    assert e["type"] == ET.TRACE
    # rules without the marker do not enforce either
    pdp.install(rule(WEB, True, TCP, 443))
    assert pdp.run(FROM, tcp4(POD4, PEER4, 40002, 80, SYN)) == TC_ACT_OK
    assert split(pdp.events())[0].size == 0


def test_enforced_without_rules_is_default_deny(pdp):
    pdp.install([], egress=True)
    pkt = tcp4(POD4, PEER4, 40000, 80, SYN)
    assert pdp.run(FROM, pkt) == TC_ACT_SHOT
    ev = pdp.events()
    assert list(ev["type"]) == [ET.POLICY_VERDICT, ET.DROP]  # verdict first, then the drop
    check_verdict(ev[0], MT.NONE, deny=True)
    assert ev[1]["subtype"] == DROP.POLICY_DENIED and ev[1]["remote_id"] == WEB
    assert (ev[0]["sport"], ev[0]["dport"], ev[0]["l4_proto"], ev[0]["tcp_flags"]) == (40000, 80, TCP, SYN)
    assert pdp.ct_get(POD4, PEER4, 40000, 80, TCP) is None  # a denied NEW packet creates no entry
    assert len(pdp.ct) == 0
    assert pdp.metric(DROP.POLICY_DENIED, abi.MetricDirection.EGRESS) == (1, len(pkt))
    assert pdp.metric(0, abi.MetricDirection.EGRESS) == (0, 0)
    # a retransmitted SYN is NEW again: verdict again
    expect_denied(pdp, FROM, pkt)


# ---- allow rules ------------------------------------------------------------------------------------


def test_l3_only_allow_by_identity(pdp):
    pdp.install(rule(WEB, True), egress=True)
    v = expect_allowed(pdp, FROM, tcp4(POD4, PEER4, 40000, 5432, SYN), MT.L3_ONLY)
    assert v["flags"] == 0
    expect_allowed(pdp, FROM, udp4(POD4, PEER4, 40000, 53), MT.L3_ONLY)
    assert pdp.ct_get(POD4, PEER4, 40000, 5432, TCP)["scope"] == abi.CtScope.EGRESS
    expect_denied(pdp, FROM, tcp4(POD4, OTHER4, 40000, 5432, SYN), remote_id=DB)
    expect_denied(pdp, FROM, tcp4(POD4, "192.0.2.1", 40000, 5432, SYN), remote_id=ID.WORLD)


def test_l3_l4_allow_by_identity_and_port(pdp):
    pdp.install(rule(WEB, True, TCP, 80), egress=True)
    expect_allowed(pdp, FROM, tcp4(POD4, PEER4, 40000, 80, SYN), MT.L3_L4)
    expect_denied(pdp, FROM, tcp4(POD4, PEER4, 40000, 81, SYN))
    expect_denied(pdp, FROM, udp4(POD4, PEER4, 40000, 80))  # same port, other protocol
    expect_denied(pdp, FROM, tcp4(POD4, OTHER4, 40000, 80, SYN), remote_id=DB)  # other identity
    expect_denied(pdp, FROM, tcp4(POD4, PEER4, 80, 40000, SYN))  # the source port does not count


def test_l4_only_any_peer(pdp):
    pdp.install(rule(0, True, TCP, 443), egress=True)
    expect_allowed(pdp, FROM, tcp4(POD4, PEER4, 40000, 443, SYN), MT.L4_ONLY)
    expect_allowed(pdp, FROM, tcp4(POD4, OTHER4, 40000, 443, SYN), MT.L4_ONLY, remote_id=DB)
    expect_allowed(pdp, FROM, tcp4(POD4, "192.0.2.1", 40000, 443, SYN), MT.L4_ONLY, remote_id=ID.WORLD)
    expect_denied(pdp, FROM, tcp4(POD4, PEER4, 40000, 444, SYN))


def test_port_range_by_prefixes(pdp):
    entries = rule(WEB, True, TCP, 8000, 8100)
    assert 1 < len(entries) < 16  # a handful of prefixes, not 101 entries
    pdp.install(entries, egress=True)
    for port in (8000, 8001, 8031, 8032, 8063, 8064, 8095, 8096, 8099, 8100):
        expect_allowed(pdp, FROM, tcp4(POD4, PEER4, 40000, port, SYN), MT.L3_L4)
    for port in (7999, 7936, 8101, 8102, 8128, 8191, 0, 65535):
        expect_denied(pdp, FROM, tcp4(POD4, PEER4, 40000, port, SYN))


def test_port_range_exhaustive_against_python(pdp):
    """Every port of a window around two ranges: the datapath agrees with the rule."""
    pdp.install(rule(0, True, UDP, 1, 3) + rule(0, True, UDP, 1020, 1030), egress=True)
    pdp.set(level=abi.TraceLevel.NONE)
    for port in [*range(0, 8), *range(1010, 1040), 65535]:
        want = TC_ACT_OK if (1 <= port <= 3 or 1020 <= port <= 1030) else TC_ACT_SHOT
        assert pdp.run(FROM, udp4(POD4, PEER4, 5000, port)) == want, port
    pdp.events()


def test_protocol_only(pdp):
    pdp.install(rule(0, True, UDP) + rule(WEB, True, TCP), egress=True)
    expect_allowed(pdp, FROM, udp4(POD4, OTHER4, 40000, 9999), MT.PROTO_ONLY, remote_id=DB)
    expect_allowed(pdp, FROM, tcp4(POD4, PEER4, 40000, 1, SYN), MT.L3_PROTO)
    expect_denied(pdp, FROM, tcp4(POD4, OTHER4, 40000, 1, SYN), remote_id=DB)
    expect_denied(pdp, FROM, eth(0x0800, ip4(POD4, PEER4, 132, bytes(12))))  # SCTP: no rule


def test_more_specific_allow_is_reported(pdp):
    # L3-only for WEB and L4-only for port 80: port 80 reports the port rule, others the L3 rule
    pdp.install(rule(WEB, True) + rule(0, True, TCP, 80), egress=True)
    expect_allowed(pdp, FROM, tcp4(POD4, PEER4, 40000, 80, SYN), MT.L4_ONLY)
    expect_allowed(pdp, FROM, tcp4(POD4, PEER4, 40000, 81, SYN), MT.L3_ONLY)
    expect_allowed(pdp, FROM, tcp4(POD4, OTHER4, 40000, 80, SYN), MT.L4_ONLY, remote_id=DB)


# ---- deny rules ---------------------------------------------------------------------------------------


def test_deny_by_identity_beats_allow_any(pdp):
    pdp.install(rule(0, True, TCP, 80) + rule(WEB, True, deny=True), egress=True)
    expect_denied(pdp, FROM, tcp4(POD4, PEER4, 40000, 80, SYN), DROP.POLICY_DENY, MT.L3_ONLY)
    expect_allowed(pdp, FROM, tcp4(POD4, OTHER4, 40000, 80, SYN), MT.L4_ONLY, remote_id=DB)


def test_deny_any_beats_allow_by_identity(pdp):
    pdp.install(rule(WEB, True) + rule(0, True, TCP, 22, deny=True), egress=True)
    expect_denied(pdp, FROM, tcp4(POD4, PEER4, 40000, 22, SYN), DROP.POLICY_DENY, MT.L4_ONLY)
    expect_allowed(pdp, FROM, tcp4(POD4, PEER4, 40000, 23, SYN), MT.L3_ONLY)
    assert pdp.ct_get(POD4, PEER4, 40000, 22, TCP) is None


def test_deny_without_enforcement_marker_still_denies_nothing(pdp):
    """Deny entries only matter in an enforced direction (the marker turns the lookups on)."""
    pdp.install(rule(WEB, True, deny=True))
    assert pdp.run(FROM, tcp4(POD4, PEER4, 40000, 80, SYN)) == TC_ACT_OK
    pdp.events()


# ---- directions, replies, re-checks -----------------------------------------------------------------


def test_ingress_policy(pdp):
    pdp.install(rule(WEB, False, TCP, 8080), ingress=True)
    syn = tcp4(PEER4, POD4, 50000, 8080, SYN)
    assert pdp.run(TO, syn) == TC_ACT_OK
    verdicts, drops, traces = split(pdp.events())  # (events() checked and cleared the INGRESS flag)
    check_verdict(verdicts[0], MT.L3_L4)
    assert len(drops) == 0 and traces[0]["subtype"] == abi.TracePoint.TO_LXC
    assert pdp.ct_get(PEER4, POD4, 50000, 8080, TCP)["scope"] == abi.CtScope.INGRESS
    expect_denied(pdp, TO, tcp4(OTHER4, POD4, 50000, 8080, SYN), remote_id=DB)
    expect_denied(pdp, TO, tcp4(PEER4, POD4, 50000, 8081, SYN))
    # an egress rule does not open ingress, and ingress enforcement leaves egress alone
    pdp.install(rule(WEB, True), ingress=True)
    expect_denied(pdp, TO, tcp4(PEER4, POD4, 50001, 8080, SYN))
    assert pdp.run(FROM, tcp4(POD4, OTHER4, 40000, 1, SYN)) == TC_ACT_OK
    assert split(pdp.events())[0].size == 0


def test_replies_of_allowed_connections_pass(pdp):
    # egress allowed to WEB:80; ingress enforced with no rules at all
    pdp.install(rule(WEB, True, TCP, 80), egress=True, ingress=True)
    expect_allowed(pdp, FROM, tcp4(POD4, PEER4, 40000, 80, SYN), MT.L3_L4)
    assert pdp.run(TO, tcp4(PEER4, POD4, 80, 40000, SYN | ACK)) == TC_ACT_OK
    (e,) = pdp.events()
    assert e["type"] == ET.TRACE and e["ct_state"] == CT.REPLY and e["remote_id"] == WEB
    assert pdp.run(FROM, tcp4(POD4, PEER4, 40000, 80, ACK)) == TC_ACT_OK
    for _ in range(3):
        assert pdp.run(TO, tcp4(PEER4, POD4, 80, 40000, ACK)) == TC_ACT_OK
    assert split(pdp.events())[1].size == 0
    v = pdp.ct_get(POD4, PEER4, 40000, 80, TCP)
    assert (v["tx_packets"], v["rx_packets"]) == (2, 4)
    # the same packet as a new connection from the peer is denied by ingress policy
    expect_denied(pdp, TO, tcp4(PEER4, POD4, 80, 40001, SYN))


def test_ingress_allowed_connection_replies_pass_egress_default_deny(pdp):
    pdp.install(rule(WEB, False, UDP, 53), egress=True, ingress=True)
    assert pdp.run(TO, udp4(PEER4, POD4, 5353, 53)) == TC_ACT_OK
    assert pdp.run(FROM, udp4(POD4, PEER4, 53, 5353)) == TC_ACT_OK  # reply: no egress rule needed
    verdicts, drops, _ = split(pdp.events())
    assert len(verdicts) == 1 and len(drops) == 0


def test_related_icmp_error_passes(pdp):
    pdp.install(rule(WEB, True, UDP, 53), egress=True, ingress=True)
    req = udp4(POD4, PEER4, 33333, 53)
    assert pdp.run(FROM, req) == TC_ACT_OK
    unreach = eth(0x0800, ip4(PEER4, POD4, ICMP, icmp(3, 3) + req[14:42]))
    assert pdp.run(TO, unreach) == TC_ACT_OK
    ev = pdp.events()
    assert ev[-1]["ct_state"] == CT.RELATED and ev[-1]["type"] == ET.TRACE
    # an ICMP error about nothing we track is an ordinary new ICMP packet: denied by ingress
    other = eth(0x0800, ip4(PEER4, POD4, ICMP, icmp(3, 3) + udp4(POD4, PEER4, 1, 2)[14:42]))
    expect_denied(pdp, TO, other)


def test_established_connection_rechecked_after_rule_removal(pdp):
    pdp.install(rule(WEB, True, TCP, 80), egress=True)
    expect_allowed(pdp, FROM, tcp4(POD4, PEER4, 40000, 80, SYN), MT.L3_L4)
    assert pdp.run(TO, tcp4(PEER4, POD4, 80, 40000, SYN | ACK)) == TC_ACT_OK
    assert pdp.run(FROM, tcp4(POD4, PEER4, 40000, 80, ACK)) == TC_ACT_OK
    assert pdp.run(FROM, tcp4(POD4, PEER4, 40000, 80, ACK)) == TC_ACT_OK
    assert split(pdp.events())[0].size == 0  # established packets and replies: no verdicts

    pdp.install([], egress=True)  # the rule is gone: same connection, next packet
    assert pdp.run(FROM, tcp4(POD4, PEER4, 40000, 80, ACK)) == TC_ACT_SHOT
    verdicts, drops, _ = split(pdp.events())
    assert len(verdicts) == 0  # not a new connection: the drop alone reports it
    assert drops[0]["subtype"] == DROP.POLICY_DENIED and drops[0]["ct_state"] == CT.ESTABLISHED
    assert drops[0]["remote_id"] == WEB
    # replies still ride on the entry (ingress is not enforced)
    assert pdp.run(TO, tcp4(PEER4, POD4, 80, 40000, ACK)) == TC_ACT_OK
    # the rule back: the connection flows again
    pdp.install(rule(WEB, True, TCP, 80), egress=True)
    assert pdp.run(FROM, tcp4(POD4, PEER4, 40000, 80, ACK)) == TC_ACT_OK


def test_reopening_syn_denied_leaves_closing_entry(pdp):
    pdp.install(rule(WEB, True, TCP, 80), egress=True)
    assert pdp.run(FROM, tcp4(POD4, PEER4, 40000, 80, SYN)) == TC_ACT_OK
    assert pdp.run(FROM, tcp4(POD4, PEER4, 40000, 80, FIN | ACK)) == TC_ACT_OK
    before = pdp.ct_get(POD4, PEER4, 40000, 80, TCP)
    assert before["flags"] & abi.CtFlags.TX_CLOSING
    pdp.events()
    pdp.install([], egress=True)
    expect_denied(pdp, FROM, tcp4(POD4, PEER4, 40000, 80, SYN))  # NEW (reopen), denied
    after = pdp.ct_get(POD4, PEER4, 40000, 80, TCP)
    assert after["created_ns"] == before["created_ns"] and after["flags"] == before["flags"]
    pdp.install(rule(WEB, True, TCP, 80), egress=True)
    expect_allowed(pdp, FROM, tcp4(POD4, PEER4, 40000, 80, SYN), MT.L3_L4)
    assert pdp.ct_get(POD4, PEER4, 40000, 80, TCP)["flags"] == 0  # reset by the allowed reopen


def test_fragments_follow_the_first(pdp):
    pdp.install(rule(WEB, True, UDP, 53), egress=True)
    first = eth(0x0800, ip4(POD4, PEER4, UDP, udp(5000, 53), frag=0x2000))
    assert pdp.run(FROM, first) == TC_ACT_OK
    later = eth(0x0800, ip4(POD4, PEER4, UDP, bytes(16), frag=0x0003))  # offset 24: no ports
    assert pdp.run(FROM, later) == TC_ACT_OK
    denied_first = eth(0x0800, ip4(POD4, PEER4, UDP, udp(5000, 54), frag=0x2000))
    assert pdp.run(FROM, denied_first) == TC_ACT_SHOT
    pdp.events()


# ---- IPv6, ICMP ---------------------------------------------------------------------------------------


def icmp4(src, dst, type_, ident=7) -> bytes:
    return eth(0x0800, ip4(src, dst, ICMP, icmp(type_, 0, ident)))


def icmp6(src, dst, type_, ident=7, code=0, body=b"") -> bytes:
    return eth(0x86DD, ip6(src, dst, ICMP6, icmp(type_, code, ident) + body))


def test_ipv6_l4(pdp):
    pdp.install(rule(WEB, True, UDP, 53), egress=True)
    v = expect_allowed(pdp, FROM, udp6(POD6, PEER6, 40000, 53), MT.L3_L4)
    assert v["flags"] == EVF.IPV6 and v["ip_version"] == 6
    expect_denied(pdp, FROM, udp6(POD6, PEER6, 40000, 54))
    expect_denied(pdp, FROM, udp6(POD6, "fd00::99", 40000, 53), remote_id=ID.WORLD)


def test_icmp_protocol_rules(pdp):
    pdp.install(rule(WEB, True, ICMP) + rule(WEB, False, ICMP6), egress=True, ingress=True)
    expect_allowed(pdp, FROM, icmp4(POD4, PEER4, 8), MT.L3_PROTO)
    assert pdp.run(TO, icmp4(PEER4, POD4, 0)) == TC_ACT_OK  # the echo reply: CT reply
    assert pdp.events()[0]["ct_state"] == CT.REPLY
    # ICMPv6 echo, ingress
    pdp.install(rule(WEB, False, ICMP6), ingress=True)
    expect_allowed(pdp, TO, icmp6(PEER6, POD6, 128), MT.L3_PROTO)
    assert pdp.run(FROM, icmp6(POD6, PEER6, 129)) == TC_ACT_OK
    assert pdp.events()[0]["ct_state"] == CT.REPLY
    expect_denied(pdp, TO, icmp4(PEER4, POD4, 8))  # ICMPv4 is another protocol
    expect_denied(pdp, TO, udp6(PEER6, POD6, 1, 2))


def test_icmp_type_is_the_port(pdp):
    """As Cilium's ICMP rules: the key's dport is the ICMP type; the echo id never reaches it."""
    pdp.install(rule(WEB, True, ICMP, 8) + rule(0, False, ICMP6, 128), egress=True, ingress=True)
    expect_allowed(pdp, FROM, icmp4(POD4, PEER4, 8, ident=999), MT.L3_L4)
    expect_allowed(pdp, FROM, icmp4(POD4, PEER4, 8, ident=1), MT.L3_L4)
    expect_denied(pdp, FROM, icmp4(POD4, PEER4, 13))  # timestamp request: another type
    expect_allowed(pdp, TO, icmp6(OTHER4_6, POD6, 128), MT.L4_ONLY, remote_id=ID.WORLD)
    expect_denied(pdp, TO, icmp6(PEER6, POD6, 139))  # node information query
    # ICMP errors that relate to nothing are policed by their type too
    unreach = eth(0x0800, ip4(POD4, PEER4, ICMP, icmp(3, 1) + udp4(PEER4, POD4, 1, 2)[14:42]))
    expect_denied(pdp, FROM, unreach)
    pdp.install(rule(WEB, True, ICMP, 3), egress=True)
    assert pdp.run(FROM, unreach) == TC_ACT_OK
    (v,) = split(pdp.events())[0]
    check_verdict(v, MT.L3_L4, flags=EVF.ICMP_ERROR)


@pytest.mark.parametrize("icmp_type", [130, 131, 132, 133, 134, 135, 136, 137, 143])
def test_neighbour_discovery_and_mld_exempt(pdp, icmp_type):
    pdp.install([], egress=True, ingress=True)
    body = bytes(16)
    assert pdp.run(FROM, icmp6("fe80::1", "ff02::1:ff00:2", icmp_type, body=body)) == TC_ACT_OK
    assert pdp.run(TO, icmp6("fe80::2", "fe80::1", icmp_type, body=body)) == TC_ACT_OK
    ev = pdp.events()
    assert (ev["type"] != ET.POLICY_VERDICT).all() and (ev["type"] != ET.DROP).all()


def test_other_icmpv6_not_exempt(pdp):
    pdp.install([], egress=True)
    expect_denied(pdp, FROM, icmp6(POD6, PEER6, 128))
    expect_denied(pdp, FROM, icmp6("fe80::1", "ff02::2", 129, ident=0), remote_id=ID.WORLD)  # unrelated reply


def test_host_ingress_is_an_ordinary_map_entry(pdp):
    pdp.identity("10.0.0.254", ID.HOST)
    pdp.install([], egress=True, ingress=True)  # no allow-localhost entry: the host is denied
    expect_denied(pdp, TO, tcp4("10.0.0.254", POD4, 50000, 8080, SYN), remote_id=ID.HOST)
    pdp.install(rule(ID.HOST, False), egress=True, ingress=True)  # the agent's allow-localhost
    assert pdp.run(TO, tcp4("10.0.0.254", POD4, 50001, 8080, SYN)) == TC_ACT_OK  # health check
    (e, t) = pdp.events()
    assert e["type"] == ET.POLICY_VERDICT and t["type"] == ET.TRACE and t["remote_id"] == ID.HOST
    # but not the other way round: egress to the host is policed
    expect_denied(pdp, FROM, tcp4(POD4, "10.0.0.254", 40000, 22, SYN), remote_id=ID.HOST)


# ---- audit mode, trace levels -------------------------------------------------------------------------


def test_audit_mode_forwards_would_be_drops(pdp):
    pdp.set(flags=abi.SETTINGS_SOURCE_IP_CHECK | abi.SETTINGS_POLICY_AUDIT)
    pdp.install(rule(WEB, True, TCP, 80) + rule(0, True, TCP, 22, deny=True), egress=True)
    pkt = tcp4(POD4, PEER4, 40000, 81, SYN)
    assert pdp.run(FROM, pkt) == TC_ACT_OK
    verdicts, drops, traces = split(pdp.events())
    assert len(drops) == 0 and len(traces) == 1
    check_verdict(verdicts[0], MT.NONE, deny=True, audit=True)
    assert pdp.ct_get(POD4, PEER4, 40000, 81, TCP) is not None  # forwarded: tracked as usual
    assert pdp.metric(0, abi.MetricDirection.EGRESS)[0] == 1
    assert pdp.metric(DROP.POLICY_DENIED, abi.MetricDirection.EGRESS)[0] == 0
    # deny rules are audited too
    assert pdp.run(FROM, tcp4(POD4, PEER4, 40000, 22, SYN)) == TC_ACT_OK
    check_verdict(split(pdp.events())[0][0], MT.L4_ONLY, deny=True, audit=True)
    # allowed traffic looks the same as without audit
    expect_allowed(pdp, FROM, tcp4(POD4, PEER4, 40000, 80, SYN), MT.L3_L4)
    # audit off again: the next packet of the audited connection is dropped
    pdp.set()
    assert pdp.run(FROM, tcp4(POD4, PEER4, 40000, 81, ACK)) == TC_ACT_SHOT
    pdp.events()


def test_verdict_events_at_every_trace_level(pdp):
    pdp.install(rule(WEB, True, TCP, 80), egress=True)
    pdp.set(level=abi.TraceLevel.NONE)
    assert pdp.run(FROM, tcp4(POD4, PEER4, 40000, 80, SYN)) == TC_ACT_OK
    (e,) = pdp.events()
    check_verdict(e, MT.L3_L4)
    assert pdp.run(FROM, tcp4(POD4, PEER4, 40000, 80, ACK)) == TC_ACT_OK  # established: nothing
    assert len(pdp.events()) == 0
    pdp.set(level=abi.TraceLevel.ALL)
    assert pdp.run(FROM, tcp4(POD4, PEER4, 40000, 80, ACK)) == TC_ACT_OK
    (e,) = pdp.events()
    assert e["type"] == ET.TRACE and e["remote_id"] == WEB


# ---- ipcache ------------------------------------------------------------------------------------------


def test_ipcache_longest_prefix_and_cidr_except(pdp):
    A, B, C = 2000, 2001, 2002  # noqa: N806
    pdp.identity("10.0.0.0/8", A)
    pdp.identity("10.96.0.0/12", B)  # "10.0.0.0/8 except 10.96.0.0/12" = A's rule, not B's
    pdp.identity("10.96.0.10", C)
    pdp.identity("fd00:1::/32", A)
    pdp.install(rule(A, True), egress=True)
    expect_allowed(pdp, FROM, udp4(POD4, "10.1.2.3", 1, 2), MT.L3_ONLY, remote_id=A)
    expect_allowed(pdp, FROM, udp4(POD4, "10.112.0.1", 1, 2), MT.L3_ONLY, remote_id=A)  # past /12
    expect_denied(pdp, FROM, udp4(POD4, "10.96.0.1", 1, 2), remote_id=B)
    expect_denied(pdp, FROM, udp4(POD4, "10.111.255.255", 1, 2), remote_id=B)
    expect_denied(pdp, FROM, udp4(POD4, "10.96.0.10", 1, 2), remote_id=C)
    expect_denied(pdp, FROM, udp4(POD4, "11.0.0.1", 1, 2), remote_id=ID.WORLD)
    expect_allowed(pdp, FROM, udp6(POD6, "fd00:1:2::3", 1, 2), MT.L3_ONLY, remote_id=A)
    expect_denied(pdp, FROM, udp6(POD6, "fd00:2::3", 1, 2), remote_id=ID.WORLD)
    # an IPv4 entry never matches an IPv6 address with the same leading bytes
    expect_denied(pdp, FROM, udp6(POD6, "a00:1::1", 1, 2), remote_id=ID.WORLD)
    # removing the /32 falls back to the /12
    pdp.ipcache.delete(abi.ipcache_key("10.96.0.10"))
    expect_denied(pdp, FROM, udp4(POD4, "10.96.0.10", 1, 3), remote_id=B)


def test_world_fallback_when_no_entry(pdp):
    pdp.install(rule(ID.WORLD, True, TCP, 443), egress=True)
    expect_allowed(pdp, FROM, tcp4(POD4, "198.51.100.7", 40000, 443, SYN), MT.L3_L4, remote_id=ID.WORLD)
    tcp6 = eth(0x86DD, ip6(POD6, "2001:db8::1", TCP, tcp(40000, 443, SYN)))
    expect_allowed(pdp, FROM, tcp6, MT.L3_L4, remote_id=ID.WORLD)
    expect_denied(pdp, FROM, tcp4(POD4, PEER4, 40000, 443, SYN))  # PEER4 is WEB, not world


def test_remote_id_in_every_event(pdp):
    # traces and drops of an unpoliced endpoint, both directions
    assert pdp.run(TO, udp4(OTHER4, POD4, 1, 2)) == TC_ACT_OK
    assert pdp.events()[0]["remote_id"] == DB  # ingress: the source is the peer
    assert pdp.run(FROM, udp4(POD4, OTHER4, 2, 1)) == TC_ACT_OK
    assert pdp.events()[0]["remote_id"] == DB  # egress reply: the destination is the peer
    assert pdp.run(FROM, udp4("10.9.9.9", PEER4, 1, 2)) == TC_ACT_SHOT  # spoofed source
    (e,) = pdp.events()
    assert e["subtype"] == DROP.INVALID_SOURCE_IP and e["remote_id"] == WEB
    assert pdp.run(FROM, eth(0x0800, ip4(POD4, PEER4, TCP, bytes(8)))) == TC_ACT_SHOT  # cut TCP
    (e,) = pdp.events()
    assert e["subtype"] == DROP.CT_TRUNCATED and e["remote_id"] == WEB
    assert pdp.run(FROM, eth(0x88CC, bytes(46))) == TC_ACT_SHOT  # LLDP: not IP
    (e,) = pdp.events()
    assert e["subtype"] == DROP.UNSUPPORTED_L3 and e["remote_id"] == 0


# ---- the outer map: swaps, pins -------------------------------------------------------------------


def test_atomic_swap_of_the_inner_map(pdp):
    allow = pdp.new_policy(rule(WEB, True, TCP, 80), egress=True)
    deny = pdp.new_policy([], egress=True)
    try:
        assert pdp.policy_outer.inner_map(EP_ID) is None
        pdp.policy_outer.set_inner(EP_ID, allow)
        with pdp.policy_outer.inner_map(EP_ID) as cur:
            assert cur.id == allow.id and cur.map_type == 11
        expect_allowed(pdp, FROM, tcp4(POD4, PEER4, 40000, 80, SYN), MT.L3_L4)  # before: old map

        pdp.policy_outer.set_inner(EP_ID, deny)  # one update: the whole new policy
        with pdp.policy_outer.inner_map(EP_ID) as cur:
            assert cur.id == deny.id
        expect_denied(pdp, FROM, tcp4(POD4, PEER4, 40001, 80, SYN))  # after: new map
        assert pdp.run(FROM, tcp4(POD4, PEER4, 40000, 80, ACK)) == TC_ACT_SHOT  # old connection too
        pdp.events()
        # the replaced map is intact (the agent may reuse or drop it)
        assert len(TypedMap(allow, abi.POLICY_KEY_DTYPE, abi.POLICY_VALUE_DTYPE)) == 2

        pdp.policy_outer.delete((EP_ID).to_bytes(4, "little"))  # no map: not policed
        assert pdp.policy_outer.inner_map(EP_ID) is None
        assert pdp.run(FROM, tcp4(POD4, PEER4, 40002, 80, SYN)) == TC_ACT_OK
        assert split(pdp.events())[0].size == 0
    finally:
        allow.close()
        deny.close()


def test_swapped_in_map_lives_after_the_agent_closes_it(pdp):
    pdp.install(rule(WEB, True), egress=True)  # install() closes its fd right away
    gc.collect()
    expect_allowed(pdp, FROM, tcp4(POD4, PEER4, 40000, 80, SYN), MT.L3_ONLY)


def test_other_endpoints_have_their_own_policy(pdp):
    pdp.add_endpoint(ifindex=IFINDEX, ep_id=EP_ID + 1)  # the same veth, re-registered as another endpoint
    pdp.install([], egress=True)  # EP_ID's policy: deny all
    assert pdp.run(FROM, tcp4(POD4, PEER4, 40000, 80, SYN)) == TC_ACT_OK
    pdp.events()
    pdp.add_endpoint()
    expect_denied(pdp, FROM, tcp4(POD4, PEER4, 40001, 80, SYN))


def test_inner_map_shape_is_checked(pdp):
    # wrong flags (preallocated hash) and wrong key size are refused by the kernel
    with create_map(lb.BPF_MAP_TYPE_HASH, 12, 8, 16) as wrong, pytest.raises(BpfError):
        pdp.policy_outer.set_inner(EP_ID, wrong)
    with (
        create_map(lb.BPF_MAP_TYPE_LPM_TRIE, 16, 8, 16, flags=lb.BPF_F_NO_PREALLOC) as wrong,
        pytest.raises(BpfError),
    ):
        pdp.policy_outer.set_inner(EP_ID, wrong)
    # any max_entries is accepted for LPM inner maps (small policies can be small maps)
    with create_policy_map(max_entries=64) as small:
        pdp.policy_outer.set_inner(EP_ID, small)
        with pytest.raises(BpfError):  # endpoint IDs past the outer array
            pdp.policy_outer.set_inner(abi.POLICY_ENDPOINTS, small)


def test_policy_and_ipcache_survive_a_reload(pdp):
    pdp.install(rule(WEB, True, TCP, 80), egress=True)
    root = pdp.obj.pin_root
    assert (root / abi.MAP_POLICY).exists() and (root / abi.MAP_IPCACHE).exists()
    # a second object (an upgraded agent) reuses the pinned outer map, its inner map and the ipcache
    obj2 = BpfObject.open(OBJ, pin_root=root)
    try:
        obj2.load()
        assert obj2.map(abi.MAP_POLICY).id == pdp.policy_outer.id
        with obj2.map(abi.MAP_POLICY).inner_map(EP_ID) as inner:
            assert len(TypedMap(inner, abi.POLICY_KEY_DTYPE, abi.POLICY_VALUE_DTYPE)) == 2
        ctx = bytearray(192)
        struct.pack_into("<I", ctx, 40, IFINDEX)
        r = test_run(obj2.program(FROM), tcp4(POD4, PEER4, 40000, 81, SYN), ctx=bytes(ctx))
        assert r.retval == TC_ACT_SHOT
        r = test_run(obj2.program(FROM), tcp4(POD4, PEER4, 40000, 80, SYN), ctx=bytes(ctx))
        assert r.retval == TC_ACT_OK
    finally:
        obj2.close()
    pdp.events()


def test_pod_addresses_in_ipcache_do_not_matter_for_own_traffic(pdp):
    """Only the peer is looked up: the pod's own address may be in the ipcache with its identity."""
    pdp.identity(POD4, 3000)
    pdp.install(rule(WEB, True), egress=True)
    expect_allowed(pdp, FROM, udp4(POD4, PEER4, 1, 2), MT.L3_ONLY)
    assert pdp.run(TO, udp4(PEER4, POD4, 2, 1)) == TC_ACT_OK
    assert pdp.events()[0]["remote_id"] == WEB
