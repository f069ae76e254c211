"""Relay's view of the nodes: one gRPC channel per peer, its state, and the reason it is down.

Every node gets a prober task: a connected node is health-checked with ServerStatus, an
unavailable one is redialled on a fresh channel (a new TLS handshake, no inherited backoff), so a
restarted agent or a fixed certificate is picked up within one probe interval. RPC handlers
report failures they see (`mark_unavailable`), and follow streams `watch` state changes to stop
and resume following a node.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass, field

import grpc

from tendril.hubble.api import observer_pb2, observer_pb2_grpc, relay_pb2
from tendril.hubble.cli.conn import rpc_error_text
from tendril.hubble.peer import PeerInfo
from tendril.hubble.tls import ClientTls

log = logging.getLogger(__name__)

CONNECTED = relay_pb2.NODE_CONNECTED
UNAVAILABLE = relay_pb2.NODE_UNAVAILABLE
GONE = relay_pb2.NODE_GONE

# Codes meaning "could not talk to the node" rather than "the node refused this request".
CONNECTIVITY_CODES = frozenset(
    {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.CANCELLED}
)

# Reconnect quickly: the channel's own backoff (up to 120 s by default) would otherwise hide a
# node that came back long after our prober noticed.
CHANNEL_OPTIONS: list[tuple[str, int]] = [
    ("grpc.initial_reconnect_backoff_ms", 500),
    ("grpc.min_reconnect_backoff_ms", 500),
    ("grpc.max_reconnect_backoff_ms", 2000),
]

Watcher = Callable[[str, int], None]


class NodeDown(Exception):
    """The node lost its channel between being listed as connected and being called."""


def dial(target: str, tls: ClientTls | None, server_name: str = "") -> grpc.aio.Channel:
    """A channel to a node or peer service; TLS when credentials are given."""
    options: list[tuple[str, int | str]] = list(CHANNEL_OPTIONS)
    if tls is None:
        return grpc.aio.insecure_channel(target, options=options)
    if server_name:
        options.append(("grpc.ssl_target_name_override", server_name))
    return grpc.aio.secure_channel(target, tls.credentials(), options=options)


def error_text(err: BaseException) -> str:
    """Readable reason, with grpc's own detail (it names the TLS failure, e.g. CERTIFICATE_VERIFY_FAILED)."""
    if isinstance(err, grpc.RpcError):
        return rpc_error_text(err)
    return str(err) or type(err).__name__


def is_connectivity_error(err: BaseException) -> bool:
    return not isinstance(err, grpc.RpcError) or err.code() in CONNECTIVITY_CODES


@dataclass(eq=False)
class Node:
    """One peer as the relay sees it; `channel` is only valid while `state` is CONNECTED."""

    peer: PeerInfo
    tls_used: bool
    state: int = UNAVAILABLE
    error: str = "not connected yet"
    channel: grpc.aio.Channel | None = None
    probed: asyncio.Event = field(default_factory=asyncio.Event)  # set after the first attempt
    kick: asyncio.Event = field(default_factory=asyncio.Event)  # probe now
    task: asyncio.Task[None] | None = None

    @property
    def name(self) -> str:
        return self.peer.name

    def connection(self) -> tuple[grpc.aio.Channel, observer_pb2_grpc.ObserverStub]:
        """The current channel and a stub on it; callers keep the channel to report failures on it."""
        channel = self.channel
        if channel is None:
            raise NodeDown(f"node {self.name} is not connected: {self.error}")
        return channel, observer_pb2_grpc.ObserverStub(channel)


class NodePool:
    def __init__(
        self, client_tls: ClientTls | None, probe_interval: float = 2.0, dial_timeout: float = 3.0
    ) -> None:
        self.client_tls = client_tls
        self.probe_interval = probe_interval
        self.dial_timeout = dial_timeout
        self.nodes: dict[str, Node] = {}
        self._watchers: set[Watcher] = set()
        self._closing: set[asyncio.Task[None]] = set()  # channel closes in flight (kept referenced)

    # --- peer list -------------------------------------------------------------------------

    def upsert(self, peer: PeerInfo) -> None:
        """A peer added or updated: (re)connect unless nothing about how to reach it changed."""
        old = self.nodes.get(peer.name)
        if old is not None:
            if old.peer == peer:
                return
            self._drop(old)
        tls = self.client_tls if peer.tls_server_name else None
        node = Node(peer, tls_used=tls is not None)
        self.nodes[peer.name] = node
        node.task = asyncio.create_task(self._probe_loop(node), name=f"relay-probe-{peer.name}")
        log.info("peer %s at %s (%s)", peer.name, peer.address, "TLS" if tls else "plaintext")

    def remove(self, name: str) -> None:
        node = self.nodes.pop(name, None)
        if node is not None:
            self._drop(node)
            log.info("peer %s removed", name)
            self._notify(name, GONE)

    def _drop(self, node: Node) -> None:
        """Forget a removed or replaced node; calls still holding it see it as not connected."""
        node.state, node.error = UNAVAILABLE, "removed from the peer list"
        if node.task is not None:
            node.task.cancel()
        if node.channel is not None:
            self._close_later(node.channel)
            node.channel = None

    def _close_later(self, channel: grpc.aio.Channel) -> None:
        """Close without waiting (callers are synchronous); calls still on it end with CANCELLED."""
        task = asyncio.create_task(channel.close())
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    async def close(self) -> None:
        for node in list(self.nodes.values()):
            if node.task is not None:
                node.task.cancel()
            if node.channel is not None:
                await node.channel.close()
        tasks = [n.task for n in self.nodes.values() if n.task is not None]
        await asyncio.gather(*tasks, *self._closing, return_exceptions=True)
        self.nodes.clear()

    # --- state -----------------------------------------------------------------------------

    def sorted_nodes(self) -> list[Node]:
        return [self.nodes[n] for n in sorted(self.nodes)]

    def connected(self) -> list[Node]:
        return [n for n in self.sorted_nodes() if n.state == CONNECTED]

    def unavailable(self) -> list[Node]:
        return [n for n in self.sorted_nodes() if n.state != CONNECTED]

    def watch(self, watcher: Watcher) -> Callable[[], None]:
        """Call watcher(name, state) on every change; returns the function that unsubscribes."""
        self._watchers.add(watcher)
        return lambda: self._watchers.discard(watcher)

    def _notify(self, name: str, state: int) -> None:
        for w in list(self._watchers):
            w(name, state)

    def mark_unavailable(
        self, node: Node, err: BaseException | str, channel: grpc.aio.Channel | None
    ) -> None:
        """A call on `channel` failed for connectivity reasons: drop the channel, probe again soon.

        Ignored when the node has moved on (removed, replaced, or already reconnected on a new
        channel), so a stale failure never marks a healthy node down.
        """
        if self.nodes.get(node.name) is not node or node.channel is not channel or node.state != CONNECTED:
            return
        self._set_unavailable(node, err if isinstance(err, str) else error_text(err))
        node.kick.set()

    def _set_unavailable(self, node: Node, reason: str) -> None:
        was = node.state
        node.state, node.error = UNAVAILABLE, reason
        if node.channel is not None:
            self._close_later(node.channel)
            node.channel = None
        if was == CONNECTED:
            log.warning("node %s (%s) unavailable: %s", node.name, node.peer.address, reason)
            self._notify(node.name, UNAVAILABLE)

    def _set_connected(self, node: Node, channel: grpc.aio.Channel) -> None:
        node.state, node.error, node.channel = CONNECTED, "", channel
        log.info("node %s (%s) connected", node.name, node.peer.address)
        self._notify(node.name, CONNECTED)

    async def wait_probed(self, timeout: float) -> None:
        """Until every known node has been tried once (or timeout): a fresh relay answers with real states."""
        events = [n.probed.wait() for n in self.nodes.values()]
        if events:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.gather(*events), timeout)

    # --- probing ---------------------------------------------------------------------------

    async def _probe_loop(self, node: Node) -> None:
        tls = self.client_tls if node.tls_used else None
        while True:
            node.kick.clear()
            if node.state == CONNECTED and node.channel is not None:
                channel = node.channel
                try:
                    await observer_pb2_grpc.ObserverStub(channel).ServerStatus(
                        observer_pb2.ServerStatusRequest(), timeout=self.dial_timeout
                    )
                except grpc.aio.AioRpcError as e:
                    self.mark_unavailable(node, e, channel)
                    continue  # redial at once: a restarted node comes straight back
            else:
                channel = dial(node.peer.address, tls, node.peer.tls_server_name)
                try:
                    await observer_pb2_grpc.ObserverStub(channel).ServerStatus(
                        observer_pb2.ServerStatusRequest(), timeout=self.dial_timeout
                    )
                except grpc.aio.AioRpcError as e:
                    await channel.close()
                    reason = error_text(e)
                    if reason != node.error:
                        log.warning("node %s (%s) unavailable: %s", node.name, node.peer.address, reason)
                    node.error = reason
                else:
                    self._set_connected(node, channel)
                node.probed.set()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(node.kick.wait(), self.probe_interval)
