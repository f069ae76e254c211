"""The node's HTTP/1.x L7 proxy (asyncio + h11), serving what the datapath redirects to it.

Per client connection: one h11 server connection towards the client and, lazily, one h11 client
connection to the original destination (the accepted socket's local address, thanks to
IP_TRANSPARENT + bpf_sk_assign), reused while both sides keep the connection alive. Requests are
handled one at a time in arrival order, which is what makes pipelining work: h11 buffers the
pipelined requests and hands over the next one after `start_next_cycle()`.

For each request:
- allowed by the connection's L7 rules (`decide.ConnectionContext.allows`): forwarded unchanged
  (method, target, header names and values in their order; only the HTTP version on the wire is
  h11's 1.1), body streamed, response relayed back;
- denied: the body is read and discarded, the client gets Cilium's `403 Forbidden` with body
  `Access denied`, and the connection stays usable;
- malformed (h11 cannot parse it): `400 Bad Request`, a flow with code 400 and verdict ERROR, and
  the connection is closed (there is no way to find the next request in garbage).
A failure of one connection (garbage, resets, upstream errors) never touches the others.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import time
from dataclasses import dataclass, field
from email.utils import formatdate

import h11

from tendril.hubble import record as rec
from tendril.proxy.decide import ConnectionContext, ProxyPolicy
from tendril.proxy.flows import L7FlowWriter, authority, http_url
from tendril.proxy.redirect import transparent_listener, upstream_socket

log = logging.getLogger(__name__)

READ_SIZE = 65536
CONNECT_TIMEOUT_S = 5.0
IDLE_TIMEOUT_S = 300.0
DENIED_BODY = b"Access denied"


@dataclass
class ProxyStats:
    """Counters for `tendril_proxy_*` agent metrics and tests."""

    connections: int = 0
    refused: int = 0  # accepted but no L7 rule applies: closed
    requests: dict[str, int] = field(default_factory=lambda: {"forwarded": 0, "denied": 0, "error": 0})


class _Peer:
    """One h11 connection over an asyncio stream pair.

    Output is buffered and written once per turn (before this side or its partner blocks on a
    read, or on `flush`): a response's head, body and end then leave in one write, not three.
    """

    def __init__(
        self,
        role: type[h11.CLIENT] | type[h11.SERVER],
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
    ) -> None:
        self.conn = h11.Connection(our_role=role)
        self.reader = reader
        self.writer = writer
        self.partner: _Peer | None = None
        self._out: list[bytes] = []

    async def next_event(self) -> object:
        while True:
            ev = self.conn.next_event()
            if ev is h11.NEED_DATA:
                await self.flush()
                if self.partner is not None:
                    await self.partner.flush()
                async with asyncio.timeout(IDLE_TIMEOUT_S):
                    data = await self.reader.read(READ_SIZE)
                self.conn.receive_data(data)
                continue
            return ev

    def send(self, *events: object) -> None:
        for ev in events:
            data = self.conn.send(ev)  # type: ignore[arg-type]
            if data:
                self._out.append(data)

    async def flush(self) -> None:
        if self._out:
            data = b"".join(self._out)
            self._out.clear()
            self.writer.write(data)
            await self.writer.drain()

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.writer.close()


def _text(b: bytes) -> str:
    return b.decode("latin-1")


class HTTPProxy:
    """The proxy's listeners (IPv4 and IPv6) and its per-connection loop."""

    def __init__(self, port: int, policy: ProxyPolicy, flows: L7FlowWriter) -> None:
        self.port = port
        self.policy = policy
        self.flows = flows
        self.stats = ProxyStats()
        self._servers: list[asyncio.AbstractServer] = []

    async def start(self) -> None:
        for family in (socket.AF_INET, socket.AF_INET6):
            sock = transparent_listener(family, self.port)
            self._servers.append(await asyncio.start_server(self._handle, sock=sock, limit=READ_SIZE))
        log.info("L7 proxy listening on port %d (IPv4 and IPv6, transparent)", self.port)

    def close(self) -> None:
        for s in self._servers:
            s.close()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        client = _Peer(h11.SERVER, reader, writer)
        upstream: _Peer | None = None
        sock = writer.get_extra_info("socket")
        if sock is not None:  # headers and body go out as separate writes: no Nagle wait between them
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            peer = writer.get_extra_info("peername")
            orig = writer.get_extra_info("sockname")
            ctx = self.policy.connection((peer[0], peer[1]), (orig[0], orig[1]))
            if ctx is None:
                self.stats.refused += 1
                return
            self.stats.connections += 1
            upstream = await self._serve(client, ctx)
        except (TimeoutError, ConnectionError, asyncio.IncompleteReadError):
            pass
        except Exception:  # one connection's bug must not take the proxy down
            log.exception("L7 proxy connection failed")
        finally:
            if upstream is not None:
                upstream.close()
            client.close()

    async def _serve(self, client: _Peer, ctx: ConnectionContext) -> _Peer | None:
        upstream: _Peer | None = None
        while True:
            try:
                ev = await client.next_event()
            except h11.RemoteProtocolError:
                await self._bad_request(client, ctx)
                return upstream
            if not isinstance(ev, h11.Request):
                return upstream  # ConnectionClosed (or PAUSED after a close)
            upstream = await self._exchange(client, upstream, ctx, ev)
            await client.flush()
            if upstream is not None:  # reuse it when this exchange (if it used it) finished cleanly
                states = (upstream.conn.our_state, upstream.conn.their_state)
                if states == (h11.DONE, h11.DONE):
                    upstream.conn.start_next_cycle()
                elif states != (h11.IDLE, h11.IDLE):
                    upstream.close()
                    upstream = None
            if client.conn.our_state is not h11.DONE or client.conn.their_state is not h11.DONE:
                return upstream
            client.conn.start_next_cycle()

    async def _exchange(
        self, client: _Peer, upstream: _Peer | None, ctx: ConnectionContext, req: h11.Request
    ) -> _Peer | None:
        """One request/response: allowed -> forwarded, denied -> 403. Returns the upstream to keep."""
        start = time.monotonic_ns()
        method, target = _text(req.method), _text(req.target)
        headers = [(_text(k), _text(v)) for k, v in req.headers.raw_items()]
        host = next((v for k, v in headers if k.lower() == "host"), "")
        url = http_url(ctx, target, host)
        protocol = f"HTTP/{_text(req.http_version)}"
        allowed = ctx.allows(method, target, host, headers)
        verdict = rec.FORWARDED if allowed else rec.DROPPED
        self.flows.request(ctx, method, url, protocol, headers, verdict)
        if not allowed:
            self.stats.requests["denied"] += 1
            await self._discard_body(client)
            client.send(
                h11.Response(
                    status_code=403,
                    reason=b"Forbidden",
                    headers=[
                        ("content-length", str(len(DENIED_BODY))),
                        ("content-type", "text/plain"),
                        ("date", formatdate(usegmt=True)),
                    ],
                ),
                h11.Data(data=DENIED_BODY),
                h11.EndOfMessage(),
            )
            self.flows.response(ctx, method, url, protocol, 403, time.monotonic_ns() - start, rec.DROPPED)
            return upstream

        self.stats.requests["forwarded"] += 1
        if upstream is None:
            try:
                upstream = await self._connect(ctx)
                upstream.partner, client.partner = client, upstream
            except OSError:
                await self._discard_body(client)
                await self._local_response(client, 503, b"Service Unavailable", b"upstream connect error")
                self.flows.response(
                    ctx, method, url, protocol, 503, time.monotonic_ns() - start, rec.FORWARDED
                )
                return None
        out_headers = list(req.headers.raw_items())
        if not host:
            out_headers.append((b"Host", authority(ctx).encode()))
        upstream.send(h11.Request(method=req.method, target=req.target, headers=out_headers))
        while True:  # the request body
            ev = await client.next_event()
            upstream.send(ev)
            if isinstance(ev, h11.EndOfMessage):
                break
        code = 0
        while True:  # the response, 1xx included
            ev = await upstream.next_event()
            if isinstance(ev, h11.InformationalResponse):
                client.send(ev)
                continue
            if isinstance(ev, h11.Response):
                code = ev.status_code
                self.flows.response(
                    ctx, method, url, protocol, code, time.monotonic_ns() - start, rec.FORWARDED
                )
                client.send(
                    h11.Response(
                        status_code=ev.status_code, reason=ev.reason, headers=list(ev.headers.raw_items())
                    )
                )
                continue
            if isinstance(ev, h11.ConnectionClosed):
                raise ConnectionResetError("upstream closed before the response ended")
            client.send(ev)  # Data / EndOfMessage
            if isinstance(ev, h11.EndOfMessage):
                return upstream

    async def _connect(self, ctx: ConnectionContext) -> _Peer:
        family = socket.AF_INET6 if ctx.dst_ip.version == 6 else socket.AF_INET
        sock = upstream_socket(family)
        try:
            loop = asyncio.get_running_loop()
            await asyncio.wait_for(
                loop.sock_connect(sock, (str(ctx.dst_ip), ctx.dst_port)), CONNECT_TIMEOUT_S
            )
        except (OSError, TimeoutError) as e:
            sock.close()
            raise OSError(f"upstream {ctx.dst_ip}:{ctx.dst_port}: {e}") from e
        reader, writer = await asyncio.open_connection(sock=sock, limit=READ_SIZE)
        return _Peer(h11.CLIENT, reader, writer)

    async def _discard_body(self, client: _Peer) -> None:
        while True:
            ev = await client.next_event()
            if isinstance(ev, (h11.EndOfMessage, h11.ConnectionClosed)):
                return

    async def _local_response(self, client: _Peer, code: int, reason: bytes, body: bytes) -> None:
        client.send(
            h11.Response(
                status_code=code,
                reason=reason,
                headers=[("content-length", str(len(body))), ("content-type", "text/plain")],
            ),
            h11.Data(data=body),
            h11.EndOfMessage(),
        )

    async def _bad_request(self, client: _Peer, ctx: ConnectionContext) -> None:
        """Malformed HTTP: 400 if a response can still be sent, a flow either way; then close."""
        self.stats.requests["error"] += 1
        self.flows.response(ctx, "", "", "HTTP/1.1", 400, 0, rec.ERROR)
        if client.conn.our_state in (h11.IDLE, h11.SEND_RESPONSE):
            with contextlib.suppress(h11.LocalProtocolError, ConnectionError):
                client.send(
                    h11.Response(
                        status_code=400,
                        reason=b"Bad Request",
                        headers=[
                            ("content-length", "11"),
                            ("content-type", "text/plain"),
                            ("connection", "close"),
                        ],
                    ),
                    h11.Data(data=b"Bad Request"),
                    h11.EndOfMessage(),
                )
                await client.flush()
