"""Starting and stopping Hubble Relay: peer discovery, the node pool, and the gRPC listener."""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
from dataclasses import dataclass

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from tendril.common.errors import TendrilError
from tendril.hubble.api import observer_pb2, observer_pb2_grpc
from tendril.hubble.observer.service import SERVICE_NAME
from tendril.hubble.relay.config import RelayConfig
from tendril.hubble.relay.discovery import PeerDiscovery
from tendril.hubble.relay.pool import NodePool
from tendril.hubble.relay.service import RelayObserver

log = logging.getLogger(__name__)


@dataclass
class Relay:
    """A running relay; `port` is the bound TCP port (useful with a ":0" listen address)."""

    config: RelayConfig
    server: grpc.aio.Server
    pool: NodePool
    discovery: PeerDiscovery
    port: int

    async def stop(self, grace: float | None = None) -> None:
        await self.discovery.stop()
        await self.server.stop(grace)
        await self.pool.close()

    async def wait(self) -> None:
        await self.server.wait_for_termination()


async def start_relay(cfg: RelayConfig) -> Relay:
    """Listen, subscribe to the peer service, and give the first peers `ready_timeout` to connect,
    so a relay started by `lab up` answers its first `hubble observe` with every node."""
    client_tls = cfg.client_tls()
    server_tls = cfg.server_tls()
    pool = NodePool(client_tls, probe_interval=cfg.probe_interval, dial_timeout=cfg.dial_timeout)
    discovery = PeerDiscovery(
        cfg.peer_services,
        pool,
        client_tls,
        server_name=cfg.peer_service_server_name,
        max_backoff=cfg.resubscribe_max_backoff,
        dial_timeout=cfg.dial_timeout,
    )
    # SO_REUSEPORT off: a second relay on the same port must fail, not silently share it.
    server = grpc.aio.server(options=[("grpc.so_reuseport", 0)])
    observer_pb2_grpc.add_ObserverServicer_to_server(
        RelayObserver(pool, cfg.name, cfg.cluster, cfg.sort_buffer_len, cfg.sort_buffer_drain), server
    )
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection(
        (
            observer_pb2.DESCRIPTOR.services_by_name["Observer"].full_name,
            health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
            reflection.SERVICE_NAME,
        ),
        server,
    )
    try:
        if server_tls is not None:
            port = server.add_secure_port(cfg.listen_address, server_tls.credentials())
        else:
            port = server.add_insecure_port(cfg.listen_address)
    except RuntimeError as e:
        raise TendrilError(f"cannot listen on {cfg.listen_address}: {e}") from e
    await server.start()
    for name in (SERVICE_NAME, ""):
        await health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    discovery.start()
    try:
        await asyncio.wait_for(discovery.subscribed.wait(), cfg.ready_timeout)
    except TimeoutError:
        log.warning("no peer service answered within %.0fs; serving anyway", cfg.ready_timeout)
    await pool.wait_probed(cfg.ready_timeout)
    log.info(
        "relay listening on %s (port %d, %s); %d/%d nodes connected",
        cfg.listen_address,
        port,
        "TLS" if server_tls else "plaintext",
        len(pool.connected()),
        len(pool.nodes),
    )
    return Relay(cfg, server, pool, discovery, port)


def run_relay(cfg: RelayConfig) -> None:
    """The CLI entry point: log to stderr, serve until SIGINT/SIGTERM."""
    logging.basicConfig(
        stream=sys.stderr, level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )

    async def main() -> None:
        relay = await start_relay(cfg)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
        log.info("stopping")
        await relay.stop(1.0)

    asyncio.run(main())
