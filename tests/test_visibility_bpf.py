"""Proxy-free HTTP visibility in the datapath (bpf/include/visibility.h) with BPF_PROG_TEST_RUN,
and the agent-side parsing and pairing of its snaps (hubble/parser/http_snap.py) on those records.

Hand-built TCP segments with HTTP payloads go through tnd_from_container / tnd_to_container of a
loaded lxc.o (the `dp` fixture of test_datapath_unit); the tnd_payloads ring is read back with the
agent's own reader.
"""

from __future__ import annotations

import ipaddress
import struct

import numpy as np
import pytest

import test_datapath_unit
from tendril.bpf import RingBufferReader, TypedMap, abi
from tendril.hubble.parser.http_snap import HttpPairing, Request, Response, parse_messages, parse_start
from test_datapath_unit import (
    ACK,
    EP_ID,
    FROM,
    IFINDEX,
    PEER4,
    PEER6,
    POD4,
    POD6,
    PSH,
    TC_ACT_OK,
    TO,
    Datapath,
    eth,
    handshake,
    ip4,
    ip6,
    tcp,
)

dp = test_datapath_unit.dp  # the fixture: lxc.o loaded under its own pin root, one endpoint

REQ = b"GET /api/items?x=1 HTTP/1.1\r\nHost: shop.example\r\nUser-Agent: t\r\n\r\n"
RESP = b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n"


def opt_in(dp: Datapath, on: bool = True) -> None:
    info = dp.endpoints.lookup(IFINDEX).copy()
    info["flags"] = abi.EPF_HTTP_VISIBILITY if on else 0
    dp.endpoints.update(IFINDEX, info)


def snaps(dp: Datapath) -> np.ndarray:
    reader = getattr(dp, "snap_reader", None)
    if reader is None:
        reader = dp.snap_reader = RingBufferReader(dp.obj.map(abi.MAP_PAYLOADS), abi.PAYLOAD_DTYPE)
    return reader.drain()


def data(rec: np.void) -> bytes:
    return bytes(rec["data"][: int(rec["cap_len"])])


def seg(src: str, dst: str, sport: int, dport: int, payload: bytes, seq: int = 1000) -> bytes:
    """A data segment (ACK|PSH) with its own sequence number (tcp() always writes 1000)."""
    hdr = bytearray(tcp(sport, dport, ACK | PSH, payload=payload))
    struct.pack_into("!I", hdr, 4, seq)
    return eth(0x0800, ip4(src, dst, 6, bytes(hdr)))


def test_nothing_is_snapped_without_the_opt_in(dp: Datapath) -> None:
    handshake(dp)
    assert dp.run(FROM, seg(POD4, PEER4, 40000, 80, REQ)) == TC_ACT_OK
    assert len(snaps(dp)) == 0


def test_request_and_response_starts_are_snapped_with_their_direction(dp: Datapath) -> None:
    opt_in(dp)
    handshake(dp)
    assert len(snaps(dp)) == 0  # the handshake has no payload
    assert dp.run(FROM, seg(POD4, PEER4, 40000, 80, REQ)) == TC_ACT_OK
    assert dp.run(TO, seg(PEER4, POD4, 80, 40000, RESP)) == TC_ACT_OK
    got = snaps(dp)
    assert len(got) == 2
    req, resp = got
    assert data(req) == REQ and int(req["payload_len"]) == len(REQ)
    assert int(req["flags"]) == 0 and int(resp["flags"]) == int(abi.EventFlags.INGRESS)
    assert (int(req["sport"]), int(req["dport"])) == (40000, 80)
    assert bytes(req["saddr"])[:4] == ipaddress.IPv4Address(POD4).packed
    assert bytes(req["daddr"])[:4] == ipaddress.IPv4Address(PEER4).packed
    assert int(req["ep_id"]) == EP_ID and int(req["ip_version"]) == 4
    assert int(req["remote_id"]) == abi.Identity.WORLD  # no ipcache entry for the peer
    assert int(req["seq"]) == 1000  # tcp() writes seq 1000
    assert data(resp) == RESP
    assert int(resp["ts_ns"]) >= int(req["ts_ns"]) > 0


def test_bodies_and_other_protocols_are_not_snapped(dp: Datapath) -> None:
    opt_in(dp)
    handshake(dp)
    for payload in (b'{"a": 1}' * 50, b"\x16\x03\x01\x02\x00" + bytes(60), b"GETX", b"HTT"):
        assert dp.run(FROM, seg(POD4, PEER4, 40000, 80, payload)) == TC_ACT_OK
    assert len(snaps(dp)) == 0


def test_long_request_is_cut_at_the_snap_length(dp: Datapath) -> None:
    opt_in(dp)
    handshake(dp)
    long_req = b"POST /" + b"a" * 300 + b" HTTP/1.1\r\n\r\n"
    assert dp.run(FROM, seg(POD4, PEER4, 40000, 80, long_req)) == TC_ACT_OK
    (rec,) = snaps(dp)
    assert int(rec["cap_len"]) == abi.SNAP_LEN and int(rec["payload_len"]) == len(long_req)
    assert data(rec) == long_req[: abi.SNAP_LEN]
    msg = parse_start(data(rec))
    assert isinstance(msg, Request) and msg.method == "POST" and msg.url.startswith("/aaa")


def test_ipv6_exchange(dp: Datapath) -> None:
    opt_in(dp)
    pkt = eth(0x86DD, ip6(PEER6, POD6, 6, tcp(50000, 8080, ACK | PSH, payload=REQ)))
    assert dp.run(TO, pkt) == TC_ACT_OK  # the pod is the server here
    (rec,) = snaps(dp)
    assert int(rec["ip_version"]) == 6 and int(rec["flags"]) == int(abi.EventFlags.INGRESS)
    assert bytes(rec["saddr"]) == ipaddress.IPv6Address(PEER6).packed


def test_snaps_lost_when_the_ring_is_full_are_counted(dp: Datapath) -> None:
    opt_in(dp)
    handshake(dp)
    lost = TypedMap(dp.obj.map(abi.MAP_PAYLOADS_LOST), abi.LOST_KEY_DTYPE, abi.LOST_VALUE_DTYPE)
    n = dp.obj.map(abi.MAP_PAYLOADS).max_entries // (abi.PAYLOAD_DTYPE.itemsize + 8) + 10
    for _ in range(n):
        dp.run(FROM, seg(POD4, PEER4, 40000, 80, REQ))
    assert int(lost.lookup(0).sum()) >= 10
    assert len(snaps(dp)) + int(lost.lookup(0).sum()) == n


def test_pairing_on_datapath_records(dp: Datapath) -> None:
    opt_in(dp)
    handshake(dp)
    # keep-alive with two requests in flight, a retransmitted first request, then both answers
    dp.run(FROM, seg(POD4, PEER4, 40000, 80, b"GET /one HTTP/1.1\r\n\r\n", seq=1000))
    dp.run(FROM, seg(POD4, PEER4, 40000, 80, b"GET /two HTTP/1.1\r\n\r\n", seq=1100))
    dp.run(FROM, seg(POD4, PEER4, 40000, 80, b"GET /one HTTP/1.1\r\n\r\n", seq=1000))
    dp.run(TO, seg(PEER4, POD4, 80, 40000, b"HTTP/1.1 200 OK\r\n\r\n", seq=5000))
    dp.run(TO, seg(PEER4, POD4, 80, 40000, b"HTTP/1.0 500 Oops\r\n\r\n", seq=5100))
    pairing = HttpPairing()
    out = list(pairing.feed(snaps(dp)))
    assert [(e.request.url, e.response) for e in out] == [
        ("/one", None),
        ("/two", None),
        ("/one", Response("HTTP/1.1", 200)),
        ("/two", Response("HTTP/1.0", 500)),
    ]
    assert pairing.retransmits == 1 and pairing.unmatched == 0 and pairing.open_requests == 0
    assert all(e.egress for e in out) and out[2].latency_ns > 0 and out[3].latency_ns > 0
    assert str(out[2].client.ip) == POD4 and out[2].server.port == 80


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (b"GET / HTTP/1.1\r\nHost: a:8080\r\n\r\n", Request("GET", "/", "HTTP/1.1", "a:8080")),
        (b"DELETE /x HTTP/1.0\r\n\r\n", Request("DELETE", "/x", "HTTP/1.0", "")),
        (b"PATCH /cut-in-the-midd", Request("PATCH", "/cut-in-the-midd", "HTTP/1.1", "")),
        (b"HTTP/1.1 204 No Content\r\n", Response("HTTP/1.1", 204)),
        (b"HTTP/1.1 2x4 Bad\r\n", None),
        (b"GET / SPDY/3\r\n\r\n", None),
        (b"HELLO / HTTP/1.1\r\n", None),
        (b"GET /\xff HTTP/1.1\r\n", None),
        (b"HTTP/2 200\r\n", None),
    ],
)
def test_parse_start(raw: bytes, expected: object) -> None:
    assert parse_start(raw) == expected


def test_pairing_is_bounded() -> None:
    dtype = abi.PAYLOAD_DTYPE
    recs = np.zeros(10, dtype)
    for i, r in enumerate(recs):
        line = f"GET /{i} HTTP/1.1\r\n\r\n".encode()
        r["data"][: len(line)] = np.frombuffer(line, np.uint8)
        r["cap_len"], r["ip_version"], r["sport"], r["dport"] = len(line), 4, 1000 + i, 80
        r["seq"], r["ts_ns"] = i, i
    pairing = HttpPairing(max_connections=4)
    assert len(list(pairing.feed(recs))) == 10
    assert pairing.open_requests == 4  # the six oldest connections were forgotten


def test_pipelined_messages_in_one_segment(dp: Datapath) -> None:
    """Small pipelined requests (and their answers) that share a segment are all paired."""
    opt_in(dp)
    handshake(dp)
    two = b"GET /a HTTP/1.1\r\nHost: s\r\n\r\nGET /b HTTP/1.1\r\nHost: s\r\n\r\n"
    answers = (
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nokHTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n"
    )
    dp.run(FROM, seg(POD4, PEER4, 40000, 80, two, seq=1000))
    dp.run(TO, seg(PEER4, POD4, 80, 40000, answers, seq=5000))
    pairing = HttpPairing()
    out = [e for e in pairing.feed(snaps(dp)) if e.response is not None]
    assert [(e.request.url, e.response.code) for e in out] == [("/a", 200), ("/b", 404)]
    assert pairing.unmatched == 0 and pairing.open_requests == 0


@pytest.mark.parametrize(
    ("raw", "urls_or_codes"),
    [
        (b"GET /a HTTP/1.1\r\n\r\nGET /b HTTP/1.1\r\n\r\nGET /c HTTP/1.1\r\n", ["/a", "/b", "/c"]),
        (b"POST /a HTTP/1.1\r\nContent-Length: 3\r\n\r\nabcGET /b HTTP/1.1\r\n\r\n", ["/a", "/b"]),
        (b"POST /a HTTP/1.1\r\nContent-Length: 300\r\n\r\nabc", ["/a"]),  # body beyond the snap
        (b"POST /a HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nGET /x HTTP/1.1", ["/a"]),
        (b"HTTP/1.1 204 No Content\r\n\r\nHTTP/1.1 200 OK\r\n", [204, 200]),
        (b"HTTP/1.1 200 OK\r\n\r\nHTTP/1.1 200 OK\r\n", [200]),  # body until close: stop
        (b"GET /a HTTP/1.1\r\n\r\nHTTP/1.1 200 OK\r\n\r\n", ["/a"]),  # never mixes directions
    ],
)
def test_parse_messages(raw: bytes, urls_or_codes: list) -> None:
    got = [m.url if isinstance(m, Request) else m.code for m in parse_messages(raw)]
    assert got == urls_or_codes
