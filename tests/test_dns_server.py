"""Cluster DNS server (real sockets) and per-pod resolv.conf (real mount + network namespaces)."""

from __future__ import annotations

import asyncio
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
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from dnslib import EDNS0, QTYPE, RCODE, DNSHeader, DNSQuestion, DNSRecord

from tendril.datapath import netns
from tendril.lab.resolvconf import (
    ResolvConfError,
    pod_resolv_conf,
    wrap_argv_with_resolvconf,
    write_resolv_conf,
)
from tendril.workload.dns_server import (
    DnsServer,
    RecordsError,
    RecordsFile,
    Zone,
    handle_query,
    parse_records,
    write_records,
)

TENDRIL = str(Path(sys.executable).parent / "tendril")

SERVICES = [
    {
        "name": "web",
        "namespace": "default",
        "ips": ["10.96.0.20", "fd00:10:96::20"],
        "headless": False,
        "endpoints": ["10.0.1.5"],  # ignored for a ClusterIP service
        "ports": [
            {"name": "http", "port": 80, "protocol": "TCP"},
            {"name": "", "port": 8080, "protocol": "TCP"},
        ],
    },
    {"name": "api", "namespace": "prod", "ips": ["10.96.1.1"], "ports": []},
    {
        "name": "db",
        "namespace": "default",
        "ips": [],
        "headless": True,
        "endpoints": ["10.0.1.7", {"ip": "10.0.2.8", "hostname": "db-1"}, "fd00:10:244::7"],
        "ports": [{"name": "pg", "port": 5432, "protocol": "TCP"}, {"name": "stats", "port": 9187}],
    },
    {"name": "empty", "namespace": "default", "ips": [], "headless": True, "endpoints": []},
]


def _ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as s:
            s.bind(("::1", 0))
        return True
    except OSError:
        return False


HAVE_V6 = _ipv6_loopback()


class ServerThread:
    """A DnsServer on an asyncio loop in a background thread, on loopback, on a free port."""

    def __init__(self, records: Path, listen: tuple[str, ...] | None = None) -> None:
        self.logs: list[str] = []
        self.records = RecordsFile(records, log=self.logs.append)
        self.server = DnsServer(self.records, log=self.logs.append)
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        listen = listen or (("127.0.0.1", "::1") if HAVE_V6 else ("127.0.0.1",))
        fut = asyncio.run_coroutine_threadsafe(self.server.start(listen, 0), self.loop)
        self.port = fut.result(10)

    def close(self) -> None:
        async def _close() -> None:
            self.server.close()

        asyncio.run_coroutine_threadsafe(_close(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()

    def ask(
        self,
        name: str,
        qtype: str = "A",
        tcp: bool = False,
        v6: bool = False,
        edns: int | None = None,
    ) -> DNSRecord:
        q = DNSRecord.question(name, qtype)
        if edns is not None:
            q.add_ar(EDNS0(udp_len=edns))
        raw = q.send("::1" if v6 else "127.0.0.1", self.port, tcp=tcp, timeout=3, ipv6=v6)
        r = DNSRecord.parse(raw)
        assert r.header.id == q.header.id
        return r


def _answers(r: DNSRecord, rtype: str | None = None) -> list[str]:
    return sorted(str(rr.rdata) for rr in r.rr if rtype is None or QTYPE.get(rr.rtype) == rtype)


@pytest.fixture
def records(tmp_path: Path) -> Path:
    path = tmp_path / "records.json"
    write_records(path, SERVICES)
    return path


@pytest.fixture
def server(records: Path) -> Iterator[ServerThread]:
    srv = ServerThread(records)
    try:
        yield srv
    finally:
        srv.close()


TRANSPORTS = [
    pytest.param(False, False, id="udp4"),
    pytest.param(True, False, id="tcp4"),
    pytest.param(False, True, id="udp6", marks=pytest.mark.skipif(not HAVE_V6, reason="no ::1")),
    pytest.param(True, True, id="tcp6", marks=pytest.mark.skipif(not HAVE_V6, reason="no ::1")),
]


# --------------------------------------------------------------------------- answers over sockets


@pytest.mark.parametrize(("tcp", "v6"), TRANSPORTS)
def test_clusterip_a_and_aaaa(server: ServerThread, tcp: bool, v6: bool) -> None:
    r = server.ask("web.default.svc.cluster.local", "A", tcp=tcp, v6=v6)
    assert r.header.rcode == RCODE.NOERROR and r.header.aa == 1 and r.header.ra == 0
    assert _answers(r) == ["10.96.0.20"]
    assert all(rr.ttl == 5 for rr in r.rr)
    r = server.ask("web.default.svc.cluster.local", "AAAA", tcp=tcp, v6=v6)
    assert _answers(r) == ["fd00:10:96::20"]
    r = server.ask("api.prod.svc.cluster.local.", "A", tcp=tcp, v6=v6)
    assert _answers(r) == ["10.96.1.1"]


def test_names_are_case_insensitive_and_keep_the_query_spelling(server: ServerThread) -> None:
    r = server.ask("Web.DEFAULT.svc.Cluster.Local", "A")
    assert _answers(r) == ["10.96.0.20"]
    assert str(r.rr[0].rname) == "Web.DEFAULT.svc.Cluster.Local."


def test_nodata_for_a_family_the_service_lacks(server: ServerThread) -> None:
    r = server.ask("api.prod.svc.cluster.local", "AAAA")
    assert r.header.rcode == RCODE.NOERROR and r.rr == []
    assert [QTYPE.get(rr.rtype) for rr in r.auth] == ["SOA"]  # negative caching TTL


def test_headless_service_returns_ready_pod_ips(server: ServerThread) -> None:
    r = server.ask("db.default.svc.cluster.local", "A")
    assert r.header.rcode == RCODE.NOERROR
    assert _answers(r) == ["10.0.1.7", "10.0.2.8"]
    assert _answers(server.ask("db.default.svc.cluster.local", "AAAA")) == ["fd00:10:244::7"]
    # per-endpoint names: explicit hostname, or the dashed IP as CoreDNS does
    assert _answers(server.ask("db-1.db.default.svc.cluster.local", "A")) == ["10.0.2.8"]
    assert _answers(server.ask("10-0-1-7.db.default.svc.cluster.local", "A")) == ["10.0.1.7"]
    assert _answers(server.ask("fd00-10-244--7.db.default.svc.cluster.local", "AAAA")) == ["fd00:10:244::7"]


def test_headless_service_without_ready_endpoints_is_empty_not_nxdomain(server: ServerThread) -> None:
    r = server.ask("empty.default.svc.cluster.local", "A")
    assert r.header.rcode == RCODE.NOERROR and r.rr == []


@pytest.mark.parametrize(
    "name",
    [
        "nosuch.default.svc.cluster.local",
        "web.prod.svc.cluster.local",  # right service, wrong namespace
        "web.default.cluster.local",
        "x.web.default.svc.cluster.local",
        "nosuch.cluster.local",
    ],
)
def test_unknown_names_in_the_domain_are_nxdomain(server: ServerThread, name: str) -> None:
    for tcp in (False, True):
        r = server.ask(name, "A", tcp=tcp)
        assert r.header.rcode == RCODE.NXDOMAIN and r.header.aa == 1 and r.rr == []
        soa = r.auth[0]
        assert QTYPE.get(soa.rtype) == "SOA" and str(soa.rname) == "cluster.local."


@pytest.mark.parametrize(
    "name", ["default.svc.cluster.local", "svc.cluster.local", "cluster.local", "ns1.pod.cluster.local"]
)
def test_empty_non_terminals_are_nodata(server: ServerThread, name: str) -> None:
    r = server.ask(name, "A")
    assert r.header.rcode == RCODE.NOERROR and r.rr == []


@pytest.mark.parametrize(
    "name", ["example.com", "web", "web.default", "local", "evilcluster.local", "web.default.svc.cluster"]
)
def test_names_outside_the_domain_are_refused(server: ServerThread, name: str) -> None:
    for tcp in (False, True):
        r = server.ask(name, "A", tcp=tcp)
        assert r.header.rcode == RCODE.REFUSED and r.header.aa == 0 and r.rr == []
        assert r.header.ra == 0  # no recursion: the lab is sealed


def test_srv_for_named_ports(server: ServerThread) -> None:
    r = server.ask("_http._tcp.web.default.svc.cluster.local", "SRV")
    assert [(rr.rdata.port, str(rr.rdata.target)) for rr in r.rr] == [(80, "web.default.svc.cluster.local.")]
    assert sorted(str(rr.rdata) for rr in r.ar) == ["10.96.0.20", "fd00:10:96::20"]
    # headless: one SRV per ready endpoint, targets are the endpoint names
    r = server.ask("_pg._tcp.db.default.svc.cluster.local", "SRV", tcp=True)
    targets = sorted((rr.rdata.port, str(rr.rdata.target)) for rr in r.rr)
    assert targets == [
        (5432, "10-0-1-7.db.default.svc.cluster.local."),
        (5432, "db-1.db.default.svc.cluster.local."),
        (5432, "fd00-10-244--7.db.default.svc.cluster.local."),
    ]
    assert len(r.ar) == 3
    # protocol defaults to TCP; unnamed ports have no SRV; the wrong protocol is unknown
    assert len(server.ask("_stats._tcp.db.default.svc.cluster.local", "SRV").rr) == 3
    assert server.ask("_http._udp.web.default.svc.cluster.local", "SRV").header.rcode == RCODE.NXDOMAIN
    assert server.ask("_tcp.web.default.svc.cluster.local", "SRV").header.rcode == RCODE.NOERROR


def test_ptr_pod_and_version_records(server: ServerThread) -> None:
    r = server.ask("20.0.96.10.in-addr.arpa", "PTR")
    assert _answers(r) == ["web.default.svc.cluster.local."]
    r = server.ask(ipaddress.ip_address("fd00:10:96::20").reverse_pointer, "PTR")
    assert _answers(r) == ["web.default.svc.cluster.local."]
    assert _answers(server.ask("8.2.0.10.in-addr.arpa", "PTR")) == ["db-1.db.default.svc.cluster.local."]
    assert server.ask("1.1.1.1.in-addr.arpa", "PTR").header.rcode == RCODE.REFUSED
    assert _answers(server.ask("10-0-3-4.any.pod.cluster.local", "A")) == ["10.0.3.4"]
    assert _answers(server.ask("fd00--9.any.pod.cluster.local", "AAAA")) == ["fd00::9"]
    assert server.ask("not-an-ip.any.pod.cluster.local", "A").header.rcode == RCODE.NXDOMAIN
    assert _answers(server.ask("dns-version.cluster.local", "TXT")) == ['"1.1.0"']
    assert _answers(server.ask("cluster.local", "SOA"))[0].startswith("ns.dns.cluster.local.")


def test_reload_after_the_records_file_changes(server: ServerThread, records: Path) -> None:
    assert _answers(server.ask("web.default.svc.cluster.local")) == ["10.96.0.20"]
    assert server.ask("new.default.svc.cluster.local").header.rcode == RCODE.NXDOMAIN
    # atomic rewrite (new inode): visible to the very next query, over UDP and TCP
    write_records(records, [{"name": "new", "namespace": "default", "ips": ["10.96.0.99"]}, SERVICES[0]])
    assert _answers(server.ask("new.default.svc.cluster.local")) == ["10.96.0.99"]
    assert _answers(server.ask("new.default.svc.cluster.local", tcp=True)) == ["10.96.0.99"]
    assert server.ask("db.default.svc.cluster.local").header.rcode == RCODE.NXDOMAIN
    # headless endpoints change
    svc = dict(SERVICES[2], endpoints=["10.0.9.9"])
    write_records(records, [svc])
    assert _answers(server.ask("db.default.svc.cluster.local")) == ["10.0.9.9"]
    # a broken file keeps the last good records in service and is reported
    records.write_text("{not json")
    assert _answers(server.ask("db.default.svc.cluster.local")) == ["10.0.9.9"]
    assert any("cannot load" in line for line in server.logs)
    # a bad entry is skipped, the rest loads
    bad = {"services": [{"name": "Bad_Name", "namespace": "default"}, {"name": "ok", "namespace": "x"}]}
    records.write_text(json.dumps(bad))
    assert server.ask("ok.x.svc.cluster.local").header.rcode == RCODE.NOERROR
    assert server.ask("db.default.svc.cluster.local").header.rcode == RCODE.NXDOMAIN
    assert any("skipped" in line for line in server.logs)


def test_in_place_rewrite_is_noticed(server: ServerThread, records: Path) -> None:
    assert _answers(server.ask("api.prod.svc.cluster.local")) == ["10.96.1.1"]
    st = records.stat()
    doc = {"services": [{"name": "api", "namespace": "prod", "ips": ["10.96.1.2"]}]}
    records.write_text(json.dumps(doc))  # same inode
    os.utime(records, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))
    assert _answers(server.ask("api.prod.svc.cluster.local")) == ["10.96.1.2"]


def test_missing_file_serves_nothing_until_written(tmp_path: Path) -> None:
    path = tmp_path / "later.json"
    srv = ServerThread(path, listen=("127.0.0.1",))
    try:
        assert srv.ask("web.default.svc.cluster.local").header.rcode == RCODE.NXDOMAIN
        write_records(path, SERVICES[:1])
        assert _answers(srv.ask("web.default.svc.cluster.local")) == ["10.96.0.20"]
    finally:
        srv.close()


def test_large_answers_truncate_over_udp_and_complete_over_tcp(tmp_path: Path) -> None:
    path = tmp_path / "big.json"
    eps = [f"10.0.{i // 200}.{i % 200 + 1}" for i in range(120)]
    write_records(path, [{"name": "big", "namespace": "default", "headless": True, "endpoints": eps}])
    srv = ServerThread(path, listen=("127.0.0.1",))
    try:
        r = srv.ask("big.default.svc.cluster.local")
        assert r.header.tc == 1 and r.rr == []
        assert str(r.q.qname) == "big.default.svc.cluster.local."
        r = srv.ask("big.default.svc.cluster.local", tcp=True)
        assert r.header.tc == 0 and len(r.rr) == 120
        # EDNS0: the client may take up to 1232 bytes over UDP; 120 A records do not fit
        r = srv.ask("big.default.svc.cluster.local", edns=4096)
        assert r.header.tc == 1
        assert [QTYPE.get(rr.rtype) for rr in r.ar] == ["OPT"]
        write_records(
            path, [{"name": "big", "namespace": "default", "headless": True, "endpoints": eps[:50]}]
        )
        r = srv.ask("big.default.svc.cluster.local", edns=4096)  # ~1.2 kB > 512
        assert r.header.tc == 0 and len(r.rr) == 50
        assert srv.ask("big.default.svc.cluster.local").header.tc == 1  # no EDNS0: 512 bytes
    finally:
        srv.close()


def test_malformed_and_unsupported_messages(server: ServerThread) -> None:
    def raw(data: bytes) -> bytes | None:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.settimeout(0.5)
            s.sendto(data, ("127.0.0.1", server.port))
            try:
                return s.recv(4096)
            except TimeoutError:
                return None

    assert raw(b"\x12") is None  # shorter than a header: dropped
    resp = raw(b"\xab\xcd\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00\x03www")  # truncated question
    assert resp is not None
    r = DNSRecord.parse(resp)
    assert r.header.id == 0xABCD and r.header.rcode == RCODE.FORMERR
    q = DNSRecord.question("web.default.svc.cluster.local")
    q.header.qr = 1  # a response: never answered (no reflection loops)
    assert raw(q.pack()) is None
    q = DNSRecord(DNSHeader(id=7, opcode=2), q=DNSQuestion("web.default.svc.cluster.local"))
    assert DNSRecord.parse(raw(q.pack())).header.rcode == RCODE.NOTIMP
    q = DNSRecord(DNSHeader(id=8))
    q.add_question(DNSQuestion("a.cluster.local"), DNSQuestion("b.cluster.local"))
    assert DNSRecord.parse(raw(q.pack())).header.rcode == RCODE.FORMERR
    # still serving
    assert _answers(server.ask("web.default.svc.cluster.local")) == ["10.96.0.20"]


def test_tcp_connection_carries_several_queries(server: ServerThread) -> None:
    with socket.create_connection(("127.0.0.1", server.port), timeout=3) as s:
        f = s.makefile("rb")
        for name in ("web.default.svc.cluster.local", "api.prod.svc.cluster.local"):
            q = DNSRecord.question(name).pack()
            s.sendall(struct.pack("!H", len(q)) + q)
            (n,) = struct.unpack("!H", f.read(2))
            r = DNSRecord.parse(f.read(n))
            assert r.header.rcode == RCODE.NOERROR and len(r.rr) == 1


def test_handle_query_other_domain_and_edns_version() -> None:
    zone = Zone(parse_records({"services": SERVICES}), domain="lab.test", ttl=30)
    r = DNSRecord.parse(handle_query(DNSRecord.question("web.default.svc.lab.test").pack(), zone))
    assert _answers(r) == ["10.96.0.20"] and r.rr[0].ttl == 30
    r = DNSRecord.parse(handle_query(DNSRecord.question("web.default.svc.cluster.local").pack(), zone))
    assert r.header.rcode == RCODE.REFUSED
    q = DNSRecord.question("web.default.svc.lab.test")
    q.add_ar(EDNS0(version=1))
    r = DNSRecord.parse(handle_query(q.pack(), zone))
    assert r.rr == [] and (r.ar[0].ttl >> 24) == 1  # BADVERS


def test_records_schema_validation() -> None:
    with pytest.raises(RecordsError):
        parse_records([])
    with pytest.raises(RecordsError):
        parse_records({"services": [{"name": "web", "namespace": "default", "ips": ["10.96.0.300"]}]})
    with pytest.raises(RecordsError):
        parse_records({"services": [{"name": "web", "namespace": "default", "ports": [{"port": 0}]}]})
    with pytest.raises(RecordsError):
        parse_records(
            {
                "services": [
                    {"name": "web", "namespace": "default", "ports": [{"port": 1, "protocol": "icmp"}]}
                ]
            }
        )
    warnings: list[str] = []
    svcs = parse_records(
        {"services": [{"name": "a", "namespace": "n"}, {"name": "-x", "namespace": "n"}]}, warnings.append
    )
    assert [s.name for s in svcs] == ["a"] and len(warnings) == 1


# --------------------------------------------------------------------------- resolv.conf


def test_pod_resolv_conf_text() -> None:
    text = pod_resolv_conf("team-a", "10.96.0.10")
    lines = [line for line in text.splitlines() if not line.startswith("#")]
    assert lines == [
        "search team-a.svc.cluster.local svc.cluster.local cluster.local",
        "nameserver 10.96.0.10",
        "options ndots:5",
    ]
    text = pod_resolv_conf("x", ["10.96.0.10", "fd00:10:96::a"], cluster_domain="lab.test", ndots=2)
    assert "nameserver fd00:10:96::a\n" in text and "search x.svc.lab.test svc.lab.test lab.test\n" in text
    assert "options ndots:2\n" in text
    for bad in (("Bad_NS", "10.96.0.10"), ("ok", "dns.local"), ("ok", [])):
        with pytest.raises(ResolvConfError):
            pod_resolv_conf(*bad)


def test_wrap_argv_shape(tmp_path: Path) -> None:
    argv = wrap_argv_with_resolvconf(["prog", "a b", "$HOME"], tmp_path / "r.conf")
    assert argv[:5] == ["unshare", "--mount", "--propagation", "private", "--"]
    assert argv[-5:] == [str(tmp_path / "r.conf"), "/etc/resolv.conf", "prog", "a b", "$HOME"]
    assert netns.nsenter_argv("p", argv)[:3] == ["nsenter", "--net=/run/netns/p", "--"]


# --------------------------------------------------------------------------- in a real pod-like netns


def _need_root_tools() -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root (network and mount namespaces)")
    for tool in ("unshare", "nsenter", "mount", "getent", "ip"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} not installed")


def _host_resolv_state() -> tuple[bytes | None, list[str]]:
    try:
        content = Path("/etc/resolv.conf").read_bytes()
    except FileNotFoundError:
        content = None
    mounts = [line for line in Path("/proc/self/mountinfo").read_text().splitlines() if "resolv.conf" in line]
    return content, mounts


def _query_in_netns(ns: str, name: str, server: str = "10.96.0.10", src: str | None = None) -> DNSRecord:
    def ask() -> DNSRecord:
        q = DNSRecord.question(name)
        with socket.socket(socket.AF_INET6 if ":" in server else socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.settimeout(2)
            if src:
                s.bind((src, 0))
            s.connect((server, 53))  # a connected socket drops replies from any other address
            s.send(q.pack())
            return DNSRecord.parse(s.recv(4096))

    return netns.call_in_netns(ns, ask)


@pytest.fixture
def dns_netns(tmp_path: Path) -> Iterator[tuple[str, Path, subprocess.Popen[str]]]:
    """A throwaway netns with the DNS VIP on lo and `tendril workload dns-server` on port 53."""
    _need_root_tools()
    ns = f"tnddns-{secrets.token_hex(4)}"
    records = tmp_path / "records.json"
    write_records(records, SERVICES)
    log = tmp_path / "dns.log"
    proc = None
    netns.create(ns)
    try:
        for argv in (
            ["ip", "link", "set", "lo", "up"],
            ["ip", "addr", "add", "10.96.0.10/32", "dev", "lo"],
            ["ip", "-6", "addr", "add", "fd00:10:96::a/128", "dev", "lo", "nodad"],
        ):
            netns.run_in_netns(ns, argv)
        with open(log, "w") as out:
            proc = subprocess.Popen(
                netns.nsenter_argv(
                    ns, [TENDRIL, "workload", "dns-server", "--port", "53", "--records", str(records)]
                ),
                stdout=out,
                stderr=subprocess.STDOUT,
                text=True,
            )
        deadline = time.monotonic() + 15
        while True:
            with contextlib.suppress(OSError):
                if _query_in_netns(ns, "web.default.svc.cluster.local").rr:
                    break
            if proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"dns-server did not come up:\n{log.read_text()}")
            time.sleep(0.1)
        yield ns, records, proc
    finally:
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
        netns.delete(ns)


RESOLVE_CODE = r"""
import json, os, socket
def addrs(name):
    try:
        return sorted({ai[4][0] for ai in socket.getaddrinfo(name, 80, proto=socket.IPPROTO_TCP)})
    except socket.gaierror as exc:
        return "error: " + str(exc)
print(json.dumps({
    "pid": os.getpid(),
    "resolv": open("/etc/resolv.conf").read(),
    "short": addrs("web"),
    "ns_qualified": addrs("api.prod"),
    "full": addrs("web.default.svc.cluster.local"),
    "headless": addrs("db"),
    "unknown": addrs("nosuch"),
}))
"""


def test_wrapped_pod_resolves_through_cluster_dns(
    dns_netns: tuple[str, Path, subprocess.Popen[str]], tmp_path: Path
) -> None:
    ns, _records, server = dns_netns
    before = _host_resolv_state()
    conf = write_resolv_conf(
        tmp_path / "pods" / "default-client.conf", pod_resolv_conf("default", "10.96.0.10")
    )
    argv = netns.nsenter_argv(ns, wrap_argv_with_resolvconf([sys.executable, "-c", RESOLVE_CODE], conf))
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    got = json.loads(out)
    assert got["pid"] == proc.pid  # nsenter -> unshare -> sh all exec: the pid is the workload's
    assert got["resolv"] == conf.read_text()
    assert got["short"] == ["10.96.0.20", "fd00:10:96::20"]  # via the search list
    assert got["full"] == ["10.96.0.20", "fd00:10:96::20"]
    assert got["ns_qualified"] == ["10.96.1.1"]
    assert got["headless"] == ["10.0.1.7", "10.0.2.8", "fd00:10:244::7"]
    assert got["unknown"].startswith("error:")

    # glibc's other path (gethostbyname via getent), and an IPv6 nameserver
    conf6 = write_resolv_conf(tmp_path / "pods" / "prod.conf", pod_resolv_conf("prod", "fd00:10:96::a"))
    r = subprocess.run(
        netns.nsenter_argv(ns, wrap_argv_with_resolvconf(["getent", "ahostsv4", "api"], conf6)),
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout.split()[0] == "10.96.1.1" and "api.prod.svc.cluster.local" in r.stdout

    # the pod cannot write the file it sees; nothing leaked to the host
    r = subprocess.run(
        netns.nsenter_argv(ns, wrap_argv_with_resolvconf(["sh", "-c", "echo x >> /etc/resolv.conf"], conf)),
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert r.returncode != 0
    assert _host_resolv_state() == before
    assert "x" not in conf.read_text().split()
    assert server.poll() is None


def test_wrapper_fails_loudly_without_the_file(tmp_path: Path) -> None:
    _need_root_tools()
    before = _host_resolv_state()
    r = subprocess.run(
        wrap_argv_with_resolvconf(["true"], tmp_path / "missing.conf"),
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert r.returncode != 0 and r.stderr
    assert _host_resolv_state() == before


def test_udp_reply_leaves_from_the_queried_address(
    dns_netns: tuple[str, Path, subprocess.Popen[str]],
) -> None:
    ns, _records, _server = dns_netns
    # source 127.0.0.1, destination the VIP: without IP_PKTINFO the kernel would answer from
    # 127.0.0.1 and the connected client socket would never see the reply
    r = _query_in_netns(ns, "web.default.svc.cluster.local", src="127.0.0.1")
    assert _answers(r) == ["10.96.0.20"]
    r = _query_in_netns(ns, "web.default.svc.cluster.local", server="fd00:10:96::a", src="::1")
    assert _answers(r) == ["10.96.0.20"]


def test_cli_server_reloads_and_stops_cleanly(dns_netns: tuple[str, Path, subprocess.Popen[str]]) -> None:
    ns, records, server = dns_netns
    write_records(records, [{"name": "fresh", "namespace": "default", "ips": ["10.96.7.7"]}])
    assert _answers(_query_in_netns(ns, "fresh.default.svc.cluster.local")) == ["10.96.7.7"]
    assert _query_in_netns(ns, "web.default.svc.cluster.local").header.rcode == RCODE.NXDOMAIN
    server.terminate()
    assert server.wait(10) == 0
