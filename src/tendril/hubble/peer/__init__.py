"""Hubble's Peer service: the node list Relay subscribes to in order to find every node's Observer.

The agent owns the list (`PeerSource.set_peers` from whatever thread learns about nodes);
`PeerServicer` serves it as `peer.Peer/Notify` next to the Observer.
"""

from __future__ import annotations

from tendril.hubble.peer.service import PeerServicer, add_peer_service, notification
from tendril.hubble.peer.source import PeerInfo, PeerSource, tls_server_name

__all__ = ["PeerInfo", "PeerServicer", "PeerSource", "add_peer_service", "notification", "tls_server_name"]
