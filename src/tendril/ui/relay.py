"""The UI's view of Hubble Relay: one follow stream filling the flow window, per-namespace backfill,
and the unary calls (ServerStatus, GetNodes, GetNamespaces), over the generated gRPC client.

The follow stream starts with `--last N` (N per node, as the relay counts it) and, after a failure,
resumes from just after the newest flow it had. The first time a namespace is selected, its own
history is fetched once with the `-n NS` filters (source_pod / destination_pod `NS/`), so a quiet
namespace shows its flows even when a busy one filled the stream's first N.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterable

import grpc

from tendril.hubble.api import observer_pb2, observer_pb2_grpc, relay_pb2
from tendril.hubble.cli.conn import rpc_error_text
from tendril.ui.model import FlowWindow, time_ns
from tendril.ui.query import namespace_filters

log = logging.getLogger(__name__)

UNARY_TIMEOUT = 5.0
BACKFILL_TIMEOUT = 15.0
NODE_STATES = {v: k.removeprefix("NODE_") for k, v in relay_pb2.NodeState.items()}


def _ts(ns: int):  # noqa: ANN202 - google.protobuf.Timestamp
    from google.protobuf import timestamp_pb2

    t = timestamp_pb2.Timestamp()
    t.FromNanoseconds(ns)
    return t


class RelaySource:
    def __init__(self, address: str, window: FlowWindow, last: int = 2000) -> None:
        self.address = address
        self.window = window
        self.last = last
        self.channel: grpc.aio.Channel | None = None
        self.stub: observer_pb2_grpc.ObserverStub | None = None
        self.streaming = False  # the follow stream has delivered something and is open
        self.error = ""  # why the follow stream is down, if it is
        self.node_events: dict[str, dict] = {}  # node -> last state change seen on the stream
        self.lost_events = 0
        self.started = time.time()
        self._task: asyncio.Task[None] | None = None
        self._backfills: dict[str, asyncio.Task[bool]] = {}
        self._backfilled: set[str] = set()

    async def start(self) -> None:
        self.channel = grpc.aio.insecure_channel(self.address)
        self.stub = observer_pb2_grpc.ObserverStub(self.channel)
        self._task = asyncio.create_task(self._follow())

    async def stop(self) -> None:
        tasks = [t for t in [self._task, *self._backfills.values()] if t is not None]
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self.channel is not None:
            await self.channel.close()

    # --- the follow stream ---------------------------------------------------------------

    def _on_response(self, resp: observer_pb2.GetFlowsResponse) -> int:
        """File one response; the flow's time (0 for other responses)."""
        kind = resp.WhichOneof("response_types")
        if kind == "flow":
            self.window.add(resp.flow)
            return time_ns(resp.flow)
        if kind == "node_status":
            ev = resp.node_status
            state = NODE_STATES.get(ev.state_change, str(ev.state_change))
            for name in ev.node_names:
                self.node_events[name] = {"state": state, "message": ev.message, "time": time.time()}
        elif kind == "lost_events":
            self.lost_events += resp.lost_events.num_events_lost
        return 0

    async def _follow(self) -> None:
        assert self.stub is not None
        newest = 0
        backoff = 0.5
        while True:
            req = observer_pb2.GetFlowsRequest(follow=True)
            if newest:
                req.since.CopyFrom(_ts(newest + 1))
            else:
                req.number = self.last
            try:
                async for resp in self.stub.GetFlows(req):
                    self.streaming, self.error, backoff = True, "", 0.5
                    newest = max(newest, self._on_response(resp))
                self.error = "the relay ended the flow stream"
            except grpc.aio.AioRpcError as e:
                self.error = rpc_error_text(e)
            self.streaming = False
            log.warning("flow stream from %s: %s (retrying in %.1fs)", self.address, self.error, backoff)
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, 5.0)

    # --- per-namespace history -------------------------------------------------------------

    async def backfill(self, namespaces: Iterable[str]) -> None:
        """Fetch the last N flows of each namespace not fetched yet (once per namespace)."""
        waits = []
        for ns in namespaces:
            if ns in self._backfilled:
                continue
            task = self._backfills.get(ns)
            if task is None or task.done():
                task = self._backfills[ns] = asyncio.create_task(self._backfill_one(ns))
            waits.append(task)
        if waits:
            await asyncio.gather(*waits, return_exceptions=True)

    async def _backfill_one(self, namespace: str) -> bool:
        assert self.stub is not None
        req = observer_pb2.GetFlowsRequest(number=self.last, whitelist=namespace_filters(namespace))
        nodes = False
        try:
            async for resp in self.stub.GetFlows(req, timeout=BACKFILL_TIMEOUT):
                if resp.HasField("node_status") and resp.node_status.state_change == relay_pb2.NODE_CONNECTED:
                    nodes = True
                self._on_response(resp)
        except grpc.aio.AioRpcError as e:
            log.warning("history of namespace %s: %s", namespace, rpc_error_text(e))
            return False
        if nodes:  # with no node connected yet, try again next time
            self._backfilled.add(namespace)
        return nodes

    # --- unary calls -------------------------------------------------------------------------

    async def server_status(self) -> dict:
        assert self.stub is not None
        out: dict = {"address": self.address, "streaming": self.streaming, "stream_error": self.error}
        status, nodes = await asyncio.gather(
            self.stub.ServerStatus(observer_pb2.ServerStatusRequest(), timeout=UNARY_TIMEOUT),
            self.stub.GetNodes(observer_pb2.GetNodesRequest(), timeout=UNARY_TIMEOUT),
            return_exceptions=True,
        )
        if isinstance(status, BaseException):
            out.update(reachable=False, error=error_text(status))
        else:
            out.update(
                reachable=True,
                version=status.version,
                num_flows=status.num_flows,
                max_flows=status.max_flows,
                seen_flows=status.seen_flows,
                uptime_ns=status.uptime_ns,
                flows_rate=status.flows_rate,
                connected_nodes=status.num_connected_nodes.value,
                unavailable_nodes=list(status.unavailable_nodes),
            )
        if not isinstance(nodes, BaseException):
            out["nodes"] = [
                {
                    "name": n.name,
                    "state": NODE_STATES.get(n.state, str(n.state)),
                    "address": n.address,
                    "version": n.version,
                    "tls": n.tls.enabled,
                    "num_flows": n.num_flows,
                    "max_flows": n.max_flows,
                    "uptime_ns": n.uptime_ns,
                }
                for n in nodes.nodes
            ]
        return out

    async def namespaces(self) -> list[dict]:
        assert self.stub is not None
        resp = await self.stub.GetNamespaces(observer_pb2.GetNamespacesRequest(), timeout=UNARY_TIMEOUT)
        return [{"name": n.namespace, "cluster": n.cluster} for n in resp.namespaces]


def error_text(e: BaseException) -> str:
    return rpc_error_text(e) if isinstance(e, grpc.RpcError) else f"{type(e).__name__}: {e}"
