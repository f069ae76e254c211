"""peer.Peer/Notify served next to the Observer: the current peers on connect, then every change,
with the peer list changed from another thread as the agent does."""

from __future__ import annotations

import asyncio
from pathlib import Path

import grpc

from tendril.hubble.api import peer_pb2, peer_pb2_grpc
from tendril.hubble.container import FlowRing
from tendril.hubble.observer.service import ObserverContext, start_observer
from tendril.hubble.peer import PeerInfo, PeerSource, tls_server_name
from tendril.hubble.record import Tables

A = PeerInfo("a", "198.18.0.11:4244", tls_server_name("a", "lab"))
B = PeerInfo("b", "198.18.0.12:4244")
C = PeerInfo("c", "198.18.0.13:4244", tls_server_name("c", "lab"))


def _msg(kind: int, p: PeerInfo) -> tuple[int, str, str, str | None]:
    return kind, p.name, p.address, p.tls_server_name or None


def _seen(m: peer_pb2.ChangeNotification) -> tuple[int, str, str, str | None]:
    return m.type, m.name, m.address, m.tls.server_name if m.HasField("tls") else None


def test_source_diffs_into_added_deleted_updated() -> None:
    async def run() -> list:
        source = PeerSource([A, B])
        changes = source.changes(include_current=True)
        got = [await anext(changes), await anext(changes)]
        moved = PeerInfo("b", "198.18.0.99:4244")
        await asyncio.to_thread(source.set_peers, [moved, C])
        await asyncio.to_thread(source.set_peers, [moved, C])  # no change: nothing sent
        got += [await asyncio.wait_for(anext(changes), 2) for _ in range(3)]
        await changes.aclose()
        assert source._subscribers == set()
        return got

    got = asyncio.run(run())
    assert got == [
        (peer_pb2.PEER_ADDED, A),
        (peer_pb2.PEER_ADDED, B),
        (peer_pb2.PEER_DELETED, A),
        (peer_pb2.PEER_UPDATED, PeerInfo("b", "198.18.0.99:4244")),
        (peer_pb2.PEER_ADDED, C),
    ]


def test_notify_over_grpc(tmp_path: Path) -> None:
    sock = str(tmp_path / "hubble.sock")
    source = PeerSource([A, B])

    async def run() -> None:
        ctx = ObserverContext("a", FlowRing(63), Tables())
        server = await start_observer(ctx, sock, None, peer_source=source)
        try:
            async with grpc.aio.insecure_channel(f"unix://{sock}") as channel:
                call = peer_pb2_grpc.PeerStub(channel).Notify(peer_pb2.NotifyRequest())
                first = [_seen(await asyncio.wait_for(call.read(), 5)) for _ in range(2)]
                assert first == [_msg(peer_pb2.PEER_ADDED, A), _msg(peer_pb2.PEER_ADDED, B)]
                # A second subscriber sees the same list; both then see the same changes.
                call2 = peer_pb2_grpc.PeerStub(channel).Notify(peer_pb2.NotifyRequest())
                assert [(await call2.read()).name for _ in range(2)] == ["a", "b"]
                b2 = PeerInfo("b", "198.18.0.12:4244", tls_server_name("b", "lab"))
                await asyncio.to_thread(source.set_peers, [b2, C])  # from another thread
                for c in (call, call2):
                    later = [_seen(await asyncio.wait_for(c.read(), 5)) for _ in range(3)]
                    assert later == [
                        _msg(peer_pb2.PEER_DELETED, A),
                        _msg(peer_pb2.PEER_UPDATED, b2),
                        _msg(peer_pb2.PEER_ADDED, C),
                    ]
                # A client going away ends its subscription on the server.
                call.cancel()
                call2.cancel()
                for _ in range(50):
                    if not source._subscribers:
                        break
                    await asyncio.sleep(0.05)
                assert source._subscribers == set()
        finally:
            await server.stop(0)

    asyncio.run(run())
