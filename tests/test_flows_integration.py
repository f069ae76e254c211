"""Real traffic between two lab pods: the flows and counters the datapath reports must match it."""

from __future__ import annotations

import re
import time

import pytest

from conftest import Lab

PODS = """
apiVersion: v1
kind: Namespace
metadata: {name: flows}
---
apiVersion: v1
kind: Pod
metadata: {name: server, namespace: flows, labels: {app: server}}
spec:
  containers:
    - {name: http, command: [tendril, workload, http-echo, --port, "8080"]}
    - {name: udp, command: [tendril, workload, udp-echo, --port, "9000"]}
---
apiVersion: v1
kind: Pod
metadata: {name: client, namespace: flows, labels: {app: client}}
spec:
  containers: [{name: idle}]
"""


@pytest.fixture(scope="module")
def pods(lab: Lab) -> dict[str, dict]:
    lab.apply(PODS)
    pods = lab.wait_running("flows", ["server", "client"])
    # wait for the servers to bind (first request may race the process start)
    srv = pods["server"]["status"]["podIPs"][0]["ip"]
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        r = lab.in_pod(
            "flows",
            "client",
            f"""
import socket
try:
    socket.create_connection(("{srv}", 8080), timeout=1).close(); print("ok")
except OSError as e:
    print("no", e)
""",
        )
        if r.stdout.startswith("ok"):
            break
        time.sleep(0.2)
    return pods


def _ips(p: dict) -> tuple[str, str]:
    ips = [i["ip"] for i in p["status"]["podIPs"]]
    return ips[0], ips[1]


def _wait_flows(lab: Lab, pred, minimum: int = 1, timeout: float = 5.0) -> list[dict]:  # noqa: ANN001
    deadline = time.monotonic() + timeout
    while True:
        got = [f for f in lab.flows() if pred(f)]
        if len(got) >= minimum or time.monotonic() > deadline:
            return got
        time.sleep(0.1)


@pytest.mark.parametrize("family", [4, 6])
def test_tcp_flows_have_tuple_flags_direction_reply_and_pods(lab: Lab, pods: dict, family: int) -> None:
    c4, c6 = _ips(pods["client"])
    s4, s6 = _ips(pods["server"])
    cip, sip = (c4, s4) if family == 4 else (c6, s6)
    sport = 41000 + family
    r = lab.in_pod(
        "flows",
        "client",
        f"""
import socket
s = socket.socket(socket.AF_INET{"6" if family == 6 else ""}, socket.SOCK_STREAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("{cip}", {sport}))
s.connect(("{sip}", 8080))
s.sendall(b"GET /hello HTTP/1.1\\r\\nHost: x\\r\\nConnection: close\\r\\n\\r\\n")
data = b""
while chunk := s.recv(4096):
    data += chunk
print(data.split(b"\\r\\n")[0].decode())
s.close()
""",
    )
    assert "200 OK" in r.stdout

    def ours(f: dict) -> bool:
        ports = {f["source_port"], f["destination_port"]}
        return f["l4_proto"] == 6 and ports == {sport, 8080}

    flows = _wait_flows(lab, ours, minimum=5)
    syn = [f for f in flows if f["tcp_flags"] == 0x02]
    synack = [f for f in flows if f["tcp_flags"] == 0x12]
    fins = [f for f in flows if f["tcp_flags"] & 0x01]
    assert len(syn) == 2, flows  # from-endpoint at the client, to-endpoint at the server
    assert len(synack) == 2, flows
    assert fins, flows
    for f in syn:
        assert (f["source_ip"], f["source_port"], f["destination_ip"], f["destination_port"]) == (
            cip,
            sport,
            sip,
            8080,
        )
        assert f["is_reply"] is False and f["ct_state"] == 0  # new
        assert f["ip_version"] == family
        assert f["source"]["pod_name"] == "client" and f["destination"]["pod_name"] == "server"
        assert f["source"]["namespace"] == "flows"
    by_point = {f["sub_type"]: f for f in syn}
    assert set(by_point) == {5, 0}  # from-endpoint (client veth), to-endpoint (server veth)
    assert by_point[5]["traffic_direction"] == "EGRESS" and by_point[5]["ep_id"] != by_point[0]["ep_id"]
    assert by_point[0]["traffic_direction"] == "INGRESS"
    for f in synack:
        assert f["is_reply"] is True and f["ct_state"] == 2
        assert (f["source_ip"], f["source_port"], f["destination_ip"], f["destination_port"]) == (
            sip,
            8080,
            cip,
            sport,
        )
        assert f["source"]["pod_name"] == "server"
    # the observe command renders them the hubble way
    out = lab.run("observe", "--last", "1000").stdout
    ident = r"\(ID:\d+\)"  # identities from the pods' labels
    assert re.search(
        rf"flows/client:{sport} {ident} -> flows/server:8080 {ident} from-endpoint FORWARDED "
        r"\(TCP Flags: SYN\)",
        out,
    ), out
    assert re.search(
        rf"flows/client:{sport} {ident} <- flows/server:8080 {ident} to-endpoint FORWARDED "
        r"\(TCP Flags: SYN, ACK\)",
        out,
    ), out


@pytest.mark.parametrize("family", [4, 6])
def test_udp_counters_match_what_was_sent(lab: Lab, pods: dict, family: int) -> None:
    c4, c6 = _ips(pods["client"])
    s4, s6 = _ips(pods["server"])
    cip, sip = (c4, s4) if family == 4 else (c6, s6)
    n, payload = 40, 100
    sport = 42000 + family
    r = lab.in_pod(
        "flows",
        "client",
        f"""
import socket
s = socket.socket(socket.AF_INET{"6" if family == 6 else ""}, socket.SOCK_DGRAM)
s.bind(("{cip}", {sport}))
s.settimeout(2)
got = 0
for i in range({n}):
    s.sendto(bytes({payload}), ("{sip}", 9000))
    got += len(s.recvfrom(2048)[0]) == {payload}
print(got)
""",
    )
    assert r.stdout.strip() == str(n)
    l3 = 20 if family == 4 else 40
    frame = 14 + l3 + 8 + payload
    with lab.agent() as a:
        ct = a.get("/v1/bpf/ct")
    mine = [e for e in ct if e["proto"] == 17 and e["sport"] == sport and e["dport"] == 9000]
    assert len(mine) == 2, mine  # one entry per endpoint: OUT at the client, IN at the server
    for e in mine:
        assert (e["saddr"], e["daddr"]) == (cip, sip)
        assert e["tx_packets"] == n and e["rx_packets"] == n
        assert e["tx_bytes"] == n * frame and e["rx_bytes"] == n * frame
    assert {e["scope"] for e in mine} == {"OUT", "IN"}
    # medium aggregation: one "new" trace and one first-reply trace per endpoint, not one per packet
    flows = _wait_flows(
        lab, lambda f: f["l4_proto"] == 17 and sport in (f["source_port"], f["destination_port"]), minimum=4
    )
    assert len(flows) == 4, flows
    assert sorted((f["ct_state"], f["is_reply"]) for f in flows) == [
        (0, False),
        (0, False),
        (2, True),
        (2, True),
    ]


def test_metrics_count_forwarded_packets(lab: Lab, pods: dict) -> None:
    def forwarded() -> dict[str, int]:
        with lab.agent() as a:
            rows = a.get("/v1/bpf/metrics")
        return {
            ("EGRESS" if r["direction"] == 2 else "INGRESS"): r["packets"] for r in rows if r["reason"] == 0
        }

    before = forwarded()
    c4, _ = _ips(pods["client"])
    s4, _ = _ips(pods["server"])
    n = 25
    lab.in_pod(
        "flows",
        "client",
        f"""
import socket
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.settimeout(2)
for i in range({n}):
    s.sendto(b"x", ("{s4}", 9000)); s.recvfrom(64)
""",
    )
    after = forwarded()
    # every datagram leaves the client (EGRESS) and enters the server (INGRESS), and so does every echo
    assert after["EGRESS"] - before.get("EGRESS", 0) >= 2 * n
    assert after["INGRESS"] - before.get("INGRESS", 0) >= 2 * n
    out = lab.run("bpf", "metrics", "list").stdout
    assert out.splitlines()[0].split() == ["REASON", "DIRECTION", "PACKETS", "BYTES"]
    assert "Success" in out


@pytest.mark.parametrize("family", [4, 6])
def test_icmp_echo_request_and_reply(lab: Lab, pods: dict, family: int) -> None:
    c4, c6 = _ips(pods["client"])
    s4, s6 = _ips(pods["server"])
    cip, sip = (c4, s4) if family == 4 else (c6, s6)
    ident = 3000 + family
    proto = 1 if family == 4 else 58
    req, rep = (8, 0) if family == 4 else (128, 129)
    # An unprivileged-style ICMP datagram socket sets the echo id to the local "port".
    r = lab.in_pod(
        "flows",
        "client",
        f"""
import socket
fam = socket.AF_INET{"6" if family == 6 else ""}
s = socket.socket(fam, socket.SOCK_DGRAM, {proto})
s.bind(("{cip}", {ident}))
s.settimeout(2)
s.sendto(bytes([{req}, 0, 0, 0, 0, 0, 0, 1]) + b"tendril", ("{sip}", 0))
print(s.recvfrom(1024)[0][0])
""",
    )
    assert r.stdout.strip() == str(rep)
    flows = _wait_flows(
        lab,
        lambda f: f["l4_proto"] == proto
        and f["source_ip"] in (cip, sip)
        and f["destination_ip"] in (cip, sip),
        minimum=4,
    )
    requests = [f for f in flows if f["icmp_type"] == req]
    replies = [f for f in flows if f["icmp_type"] == rep]
    assert requests and replies, flows
    assert all(f["source_ip"] == cip and f["is_reply"] is False for f in requests)
    assert all(f["source_ip"] == sip and f["is_reply"] is True for f in replies)


def test_spoofed_source_is_dropped_with_reason(lab: Lab, pods: dict) -> None:
    s4, _ = _ips(pods["server"])
    # a raw socket lets the pod put any source address on the wire
    lab.in_pod(
        "flows",
        "client",
        f"""
import socket, struct
def csum(b):
    if len(b) % 2: b += b"\\0"
    s = sum(struct.unpack("!%dH" % (len(b)//2), b)); s = (s >> 16) + (s & 0xffff); s += s >> 16
    return ~s & 0xffff
src, dst = socket.inet_aton("192.0.2.77"), socket.inet_aton("{s4}")
udp = struct.pack("!HHHH", 5555, 9000, 8 + 4, 0) + b"spof"
ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), 1, 0, 64, 17, 0, src, dst)
ip = ip[:10] + struct.pack("!H", csum(ip)) + ip[12:]
s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
s.sendto(ip + udp, ("{s4}", 0))
""",
    )
    drops = _wait_flows(lab, lambda f: f["event_type"] == 1 and f["source_ip"] == "192.0.2.77")
    assert len(drops) == 1
    d = drops[0]
    assert d["sub_type"] == 132 and d["destination_ip"] == s4 and d["source_port"] == 5555
    assert d["is_reply"] is None and d["traffic_direction"] == "EGRESS"
    with lab.agent() as a:
        rows = a.get("/v1/bpf/metrics")
    assert any(r["reason"] == 132 and r["direction"] == 2 and r["packets"] >= 1 for r in rows)
    out = lab.run("observe", "--type", "drop", "--last", "10").stdout
    assert "Invalid source ip DROPPED (UDP)" in out
