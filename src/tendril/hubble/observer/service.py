"""observer.Observer served with grpc.aio on the agent's event loop, plus health and reflection.

Listening on a Unix socket (/var/run/tendril/<node>/hubble.sock) and TCP :4244 in the node's
namespace, like Hubble's per-node server; the upstream `hubble` CLI can talk to either.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import grpc
from google.protobuf import timestamp_pb2, wrappers_pb2
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from tendril.hubble.api import flow_pb2, observer_pb2, observer_pb2_grpc, relay_pb2
from tendril.hubble.container import FlowRing
from tendril.hubble.convert import apply_field_mask, compile_field_mask, rows_to_protos
from tendril.hubble.filters import FilterError, compile_filters
from tendril.hubble.observer.getflows import Selection, follow, historical
from tendril.hubble.peer import PeerSource, add_peer_service
from tendril.hubble.record import Tables

if TYPE_CHECKING:  # the certificate code (cryptography) is only needed when TLS is configured
    from tendril.hubble.tls import ServerTls

log = logging.getLogger(__name__)

SERVICE_NAME = "hubble.server.Observer"
VERSION = "1.19.4+tendril"


@dataclass
class ObserverContext:
    node_name: str
    ring: FlowRing
    tables: Tables
    started_ns: int = field(default_factory=time.time_ns)
    address: str = ""
    namespaces: Callable[[], list[str]] = list
    on_lost: Callable[[str, int], None] = lambda source, n: None
    lost_by_source: dict[str, int] = field(default_factory=dict)
    # Losses upstream of the store (kernel ring overflow): (ring sequence when noticed, time, source,
    # count). Streams report them where they happened among the flows, as Hubble's ring does.
    lost_log: list[tuple[int, int, str, int]] = field(default_factory=list)

    def record_loss(self, source: str, n: int) -> None:
        self.lost_log.append((self.ring.written, time.time_ns(), source, n))
        del self.lost_log[:-1024]


def _ts(ns: int) -> timestamp_pb2.Timestamp:
    t = timestamp_pb2.Timestamp()
    t.FromNanoseconds(ns)
    return t


def _ns(ts: timestamp_pb2.Timestamp) -> int:
    return ts.seconds * 1_000_000_000 + ts.nanos


class ObserverServicer(observer_pb2_grpc.ObserverServicer):
    def __init__(self, ctx: ObserverContext) -> None:
        self.ctx = ctx

    def _responses(self, rows, mask) -> list[observer_pb2.GetFlowsResponse]:  # noqa: ANN001
        out = []
        for f in rows_to_protos(rows, self.ctx.tables):
            if mask:
                full = f
                f = apply_field_mask(f, mask)
                if "event_type" in mask and full.event_type.type in (5, 7):
                    # Policy verdicts and socket translations are unreadable without their direction,
                    # match type or translation point, which the hubble CLI's default mask leaves
                    # out: keep them with the event type.
                    f.traffic_direction = full.traffic_direction
                    f.policy_match_type = full.policy_match_type
                    f.sock_xlate_point = full.sock_xlate_point
            out.append(observer_pb2.GetFlowsResponse(flow=f, node_name=self.ctx.node_name, time=f.time))
        return out

    def _lost(self, n: int) -> observer_pb2.GetFlowsResponse:
        self.ctx.lost_by_source["HUBBLE_RING_BUFFER"] = (
            self.ctx.lost_by_source.get("HUBBLE_RING_BUFFER", 0) + n
        )
        self.ctx.on_lost("hubble_ring_buffer", n)
        return self._lost_response("HUBBLE_RING_BUFFER", n, time.time_ns())

    def _lost_response(self, source: str, n: int, when_ns: int) -> observer_pb2.GetFlowsResponse:
        when = _ts(when_ns)
        ev = flow_pb2.LostEvent(
            source=flow_pb2.LostEventSource.Value(source),
            num_events_lost=n,
            cpu=wrappers_pb2.Int32Value(value=0),
            first=when,
            last=when,
        )
        return observer_pb2.GetFlowsResponse(lost_events=ev, node_name=self.ctx.node_name, time=when)

    def _logged_losses(self, from_seq: int, to_seq: int) -> list[tuple[int, observer_pb2.GetFlowsResponse]]:
        return [
            (seq, self._lost_response(source, n, t))
            for seq, t, source, n in self.ctx.lost_log
            if from_seq <= seq <= to_seq
        ]

    async def GetFlows(  # noqa: N802 - gRPC method name
        self, request: observer_pb2.GetFlowsRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[observer_pb2.GetFlowsResponse]:
        try:
            pred = compile_filters(list(request.whitelist), list(request.blacklist), self.ctx.tables)
            paths = tuple(request.field_mask.paths) if request.HasField("field_mask") else ()
            mask = compile_field_mask(paths) if paths else None
        except FilterError as e:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(e))
            return
        sel = Selection(
            number=request.number,
            first=request.first,
            follow=request.follow,
            since_ns=_ns(request.since) if request.HasField("since") else None,
            until_ns=_ns(request.until) if request.HasField("until") else None,
        )
        if sel.first and sel.follow:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "first cannot be combined with follow")
            return
        rows, seqs, cursor = historical(self.ctx.ring, pred, sel)
        losses = self._logged_losses(int(seqs[0]), cursor) if len(rows) else []
        for start in range(0, len(rows), 1024):
            for i, resp in enumerate(self._responses(rows[start : start + 1024], mask)):
                while losses and losses[0][0] <= seqs[start + i]:
                    yield losses.pop(0)[1]
                yield resp
        for _, resp in losses:
            yield resp
        if not sel.follow:
            return
        async for new, lost, from_seq, to_seq in follow(self.ctx.ring, pred, sel, cursor):
            if context.done():
                return
            for _, resp in self._logged_losses(from_seq + 1, to_seq):
                yield resp
            if lost:
                yield self._lost(lost)
            for resp in self._responses(new, mask):
                yield resp

    async def ServerStatus(self, request, context):  # noqa: ANN001, ANN201, N802
        uptime = time.time_ns() - self.ctx.started_ns
        ring = self.ctx.ring
        return observer_pb2.ServerStatusResponse(
            num_flows=len(ring),
            max_flows=ring.capacity,
            seen_flows=ring.written,
            uptime_ns=uptime,
            version=VERSION,
            flows_rate=ring.written / (uptime / 1e9) if uptime else 0.0,
        )

    async def GetNodes(self, request, context):  # noqa: ANN001, ANN201, N802
        ring = self.ctx.ring
        node = observer_pb2.Node(
            name=self.ctx.node_name,
            version=VERSION,
            address=self.ctx.address,
            state=relay_pb2.NODE_CONNECTED,
            tls=observer_pb2.TLS(enabled=False),
            uptime_ns=time.time_ns() - self.ctx.started_ns,
            num_flows=len(ring),
            max_flows=ring.capacity,
            seen_flows=ring.written,
        )
        return observer_pb2.GetNodesResponse(nodes=[node])

    async def GetNamespaces(self, request, context):  # noqa: ANN001, ANN201, N802
        names = sorted(set(self.ctx.namespaces()))
        return observer_pb2.GetNamespacesResponse(
            namespaces=[observer_pb2.Namespace(namespace=n) for n in names]
        )

    async def GetAgentEvents(self, request, context):  # noqa: ANN001, ANN201, N802
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, "agent events are not recorded by Tendril yet")

    async def GetDebugEvents(self, request, context):  # noqa: ANN001, ANN201, N802
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, "debug events are not recorded by Tendril yet")


async def start_observer(
    ctx: ObserverContext,
    unix_path: str | None,
    tcp_addr: str | None,
    *,
    peer_source: PeerSource | None = None,
    tls: ServerTls | None = None,
) -> grpc.aio.Server:
    """Serve the Observer (and Peer, given a peer source) on the Unix socket and TCP address.

    With `tls`, the TCP listener requires mTLS as Hubble's :4244 does when Relay is deployed; the
    Unix socket stays plaintext, since its file mode is its access control.
    """
    server = grpc.aio.server()
    observer_pb2_grpc.add_ObserverServicer_to_server(ObserverServicer(ctx), server)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    names = [
        observer_pb2.DESCRIPTOR.services_by_name["Observer"].full_name,
        health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
        reflection.SERVICE_NAME,
    ]
    if peer_source is not None:
        names.append(add_peer_service(server, peer_source))
    reflection.enable_server_reflection(names, server)
    if unix_path:
        if os.path.exists(unix_path):
            os.unlink(unix_path)
        server.add_insecure_port(f"unix://{unix_path}")
    if tcp_addr:
        if tls is not None:
            server.add_secure_port(tcp_addr, tls.credentials())
        else:
            server.add_insecure_port(tcp_addr)
    await server.start()
    if unix_path:
        os.chmod(unix_path, 0o600)
    for name in (SERVICE_NAME, ""):
        await health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    return server
