"""Cluster DNS for lab pods: Kubernetes service discovery records served from a JSON file.

This is the lab's CoreDNS (``kubernetes`` plugin) stand-in.  It is authoritative for the cluster
domain (``cluster.local`` by default) and answers, following the Kubernetes DNS specification
(schema 1.1.0):

* ``<svc>.<ns>.svc.<domain>`` A/AAAA: the ClusterIP(s) of a normal service, or the ready
  endpoint IPs of a headless one (no ready endpoints: an empty NOERROR answer, not NXDOMAIN,
  since the service exists);
* ``<hostname>.<svc>.<ns>.svc.<domain>`` A/AAAA for each ready endpoint of a headless service
  (the hostname is the endpoint's ``hostname`` or, like CoreDNS, its IP with ``.``/``:`` turned
  into ``-``);
* ``_<port>._<proto>.<svc>.<ns>.svc.<domain>`` SRV for every *named* port (targets: the service
  name, or each endpoint hostname for headless services), with the targets' addresses in the
  additional section;
* PTR for ClusterIPs and headless endpoint IPs (``in-addr.arpa`` / ``ip6.arpa``);
* ``<a-b-c-d>.<ns>.pod.<domain>`` A (and dashed IPv6 AAAA), like CoreDNS's ``pods insecure``:
  the address is taken from the name, not checked against a pod list;
* ``dns-version.<domain>`` TXT ``"1.1.0"`` and the zone's SOA.

Unknown names inside the domain get NXDOMAIN (empty non-terminals such as ``<ns>.svc.<domain>``
get an empty NOERROR), with the SOA in the authority section for negative caching.  The lab is
sealed -- there is no upstream -- so every name outside the domain (and reverse names of
addresses we do not know) gets REFUSED, as CoreDNS does for zones no plugin serves.  Note that
glibc turns REFUSED for the final, absolute candidate of a search into ``EAI_AGAIN``
("Temporary failure in name resolution"), not ``EAI_NONAME``.

TTL: 5 s by default, CoreDNS's ``kubernetes`` plugin default, so pods see service changes fast.

Records file (written by the agent, atomically: write a temporary file and rename it)::

    {"services": [
        {"name": "web", "namespace": "default",
         "ips": ["10.96.0.20", "fd00:10:96::20"],       # ClusterIPs; [] for headless
         "headless": false,
         "endpoints": ["10.0.1.5", {"ip": "10.0.1.6", "hostname": "web-1"}],  # ready only
         "ports": [{"name": "http", "port": 80, "protocol": "TCP"}]}
    ]}

An endpoint is either an IP string or ``{"ip": ..., "hostname": ...}``; endpoints of ClusterIP
services are accepted and ignored (the VIP is the answer).  The file is ``stat``-ed on every
query and re-read when its inode, size or mtime changed, so updates need no restart and are
seen by the very next query; ``SIGHUP`` forces a re-read.  A file that cannot be parsed leaves
the previous records in service (and is reported once); a bad service entry is skipped and
reported while the rest load.

Extra names outside the cluster domain (the lab's world hosts, for toFQDNs) come from
``dns-hosts.json`` next to the records file, re-read the same way::

    {"hosts": [{"name": "world.lab.test", "ips": ["203.0.113.10"], "ttl": 60},
               {"name": "*.world.lab.test", "ips": ["203.0.113.11"]}]}

``*.`` names are wildcards for one or more leading labels (as in a zone file); the exact name wins.
A host's TTL defaults to the server's.

The server speaks UDP (with ``IP_PKTINFO``/``IPV6_RECVPKTINFO`` so replies always leave from the
address the query was sent to, even with several addresses on one interface) and TCP, on IPv4
and IPv6.  UDP answers larger than 512 bytes (or the client's EDNS0 size, capped at 1232) are
truncated with TC set so the client retries over TCP.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import ipaddress
import json
import os
import re
import signal
import socket
import struct
import sys
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dnslib import (
    AAAA,
    CLASS,
    EDNS0,
    PTR,
    QTYPE,
    RCODE,
    RR,
    SOA,
    SRV,
    TXT,
    A,
    DNSError,
    DNSHeader,
    DNSLabel,
    DNSRecord,
)

SCHEMA_VERSION = "1.1.0"  # of the Kubernetes DNS specification
DEFAULT_DOMAIN = "cluster.local"
DEFAULT_TTL = 5  # seconds; CoreDNS's kubernetes plugin default
DEFAULT_LISTEN = ("0.0.0.0", "::")
UDP_PLAIN_LIMIT = 512  # RFC 1035 without EDNS0
UDP_EDNS_LIMIT = 1232  # DNS flag day 2020: no IP fragmentation on any path
TCP_IDLE_TIMEOUT = 10.0
MAX_TCP_CONNECTIONS = 256

CLASS_ANY = 255  # dnslib names it "*"
IP_PKTINFO = getattr(socket, "IP_PKTINFO", 8)  # not exported by Python 3.11; 8 on Linux

Name = tuple[bytes, ...]
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

_LABEL_RE = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")
_PROTOCOLS = ("tcp", "udp", "sctp")


class RecordsError(ValueError):
    """The records file (or one of its entries) does not follow the schema."""


# --------------------------------------------------------------------------- records schema


@dataclass(frozen=True)
class ServicePort:
    name: str  # "" = unnamed (no SRV record)
    port: int
    protocol: str  # lower case: tcp, udp or sctp


@dataclass(frozen=True)
class Endpoint:
    ip: IPAddress
    hostname: str  # explicit, or derived from the IP


@dataclass(frozen=True)
class Service:
    name: str
    namespace: str
    ips: tuple[IPAddress, ...] = ()
    headless: bool = False
    endpoints: tuple[Endpoint, ...] = ()
    ports: tuple[ServicePort, ...] = ()


def _check_label(value: Any, what: str) -> str:
    if not isinstance(value, str) or not _LABEL_RE.match(value):
        raise RecordsError(f"{what} must be a DNS label (a-z, 0-9, '-', at most 63), got {value!r}")
    return value


def _parse_ip(value: Any, what: str) -> IPAddress:
    if not isinstance(value, str):
        raise RecordsError(f"{what} must be an IP address string, got {value!r}")
    try:
        return ipaddress.ip_address(value)
    except ValueError as exc:
        raise RecordsError(f"{what}: {exc}") from None


def endpoint_hostname(ip: IPAddress) -> str:
    """CoreDNS's hostname for an endpoint without one: ``10-0-1-5``, ``fd00--5``."""
    return str(ip).replace(".", "-").replace(":", "-")


def parse_service(entry: Any) -> Service:
    """One ``services[]`` entry; raises RecordsError."""
    if not isinstance(entry, dict):
        raise RecordsError(f"a service must be an object, got {type(entry).__name__}")
    name = _check_label(entry.get("name"), "service name")
    namespace = _check_label(entry.get("namespace"), f"namespace of service {name!r}")
    where = f"service {namespace}/{name}"
    headless = entry.get("headless", False)
    if not isinstance(headless, bool):
        raise RecordsError(f"{where}: headless must be true or false")
    ips_raw = entry.get("ips") or []
    if not isinstance(ips_raw, list):
        raise RecordsError(f"{where}: ips must be a list")
    ips = tuple(_parse_ip(v, f"{where}: ips[]") for v in ips_raw)
    endpoints: list[Endpoint] = []
    eps_raw = entry.get("endpoints") or []
    if not isinstance(eps_raw, list):
        raise RecordsError(f"{where}: endpoints must be a list")
    for ep in eps_raw:
        if isinstance(ep, dict):
            ip = _parse_ip(ep.get("ip"), f"{where}: endpoints[].ip")
            hn = ep.get("hostname") or endpoint_hostname(ip)
            endpoints.append(Endpoint(ip, _check_label(hn, f"{where}: endpoint hostname")))
        else:
            ip = _parse_ip(ep, f"{where}: endpoints[]")
            endpoints.append(Endpoint(ip, endpoint_hostname(ip)))
    ports: list[ServicePort] = []
    ports_raw = entry.get("ports") or []
    if not isinstance(ports_raw, list):
        raise RecordsError(f"{where}: ports must be a list")
    for p in ports_raw:
        if not isinstance(p, dict):
            raise RecordsError(f"{where}: a port must be an object")
        pname = p.get("name") or ""
        if pname:
            _check_label(pname, f"{where}: port name")
        number = p.get("port")
        if not isinstance(number, int) or isinstance(number, bool) or not 1 <= number <= 65535:
            raise RecordsError(f"{where}: port must be 1-65535, got {number!r}")
        proto = str(p.get("protocol") or "TCP").lower()
        if proto not in _PROTOCOLS:
            raise RecordsError(f"{where}: protocol must be TCP, UDP or SCTP, got {p.get('protocol')!r}")
        ports.append(ServicePort(pname, number, proto))
    return Service(name, namespace, ips, headless, tuple(endpoints), tuple(ports))


def parse_records(data: Any, warn: Callable[[str], None] | None = None) -> list[Service]:
    """The services of a records document.

    A document that is not ``{"services": [...]}`` raises RecordsError; a bad entry is skipped
    and reported through ``warn`` (or raises if ``warn`` is None).  A later entry with the same
    namespace/name replaces an earlier one.
    """
    if not isinstance(data, dict) or not isinstance(data.get("services", []), list):
        raise RecordsError('records must be an object {"services": [...]}')
    by_key: dict[tuple[str, str], Service] = {}
    for i, entry in enumerate(data.get("services", [])):
        try:
            svc = parse_service(entry)
        except RecordsError as exc:
            if warn is None:
                raise
            warn(f"services[{i}] skipped: {exc}")
            continue
        by_key[(svc.namespace, svc.name)] = svc
    return list(by_key.values())


def service_to_json(svc: Service) -> dict[str, Any]:
    """The records-file form of a Service (the inverse of parse_service)."""
    return {
        "name": svc.name,
        "namespace": svc.namespace,
        "ips": [str(ip) for ip in svc.ips],
        "headless": svc.headless,
        "endpoints": [
            str(e.ip) if e.hostname == endpoint_hostname(e.ip) else {"ip": str(e.ip), "hostname": e.hostname}
            for e in svc.endpoints
        ],
        "ports": [{"name": p.name, "port": p.port, "protocol": p.protocol.upper()} for p in svc.ports],
    }


def write_records(path: str | os.PathLike[str], services: Iterable[Service | dict[str, Any]]) -> None:
    """Validate and atomically (re)write a records file (temporary file + rename).

    The rename gives the file a new inode, so the server notices the change even within one
    mtime tick.
    """
    parsed = [s if isinstance(s, Service) else parse_service(s) for s in services]
    doc = {"services": [service_to_json(s) for s in parsed]}
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_name(f".{p.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    with os.fdopen(fd, "w") as f:
        json.dump(doc, f, indent=2, sort_keys=True)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, p)


# --------------------------------------------------------------------------- the zone


def name_of(text: str) -> Name:
    """``"Web.default.svc."`` -> ``(b"web", b"default", b"svc")`` (lower case, no root)."""
    return tuple(p.encode("ascii").lower() for p in text.strip(".").split(".") if p)


def _reverse_name(ip: IPAddress) -> Name:
    return name_of(ip.reverse_pointer)


def _label(name: Name) -> DNSLabel:
    return DNSLabel(name)


_IN_ADDR = name_of("in-addr.arpa")
_IP6_ARPA = name_of("ip6.arpa")


@dataclass
class Answer:
    rcode: int = RCODE.NOERROR
    authoritative: bool = True
    answer: list[RR] = field(default_factory=list)
    authority: list[RR] = field(default_factory=list)
    additional: list[RR] = field(default_factory=list)


class Zone:
    """An immutable snapshot of the cluster zone built from a list of services."""

    def __init__(
        self,
        services: Sequence[Service] = (),
        domain: str = DEFAULT_DOMAIN,
        ttl: int = DEFAULT_TTL,
        serial: int | None = None,
        hosts: Mapping[Name, tuple[list[IPAddress], int]] | None = None,
    ) -> None:
        self.hosts = dict(hosts or {})
        self.domain = name_of(domain)
        if not self.domain:
            raise ValueError("the cluster domain must not be empty")
        for lab in self.domain:
            _check_label(lab.decode(), "cluster domain label")
        self.ttl = ttl
        self.services = tuple(services)
        self.serial = (int(time.time()) if serial is None else serial) & 0xFFFFFFFF
        self._addrs: dict[Name, list[IPAddress]] = defaultdict(list)
        self._srv: dict[Name, list[tuple[int, int, int, Name]]] = defaultdict(list)
        self._ptr: dict[Name, list[Name]] = defaultdict(list)
        self._txt: dict[Name, list[str]] = {(b"dns-version", *self.domain): [SCHEMA_VERSION]}
        self._names: set[Name] = set()  # owners and empty non-terminals inside the domain
        for svc in self.services:
            self._add_service(svc)
        owners = [*self._addrs, *self._srv, *self._txt, (b"svc", *self.domain), (b"pod", *self.domain)]
        for owner in owners:
            for i in range(len(owner) - len(self.domain) + 1):
                self._names.add(owner[i:])
        self._pod_suffix = (b"pod", *self.domain)

    def _add_service(self, svc: Service) -> None:
        base: Name = (svc.name.encode(), svc.namespace.encode(), b"svc", *self.domain)
        self._addrs.setdefault(base, [])  # the name exists even with no address (NODATA)
        targets: list[Name]
        if svc.headless:
            hosts: dict[Name, list[IPAddress]] = {}
            for ep in svc.endpoints:
                host = (ep.hostname.encode(), *base)
                hosts.setdefault(host, [])
                if ep.ip not in hosts[host]:
                    hosts[host].append(ep.ip)
                if ep.ip not in self._addrs[base]:
                    self._addrs[base].append(ep.ip)
                if host not in self._ptr[_reverse_name(ep.ip)]:
                    self._ptr[_reverse_name(ep.ip)].append(host)
            for host, ips in hosts.items():
                self._addrs[host].extend(ip for ip in ips if ip not in self._addrs[host])
            targets = list(hosts)
        else:
            for ip in svc.ips:
                if ip not in self._addrs[base]:
                    self._addrs[base].append(ip)
                if base not in self._ptr[_reverse_name(ip)]:
                    self._ptr[_reverse_name(ip)].append(base)
            targets = [base]
        for port in svc.ports:
            if not port.name:
                continue  # unnamed ports have no SRV record
            owner = (b"_" + port.name.encode(), b"_" + port.protocol.encode(), *base)
            self._srv.setdefault(owner, [])
            weight = max(1, 100 // max(1, len(targets)))
            for t in targets:
                self._srv[owner].append((0, weight, port.port, t))

    # -- queries

    def in_domain(self, qname: Name) -> bool:
        n = len(self.domain)
        return len(qname) >= n and qname[len(qname) - n :] == self.domain

    def soa(self) -> RR:
        apex = _label(self.domain)
        rdata = SOA(
            mname=_label((b"ns", b"dns", *self.domain)),
            rname=_label((b"hostmaster", *self.domain)),
            times=(self.serial, 7200, 1800, 86400, self.ttl),
        )
        return RR(apex, QTYPE.SOA, CLASS.IN, self.ttl, rdata)

    def _pod_address(self, qname: Name) -> IPAddress | None:
        """``a-b-c-d.<ns>.pod.<domain>`` -> a.b.c.d (IPv6: ``fd00--5`` -> fd00::5)."""
        if len(qname) != len(self._pod_suffix) + 2 or qname[2:] != self._pod_suffix:
            return None
        try:
            dashed, ns = qname[0].decode("ascii"), qname[1].decode("ascii")
        except UnicodeDecodeError:
            return None
        if not _LABEL_RE.match(ns):
            return None
        for text in (dashed.replace("-", "."), dashed.replace("-", ":")):
            with contextlib.suppress(ValueError):
                return ipaddress.ip_address(text)
        return None

    def _address_rrs(self, owner: DNSLabel, ips: Iterable[IPAddress], qtype: int) -> list[RR]:
        out = []
        for ip in ips:
            if ip.version == 4 and qtype in (QTYPE.A, QTYPE.ANY):
                out.append(RR(owner, QTYPE.A, CLASS.IN, self.ttl, A(str(ip))))
            elif ip.version == 6 and qtype in (QTYPE.AAAA, QTYPE.ANY):
                out.append(RR(owner, QTYPE.AAAA, CLASS.IN, self.ttl, AAAA(str(ip))))
        return out

    def lookup(self, qlabel: DNSLabel, qtype: int) -> Answer:
        """Answer one question; owner names in the answer keep the question's spelling."""
        qname: Name = tuple(lab.lower() for lab in qlabel.label)
        host = self.hosts.get(qname)
        for i in range(1, len(qname)):
            if host is not None:
                break
            host = self.hosts.get((b"*", *qname[i:]))
        if host is not None:
            ips, ttl = host
            res = Answer()
            want = {QTYPE.A: 4, QTYPE.AAAA: 6}.get(qtype)
            for ip in ips:
                if qtype == QTYPE.ANY or ip.version == want:
                    rtype, data = (QTYPE.A, A(str(ip))) if ip.version == 4 else (QTYPE.AAAA, AAAA(str(ip)))
                    res.answer.append(RR(qlabel, rtype, CLASS.IN, ttl, data))
            return res
        if not self.in_domain(qname):
            return self._lookup_reverse(qlabel, qname, qtype)
        res = Answer()
        pod_ip = None
        if qname in self._names or (pod_ip := self._pod_address(qname)) is not None:
            if pod_ip is not None:
                res.answer += self._address_rrs(qlabel, [pod_ip], qtype)
            res.answer += self._address_rrs(qlabel, self._addrs.get(qname, ()), qtype)
            if qtype in (QTYPE.SRV, QTYPE.ANY):
                targets: list[Name] = []
                for prio, weight, port, target in self._srv.get(qname, ()):
                    res.answer.append(
                        RR(qlabel, QTYPE.SRV, CLASS.IN, self.ttl, SRV(prio, weight, port, _label(target)))
                    )
                    if target not in targets:
                        targets.append(target)
                for t in targets:
                    res.additional += self._address_rrs(_label(t), self._addrs.get(t, ()), QTYPE.ANY)
            if qtype in (QTYPE.TXT, QTYPE.ANY):
                for text in self._txt.get(qname, ()):
                    res.answer.append(RR(qlabel, QTYPE.TXT, CLASS.IN, self.ttl, TXT(text)))
            if qtype in (QTYPE.SOA, QTYPE.ANY) and qname == self.domain:
                res.answer.append(self.soa())
            if not res.answer:
                res.authority.append(self.soa())  # NODATA
        elif len(qname) == len(self._pod_suffix) + 1 and qname[1:] == self._pod_suffix:
            res.authority.append(self.soa())  # <ns>.pod.<domain>: an empty non-terminal
        else:
            res.rcode = RCODE.NXDOMAIN
            res.authority.append(self.soa())
        return res

    def _lookup_reverse(self, qlabel: DNSLabel, qname: Name, qtype: int) -> Answer:
        targets = self._ptr.get(qname)
        if not targets or not (qname[-2:] == _IN_ADDR or qname[-2:] == _IP6_ARPA):
            return Answer(rcode=RCODE.REFUSED, authoritative=False)
        res = Answer()
        if qtype in (QTYPE.PTR, QTYPE.ANY):
            for t in targets:
                res.answer.append(RR(qlabel, QTYPE.PTR, CLASS.IN, self.ttl, PTR(_label(t))))
        return res


# --------------------------------------------------------------------------- wire handling


def _header_reply(query_id: int, rcode: int, opcode: int = 0, rd: int = 0) -> DNSRecord:
    return DNSRecord(DNSHeader(id=query_id, qr=1, opcode=opcode, rd=rd, ra=0, aa=0, rcode=rcode))


def handle_query(packet: bytes, zone: Zone, udp: bool = True) -> bytes | None:
    """The response to one DNS message (None = send nothing: too short, or not a query)."""
    if len(packet) < 12 or packet[2] & 0x80:  # shorter than a header, or a response (QR=1)
        return None
    try:
        req = DNSRecord.parse(packet)
    except (DNSError, UnicodeError, ValueError):
        (qid,) = struct.unpack("!H", packet[:2])
        return _header_reply(qid, RCODE.FORMERR, opcode=(packet[2] >> 3) & 0xF).pack()
    h = req.header
    reply = _header_reply(h.id, RCODE.NOERROR, opcode=h.opcode, rd=h.rd)
    opts = [rr for rr in req.ar if rr.rtype == QTYPE.OPT]
    limit = UDP_PLAIN_LIMIT
    if opts:
        client_size = opts[0].rclass
        limit = max(UDP_PLAIN_LIMIT, min(client_size, UDP_EDNS_LIMIT))
        version = (opts[0].ttl >> 16) & 0xFF
        ext_rcode = 1 if version != 0 else 0  # BADVERS (16) = ext 1, rcode 0
        reply.add_ar(EDNS0(udp_len=UDP_EDNS_LIMIT, ext_rcode=ext_rcode))
        if version != 0 or len(opts) > 1:
            if len(opts) > 1:
                reply.header.rcode = RCODE.FORMERR
            return reply.pack()
    if h.opcode != 0:  # only QUERY
        reply.header.rcode = RCODE.NOTIMP
        reply.questions = req.questions[:1]
        return reply.pack()
    if len(req.questions) != 1:
        reply.header.rcode = RCODE.FORMERR
        return reply.pack()
    q = req.questions[0]
    reply.questions = [q]
    if q.qclass not in (CLASS.IN, CLASS_ANY) or q.qtype in (QTYPE.AXFR, QTYPE.IXFR):
        reply.header.rcode = RCODE.REFUSED
        return reply.pack()
    res = zone.lookup(q.qname, q.qtype)
    reply.header.rcode = res.rcode
    reply.header.aa = int(res.authoritative)
    reply.rr = res.answer
    reply.auth = res.authority
    reply.ar = res.additional + reply.ar  # OPT last
    data = reply.pack()
    if udp and len(data) > limit:
        reply.header.tc = 1
        reply.rr, reply.auth = [], []
        reply.ar = [rr for rr in reply.ar if rr.rtype == QTYPE.OPT]
        data = reply.pack()
    return data


# --------------------------------------------------------------------------- records file


Log = Callable[[str], None]


def _default_log(msg: str) -> None:
    print(f"dns-server: {msg}", flush=True)


class RecordsFile:
    """The records file, re-read when its (inode, size, mtime) changes; see ``zone()``."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        domain: str = DEFAULT_DOMAIN,
        ttl: int = DEFAULT_TTL,
        log: Log = _default_log,
    ) -> None:
        self.path = Path(path)
        self.domain = domain
        self.ttl = ttl
        self.log = log
        self._zone = Zone((), domain, ttl)
        self._sig: tuple[int, ...] | None = None
        self._hsig: tuple[int, ...] | None = None
        self.reloads = 0
        self.zone()

    def _signature(self, path: Path | None = None) -> tuple[int, ...] | None:
        try:
            st = os.stat(path or self.path)
        except FileNotFoundError:
            return None
        return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)

    @property
    def hosts_path(self) -> Path:
        return self.path.parent / "dns-hosts.json"

    def _hosts(self) -> dict[Name, tuple[list[IPAddress], int]]:
        out: dict[Name, tuple[list[IPAddress], int]] = {}
        try:
            data = json.loads(self.hosts_path.read_bytes())
            for h in data.get("hosts", []):
                ips = [_parse_ip(ip, "host ip") for ip in h["ips"]]
                out[name_of(h["name"])] = (ips, int(h.get("ttl", self.ttl)))
        except FileNotFoundError:
            pass
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            self.log(f"cannot load {self.hosts_path}: {exc}; no extra hosts")
        return out

    def zone(self, force: bool = False) -> Zone:
        """The current zone: one stat(2) per file, and a re-read only when a file changed."""
        hsig = self._signature(self.hosts_path)
        sig = self._signature()
        if sig == self._sig and hsig == self._hsig and not force:
            return self._zone
        self._sig = sig
        if hsig != self._hsig or force:
            self._hsig = hsig
            self._zone = Zone(self._zone.services, self.domain, self.ttl, self._zone.serial, self._hosts())
        if sig is None:
            self.log(f"records file {self.path} does not exist; keeping {len(self._zone.services)} services")
            return self._zone
        try:
            with open(self.path, "rb") as f:
                data = json.loads(f.read())
            services = parse_records(data, warn=self.log)
        except (OSError, ValueError) as exc:  # RecordsError and JSONDecodeError are ValueErrors
            self.log(f"cannot load {self.path}: {exc}; keeping the previous records")
            return self._zone
        self._zone = Zone(services, self.domain, self.ttl, sig[3] // 1_000_000_000, self._zone.hosts)
        self.reloads += 1
        self.log(f"loaded {len(services)} services from {self.path}")
        return self._zone


# --------------------------------------------------------------------------- the server


def _bind(family: int, kind: int, host: str, port: int) -> socket.socket:
    s = socket.socket(family, kind)
    try:
        if kind == socket.SOCK_STREAM:  # for UDP it would let two servers share the port
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        if kind == socket.SOCK_DGRAM:
            if family == socket.AF_INET:
                s.setsockopt(socket.IPPROTO_IP, IP_PKTINFO, 1)
            else:
                s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_RECVPKTINFO, 1)
        s.bind((host, port))
        if kind == socket.SOCK_STREAM:
            s.listen(128)
        s.setblocking(False)
    except BaseException:
        s.close()
        raise
    return s


class DnsServer:
    """UDP and TCP listeners on each address of ``listen``, answering from ``records``."""

    def __init__(self, records: RecordsFile, log_queries: bool = False, log: Log = _default_log) -> None:
        self.records = records
        self.log_queries = log_queries
        self.log = log
        self.port = 0
        self._udp: list[socket.socket] = []
        self._tcp: list[asyncio.Server] = []
        self._tcp_slots = asyncio.Semaphore(MAX_TCP_CONNECTIONS)
        self._loop: asyncio.AbstractEventLoop | None = None

    def _answer(self, data: bytes, peer: Any, udp: bool) -> bytes | None:
        try:
            out = handle_query(data, self.records.zone(), udp=udp)
        except Exception as exc:  # a bug must cost one answer, not the server
            self.log(f"internal error answering {peer[0]}: {exc!r}")
            if len(data) < 12:
                return None
            return _header_reply(struct.unpack("!H", data[:2])[0], RCODE.SERVFAIL).pack()
        if self.log_queries and out is not None:
            with contextlib.suppress(DNSError, ValueError):
                r = DNSRecord.parse(out)
                q = r.questions[0] if r.questions else None
                qtext = f"{q.qname} {QTYPE.get(q.qtype)}" if q else "-"
                self.log(
                    f"{'udp' if udp else 'tcp'} {peer[0]} {qtext} -> {RCODE.get(r.header.rcode)} "
                    f"{len(r.rr)} answers{' TC' if r.header.tc else ''}"
                )
        return out

    async def start(self, listen: Sequence[str] = DEFAULT_LISTEN, port: int = 53) -> int:
        """Bind every address (UDP and TCP) and start serving; returns the port.

        ``port=0`` picks a free port shared by all listeners.  ``::`` is skipped with a warning
        when IPv6 is unavailable; any other bind failure is fatal.
        """
        self._loop = asyncio.get_running_loop()
        for attempt in range(20):
            try:
                socks = self._bind_all(listen, port)
                break
            except OSError as exc:
                if port == 0 and exc.errno == errno.EADDRINUSE and attempt < 19:
                    continue
                raise
        for kind, s in socks:
            if kind == socket.SOCK_DGRAM:
                self._udp.append(s)
                self._loop.add_reader(s.fileno(), self._on_udp, s)
            else:
                self._tcp.append(await asyncio.start_server(self._on_tcp, sock=s))
        return self.port

    def _bind_all(self, listen: Sequence[str], port: int) -> list[tuple[int, socket.socket]]:
        socks: list[tuple[int, socket.socket]] = []
        try:
            for host in listen:
                family = socket.AF_INET6 if ":" in host else socket.AF_INET
                for kind in (socket.SOCK_DGRAM, socket.SOCK_STREAM):
                    try:
                        s = _bind(family, kind, host, port)
                    except OSError as exc:
                        if host == "::" and exc.errno in (errno.EAFNOSUPPORT, errno.EADDRNOTAVAIL):
                            self.log(f"IPv6 unavailable ({exc.strerror}); serving IPv4 only")
                            break
                        raise
                    socks.append((kind, s))
                    if port == 0:
                        port = s.getsockname()[1]
            if not socks:
                raise OSError(errno.EADDRNOTAVAIL, "no address to listen on")
        except BaseException:
            for _, s in socks:
                s.close()
            raise
        self.port = port
        return socks

    def _on_udp(self, sock: socket.socket) -> None:
        for _ in range(64):  # drain a burst, then let TCP have a turn
            try:
                data, anc, _flags, peer = sock.recvmsg(65535, socket.CMSG_SPACE(64))
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:  # e.g. ICMP errors reported on the socket
                self.log(f"udp receive error: {exc}")
                continue
            out = self._answer(data, peer, udp=True)
            if out is None:
                continue
            cmsg = []
            for level, ctype, cdata in anc:
                if level == socket.IPPROTO_IP and ctype == IP_PKTINFO and len(cdata) >= 12:
                    # struct in_pktinfo {int ifindex; in_addr spec_dst; in_addr addr;}: reply
                    # from the address the query was sent to.
                    cmsg.append((level, ctype, struct.pack("=i4s4s", 0, cdata[8:12], b"\0" * 4)))
                elif level == socket.IPPROTO_IPV6 and ctype == socket.IPV6_PKTINFO and len(cdata) >= 20:
                    cmsg.append((level, ctype, cdata[:20]))  # in6_pktinfo {in6_addr addr; int ifindex;}
            try:
                sock.sendmsg([out], cmsg, 0, peer)
            except OSError as exc:
                self.log(f"udp send to {peer[0]} failed: {exc}")

    async def _on_tcp(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = writer.get_extra_info("peername") or ("?", 0)
        async with self._tcp_slots:
            try:
                while True:
                    head = await asyncio.wait_for(reader.readexactly(2), TCP_IDLE_TIMEOUT)
                    (length,) = struct.unpack("!H", head)
                    data = await asyncio.wait_for(reader.readexactly(length), TCP_IDLE_TIMEOUT)
                    out = self._answer(data, peer, udp=False)
                    if out is None:
                        break
                    writer.write(struct.pack("!H", len(out)) + out)
                    await writer.drain()
            except (asyncio.IncompleteReadError, TimeoutError, ConnectionError):
                pass
            finally:
                writer.close()
                with contextlib.suppress(ConnectionError):
                    await writer.wait_closed()

    def close(self) -> None:
        for s in self._udp:
            if self._loop is not None:
                self._loop.remove_reader(s.fileno())
            s.close()
        self._udp.clear()
        for srv in self._tcp:
            srv.close()
        self._tcp.clear()


async def serve(
    records_path: str | os.PathLike[str],
    port: int = 53,
    domain: str = DEFAULT_DOMAIN,
    listen: Sequence[str] = DEFAULT_LISTEN,
    ttl: int = DEFAULT_TTL,
    log_queries: bool = False,
) -> None:
    """Run the server until SIGTERM/SIGINT; SIGHUP forces a records reload."""
    records = RecordsFile(records_path, domain, ttl)
    server = DnsServer(records, log_queries=log_queries)
    bound = await server.start(listen, port)
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    loop.add_signal_handler(signal.SIGHUP, lambda: records.zone(force=True))
    where = ", ".join(listen)
    print(f"dns-server: serving {domain} on [{where}]:{bound} (udp, tcp), ttl {ttl}s", flush=True)
    try:
        await stop.wait()
    finally:
        server.close()


def main(
    records_path: str, port: int, domain: str, listen: Sequence[str], ttl: int, log_queries: bool
) -> None:
    try:
        Zone((), domain, ttl)  # validates the domain before anything binds
        asyncio.run(serve(records_path, port, domain, listen or DEFAULT_LISTEN, ttl, log_queries))
    except ValueError as exc:
        print(f"dns-server: {exc}", file=sys.stderr)
        sys.exit(2)
    except OSError as exc:
        print(f"dns-server: cannot listen on port {port}: {exc}", file=sys.stderr)
        sys.exit(1)
