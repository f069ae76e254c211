"""Hubble v1 gRPC API (packages ``flow``, ``observer``, ``relay``, ``peer``).

The .proto sources live in ``proto/``; the Python modules are generated at build time by
``scripts/gen_proto.py`` (run by ``scripts/setup.sh``) into the sub-packages of this package and
are not committed. Import from here::

    from tendril.hubble.api import flow_pb2, observer_pb2, observer_pb2_grpc
"""

from __future__ import annotations

_HINT = (
    "the Hubble gRPC code has not been generated: run scripts/setup.sh to generate the gRPC code "
    "(or just `.venv/bin/python scripts/gen_proto.py`)"
)

try:
    from tendril.hubble.api.flow import flow_pb2
    from tendril.hubble.api.observer import observer_pb2, observer_pb2_grpc
    from tendril.hubble.api.peer import peer_pb2, peer_pb2_grpc
    from tendril.hubble.api.relay import relay_pb2
except ImportError as exc:  # pragma: no cover - depends on the build state
    missing = getattr(exc, "name", None) or ""
    if missing.startswith("tendril.hubble.api.") or "_pb2" in str(exc):
        raise ImportError(f"{_HINT} ({exc})") from exc
    raise

__all__ = [
    "flow_pb2",
    "observer_pb2",
    "observer_pb2_grpc",
    "peer_pb2",
    "peer_pb2_grpc",
    "relay_pb2",
]
