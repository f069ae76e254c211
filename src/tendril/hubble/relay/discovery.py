"""Following the Peer service: subscribe to the first reachable address, fail over, re-subscribe.

Notify starts with a PEER_ADDED for every current peer, so after a re-subscription the relay
prunes nodes the new stream has not announced once it has been open for a moment: peers deleted
while the relay was not listening disappear too.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence

import grpc

from tendril.hubble.api import peer_pb2, peer_pb2_grpc
from tendril.hubble.peer import PeerInfo
from tendril.hubble.relay.config import TLS_PREFIX
from tendril.hubble.relay.pool import NodePool, dial, error_text
from tendril.hubble.tls import ClientTls

log = logging.getLogger(__name__)

PRUNE_AFTER = 1.0  # seconds a new subscription gets to announce the current peers


def peer_info(msg: peer_pb2.ChangeNotification) -> PeerInfo:
    return PeerInfo(msg.name, msg.address, msg.tls.server_name if msg.HasField("tls") else "")


class PeerDiscovery:
    def __init__(
        self,
        addresses: Sequence[str],
        pool: NodePool,
        client_tls: ClientTls | None,
        server_name: str = "",
        max_backoff: float = 10.0,
        dial_timeout: float = 3.0,
    ) -> None:
        if not addresses:
            raise ValueError("at least one peer service address is needed")
        self.addresses = list(addresses)
        self.pool = pool
        self.client_tls = client_tls
        self.server_name = server_name
        self.max_backoff = max_backoff
        self.dial_timeout = dial_timeout
        self.subscribed = asyncio.Event()  # set once a subscription has had time to list the peers
        self.last_error = ""
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="relay-peer-discovery")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    def _channel(self, address: str) -> grpc.aio.Channel:
        if address.startswith(TLS_PREFIX):
            if self.client_tls is None:
                raise ValueError(f"{address}: a tls:// peer service needs --tls-dir")
            return dial(address[len(TLS_PREFIX) :], self.client_tls, self.server_name)
        return dial(address, None)

    async def _run(self) -> None:
        backoff = 0.5
        while True:
            established = False
            for address in self.addresses:
                established |= await self._subscribe(address)
            if established:
                backoff = 0.5  # a stream that worked and broke: come back quickly
            log.warning("no peer service reachable; retrying in %.1fs", backoff)
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, self.max_backoff)

    async def _subscribe(self, address: str) -> bool:
        """Follow one address until its stream breaks; True if the subscription was established."""
        try:
            channel = self._channel(address)
        except ValueError as e:
            self.last_error = str(e)
            log.warning("peer service %s", self.last_error)
            return False
        announced: set[str] = set()
        established = False
        pruner: asyncio.Task[None] | None = None
        try:
            call = peer_pb2_grpc.PeerStub(channel).Notify(peer_pb2.NotifyRequest())
            try:
                # Bounded: an address that drops packets would otherwise hold up the failover.
                await asyncio.wait_for(call.wait_for_connection(), self.dial_timeout)
            except TimeoutError:
                call.cancel()
                self.last_error = f"no answer within {self.dial_timeout:.0f}s"
                log.warning("peer service %s: %s", address, self.last_error)
                return False
            established = True
            log.info("subscribed to peer service %s", address)
            pruner = asyncio.create_task(self._prune_later(announced))
            async for msg in call:
                peer = peer_info(msg)
                if msg.type == peer_pb2.PEER_DELETED:
                    announced.discard(peer.name)
                    self.pool.remove(peer.name)
                elif msg.type in (peer_pb2.PEER_ADDED, peer_pb2.PEER_UPDATED):
                    announced.add(peer.name)
                    self.pool.upsert(peer)
            self.last_error = "peer stream ended"
        except grpc.aio.AioRpcError as e:
            self.last_error = error_text(e)
        finally:
            if pruner is not None:
                pruner.cancel()
            await channel.close()
        log.warning("peer service %s: %s", address, self.last_error)
        return established

    async def _prune_later(self, announced: set[str]) -> None:
        await asyncio.sleep(PRUNE_AFTER)
        for name in list(self.pool.nodes):
            if name not in announced:
                self.pool.remove(name)
        self.subscribed.set()
