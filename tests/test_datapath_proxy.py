"""The L7 redirect decision in the C datapath (bpf/include/proxy.h), with BPF_PROG_TEST_RUN.

Same harness as tests/test_datapath_policy.py (a private pin root, hand-built packets through
tnd_from_container / tnd_to_container, policies written as the agent writes them). What is checked:
which packets go to the proxy (the sender's egress entry, or the ingress entry of a destination pod
of this node found through the ipcache's ep_id), that a redirect needs a listening proxy socket
(none: drop 178, fail closed), that a real transparent listener in this network namespace is found,
and that ingress an L7 rule covers is dropped unless the proxy sent it.

BPF_PROG_TEST_RUN does not run a program at tc ingress, so bpf_sk_assign refuses there
(-EOPNOTSUPP -> drop 179 "Socket assign failed"): 179 instead of 178 is what proves the listener
lookup found the proxy's socket. The assignment itself, the mark and the to-proxy trace on real
traffic are covered by tests/test_l7_http.py.
"""

from __future__ import annotations

import shutil
import socket
import struct

import numpy as np
import pytest

from tendril.bpf import TypedMap, abi, create_policy_map, test_run
from tendril.proxy.redirect import transparent_listener
from test_datapath_policy import (
    DROP,
    MT,
    PEER4,
    POD4,
    SYN,
    TC_ACT_OK,
    TC_ACT_SHOT,
    TCP,
    WEB,
    PolicyDatapath,
    _open_policy,
    split,
)
from test_datapath_unit import FROM, IFINDEX, TO, tcp4, udp4

EP2 = 1300  # a second local endpoint: PEER4's
PROXY_PORT_NONE = 1  # a proxy port nothing listens on (privileged, unused in the test netns)


UDP = 17


def entry(
    identity: int, egress: bool, port: int, proxy_port: int = 0, proto: int = TCP
) -> list[tuple[np.void, np.void]]:
    value = abi.policy_value(abi.policy_match_type(identity, proto, port), proxy_port=proxy_port, rule_ref=9)
    return [(abi.policy_key(identity, egress, proto, port), value)]


def install_for(d: PolicyDatapath, ep_id: int, entries, egress: bool = False, ingress: bool = False) -> None:
    with d.new_policy(entries, egress, ingress) as m:
        d.policy_outer.set_inner(ep_id, m)


def run_mark(d: PolicyDatapath, prog: str, pkt: bytes, mark: int = 0) -> tuple[int, int]:
    """(verdict, skb->mark afterwards); the packet may carry a mark in."""
    ctx = bytearray(192)
    struct.pack_into("<I", ctx, 8, mark)  # __sk_buff.mark
    struct.pack_into("<I", ctx, 40, IFINDEX)
    r = test_run(d.obj.program(prog), pkt, ctx=bytes(ctx))
    d.progs_run = getattr(d, "progs_run", set()) | {prog}
    return r.retval, struct.unpack_from("<I", r.ctx_out, 8)[0]


@pytest.fixture
def pdp():
    d, root = _open_policy()
    try:
        d.add_endpoint()
        d.set()
        d.identity(PEER4, WEB)
        yield d
    finally:
        d.close()
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def listener():
    s = transparent_listener(socket.AF_INET, 0)
    try:
        yield s.getsockname()[1]
    finally:
        s.close()


def test_egress_entry_without_proxy_port_forwards_as_before(pdp: PolicyDatapath) -> None:
    pdp.install(entry(WEB, True, 80), egress=True)
    ret, mark = run_mark(pdp, FROM, tcp4(POD4, PEER4, 40000, 80, SYN))
    assert ret == TC_ACT_OK and mark == 0
    _, _, traces = split(pdp.events())
    assert traces[0]["subtype"] == abi.TracePoint.FROM_LXC


def test_redirect_without_a_listening_proxy_drops(pdp: PolicyDatapath) -> None:
    pdp.install(entry(WEB, True, 80, proxy_port=PROXY_PORT_NONE), egress=True)
    ret, _ = run_mark(pdp, FROM, tcp4(POD4, PEER4, 40000, 80, SYN))
    assert ret == TC_ACT_SHOT
    verdicts, drops, traces = split(pdp.events())
    assert verdicts[0]["subtype"] == MT.L3_L4  # the policy allowed it: the redirect failed
    assert drops[0]["subtype"] == DROP.SOCKET_LOOKUP_FAILED and len(traces) == 0


def test_redirect_finds_a_transparent_listener(pdp: PolicyDatapath, listener: int) -> None:
    pdp.install(entry(WEB, True, 80, proxy_port=listener) + entry(WEB, True, 81), egress=True)
    assert run_mark(pdp, FROM, tcp4(POD4, PEER4, 40000, 80, SYN))[0] == TC_ACT_SHOT
    _, drops, _ = split(pdp.events())
    assert drops[0]["subtype"] == DROP.SOCKET_ASSIGN_FAILED  # found (not 178), assign refused in test runs
    # another port of the same peer is not redirected
    assert run_mark(pdp, FROM, tcp4(POD4, PEER4, 40001, 81, SYN)) == (TC_ACT_OK, 0)
    assert split(pdp.events())[2][0]["subtype"] == abi.TracePoint.FROM_LXC


def test_ingress_rule_of_a_local_destination_redirects_at_the_sender(
    pdp: PolicyDatapath, listener: int
) -> None:  # noqa: E501
    pdp.ipcache.update(abi.ipcache_key(PEER4), abi.ipcache_value(WEB, "", EP2))
    install_for(pdp, EP2, entry(0, False, 8080, proxy_port=listener), ingress=True)
    assert run_mark(pdp, FROM, tcp4(POD4, PEER4, 40000, 8080, SYN))[0] == TC_ACT_SHOT
    assert split(pdp.events())[1][0]["subtype"] == DROP.SOCKET_ASSIGN_FAILED  # the proxy's socket found
    # the destination denies this port: not redirected (tnd_to_container drops it there)
    ret, mark = run_mark(pdp, FROM, tcp4(POD4, PEER4, 40001, 8081, SYN))
    assert ret == TC_ACT_OK and mark == 0
    pdp.events()
    # without an ep_id (not a pod of this node) the destination's policy is not consulted
    pdp.ipcache.update(abi.ipcache_key(PEER4), abi.ipcache_value(WEB))
    assert run_mark(pdp, FROM, tcp4(POD4, PEER4, 40002, 8080, SYN)) == (TC_ACT_OK, 0)
    pdp.events()


def test_ingress_covered_by_an_l7_rule_must_come_from_the_proxy(pdp: PolicyDatapath) -> None:
    pdp.install(entry(WEB, False, 8080, proxy_port=15080), ingress=True)
    syn = tcp4(PEER4, POD4, 50000, 8080, SYN)
    ret, _ = run_mark(pdp, TO, syn)
    assert ret == TC_ACT_SHOT
    assert split(pdp.events())[1][0]["subtype"] == DROP.POLICY_DENIED
    ret, _ = run_mark(pdp, TO, syn, mark=abi.MARK_MAGIC_FROM_PROXY)
    assert ret == TC_ACT_OK
    ev = pdp.reader.drain()  # (events() expects to-container's traces at TO_LXC only)
    assert list(ev[ev["type"] == abi.EventType.TRACE]["subtype"]) == [abi.TracePoint.FROM_PROXY]


def test_policy_value_carries_the_proxy_port() -> None:
    m = create_policy_map(name="tndut_pp")
    with m:
        t = TypedMap(m, abi.POLICY_KEY_DTYPE, abi.POLICY_VALUE_DTYPE)
        k, v = entry(WEB, True, 80, proxy_port=15080)[0]
        t.update(k, v)
        got = t.lookup(k)
        assert int(got["proxy_port"]) == 15080


@pytest.fixture
def udp_listener():
    """A transparent UDP socket like the DNS proxy's (wildcard address, IP_TRANSPARENT)."""
    from tendril.proxy.redirect import IP_TRANSPARENT

    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        s.setsockopt(socket.SOL_IP, IP_TRANSPARENT, 1)
        s.bind(("0.0.0.0", 0))
        yield s.getsockname()[1]
    finally:
        s.close()


def test_udp_egress_dns_entry_redirects_every_datagram_to_the_dns_proxy(
    pdp: PolicyDatapath, udp_listener: int
) -> None:
    pdp.install(
        entry(WEB, True, 53, proxy_port=udp_listener, proto=UDP) + entry(WEB, True, 54, proto=UDP),
        egress=True,
    )
    for sport in (40000, 40000, 40001):  # new and established "connections" alike
        assert run_mark(pdp, FROM, udp4(POD4, PEER4, sport, 53))[0] == TC_ACT_SHOT
        assert split(pdp.events())[1][0]["subtype"] == DROP.SOCKET_ASSIGN_FAILED  # the UDP socket found
    # no DNS rule on 54: straight through
    assert run_mark(pdp, FROM, udp4(POD4, PEER4, 40002, 54)) == (TC_ACT_OK, 0)
    pdp.events()


def test_udp_redirect_without_a_dns_proxy_drops(pdp: PolicyDatapath) -> None:
    pdp.install(entry(WEB, True, 53, proxy_port=PROXY_PORT_NONE, proto=UDP), egress=True)
    assert run_mark(pdp, FROM, udp4(POD4, PEER4, 40000, 53))[0] == TC_ACT_SHOT
    assert split(pdp.events())[1][0]["subtype"] == DROP.SOCKET_LOOKUP_FAILED


def test_udp_ingress_entry_with_a_proxy_port_is_not_redirected(
    pdp: PolicyDatapath, udp_listener: int
) -> None:
    """UDP is redirected for egress (DNS) rules only; an ingress entry never sends UDP to a proxy."""
    pdp.ipcache.update(abi.ipcache_key(PEER4), abi.ipcache_value(WEB, "", EP2))
    install_for(pdp, EP2, entry(0, False, 53, proxy_port=udp_listener, proto=UDP), ingress=True)
    assert run_mark(pdp, FROM, udp4(POD4, PEER4, 40000, 53)) == (TC_ACT_OK, 0)
    pdp.events()
