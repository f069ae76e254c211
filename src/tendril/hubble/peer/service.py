"""`peer.Peer/Notify` over a `PeerSource`: the current peers as PEER_ADDED, then every change."""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc

from tendril.hubble.api import peer_pb2, peer_pb2_grpc
from tendril.hubble.peer.source import PeerInfo, PeerSource


def notification(kind: int, peer: PeerInfo) -> peer_pb2.ChangeNotification:
    """The wire form; `tls` is left unset for a plaintext peer, as Cilium's peer service does."""
    msg = peer_pb2.ChangeNotification(name=peer.name, address=peer.address, type=kind)
    if peer.tls_server_name:
        msg.tls.server_name = peer.tls_server_name
    return msg


class PeerServicer(peer_pb2_grpc.PeerServicer):
    def __init__(self, source: PeerSource) -> None:
        self.source = source

    async def Notify(  # noqa: N802 - gRPC method name
        self, request: peer_pb2.NotifyRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[peer_pb2.ChangeNotification]:
        # Headers now, not with the first change: a subscriber can tell "subscribed, no peers yet"
        # from "not connected". The stream ends when the client goes away: grpc cancels this
        # generator, and leaving `changes` unsubscribes.
        await context.send_initial_metadata(())
        async for kind, peer in self.source.changes(include_current=True):
            yield notification(kind, peer)


def add_peer_service(server: grpc.aio.Server, source: PeerSource) -> str:
    """Register Peer on a server; returns its full service name (for reflection)."""
    peer_pb2_grpc.add_PeerServicer_to_server(PeerServicer(source), server)
    return peer_pb2.DESCRIPTOR.services_by_name["Peer"].full_name
