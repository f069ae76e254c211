"""The kvstore interface shared by the embedded and the etcd backend.

Agents share cluster state (nodes, identities, ipcache, services, policies) through this one
interface, so a single-node lab needs nothing running and a multi-node lab swaps in etcd without
the agent noticing.  The API is synchronous and thread-safe on purpose: calls are sub-millisecond,
and the agent's asyncio loop must never wait on another loop.  Watch and reconnect callbacks run
on one background thread per store (never the caller's thread, never the etcd client's loop), so
a callback may call the store again; the agent marshals them onto its loop with
``loop.call_soon_threadsafe``.
"""

from __future__ import annotations

import threading
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass

from tendril.common.errors import TendrilError


class KvStoreError(TendrilError):
    """A kvstore call failed; the message always names the endpoint (``etcd://host:port``)."""


@dataclass(frozen=True)
class KvEvent:
    """One change seen by a watch.

    ``value`` is None for deletes.  ``revision`` is the store revision of the change; events made
    up by a resync (after the watched revision was compacted) carry the revision of the read that
    produced them.
    """

    kind: str  # "put" | "delete"
    key: str
    value: bytes | None
    revision: int


@dataclass
class KvStatus:
    """What ``status()`` reports: the agent shows it in ``tendril status`` and uses it for health."""

    backend: str  # "embedded" | "etcd"
    endpoint: str
    connected: bool
    error: str  # last error while disconnected, "" when connected
    revision: int  # highest store revision this client has seen
    lease_id: int  # session lease (0: none)
    since: float  # time.time() of the last change of ``connected``


WatchCallback = Callable[[list[KvEvent]], None]
ReconnectCallback = Callable[[], None]


class Watch:
    """Handle returned by ``KVStore.watch``; ``cancel()`` stops deliveries (idempotent).

    Once ``cancel()`` returned, the callback is not called again, except for a call that was
    already running on the callback thread at that moment.
    """

    def __init__(self, prefix: str, callback: WatchCallback, on_cancel: Callable[[Watch], None]) -> None:
        self.prefix = prefix
        self._callback = callback
        self._on_cancel = on_cancel
        self._cancelled = threading.Event()

    @property
    def cancelled(self) -> bool:
        return self._cancelled.is_set()

    def cancel(self) -> None:
        if self._cancelled.is_set():
            return
        self._cancelled.set()
        self._on_cancel(self)

    def deliver(self, events: list[KvEvent]) -> None:
        """Run on the callback thread: hand one batch to the owner unless cancelled meanwhile."""
        if events and not self._cancelled.is_set():
            self._callback(events)


class KVStore(ABC):
    """A key-value store with revisions, atomic creates, prefix watches and a session lease.

    Keys are str (utf-8), values bytes.  Every method may be called from any thread.  Errors are
    ``KvStoreError`` with one line naming ``endpoint``.
    """

    endpoint: str

    @abstractmethod
    def get(self, key: str) -> bytes | None:
        """The value of ``key``, or None."""

    @abstractmethod
    def list(self, prefix: str) -> tuple[dict[str, bytes], int]:
        """All keys under ``prefix`` and the store revision of that read (watch from revision + 1)."""

    @abstractmethod
    def put(self, key: str, value: bytes, *, lease: bool = False) -> int:
        """Set ``key``; return the new store revision.  ``lease=True`` ties the key to this client's
        session lease: it disappears when the client dies (lease TTL) or closes."""

    @abstractmethod
    def create(self, key: str, value: bytes, *, lease: bool = False) -> bool:
        """Set ``key`` only if it does not exist (atomic); True if this call created it."""

    @abstractmethod
    def create_all(self, items: dict[str, bytes], *, lease: bool = False) -> bool:
        """Create every key or none: succeeds only if none of them exists (one transaction)."""

    @abstractmethod
    def delete(self, key: str) -> bool:
        """Delete ``key``; True if it existed."""

    @abstractmethod
    def delete_prefix(self, prefix: str) -> int:
        """Delete every key under ``prefix`` (one revision); return how many."""

    @abstractmethod
    def watch(self, prefix: str, callback: WatchCallback, start_revision: int | None = None) -> Watch:
        """Call ``callback`` with every change under ``prefix`` with revision >= ``start_revision``
        (default: changes after this call), in revision order, in batches.  Survives reconnects
        without losing events; if the history it needs was compacted, it resyncs (see module docs
        of the backend)."""

    @abstractmethod
    def on_reconnect(self, callback: ReconnectCallback) -> None:
        """Call ``callback`` (on the callback thread) after the connection came back or the session
        lease had to be re-granted: owners of leased keys put them again."""

    @abstractmethod
    def status(self) -> KvStatus:
        """Connection state, last error and lease, without a round trip."""

    @abstractmethod
    def close(self, revoke_lease: bool = True) -> None:
        """Stop watches and background work.  ``revoke_lease=False`` leaves the leased keys to
        expire with the lease TTL, which is what a crashed node looks like to the others."""

    def __enter__(self) -> KVStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def check_key_value(endpoint: str, key: str, value: bytes) -> None:
    """Reject what etcd would reject (or silently mangle), the same way on both backends."""
    if not isinstance(key, str) or not key:
        raise KvStoreError(f"kvstore {endpoint}: key must be a non-empty str, not {key!r}")
    if not isinstance(value, bytes | bytearray | memoryview):
        raise KvStoreError(f"kvstore {endpoint}: value of {key!r} must be bytes, not {type(value).__name__}")
