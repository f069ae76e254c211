"""Hubble Relay's settings, shared by the CLI and in-process starts (lab, tests)."""

from __future__ import annotations

import socket
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from tendril.common.errors import TendrilError
from tendril.hubble.tls import ClientTls, ServerTls, TlsLayout

DEFAULT_LISTEN = "127.0.0.1:4245"
TLS_PREFIX = "tls://"


@dataclass
class RelayConfig:
    """Where to find peers, where to listen, and the timing of probes and the follow sort buffer.

    A peer service address is ``unix:///path/hubble.sock``, ``host:port`` (plaintext) or
    ``tls://host:port`` (mTLS with the client certificate from `tls_dir`, verified against
    `peer_service_server_name` or else the address itself).
    """

    peer_services: Sequence[str]
    listen_address: str = DEFAULT_LISTEN
    tls_dir: Path | None = None  # `ensure_certs` layout: CA + relay client cert (to the nodes)
    tls_server: bool = False  # serve TLS with the layout's relay server certificate
    cluster: str = "default"  # reported for namespaces whose node names no cluster
    peer_service_server_name: str = ""
    name: str = field(default_factory=socket.gethostname)  # node_name on node status events
    probe_interval: float = 2.0  # health checks of connected nodes, reconnects of unavailable ones
    dial_timeout: float = 3.0
    resubscribe_max_backoff: float = 10.0
    ready_timeout: float = 5.0  # start_relay waits this long for the first peers to connect
    sort_buffer_len: int = 100  # Hubble Relay's defaults for ordering follow streams
    sort_buffer_drain: float = 1.0

    def layout(self) -> TlsLayout | None:
        return TlsLayout(Path(self.tls_dir)) if self.tls_dir else None

    def client_tls(self) -> ClientTls | None:
        layout = self.layout()
        if layout is None:
            return None
        try:
            return layout.relay_client_tls()
        except OSError as e:
            raise TendrilError(f"cannot load relay client certificates from {layout.directory}: {e}") from e

    def server_tls(self) -> ServerTls | None:
        if not self.tls_server:
            return None
        layout = self.layout()
        if layout is None:
            raise TendrilError("--tls-server needs --tls-dir (the relay server certificate lives there)")
        try:
            return layout.relay_server_tls()
        except OSError as e:
            raise TendrilError(f"cannot load relay server certificates from {layout.directory}: {e}") from e
