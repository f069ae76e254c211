"""The set of Hubble peers and the stream of changes to it, shared between threads.

The agent learns about nodes on its own threads while Notify streams run on the gRPC event loop,
so changes are computed under a lock and handed to each subscriber's loop with
`call_soon_threadsafe`; a subscriber registers and takes its snapshot under the same lock, so it
sees every peer exactly once, either in the snapshot or as a later change.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass

from tendril.hubble.api import peer_pb2

ADDED = peer_pb2.PEER_ADDED
DELETED = peer_pb2.PEER_DELETED
UPDATED = peer_pb2.PEER_UPDATED

Change = tuple[int, "PeerInfo"]


def tls_server_name(node: str, cluster: str) -> str:
    """Hubble's TLS server name for a node; dots in the node name would add DNS labels, so they become '-'."""
    return f"{node.replace('.', '-')}.{cluster}.hubble-grpc.cilium.io"


@dataclass(frozen=True)
class PeerInfo:
    """One node's Observer as Relay should dial it."""

    name: str
    address: str  # "198.18.0.11:4244"
    tls_server_name: str = ""  # empty: the node serves plaintext


class _Subscriber:
    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.queue: asyncio.Queue[Change] = asyncio.Queue()

    def push(self, changes: list[Change]) -> None:
        for change in changes:
            try:
                self.loop.call_soon_threadsafe(self.queue.put_nowait, change)
            except RuntimeError:  # the subscriber's loop is closed; its stream is gone anyway
                return


class PeerSource:
    """Thread-safe peer list keyed by node name; every subscriber gets its own change stream."""

    def __init__(self, peers: Iterable[PeerInfo] = ()) -> None:
        self._lock = threading.Lock()
        self._peers: dict[str, PeerInfo] = {p.name: p for p in peers}
        self._subscribers: set[_Subscriber] = set()

    def set_peers(self, peers: Iterable[PeerInfo]) -> None:
        """Replace the list; subscribers get PEER_ADDED / PEER_DELETED / PEER_UPDATED for the difference."""
        new = {p.name: p for p in peers}
        with self._lock:
            old = self._peers
            changes: list[Change] = [(DELETED, p) for name, p in old.items() if name not in new]
            for name, p in new.items():
                if name not in old:
                    changes.append((ADDED, p))
                elif old[name] != p:
                    changes.append((UPDATED, p))
            self._peers = new
            subscribers = list(self._subscribers)
        if changes:
            for sub in subscribers:
                sub.push(changes)

    def peers(self) -> list[PeerInfo]:
        with self._lock:
            return sorted(self._peers.values(), key=lambda p: p.name)

    async def changes(self, include_current: bool = False) -> AsyncIterator[Change]:
        """Changes from now on, for one subscriber on the running loop, until the caller stops.

        With include_current, first a PEER_ADDED for every current peer, taken atomically with
        the subscription (what Notify sends on connect).
        """
        sub = _Subscriber(asyncio.get_running_loop())
        with self._lock:
            self._subscribers.add(sub)
            current = sorted(self._peers.values(), key=lambda p: p.name) if include_current else []
        try:
            for p in current:
                yield ADDED, p
            while True:
                yield await sub.queue.get()
        finally:
            with self._lock:
                self._subscribers.discard(sub)
