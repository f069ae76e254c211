"""The in-process kvstore: a dict with etcd's semantics, for a single node with nothing to run.

It mirrors etcd closely enough that the agent code is the same for both backends: one revision
counter (1 when empty, +1 per write, one revision per transaction or prefix delete), atomic
create / create_all, prefix watches from any retained revision delivered in order on the
callback thread, and leased keys that vanish when the store closes (the process ending is what
an expired lease means here).  With ``state_file`` the non-leased keys survive restarts, so a
single-node agent keeps its allocated identities and cluster config.
"""

from __future__ import annotations

import base64
import binascii
import threading
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path

from tendril.common.jsonfile import read_json, write_json
from tendril.kvstore.base import (
    KvEvent,
    KvStatus,
    KVStore,
    KvStoreError,
    ReconnectCallback,
    Watch,
    WatchCallback,
    check_key_value,
)
from tendril.kvstore.dispatch import Dispatcher

ENDPOINT = "embedded"
STATE_FORMAT = 1


@dataclass
class _Entry:
    value: bytes
    mod_revision: int
    leased: bool


class _EmbeddedWatch(Watch):
    min_revision: int = 0


class EmbeddedStore(KVStore):
    """In-memory store; every method takes one lock, watch callbacks run on the callback thread."""

    endpoint = ENDPOINT

    def __init__(self, state_file: Path | None = None, history: int = 100_000) -> None:
        self._lock = threading.Lock()
        self._data: dict[str, _Entry] = {}
        self._revision = 1
        # Recent events, for watches that start in the past; older starts get a resync.
        self._history: deque[KvEvent] = deque(maxlen=history)
        self._history_start = 1  # first revision the history covers
        self._watches: list[_EmbeddedWatch] = []
        self._reconnect_callbacks: list[ReconnectCallback] = []
        self._state_file = state_file
        self._closed = False
        self._since = time.time()
        if state_file is not None:
            self._load(state_file)
        self._dispatcher = Dispatcher("kvstore-embedded")

    # -- reads -----------------------------------------------------------------------------

    def get(self, key: str) -> bytes | None:
        with self._lock:
            self._check_open()
            entry = self._data.get(key)
            return entry.value if entry else None

    def list(self, prefix: str) -> tuple[dict[str, bytes], int]:
        with self._lock:
            self._check_open()
            items = {k: e.value for k, e in self._data.items() if k.startswith(prefix)}
            return dict(sorted(items.items())), self._revision

    # -- writes ----------------------------------------------------------------------------

    def put(self, key: str, value: bytes, *, lease: bool = False) -> int:
        check_key_value(ENDPOINT, key, value)
        with self._lock:
            self._check_open()
            self._write({key: value}, lease)
            return self._revision

    def create(self, key: str, value: bytes, *, lease: bool = False) -> bool:
        return self.create_all({key: value}, lease=lease)

    def create_all(self, items: dict[str, bytes], *, lease: bool = False) -> bool:
        for key, value in items.items():
            check_key_value(ENDPOINT, key, value)
        with self._lock:
            self._check_open()
            if any(key in self._data for key in items):
                return False
            if items:
                self._write(items, lease)
            return True

    def delete(self, key: str) -> bool:
        with self._lock:
            self._check_open()
            return self._remove([key]) == 1

    def delete_prefix(self, prefix: str) -> int:
        with self._lock:
            self._check_open()
            return self._remove(sorted(k for k in self._data if k.startswith(prefix)))

    def _write(self, items: dict[str, bytes], leased: bool) -> None:
        """One revision for all of ``items``; caller holds the lock."""
        self._revision += 1
        persist = not leased
        events = []
        for key, value in items.items():
            old = self._data.get(key)
            persist = persist or (old is not None and not old.leased)
            self._data[key] = _Entry(bytes(value), self._revision, leased)
            events.append(KvEvent("put", key, bytes(value), self._revision))
        self._commit(events, persist)

    def _remove(self, keys: list[str]) -> int:
        keys = [k for k in keys if k in self._data]
        if not keys:
            return 0
        self._revision += 1
        persist = False
        events = []
        for key in keys:
            entry = self._data.pop(key)
            persist = persist or not entry.leased
            events.append(KvEvent("delete", key, None, self._revision))
        self._commit(events, persist)
        return len(keys)

    def _commit(self, events: list[KvEvent], persist: bool) -> None:
        """Record and fan out one revision's events (under the lock, so queue order = revision order)."""
        self._history.extend(events)
        for w in self._watches:
            batch = [e for e in events if e.key.startswith(w.prefix) and e.revision >= w.min_revision]
            if batch:
                self._dispatcher.submit(w.deliver, batch)
        if persist and self._state_file is not None:
            self._save(self._state_file)

    # -- watches ---------------------------------------------------------------------------

    def watch(self, prefix: str, callback: WatchCallback, start_revision: int | None = None) -> Watch:
        with self._lock:
            self._check_open()
            w = _EmbeddedWatch(prefix, callback, self._cancel_watch)
            w.min_revision = self._revision + 1 if start_revision is None else start_revision
            if w.min_revision <= self._revision:
                self._dispatcher.submit(w.deliver, self._replay(prefix, w.min_revision))
            self._watches.append(w)
            return w

    def _replay(self, prefix: str, start: int) -> list[KvEvent]:
        """Past events from ``start``; if the history no longer reaches back that far, the current
        contents as puts (the same resync the etcd backend does after a compaction)."""
        available_from = self._history_start
        if len(self._history) == self._history.maxlen:  # the oldest revision may be cut: skip it
            available_from = self._history[0].revision + 1
        if start < available_from:
            return [
                KvEvent("put", k, e.value, self._revision)
                for k, e in sorted(self._data.items())
                if k.startswith(prefix)
            ]
        return [e for e in self._history if e.revision >= start and e.key.startswith(prefix)]

    def _cancel_watch(self, w: Watch) -> None:
        with self._lock:
            if w in self._watches:
                self._watches.remove(w)  # type: ignore[arg-type]

    def on_reconnect(self, callback: ReconnectCallback) -> None:
        """Kept for interface parity: an in-process store never loses its connection or lease."""
        with self._lock:
            self._reconnect_callbacks.append(callback)

    def status(self) -> KvStatus:
        with self._lock:
            return KvStatus("embedded", ENDPOINT, not self._closed, "", self._revision, 0, self._since)

    def close(self, revoke_lease: bool = True) -> None:
        """Leased keys go away either way: without a process there is nobody to keep them alive."""
        with self._lock:
            if self._closed:
                return
            self._remove(sorted(k for k, e in self._data.items() if e.leased))
            if self._state_file is not None:  # also records the revision of leased writes
                self._save(self._state_file)
            self._closed = True
            self._since = time.time()
            watches, self._watches = self._watches, []
        self._dispatcher.stop()
        for w in watches:
            w.cancel()

    def _check_open(self) -> None:
        if self._closed:
            raise KvStoreError(f"kvstore {ENDPOINT} is closed")

    # -- persistence -----------------------------------------------------------------------

    def _save(self, path: Path) -> None:
        keys = {k: base64.b64encode(e.value).decode() for k, e in self._data.items() if not e.leased}
        try:
            write_json(path, {"format": STATE_FORMAT, "revision": self._revision, "keys": keys})
        except OSError as exc:
            raise KvStoreError(f"kvstore {ENDPOINT}: cannot write {path}: {exc.strerror}") from exc

    def _load(self, path: Path) -> None:
        try:
            state = read_json(path)
        except (OSError, ValueError) as exc:
            raise KvStoreError(f"kvstore {ENDPOINT}: cannot read {path}: {exc}") from exc
        if state is None:
            return
        try:
            if state.get("format") != STATE_FORMAT:
                raise ValueError(f"unknown format {state.get('format')!r}")
            self._revision = max(int(state["revision"]), 1)
            for key, b64 in state["keys"].items():
                self._data[key] = _Entry(base64.b64decode(b64, validate=True), self._revision, False)
        except (AttributeError, KeyError, TypeError, ValueError, binascii.Error) as exc:
            raise KvStoreError(f"kvstore {ENDPOINT}: {path} is not a kvstore state file: {exc}") from exc
        # Revisions before the restart have no history here: watches from there resync.
        self._history_start = self._revision + 1
