"""tendril.kvstore against a real private etcd (and the embedded store): semantics, races, leases,
watches that survive an etcd restart and a compaction, and the errors a user sees.

Every etcd started here is stopped by pid in a finally/fixture teardown.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import aetcd
import pytest

from tendril.kvstore import KvEvent, KVStore, KvStoreError, open_store, parse_url
from tendril.kvstore.server import EtcdProcess, etcd_alive, start_etcd, stop_etcd

pytestmark = pytest.mark.timeout(120)

TTL = 2  # etcd's minimum lease TTL: keeps the lease tests short


def wait_for(pred: Callable[[], object], timeout: float, what: str, interval: float = 0.02) -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(interval)


def etcd_name() -> str:
    return f"tkv-{os.getpid()}-{random.randrange(1 << 30):x}"


@pytest.fixture(scope="module")
def etcd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EtcdProcess]:
    proc = start_etcd(etcd_name(), tmp_path_factory.mktemp("etcd") / "data")
    try:
        yield proc
    finally:
        stop_etcd(proc)


@pytest.fixture(params=["embedded", "etcd"])
def store(request: pytest.FixtureRequest) -> Iterator[KVStore]:
    if request.param == "embedded":
        s = open_store("embedded")
    else:
        s = open_store(request.getfixturevalue("etcd").store_url, lease_ttl=TTL)
    try:
        yield s
    finally:
        s.close()


@pytest.fixture
def ns() -> str:
    """A key prefix of our own: tests share the module's etcd."""
    return f"t-{uuid.uuid4().hex[:8]}/"


class Recorder:
    """A watch callback that keeps every batch (called on the store's callback thread)."""

    def __init__(self) -> None:
        self.batches: list[list[KvEvent]] = []
        self.lock = threading.Lock()

    def __call__(self, events: list[KvEvent]) -> None:
        with self.lock:
            self.batches.append(list(events))

    @property
    def events(self) -> list[KvEvent]:
        with self.lock:
            return [e for b in self.batches for e in b]

    def wait(self, n: int, timeout: float = 5.0) -> list[KvEvent]:
        wait_for(lambda: len(self.events) >= n, timeout, f"{n} watch events (have {self.events})")
        return self.events


def run_aetcd(proc: EtcdProcess, fn: Callable[[aetcd.Client], object]) -> object:
    """Do something to etcd behind the store's back (revoke its lease, compact) with another client."""
    port = int(proc.client_url.rsplit(":", 1)[1])

    async def go() -> object:
        async with aetcd.Client(host="127.0.0.1", port=port, timeout=5) as client:
            return await fn(client)  # type: ignore[misc]

    return asyncio.run(go())


# -- basic semantics, both backends -------------------------------------------------------------


def test_put_get_list_delete(store: KVStore, ns: str) -> None:
    assert store.get(ns + "a/1") is None
    r1 = store.put(ns + "a/1", b"one")
    r2 = store.put(ns + "a/2", b"\x00\xff binary")
    r3 = store.put(ns + "ab", b"not under a/")
    assert r1 < r2 < r3
    assert store.get(ns + "a/1") == b"one"
    items, rev = store.list(ns + "a/")
    assert items == {ns + "a/1": b"one", ns + "a/2": b"\x00\xff binary"}
    assert list(items) == sorted(items)
    assert rev >= r3
    assert store.put(ns + "a/1", b"uno") > r3  # overwrite
    assert store.get(ns + "a/1") == b"uno"
    assert store.delete(ns + "a/1") is True
    assert store.delete(ns + "a/1") is False
    assert store.delete_prefix(ns) == 2
    assert store.list(ns) == ({}, store.list(ns)[1])
    assert store.delete_prefix(ns) == 0
    st = store.status()
    assert st.connected and st.endpoint == store.endpoint and st.revision >= r3
    with pytest.raises(KvStoreError, match=store.endpoint):
        store.put("", b"x")
    with pytest.raises(KvStoreError, match=store.endpoint):
        store.put(ns + "x", "not bytes")  # type: ignore[arg-type]


def test_create_is_atomic_under_races(store: KVStore, ns: str) -> None:
    """Two threads race 50 creates of the same keys: each key has exactly one winner."""
    rounds = 50
    barrier = threading.Barrier(2)
    wins: dict[str, list[bool]] = {"A": [], "B": []}

    def racer(name: str) -> None:
        for i in range(rounds):
            barrier.wait()
            wins[name].append(store.create(f"{ns}k{i}", name.encode()))

    threads = [threading.Thread(target=racer, args=(n,)) for n in wins]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert len(wins["A"]) == len(wins["B"]) == rounds
    for i in range(rounds):
        assert wins["A"][i] != wins["B"][i], f"key {i}: A={wins['A'][i]} B={wins['B'][i]}"
        winner = "A" if wins["A"][i] else "B"
        assert store.get(f"{ns}k{i}") == winner.encode()
    assert store.create(f"{ns}k0", b"again") is False


def test_create_all_is_all_or_nothing(store: KVStore, ns: str) -> None:
    assert store.create_all({ns + "a": b"1", ns + "b": b"2"}) is True
    assert store.create_all({ns + "b": b"x", ns + "c": b"3"}) is False
    assert store.get(ns + "c") is None  # nothing of the failed transaction was written
    assert store.get(ns + "b") == b"2"
    assert store.create_all({ns + "c": b"3", ns + "d": b"4"}) is True
    assert store.list(ns)[0] == {ns + "a": b"1", ns + "b": b"2", ns + "c": b"3", ns + "d": b"4"}
    assert store.create_all({}) is True


def allocate(store: KVStore, ns: str, labels: str) -> int:
    """Identity-style allocation: claim the lowest free number n with {id/n, value/<labels>} in one txn."""
    n = 256
    while True:
        existing = store.get(f"{ns}value/{labels}")
        if existing is not None:
            return int(existing)
        if store.create_all({f"{ns}id/{n}": labels.encode(), f"{ns}value/{labels}": str(n).encode()}):
            return n
        n += 1


@pytest.mark.parametrize("backend", ["embedded", "etcd"])
def test_concurrent_identity_allocation(backend: str, request: pytest.FixtureRequest, ns: str) -> None:
    """Two clients (two EtcdStores, or two threads on one embedded store) allocate the same label
    sets in different orders: they agree on every number and no number is used twice."""
    if backend == "etcd":
        url = request.getfixturevalue("etcd").store_url
        stores = [open_store(url), open_store(url)]
    else:
        shared = open_store("embedded")
        stores = [shared, shared]
    labels = [f"app=svc{i};ns=default" for i in range(25)]
    results: list[dict[str, int]] = [{}, {}]
    try:
        barrier = threading.Barrier(2)

        def client(i: int) -> None:
            order = labels[:]
            random.Random(i).shuffle(order)
            barrier.wait()
            for lbl in order:
                results[i][lbl] = allocate(stores[i], ns, lbl)

        threads = [threading.Thread(target=client, args=(i,)) for i in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        assert results[0] == results[1]
        assert len(results[0]) == len(labels)
        assert sorted(results[0].values()) == list(range(256, 256 + len(labels)))
        ids, _ = stores[0].list(ns + "id/")
        assert {int(k.rsplit("/", 1)[1]): v.decode() for k, v in ids.items()} == {
            n: lbl for lbl, n in results[0].items()
        }
    finally:
        for s in {id(s): s for s in stores}.values():
            s.close()


# -- watches ------------------------------------------------------------------------------------


def test_watch_in_order_and_from_start_revision(store: KVStore, ns: str) -> None:
    rec = Recorder()
    w = store.watch(ns, rec)
    store.put("elsewhere-" + ns, b"not watched")
    revs = [store.put(f"{ns}k{i}", str(i).encode()) for i in range(20)]
    store.delete(ns + "k3")
    store.create_all({ns + "x": b"1", ns + "y": b"2"})
    store.delete_prefix(ns + "k1")  # k1, k10..k19: one revision
    events = rec.wait(20 + 1 + 2 + 11)
    assert [(e.kind, e.key) for e in events[:20]] == [("put", f"{ns}k{i}") for i in range(20)]
    assert [e.revision for e in events[:20]] == revs
    assert (events[20].kind, events[20].key, events[20].value) == ("delete", ns + "k3", None)
    txn = next(b for b in rec.batches if any(e.key == ns + "x" for e in b))
    assert [(e.key, e.value) for e in txn] == [(ns + "x", b"1"), (ns + "y", b"2")]
    assert txn[0].revision == txn[1].revision
    assert [e.revision for e in events] == sorted(e.revision for e in events)
    assert {e.key for e in events[23:]} == {ns + "k1"} | {f"{ns}k1{i}" for i in range(10)}
    assert len({e.revision for e in events[23:]}) == 1
    assert not any(e.key.startswith("elsewhere") for e in events)

    # From a past revision: the history from there on, then live changes.
    late = Recorder()
    store.watch(ns, late, start_revision=revs[5])
    got = late.wait(len(events) - 5)
    assert got == events[5:]
    store.put(ns + "after", b"z")
    assert late.wait(len(events) - 4)[-1].key == ns + "after"

    # A callback may call the store (it runs on the callback thread, not the client's loop).
    seen: list[bytes | None] = []
    store.watch(ns + "cb", lambda evs: seen.append(store.get(evs[-1].key)))
    store.put(ns + "cb", b"read back")
    wait_for(lambda: seen == [b"read back"], 5, "callback that reads the store")

    w.cancel()
    w.cancel()  # idempotent
    store.put(ns + "after-cancel", b"z")
    late.wait(len(events) - 2)
    time.sleep(0.1)
    assert all(e.key != ns + "after-cancel" for e in rec.events)


# -- leases -------------------------------------------------------------------------------------


def test_leased_keys_vanish_when_owner_dies(etcd: EtcdProcess, ns: str) -> None:
    observer = open_store(etcd.store_url)
    try:
        dead = open_store(etcd.store_url, lease_ttl=TTL)
        dead.put(ns + "node/dead", b"heartbeat", lease=True)
        dead.create(ns + "ipcache/10.0.0.1", b"leased", lease=True)
        dead.put(ns + "identity/256", b"kept")
        dead.close(revoke_lease=False)  # like a node that crashed: nobody revokes its lease
        assert observer.get(ns + "node/dead") == b"heartbeat"  # alive until the TTL runs out
        t0 = time.monotonic()
        wait_for(lambda: observer.get(ns + "node/dead") is None, TTL + 4, "the dead node's lease to expire")
        assert time.monotonic() - t0 < TTL + 3
        assert observer.get(ns + "ipcache/10.0.0.1") is None
        assert observer.get(ns + "identity/256") == b"kept"

        clean = open_store(etcd.store_url, lease_ttl=TTL)
        clean.put(ns + "node/clean", b"hb", lease=True)
        clean.close()  # revokes: gone at once
        assert observer.get(ns + "node/clean") is None
    finally:
        observer.close()


def test_embedded_leases_and_state_file(tmp_path: Path, ns: str) -> None:
    state = tmp_path / "kvstore.json"
    s = open_store("embedded", state_file=state)
    s.put(ns + "identity/256", b"app=a")
    s.put(ns + "node/n1", b"hb", lease=True)
    rec = Recorder()
    s.watch(ns, rec)
    rev = s.status().revision
    s.close(revoke_lease=False)  # the embedded store's leases end with it either way
    assert rec.events[-1:] == [KvEvent("delete", ns + "node/n1", None, rev + 1)]
    assert state.stat().st_mode & 0o777 == 0o600

    again = open_store("embedded", state_file=state)
    try:
        assert again.list(ns)[0] == {ns + "identity/256": b"app=a"}
        assert again.status().revision >= rev + 1  # revisions never go back
        assert again.put(ns + "x", b"y") > rev + 1
    finally:
        again.close()
    state.write_text("{not json")
    with pytest.raises(KvStoreError, match=str(state)):
        open_store("embedded", state_file=state)


# -- etcd restarts, lease loss, compaction --------------------------------------------------------


def test_etcd_restart_loses_nothing(tmp_path: Path, ns: str) -> None:
    """Stop etcd under a connected store, start it again with the same data dir and ports: the data
    is there, the watch resumes without losing a put, status goes False then True, on_reconnect
    fires and the leased keys it re-puts exist; a lost lease is re-granted the same way."""
    name = etcd_name()
    proc = start_etcd(name, tmp_path / "data")
    client_port = int(proc.client_url.rsplit(":", 1)[1])
    peer_port = int(proc.peer_url.rsplit(":", 1)[1])
    store = None
    try:
        store = open_store(proc.store_url, lease_ttl=TTL)
        leased = {ns + "node/n1": b"heartbeat", ns + "ipcache/10.0.0.1": b"256"}
        reconnects: list[float] = []

        def reput() -> None:  # what the agent does: put its leased keys again
            for k, v in leased.items():
                store.put(k, v, lease=True)
            reconnects.append(time.monotonic())

        store.on_reconnect(reput)
        for k, v in leased.items():
            store.put(k, v, lease=True)
        store.put(ns + "identity/256", b"app=a")
        rec = Recorder()
        store.watch(ns + "svc/", rec)
        store.put(ns + "svc/before", b"0")
        rec.wait(1)

        stop_etcd(proc)
        wait_for(lambda: not store.status().connected, TTL, "status() to turn False")
        st = store.status()
        assert st.error and st.backend == "etcd"
        t0 = time.monotonic()
        with pytest.raises(KvStoreError, match=rf"etcd://127\.0\.0\.1:{client_port} unreachable"):
            store.put(ns + "while-down", b"x")
        assert time.monotonic() - t0 < 4.0

        proc = start_etcd(name, tmp_path / "data", client_port, peer_port)
        writer = open_store(proc.store_url)
        try:
            # Written as soon as etcd is back, most likely before the watch reconnected.
            for i in range(10):
                writer.put(f"{ns}svc/after{i}", str(i).encode())
            assert writer.get(ns + "identity/256") == b"app=a"  # data kept
        finally:
            writer.close()
        wait_for(lambda: store.status().connected, 10, "status() to turn True again")
        wait_for(lambda: reconnects, 5, "on_reconnect after the restart")
        events = rec.wait(11)
        assert [e.key for e in events] == [ns + "svc/before"] + [f"{ns}svc/after{i}" for i in range(10)]
        for k, v in leased.items():
            assert store.get(k) == v

        # The lease disappears behind our back (as if it expired while we were away): the keeper
        # notices within TTL/3, grants a new one and on_reconnect puts the keys back.
        old_lease = store.status().lease_id
        n = len(reconnects)
        run_aetcd(proc, lambda c: c.revoke_lease(old_lease))
        wait_for(lambda: len(reconnects) > n, TTL + 2, "on_reconnect after the lease was lost")
        assert store.status().lease_id not in (0, old_lease)
        for k, v in leased.items():
            assert store.get(k) == v
    finally:
        if store is not None:
            store.close()
        stop_etcd(proc)
    assert not etcd_alive(proc)


class TcpProxy:
    """A loopback TCP forwarder the test can cut, to partition a store from a running etcd."""

    def __init__(self, target_port: int) -> None:
        self.target = target_port
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.cut_off = threading.Event()
        self.lock = threading.Lock()
        self.conns: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            if self.cut_off.is_set():
                conn.close()
                continue
            try:
                upstream = socket.create_connection(("127.0.0.1", self.target), timeout=2)
            except OSError:
                conn.close()
                continue
            upstream.settimeout(None)
            with self.lock:
                self.conns += [conn, upstream]
            for src, dst in ((conn, upstream), (upstream, conn)):
                threading.Thread(target=self._pump, args=(src, dst), daemon=True).start()

    @staticmethod
    def _pump(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        for s in (src, dst):
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)

    def cut(self) -> None:
        self.cut_off.set()
        with self.lock:
            conns, self.conns = self.conns, []
        for s in conns:
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
            s.close()

    def restore(self) -> None:
        self.cut_off.clear()

    def close(self) -> None:
        self.cut()
        self.listener.close()


def test_watch_resyncs_after_compaction(etcd: EtcdProcess, ns: str) -> None:
    """Cut a watching store off, change and compact etcd meanwhile: on reconnect the watch can no
    longer replay, so it delivers the current contents plus deletes for the keys that went away."""
    proxy = TcpProxy(int(etcd.client_url.rsplit(":", 1)[1]))
    direct = open_store(etcd.store_url)
    store = None
    try:
        direct.put(ns + "a", b"1")
        _, rev = direct.list(ns)
        store = open_store(f"etcd://127.0.0.1:{proxy.port}", lease_ttl=TTL)
        rec = Recorder()
        store.watch(ns, rec, start_revision=rev + 1)  # knows "a" from a list at rev
        direct.put(ns + "b", b"2")
        direct.put(ns + "c", b"3")
        rec.wait(2)

        proxy.cut()
        wait_for(lambda: not store.status().connected, TTL + 1, "the store to notice the cut")
        direct.delete(ns + "a")  # known from the seed: must come back as a delete
        direct.delete(ns + "b")  # seen as a put: must come back as a delete
        direct.put(ns + "c", b"3-new")
        direct.put(ns + "d", b"4")
        current = direct.put(ns + "e", b"5")
        run_aetcd(etcd, lambda c: c.compact(current, physical=True))
        proxy.restore()

        wait_for(lambda: len(rec.batches) >= 3, 10, "the resync batch")
        resync = rec.batches[2]
        assert {(e.kind, e.key, e.value) for e in resync} == {
            ("delete", ns + "a", None),
            ("delete", ns + "b", None),
            ("put", ns + "c", b"3-new"),
            ("put", ns + "d", b"4"),
            ("put", ns + "e", b"5"),
        }
        assert [e.kind for e in resync[:2]] == ["delete", "delete"]
        assert {e.revision for e in resync} == {current}
        n = len(rec.events)
        r = direct.put(ns + "f", b"6")  # and then the watch goes on normally
        assert rec.wait(n + 1)[-1] == KvEvent("put", ns + "f", b"6", r)
        wait_for(lambda: store.status().connected, 2, "status() to turn True again")
    finally:
        if store is not None:
            store.close()
        direct.close()
        proxy.close()


# -- errors a user sees ---------------------------------------------------------------------------


def test_unreachable_etcd_is_one_clear_error() -> None:
    t0 = time.monotonic()
    with pytest.raises(KvStoreError, match=r"^kvstore etcd://127\.0\.0\.1:1 unreachable: \S") as err:
        open_store("etcd://127.0.0.1:1", connect_timeout=1.0)
    assert time.monotonic() - t0 < 3.0
    assert "\n" not in str(err.value)


@pytest.mark.parametrize(
    "url",
    ["redis://127.0.0.1:6379", "etcd://", "etcd://127.0.0.1", "etcd://h:99999", "127.0.0.1:2379",
     "etcd://u:p@h:1", "etcd://h:1/path", "etcd://[zz::1]:1", "embeded"],
)  # fmt: skip
def test_bad_url_is_rejected(url: str) -> None:
    with pytest.raises(KvStoreError, match=r"kvstore URL .* is invalid") as err:
        open_store(url)
    assert repr(url) in str(err.value)


def test_good_urls() -> None:
    assert parse_url("").endpoint == parse_url("embedded").endpoint == "embedded"
    assert parse_url("etcd://127.0.0.1:23790").endpoint == "etcd://127.0.0.1:23790"
    assert parse_url("etcd://[::1]:2379").grpc_target == "[::1]:2379"
    assert parse_url("etcd://localhost:2379/").host == "localhost"


def test_etcd_process_management(etcd: EtcdProcess, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert etcd_alive(etcd) and etcd_alive(etcd.to_dict())
    assert etcd.data_dir.stat().st_mode & 0o777 == 0o700
    ports = {int(u.rsplit(":", 1)[1]) for u in (etcd.client_url, etcd.peer_url)}
    assert not ports & {2379, 2380}
    # A recorded pid whose start time does not match is someone else's process: left alone.
    stop_etcd({**etcd.to_dict(), "pid": os.getpid(), "start_time": 1})
    assert etcd_alive(etcd)
    # A port already taken is refused up front (its /health would answer for someone else).
    taken = int(etcd.client_url.rsplit(":", 1)[1])
    with pytest.raises(KvStoreError, match=rf"127\.0\.0\.1:{taken}: Address already in use"):
        start_etcd(etcd_name(), tmp_path / "clash", taken)
    # etcd exits while starting (a broken data dir): the error carries its log.
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "member").write_text("not a directory")
    with pytest.raises(
        KvStoreError, match=r"exited with status 1 while starting; last lines of .*\n.*member"
    ):
        start_etcd(etcd_name(), broken)
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(KvStoreError, match="etcd-server"):
        start_etcd(etcd_name(), tmp_path / "nobin")
