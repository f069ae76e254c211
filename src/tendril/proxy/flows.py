"""Requests and responses the proxy handles -> Hubble L7 flow rows (Type L7, event type 129).

Each request becomes two rows, as Hubble shows them: `http-request` (client -> server, is_reply
false) and `http-response` (server -> client, is_reply true, latency_ns). A denied request has
verdict DROPPED on both (the response is the proxy's 403). The L7 part (flow.Layer7 with its HTTP
record) goes to `tables.l7`; the row holds its id, so the rest of the flow store (filters,
Observer, metrics, export) treats these rows like any other. Rows are handed over in small
batches (a few ms), so the metrics and the ring see one append per batch, not per request.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable, Sequence

import numpy as np

from tendril.hubble import record as rec
from tendril.hubble.api.flow import flow_pb2
from tendril.proxy.decide import ConnectionContext

EVENT_L7 = 129  # Cilium's MessageTypeAccessLog
IPPROTO_TCP = 6
FLUSH_S = 0.005
BATCH = 1024


def authority(ctx: ConnectionContext) -> str:
    """The original destination as an HTTP authority (IPv6 in brackets)."""
    host = f"[{ctx.dst_ip}]" if ctx.dst_ip.version == 6 else str(ctx.dst_ip)
    return f"{host}:{ctx.dst_port}"


def http_url(ctx: ConnectionContext, target: str, host: str) -> str:
    """Hubble's url: absolute, with the Host header or else the original destination as authority."""
    if target.startswith(("http://", "https://")):
        return target
    return f"http://{host or authority(ctx)}{target}"


# The fields an L7 row sets, in the order _values() lists them; the rest keep rec.empty()'s defaults.
_ROW_FIELDS = (
    "time_ns",
    "uuid",
    "node",
    "verdict",
    "flow_type",
    "event_type",
    "ip_version",
    "src_ip",
    "dst_ip",
    "l4_proto",
    "src_port",
    "dst_port",
    "is_reply",
    "traffic_direction",
    "src_ep",
    "src_identity",
    "dst_ep",
    "dst_identity",
    "ep_id",
    "l7",
)


def _rows(values: Sequence[tuple]) -> np.ndarray:
    """Rows from _values() tuples, written column by column (numpy field writes per row cost ~1 us
    each)."""
    rows = rec.empty(len(values))
    for name, column in zip(_ROW_FIELDS, zip(*values, strict=True), strict=True):
        rows[name] = column
    return rows


class L7FlowWriter:
    """Builds rows and publishes them (ring + sinks) in batches on the agent's loop."""

    def __init__(self, tables: rec.Tables, node_id: int, publish: Callable[[np.ndarray], None]) -> None:
        self.tables = tables
        self.node_id = node_id
        self.publish = publish
        self._pending: list[tuple] = []  # _values() of the rows of the next batch
        self._scheduled = False

    def _values(
        self, ctx: ConnectionContext, reply: bool, verdict: int, l7: flow_pb2.Layer7, at_ns: int | None
    ) -> tuple:
        """The row's values for _ROW_FIELDS, in that order."""
        src, dst = (ctx.dst_ip, ctx.src_ip) if reply else (ctx.src_ip, ctx.dst_ip)
        sides = [(ctx.src_meta, ctx.src_identity), (ctx.dst_meta, ctx.dst_identity)]
        if reply:
            sides.reverse()
        (src_ep, src_id), (dst_ep, dst_id) = sides
        return (
            time.time_ns() if at_ns is None else at_ns,
            os.urandom(16),
            self.node_id,
            verdict,
            rec.L7,
            EVENT_L7,
            ctx.src_ip.version,
            src.packed.ljust(16, b"\0"),
            dst.packed.ljust(16, b"\0"),
            ctx.proto,
            ctx.dst_port if reply else ctx.src_port,
            ctx.dst_port if not reply else ctx.src_port,
            int(reply),
            ctx.direction,
            src_ep,
            src_id,
            dst_ep,
            dst_id,
            ctx.ep_id,
            self.tables.l7.add(l7),
        )

    def _row(
        self, ctx: ConnectionContext, reply: bool, verdict: int, l7: flow_pb2.Layer7, at_ns: int | None = None
    ) -> None:
        if len(self._pending) == BATCH:
            self.flush()
        self._pending.append(self._values(ctx, reply, verdict, l7, at_ns))
        if not self._scheduled:
            self._scheduled = True
            asyncio.get_running_loop().call_later(FLUSH_S, self.flush)

    def request(
        self,
        ctx: ConnectionContext,
        method: str,
        url: str,
        protocol: str,
        headers: Sequence[tuple[str, str]],
        verdict: int,
        at_ns: int | None = None,
    ) -> None:
        l7 = flow_pb2.Layer7(
            type=flow_pb2.REQUEST,
            http=flow_pb2.HTTP(
                method=method,
                url=url,
                protocol=protocol,
                headers=[flow_pb2.HTTPHeader(key=k, value=v) for k, v in headers],
            ),
        )
        self._row(ctx, False, verdict, l7, at_ns)

    def response(
        self,
        ctx: ConnectionContext,
        method: str,
        url: str,
        protocol: str,
        code: int,
        latency_ns: int,
        verdict: int,
        at_ns: int | None = None,
    ) -> None:
        l7 = flow_pb2.Layer7(
            type=flow_pb2.RESPONSE,
            latency_ns=max(0, latency_ns),
            http=flow_pb2.HTTP(code=code, method=method, url=url, protocol=protocol),
        )
        self._row(ctx, True, verdict, l7, at_ns)

    def dns(
        self,
        ctx: ConnectionContext,
        reply: bool,
        verdict: int,
        query: str,
        qtypes: Sequence[str],
        rcode: int = 0,
        ips: Sequence[str] = (),
        ttl: int = 0,
        cnames: Sequence[str] = (),
        rrtypes: Sequence[str] = (),
        latency_ns: int = 0,
    ) -> None:
        """A dns-request (reply False) or dns-response row, observation source "proxy"."""
        l7 = flow_pb2.Layer7(
            type=flow_pb2.RESPONSE if reply else flow_pb2.REQUEST,
            latency_ns=max(0, latency_ns),
            dns=flow_pb2.DNS(
                query=query,
                ips=list(ips),
                ttl=ttl,
                cnames=list(cnames),
                observation_source="proxy",
                rcode=rcode,
                qtypes=list(qtypes),
                rrtypes=list(rrtypes),
            ),
        )
        self._row(ctx, reply, verdict, l7)

    def publish_many(
        self, items: Sequence[tuple[ConnectionContext, bool, int, flow_pb2.Layer7, int]]
    ) -> None:
        """Many rows at once (the proxy-free visibility's batches): after the rows still pending, so
        the store sees them in order."""
        self.flush()
        if items:
            self.publish(_rows([self._values(*item) for item in items]))

    def flush(self) -> None:
        self._scheduled = False
        if self._pending:
            values, self._pending = self._pending, []
            self.publish(_rows(values))
