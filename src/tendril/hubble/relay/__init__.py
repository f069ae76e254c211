"""Hubble Relay: one Observer endpoint for every node a Peer service lists.

relay = await start_relay(RelayConfig(["unix:///var/run/tendril/n1/hubble.sock"]))
...
await relay.stop()
"""

from __future__ import annotations

from tendril.hubble.relay.config import DEFAULT_LISTEN, RelayConfig
from tendril.hubble.relay.server import Relay, run_relay, start_relay

__all__ = ["DEFAULT_LISTEN", "Relay", "RelayConfig", "run_relay", "start_relay"]
