"""observer.Observer for a whole cluster: every request fanned out to the connected nodes.

Behaviour follows Hubble Relay: a GetFlows stream starts with NODE_CONNECTED / NODE_UNAVAILABLE
events naming the nodes it covers; `--last N` means N per node; ServerStatus sums the nodes and
reports the longest uptime; GetNodes lists every known node, unavailable ones included.
Additionally, a follow stream tells when a node drops out (NODE_UNAVAILABLE with the reason) and
picks the node up again when it returns (NODE_CONNECTED), resuming after the last flow it saw.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import grpc
from google.protobuf import wrappers_pb2

from tendril.hubble.api import observer_pb2, observer_pb2_grpc, relay_pb2
from tendril.hubble.convert import compile_field_mask
from tendril.hubble.filters import FilterError, compile_filters
from tendril.hubble.observer.service import VERSION, _ns, _ts
from tendril.hubble.record import Tables
from tendril.hubble.relay.merge import SortBuffer, response_ns
from tendril.hubble.relay.pool import (
    CONNECTED,
    GONE,
    Node,
    NodeDown,
    NodePool,
    error_text,
    is_connectivity_error,
)

log = logging.getLogger(__name__)

Response = observer_pb2.GetFlowsResponse


def _flows_request(request: observer_pb2.GetFlowsRequest) -> str | None:
    """Reject what every node would reject, once, with the node's own message."""
    try:
        compile_filters(list(request.whitelist), list(request.blacklist), Tables())
        if request.HasField("field_mask") and request.field_mask.paths:
            compile_field_mask(tuple(request.field_mask.paths))
    except FilterError as e:
        return str(e)
    if request.first and request.follow:
        return "first cannot be combined with follow"
    return None


class StreamEnded(Exception):
    """A node closed a follow stream, which only happens when it shuts down."""


@dataclass
class _Followed:
    node: Node
    channel: grpc.aio.Channel | None
    task: asyncio.Task[None]


class RelayObserver(observer_pb2_grpc.ObserverServicer):
    def __init__(
        self,
        pool: NodePool,
        name: str,
        cluster: str,
        sort_buffer_len: int = 100,
        sort_buffer_drain: float = 1.0,
    ) -> None:
        self.pool = pool
        self.name = name  # the relay's own node name, on the node status events it sends
        self.cluster = cluster
        self.sort_buffer_len = sort_buffer_len
        self.sort_buffer_drain = sort_buffer_drain

    def _status(self, state: int, names: list[str], message: str = "") -> Response:
        return Response(
            node_status=relay_pb2.NodeStatusEvent(state_change=state, node_names=names, message=message),
            node_name=self.name,
            time=_ts(time.time_ns()),
        )

    def _failure(self, node: Node, channel: grpc.aio.Channel | None, err: BaseException) -> Response:
        """A call to a node failed: if we lost the node, tell the pool and report it unavailable
        (with the pool's reason, which names the first failure, e.g. the TLS error, rather than
        the "channel closed" that follows it); otherwise report the node's own error, as Hubble does.
        """
        if not is_connectivity_error(err):
            return self._status(relay_pb2.NODE_ERROR, [node.name], f"{node.name}: {error_text(err)}")
        self.pool.mark_unavailable(node, err, channel)
        reason = node.error if node.state != CONNECTED and node.error else error_text(err)
        return self._status(relay_pb2.NODE_UNAVAILABLE, [node.name], f"{node.name}: {reason}")

    # --- GetFlows --------------------------------------------------------------------------

    async def GetFlows(  # noqa: N802 - gRPC method name
        self, request: observer_pb2.GetFlowsRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[Response]:
        problem = _flows_request(request)
        if problem is not None:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, problem)
            return
        started_ns = time.time_ns()
        connected, unavailable = self.pool.connected(), self.pool.unavailable()
        if connected:
            yield self._status(CONNECTED, [n.name for n in connected])
        if unavailable:
            reasons = "; ".join(f"{n.name}: {n.error}" for n in unavailable)
            yield self._status(relay_pb2.NODE_UNAVAILABLE, [n.name for n in unavailable], reasons)
        if request.follow:
            async for resp in self._follow(request, connected, started_ns):
                yield resp
        else:
            async for resp in self._historical(request, connected):
                yield resp

    async def _historical(
        self, request: observer_pb2.GetFlowsRequest, nodes: list[Node]
    ) -> AsyncIterator[Response]:
        """Each node's answer (already in time order) merged as it streams in, so `--last N` is N per
        node in order, the first flow leaves as soon as every node has sent its first one, and the
        relay holds one pending response per node rather than every node's whole answer."""
        streams: list[tuple[Node, grpc.aio.Channel | None, Any]] = []
        failures: list[Response] = []
        for node in nodes:
            channel = node.channel
            try:
                channel, stub = node.connection()
                streams.append((node, channel, stub.GetFlows(request).__aiter__()))
            except NodeDown as e:
                failures.append(self._failure(node, channel, e))

        async def pull(i: int) -> Response | None:
            node, channel, it = streams[i]
            try:
                return await it.__anext__()
            except StopAsyncIteration:
                return None
            except (grpc.aio.AioRpcError, NodeDown) as e:
                failures.append(self._failure(node, channel, e))
                return None

        heap: list[tuple[int, int, int, Response]] = []
        seq = itertools.count()  # ties keep arrival order; responses are never compared
        for i, first in enumerate(await asyncio.gather(*(pull(i) for i in range(len(streams))))):
            if first is not None:
                heapq.heappush(heap, (response_ns(first), next(seq), i, first))
        while heap or failures:
            while failures:
                yield failures.pop(0)
            if not heap:
                break
            _, _, i, resp = heapq.heappop(heap)
            yield resp
            nxt = await pull(i)
            if nxt is not None:
                heapq.heappush(heap, (response_ns(nxt), next(seq), i, nxt))

    async def _follow(
        self, request: observer_pb2.GetFlowsRequest, nodes: list[Node], started_ns: int
    ) -> AsyncIterator[Response]:
        queue: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()  # (kind, payload)
        followed: dict[str, _Followed] = {}
        last_ns: dict[str, int] = {}

        def start(node: Node, req: observer_pb2.GetFlowsRequest) -> None:
            task = asyncio.create_task(pump(node, node.channel, req))
            followed[node.name] = _Followed(node, node.channel, task)

        async def pump(
            node: Node, channel: grpc.aio.Channel | None, req: observer_pb2.GetFlowsRequest
        ) -> None:
            err: BaseException = StreamEnded(f"node {node.name} ended the stream")
            try:
                if channel is None:
                    raise NodeDown(f"node {node.name} is not connected")
                async for resp in observer_pb2_grpc.ObserverStub(channel).GetFlows(req):
                    if resp.HasField("flow") or resp.HasField("lost_events"):
                        last_ns[node.name] = max(last_ns.get(node.name, 0), response_ns(resp))
                    await queue.put(("resp", resp))
            except (grpc.aio.AioRpcError, NodeDown) as e:
                err = e
            await queue.put(("fail", (node, channel, err)))

        def resume_request(name: str) -> observer_pb2.GetFlowsRequest:
            """Follow again from just after the last flow seen from this node (or the stream start)."""
            req = observer_pb2.GetFlowsRequest()
            req.CopyFrom(request)
            since = last_ns.get(name, started_ns - 1) + 1
            if request.HasField("since"):
                since = max(since, _ns(request.since))
            req.number = 0
            req.since.CopyFrom(_ts(since))
            return req

        def on_change(name: str, state: int) -> None:
            queue.put_nowait(("node", (name, state)))

        unwatch = self.pool.watch(on_change)
        buffer = SortBuffer(self.sort_buffer_len, self.sort_buffer_drain)
        try:
            # Announced nodes that dropped out since are started anyway: their failure is
            # reported like any other. Nodes that connected while the status events were being
            # sent missed the watcher, so they are announced and started here.
            announced = {n.name for n in nodes}
            for node in nodes:
                start(node, request)
            for node in self.pool.connected():
                if node.name not in announced:
                    yield self._status(CONNECTED, [node.name])
                    start(node, request)
            while True:
                try:
                    kind, item = await asyncio.wait_for(queue.get(), buffer.timeout())
                except TimeoutError:
                    for resp in buffer.drain():
                        yield resp
                    continue
                if kind == "resp":
                    for resp in buffer.push(item):
                        yield resp
                elif kind == "fail":
                    node, channel, err = item
                    current = followed.get(node.name)
                    if current is None or current.channel is not channel:
                        continue  # a stream we already replaced
                    del followed[node.name]
                    yield self._failure(node, channel, err)
                    if (
                        is_connectivity_error(err)
                        and node.state == CONNECTED
                        and node.channel is not channel
                        and self.pool.nodes.get(node.name) is node
                    ):
                        # Already back on a new channel (its CONNECTED event came first): resume.
                        yield self._status(CONNECTED, [node.name])
                        start(node, resume_request(node.name))
                else:
                    name, state = item
                    node = self.pool.nodes.get(name)
                    if state == CONNECTED and node is not None and node.state == CONNECTED:
                        current = followed.get(name)
                        if current is not None and current.channel is node.channel:
                            continue
                        if current is not None:
                            current.task.cancel()  # the node was replaced (new address or TLS)
                        yield self._status(CONNECTED, [name])
                        start(node, resume_request(name))
                    elif state == GONE and name in followed:
                        followed.pop(name).task.cancel()
                        yield self._status(GONE, [name])
        finally:
            unwatch()
            for f in followed.values():
                f.task.cancel()

    # --- unary -----------------------------------------------------------------------------

    async def _each_connected(
        self, call: Callable[[observer_pb2_grpc.ObserverStub], Awaitable[Any]]
    ) -> list[tuple[Node, Any]]:
        """Run a unary call on every connected node concurrently; (node, reply or None on failure)."""

        async def one(node: Node) -> tuple[Node, Any]:
            channel = node.channel
            try:
                channel, stub = node.connection()
                return node, await call(stub)
            except (grpc.aio.AioRpcError, NodeDown) as e:
                if self.pool.nodes.get(node.name) is node:
                    log.warning("node %s: %s", node.name, error_text(e))
                if is_connectivity_error(e):
                    self.pool.mark_unavailable(node, e, channel)
                return node, None

        return list(await asyncio.gather(*(one(n) for n in self.pool.connected())))

    async def _statuses(self) -> list[tuple[Node, observer_pb2.ServerStatusResponse | None]]:
        return await self._each_connected(
            lambda stub: stub.ServerStatus(observer_pb2.ServerStatusRequest(), timeout=self.pool.dial_timeout)
        )

    async def ServerStatus(self, request, context):  # noqa: ANN001, ANN201, N802
        results = await self._statuses()
        resp = observer_pb2.ServerStatusResponse(version=VERSION)
        ok = 0
        for _, status in results:
            if status is None:
                continue
            ok += 1
            resp.num_flows += status.num_flows
            resp.max_flows += status.max_flows
            resp.seen_flows += status.seen_flows
            resp.flows_rate += status.flows_rate
            # Summing uptimes would mean nothing: report the longest-running node, as Hubble does.
            resp.uptime_ns = max(resp.uptime_ns, status.uptime_ns)
        # Nodes removed from the peer list while being asked are simply no longer counted.
        failed = {
            node.name for node, status in results if status is None and self.pool.nodes.get(node.name) is node
        }
        unavailable = sorted(failed | {n.name for n in self.pool.unavailable()})
        resp.num_connected_nodes.CopyFrom(wrappers_pb2.UInt32Value(value=ok))
        resp.num_unavailable_nodes.CopyFrom(wrappers_pb2.UInt32Value(value=len(unavailable)))
        resp.unavailable_nodes.extend(unavailable)
        return resp

    async def GetNodes(self, request, context):  # noqa: ANN001, ANN201, N802
        results = dict(await self._statuses())  # by Node: a node replaced meanwhile is not mixed up
        out = []
        for node in self.pool.sorted_nodes():
            n = observer_pb2.Node(
                name=node.name,
                address=node.peer.address,
                tls=observer_pb2.TLS(enabled=node.tls_used, server_name=node.peer.tls_server_name),
            )
            status = results.get(node)
            if status is not None:
                n.state = CONNECTED
                n.version = status.version
                n.uptime_ns = status.uptime_ns
                n.num_flows = status.num_flows
                n.max_flows = status.max_flows
                n.seen_flows = status.seen_flows
            elif node in results and node.state == CONNECTED:
                n.state = relay_pb2.NODE_ERROR  # reachable, but its ServerStatus failed
            else:
                n.state = relay_pb2.NODE_UNAVAILABLE
            out.append(n)
        return observer_pb2.GetNodesResponse(nodes=out)

    async def GetNamespaces(self, request, context):  # noqa: ANN001, ANN201, N802
        results = await self._each_connected(
            lambda stub: stub.GetNamespaces(
                observer_pb2.GetNamespacesRequest(), timeout=self.pool.dial_timeout
            )
        )
        seen: set[tuple[str, str]] = set()
        for _, resp in results:
            for ns in getattr(resp, "namespaces", ()):
                seen.add((ns.cluster or self.cluster, ns.namespace))
        return observer_pb2.GetNamespacesResponse(
            namespaces=[observer_pb2.Namespace(cluster=c, namespace=n) for c, n in sorted(seen)]
        )

    async def GetAgentEvents(self, request, context):  # noqa: ANN001, ANN201, N802
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, "GetAgentEvents not implemented")

    async def GetDebugEvents(self, request, context):  # noqa: ANN001, ANN201, N802
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, "GetDebugEvents not implemented")
