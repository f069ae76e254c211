"""The node's DNS proxy: `toPorts[].rules.dns[]` (matchName / matchPattern) on egress.

The datapath hands every UDP datagram (and every TCP connection) that an egress entry with DNS
rules covers to this proxy (bpf/include/proxy.h): UDP through `bpf_sk_assign` to one socket bound
to the wildcard address with IP_TRANSPARENT, which reads the original destination from
IP_ORIGDSTADDR; TCP through the transparent listener on the same port. A query whose name some
rule of the client's egress entry allows is forwarded to the original destination (from the
node, socket marked as the proxy's), and the answer goes back to the client from a transparent
socket bound to the original destination's address, so the client sees the server it asked (the
socket LB's reverse translation then turns the backend into the service address). A query no
rule allows gets REFUSED (Cilium answers REFUSED too). Each query and answer becomes a DNS L7 flow
(`dns-request` / `dns-response`, observation source "proxy"); a refused query's rows are DROPPED.

Before an allowed answer is released, `on_answer` runs (toFQDNs: the IPs of the answer become
selectable and are written into the ipcache and the policy maps first, so the client's next
connect is allowed).
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import socket
import struct
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from dnslib import QTYPE, RCODE, DNSRecord

from tendril.bpf import abi
from tendril.hubble.api.flow import flow_pb2
from tendril.proxy.decide import ConnectionContext, ProxyPolicy
from tendril.proxy.flows import L7FlowWriter
from tendril.proxy.redirect import (
    SO_MARK,
    family_of,
    transparent_listener,
    transparent_socket,
    upstream_socket,
    wildcard,
)

log = logging.getLogger(__name__)

IPPROTO_UDP = 17
IPPROTO_TCP = 6
IP_RECVORIGDSTADDR = 20
IP_ORIGDSTADDR = 20
IPV6_RECVORIGDSTADDR = 74
IPV6_ORIGDSTADDR = 74
FAMILIES = (socket.AF_INET, socket.AF_INET6)
UPSTREAM_TIMEOUT_S = 5.0
MAX_UDP = 65535

#: (ctx, query name, IPs, TTL) -> awaited before an allowed answer is released to the client
AnswerHook = Callable[[ConnectionContext, str, list[str], int], Awaitable[None]]


@dataclass
class DNSProxyStats:
    queries: dict[str, int] = field(default_factory=dict)  # verdict -> count

    def count(self, verdict: str) -> None:
        self.queries[verdict] = self.queries.get(verdict, 0) + 1


def _qtype(q: DNSRecord) -> list[str]:
    return [QTYPE.get(x.qtype, str(x.qtype)) for x in q.questions]


def _answer_summary(r: DNSRecord) -> tuple[list[str], int, list[str], list[str]]:
    """(IPs, smallest TTL of the A/AAAA records, CNAME targets, record types) of an answer."""
    ips, cnames, rrtypes, ttls = [], [], [], []
    for rr in r.rr:
        name = QTYPE.get(rr.rtype, str(rr.rtype))
        rrtypes.append(name)
        if rr.rtype in (QTYPE.A, QTYPE.AAAA):
            ips.append(str(rr.rdata))
            ttls.append(rr.ttl)
        elif rr.rtype == QTYPE.CNAME:
            cnames.append(str(rr.rdata))
    return ips, min(ttls) if ttls else 0, cnames, rrtypes


def _original_destination(ancillary: list[tuple[int, int, bytes]]) -> tuple[str, int] | None:
    """IP(V6)_ORIGDSTADDR: the sockaddr the client sent to, before bpf_sk_assign."""
    for level, typ, raw in ancillary:
        if level == socket.SOL_IP and typ == IP_ORIGDSTADDR and len(raw) >= 8:
            port, addr = struct.unpack("!H4s", raw[2:8])
            return socket.inet_ntoa(addr), port
        if level == socket.IPPROTO_IPV6 and typ == IPV6_ORIGDSTADDR and len(raw) >= 24:
            (port,) = struct.unpack("!H", raw[2:4])  # sockaddr_in6: family, port, flowinfo, addr
            return socket.inet_ntop(socket.AF_INET6, raw[8:24]), port
    return None


class DNSProxy:
    """UDP + TCP DNS proxy on `port`, IPv4 and IPv6 (all on the agent's loop)."""

    def __init__(
        self,
        port: int,
        policy: ProxyPolicy,
        flows: L7FlowWriter,
        on_answer: AnswerHook | None = None,
    ) -> None:
        self.port = port
        self.policy = policy
        self.flows = flows
        self.on_answer = on_answer
        self.stats = DNSProxyStats()
        self._udp: list[socket.socket] = []
        self._tcp: list[asyncio.AbstractServer] = []
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        for family in FAMILIES:
            sock = transparent_socket(family, socket.SOCK_DGRAM, (wildcard(family), self.port))
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, IPV6_RECVORIGDSTADDR, 1)
            else:
                sock.setsockopt(socket.SOL_IP, IP_RECVORIGDSTADDR, 1)
            sock.setblocking(False)
            self._udp.append(sock)
            loop.add_reader(sock.fileno(), self._readable, sock)
            listener = transparent_listener(family, self.port)
            self._tcp.append(await asyncio.start_server(self._tcp_conn, sock=listener))

    async def stop(self) -> None:
        for sock in self._udp:
            asyncio.get_running_loop().remove_reader(sock.fileno())
            sock.close()
        self._udp = []
        for server in self._tcp:
            server.close()
        self._tcp = []
        for t in list(self._tasks):
            t.cancel()

    # ---- UDP ------------------------------------------------------------------------------------
    def _readable(self, sock: socket.socket) -> None:
        for _ in range(64):
            try:
                data, anc, _flags, src = sock.recvmsg(MAX_UDP, 64)
            except BlockingIOError:
                return
            except OSError as e:
                log.warning("dns proxy: recvmsg: %s", e)
                return
            dst = _original_destination(anc)
            if dst is None:
                continue
            task = asyncio.get_running_loop().create_task(self._udp_query(data, (src[0], src[1]), dst))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _udp_query(self, data: bytes, src: tuple[str, int], dst: tuple[str, int]) -> None:
        ctx = self.policy.connection(src, dst, IPPROTO_UDP)
        if ctx is None:
            self.stats.count("unredirected")
            return  # no rule covers it (any more): dropped, fail closed
        reply = await self._answer(ctx, data, lambda q: self._udp_upstream(q, dst))
        if reply is not None:
            self._send_from(dst, src, reply)

    async def _udp_upstream(self, data: bytes, dst: tuple[str, int]) -> bytes:
        loop = asyncio.get_running_loop()
        sock = socket.socket(family_of(dst[0]), socket.SOCK_DGRAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, SO_MARK, abi.MARK_MAGIC_FROM_PROXY)
            sock.setblocking(False)
            sock.connect(dst)
            await loop.sock_sendall(sock, data)
            return await asyncio.wait_for(loop.sock_recv(sock, MAX_UDP), UPSTREAM_TIMEOUT_S)
        finally:
            sock.close()

    @staticmethod
    def _send_from(frm: tuple[str, int], to: tuple[str, int], data: bytes) -> None:
        """Answer from the original destination's address (transparent bind)."""
        try:
            with transparent_socket(family_of(frm[0]), socket.SOCK_DGRAM, frm) as sock:
                sock.sendto(data, to)
        except OSError as e:
            log.warning("dns proxy: answer %s -> %s: %s", frm, to, e)

    # ---- TCP ------------------------------------------------------------------------------------
    async def _tcp_conn(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        src = writer.get_extra_info("peername")
        dst = writer.get_extra_info("sockname")
        up_w: asyncio.StreamWriter | None = None
        try:
            ctx = self.policy.connection((src[0], src[1]), (dst[0], dst[1]), IPPROTO_TCP)
            if ctx is None:
                return
            up_r: asyncio.StreamReader | None = None

            async def upstream(q: bytes) -> bytes:
                nonlocal up_r, up_w
                if up_w is None:
                    sock = upstream_socket(family_of(dst[0]))
                    await asyncio.get_running_loop().sock_connect(sock, (dst[0], dst[1]))
                    up_r, up_w = await asyncio.open_connection(sock=sock)
                assert up_r is not None
                up_w.write(struct.pack("!H", len(q)) + q)
                await up_w.drain()
                (n,) = struct.unpack("!H", await up_r.readexactly(2))
                return await up_r.readexactly(n)

            while True:
                try:
                    (n,) = struct.unpack("!H", await reader.readexactly(2))
                    data = await reader.readexactly(n)
                except asyncio.IncompleteReadError:
                    return
                reply = await self._answer(ctx, data, upstream)
                if reply is None:
                    return
                writer.write(struct.pack("!H", len(reply)) + reply)
                await writer.drain()
        except (TimeoutError, OSError) as e:
            log.debug("dns proxy tcp %s: %s", src, e)
        finally:
            writer.close()
            if up_w is not None:
                up_w.close()

    # ---- both -----------------------------------------------------------------------------------
    async def _answer(
        self, ctx: ConnectionContext, data: bytes, upstream: Callable[[bytes], Awaitable[bytes]]
    ) -> bytes | None:
        """The answer for the client (None: nothing to send), with its flows."""
        try:
            q = DNSRecord.parse(data)
        except Exception:  # noqa: BLE001 - dnslib raises several kinds on garbage
            self.stats.count("malformed")
            return None
        if not q.questions:
            self.stats.count("malformed")
            return None
        name = str(q.questions[0].qname)
        qtypes = _qtype(q)
        allowed = ctx.allows_dns(name)
        verdict = flow_pb2.FORWARDED if allowed else flow_pb2.DROPPED
        self.flows.dns(ctx, False, verdict, name, qtypes)
        start = time.monotonic_ns()
        if not allowed:
            self.stats.count("refused")
            r = q.reply()
            r.header.rcode = RCODE.REFUSED
            self.flows.dns(ctx, True, verdict, name, qtypes, rcode=RCODE.REFUSED)
            return r.pack()
        try:
            raw = await upstream(data)
            r = DNSRecord.parse(raw)
        except Exception as e:  # noqa: BLE001 - timeouts, resets, garbage answers
            self.stats.count("error")
            log.debug("dns proxy: upstream for %s: %s", name, e)
            r = q.reply()
            r.header.rcode = RCODE.SERVFAIL
            self.flows.dns(ctx, True, flow_pb2.ERROR, name, qtypes, rcode=RCODE.SERVFAIL)
            return r.pack()
        ips, ttl, cnames, rrtypes = _answer_summary(r)
        if self.on_answer is not None and ips and r.header.rcode == RCODE.NOERROR:
            try:
                await self.on_answer(ctx, name, ips, ttl)
            except Exception:  # noqa: BLE001 - never lose the answer over bookkeeping
                log.exception("dns proxy: toFQDNs update for %s", name)
        self.stats.count("forwarded")
        self.flows.dns(
            ctx,
            True,
            verdict,
            name,
            qtypes,
            rcode=r.header.rcode,
            ips=[str(ipaddress.ip_address(i)) for i in ips],
            ttl=ttl,
            cnames=cnames,
            rrtypes=rrtypes,
            latency_ns=time.monotonic_ns() - start,
        )
        return raw
