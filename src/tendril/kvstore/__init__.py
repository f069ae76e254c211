"""Cluster state shared by the agents: one interface, an embedded and an etcd backend.

``open_store("")`` (or "embedded") gives the in-process store of a single node;
``open_store("etcd://HOST:PORT")`` connects to etcd or raises ``KvStoreError`` naming the address.
See ``base`` for the semantics and ``etcd`` for how reconnects and resyncs work.
"""

from __future__ import annotations

from pathlib import Path

from tendril.kvstore.base import KvEvent, KvStatus, KVStore, KvStoreError, Watch
from tendril.kvstore.url import StoreURL, parse_url

__all__ = [
    "KVStore",
    "KvEvent",
    "KvStatus",
    "KvStoreError",
    "StoreURL",
    "Watch",
    "open_store",
    "parse_url",
]


def open_store(
    url: str,
    *,
    lease_ttl: float = 10.0,
    connect_timeout: float = 5.0,
    state_file: Path | None = None,
    op_timeout: float = 3.0,
) -> KVStore:
    """Open the store named by ``url``.

    ``state_file`` only applies to the embedded store (its non-leased keys are kept there);
    ``lease_ttl``, ``connect_timeout`` and ``op_timeout`` (bound on each call) only to etcd.
    """
    parsed = parse_url(url)
    if parsed.backend == "embedded":
        from tendril.kvstore.embedded import EmbeddedStore

        return EmbeddedStore(state_file=state_file)
    from tendril.kvstore.etcd import EtcdStore  # imports gRPC: only when etcd is used

    return EtcdStore(parsed, lease_ttl=lease_ttl, connect_timeout=connect_timeout, op_timeout=op_timeout)
