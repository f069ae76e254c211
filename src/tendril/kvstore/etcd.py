"""The etcd v3 backend: a synchronous, thread-safe client over one private asyncio loop.

Every etcd call runs as a coroutine on a loop owned by this store, in a daemon thread; the sync
API submits it with ``run_coroutine_threadsafe`` and waits a bounded time, so a call while etcd
is down raises ``KvStoreError`` after at most ``op_timeout`` instead of hanging.  The gRPC
stubs and messages come from ``aetcd.rpc``; the calls are made on the stubs directly because the
store needs per-call deadlines, one watch stream per watch with whole responses (aetcd's watcher
splits them into single events), and its own reconnect logic.

Session lease.  One lease per store (TTL ``lease_ttl``, at least etcd's 2 s), refreshed every
TTL/3 by the *keeper* task.  The keeper is also the health probe: a failed refresh marks the
store disconnected (any failed call or broken watch wakes it up at once), and while disconnected
it retries every 0.2-1 s.  When a refresh succeeds again, or etcd answers that the lease is gone
(it expired while we were away), a new lease is granted if needed and the ``on_reconnect``
callbacks run, so owners put their leased keys again.  A leased put that finds the lease gone
re-grants it the same way and retries once.

Watches.  Each watch has its own stream and task and remembers the next revision it needs:
last delivered event + 1 (progress notices are not used: etcd 3.4 may send one ahead of pending
events).  When the stream breaks (etcd restarted: "Stream removed", connection refused, ...)
the task re-creates it from that revision with a 0.2 s -> 2 s backoff, so nothing is lost or
repeated.  If etcd
compacted that revision meanwhile, the watch resyncs: it reads the prefix and delivers one batch
with a "delete" for every key it knew that is gone and a "put" for every current key (carrying
the revision of that read), then continues from there.  To know which keys it "knew", each watch
keeps the set of live keys under its prefix, seeded with the keys that existed just before its
start revision.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import math
import threading
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import grpc
from aetcd import rpc

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
from tendril.kvstore.url import StoreURL

log = logging.getLogger(__name__)

T = TypeVar("T")

MIN_LEASE_TTL = 2  # etcd refuses shorter leases (3/2 election timeouts with default timings)
WATCH_BACKOFF = (0.2, 2.0)  # first and largest pause between watch re-creations
PROBE_BACKOFF = (0.2, 1.0)  # same, for the keeper while disconnected

# Reconnect quickly after etcd comes back (gRPC's defaults back off up to 120 s), notice a
# silently dead peer on open streams (etcd's minimum ping interval is 5 s), allow big lists.
CHANNEL_OPTIONS = [
    ("grpc.initial_reconnect_backoff_ms", 200),
    ("grpc.min_reconnect_backoff_ms", 200),
    ("grpc.max_reconnect_backoff_ms", 2000),
    ("grpc.keepalive_time_ms", 10_000),
    ("grpc.keepalive_timeout_ms", 5_000),
    ("grpc.max_receive_message_length", 64 << 20),
]

# Codes that mean "etcd is not answering", as opposed to "etcd refused this request".
_UNREACHABLE = {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.CANCELLED}


def _prefix_range(prefix: str) -> tuple[bytes, bytes]:
    """etcd's [key, range_end) for every key starting with ``prefix`` ("" = every key)."""
    key = prefix.encode()
    if not key:
        return b"\0", b"\0"
    end = bytearray(key)
    for i in reversed(range(len(end))):
        if end[i] < 0xFF:
            end[i] += 1
            return key, bytes(end[: i + 1])
    return key, b"\0"  # prefix of only 0xff bytes: up to the end of the keyspace


def _reason(exc: BaseException) -> str:
    """One line for a log or an error message."""
    if isinstance(exc, grpc.aio.AioRpcError):
        details = (exc.details() or "").replace("\n", " ")
        return f"{exc.code().name}: {details}" if details else exc.code().name
    if isinstance(exc, TimeoutError):
        return "no answer in time"
    return str(exc) or type(exc).__name__


def _unreachable(exc: BaseException) -> bool:
    if isinstance(exc, grpc.aio.AioRpcError):
        return exc.code() in _UNREACHABLE
    return isinstance(exc, TimeoutError | ConnectionError)


def _lease_not_found(exc: BaseException) -> bool:
    return (
        isinstance(exc, grpc.aio.AioRpcError)
        and exc.code() == grpc.StatusCode.NOT_FOUND
        and "lease not found" in (exc.details() or "")
    )


class _StreamEnded(ConnectionError):
    pass


class _EtcdWatch(Watch):
    """A watch plus what its task needs to resume it: next revision and the live keys."""

    def __init__(self, prefix: str, callback: WatchCallback, on_cancel: Callable[[Watch], None]) -> None:
        super().__init__(prefix, callback, on_cancel)
        self.key, self.range_end = _prefix_range(prefix)
        self.next_revision: int | None = None
        self.live: set[str] = set()
        self.seeded = False
        self.task: asyncio.Task[None] | None = None
        self.ready: asyncio.Future[None] | None = None


class EtcdStore(KVStore):
    """A session with one etcd endpoint: connects at construction or raises ``KvStoreError``."""

    def __init__(
        self,
        url: StoreURL,
        *,
        lease_ttl: float = 10.0,
        connect_timeout: float = 5.0,
        op_timeout: float = 3.0,
    ) -> None:
        self.endpoint = url.endpoint
        self._url = url
        self._ttl = max(MIN_LEASE_TTL, math.ceil(lease_ttl))
        self._op_timeout = op_timeout
        self._state_lock = threading.Lock()
        self._connected = False
        self._error = "not connected yet"
        self._since = time.time()
        self._revision = 0
        self._lease_id = 0
        self._reconnect_callbacks: list[ReconnectCallback] = []
        self._watches: set[_EtcdWatch] = set()
        self._closed = False
        self._close_lock = threading.Lock()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name=f"kvstore-etcd-{url.port}", daemon=True
        )
        self._thread.start()
        self._dispatcher = Dispatcher(f"kvstore-callbacks-{url.port}")
        self._keeper: asyncio.Task[None] | None = None
        self._kick: asyncio.Event | None = None  # set by _open, on the loop
        try:
            self._submit(self._open(connect_timeout), connect_timeout + op_timeout + 1.0)
        except BaseException:
            self._stop_threads()
            raise

    # -- plumbing ----------------------------------------------------------------------------

    def _submit(self, coro: Awaitable[T], timeout: float) -> T:
        """Run ``coro`` on the store's loop and wait at most ``timeout``."""
        if threading.current_thread() is self._thread:
            raise RuntimeError("kvstore: the synchronous API was called from the store's own loop")
        try:
            fut = asyncio.run_coroutine_threadsafe(coro, self._loop)  # type: ignore[arg-type]
        except RuntimeError:  # the loop was closed under us by close()
            coro.close()  # type: ignore[attr-defined]
            raise KvStoreError(f"kvstore {self.endpoint} is closed") from None
        try:
            return fut.result(timeout)
        except concurrent.futures.TimeoutError:
            if fut.done():  # the coroutine's own TimeoutError: the caller maps it
                raise
            fut.cancel()
            raise KvStoreError(
                f"kvstore {self.endpoint} unreachable: no answer within {timeout:.1f} s"
            ) from None

    def _call(self, what: str, op: Callable[[], Awaitable[T]]) -> T:
        """One API call: bounded, errors turned into one-line ``KvStoreError``s naming the endpoint."""
        if self._closed:
            raise KvStoreError(f"kvstore {self.endpoint} is closed")

        async def bounded() -> T:
            async with asyncio.timeout(self._op_timeout):
                return await op()

        try:
            return self._submit(bounded(), self._op_timeout + 1.0)
        except KvStoreError:
            self._kick_keeper()
            raise
        except (grpc.aio.AioRpcError, TimeoutError, ConnectionError) as exc:
            if _unreachable(exc):
                self._kick_keeper()
                reason = (
                    f"no answer within {self._op_timeout:g} s"
                    if isinstance(exc, TimeoutError)
                    else _reason(exc)
                )
                raise KvStoreError(f"kvstore {self.endpoint} unreachable: {reason}") from None
            raise KvStoreError(f"kvstore {self.endpoint}: {what} failed: {_reason(exc)}") from None

    def _kick_keeper(self) -> None:
        """Ask the keeper to probe now (from any thread)."""
        with contextlib.suppress(RuntimeError):  # loop already closed
            self._loop.call_soon_threadsafe(self._kick_now)

    def _kick_now(self) -> None:
        if self._kick is not None:
            self._kick.set()

    async def _open(self, connect_timeout: float) -> None:
        """Create the channel and the session lease; retry until ``connect_timeout`` passes."""
        self._kick = asyncio.Event()
        self._lease_lock = asyncio.Lock()
        self._channel = grpc.aio.insecure_channel(self._url.grpc_target, options=CHANNEL_OPTIONS)
        self._kv = rpc.KVStub(self._channel)
        self._lease = rpc.LeaseStub(self._channel)
        self._watch_stub = rpc.WatchStub(self._channel)
        deadline = time.monotonic() + connect_timeout
        while True:
            remaining = deadline - time.monotonic()
            try:
                self._lease_id = await self._grant(max(0.05, min(remaining, self._op_timeout)))
                break
            except grpc.aio.AioRpcError as exc:
                if not _unreachable(exc):
                    await self._channel.close()
                    raise KvStoreError(
                        f"kvstore {self.endpoint}: cannot open a session: {_reason(exc)}"
                    ) from None
                if time.monotonic() + 0.2 >= deadline:
                    await self._channel.close()
                    raise KvStoreError(f"kvstore {self.endpoint} unreachable: {_reason(exc)}") from None
            await asyncio.sleep(0.2)
        self._set_connected(True)
        self._keeper = asyncio.get_running_loop().create_task(self._keep_lease())

    def _note(self, header: Any) -> None:
        """Track the highest store revision seen (for status()); an answer while marked
        disconnected means etcd is back: let the keeper confirm it (and fire on_reconnect) now."""
        if header.revision > self._revision:
            self._revision = header.revision
        if not self._connected:
            self._kick_now()

    def _set_connected(self, connected: bool, error: str = "") -> bool:
        """Record the connection state; return the previous one."""
        with self._state_lock:
            was = self._connected
            self._error = "" if connected else error
            if was != connected:
                self._connected = connected
                self._since = time.time()
        if was and not connected:
            log.warning("kvstore %s unreachable: %s", self.endpoint, error)
        elif connected and not was:
            log.info("kvstore %s connected", self.endpoint)
        return was

    # -- session lease -----------------------------------------------------------------------

    async def _grant(self, timeout: float | None = None) -> int:
        resp = await self._lease.LeaseGrant(
            rpc.LeaseGrantRequest(TTL=self._ttl), timeout=timeout or self._op_timeout
        )
        if resp.error:
            raise KvStoreError(f"kvstore {self.endpoint}: lease grant failed: {resp.error}")
        self._note(resp.header)
        return resp.ID

    async def _regrant(self, lost_id: int) -> None:
        """Replace the lease ``lost_id`` (unless someone already did) and tell the owners."""
        async with self._lease_lock:
            if self._lease_id != lost_id:
                return
            self._lease_id = await self._grant()
            log.warning(
                "kvstore %s: session lease %x was gone, granted %x", self.endpoint, lost_id, self._lease_id
            )
        self._fire_reconnect()

    async def _refresh(self, lease_id: int) -> int:
        """One keepalive round trip; the remaining TTL (0: etcd no longer knows the lease)."""
        call = self._lease.LeaseKeepAlive(timeout=min(self._op_timeout, self._ttl / 3))
        try:
            await call.write(rpc.LeaseKeepAliveRequest(ID=lease_id))
            resp = await call.read()
        finally:
            call.cancel()
        if resp is grpc.aio.EOF:
            raise _StreamEnded("lease keepalive stream closed")
        self._note(resp.header)
        return resp.TTL

    async def _keep_lease(self) -> None:
        """The keeper: refresh the lease every TTL/3 and be the store's health probe."""
        assert self._kick is not None
        backoff = PROBE_BACKOFF[0]
        while True:
            interval = self._ttl / 3 if self._connected else backoff
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._kick.wait(), interval)
            self._kick.clear()
            lease_id = self._lease_id
            try:
                if await self._refresh(lease_id) <= 0:
                    self._set_connected(True)
                    await self._regrant(lease_id)  # fires on_reconnect
                elif not self._set_connected(True):
                    self._fire_reconnect()
                self._kick.clear()  # kicks that arrived during the probe are answered by it
                backoff = PROBE_BACKOFF[0]
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self._set_connected(False, _reason(exc))
                backoff = min(backoff * 2, PROBE_BACKOFF[1])

    def _fire_reconnect(self) -> None:
        with self._state_lock:
            callbacks = list(self._reconnect_callbacks)
        for cb in callbacks:
            self._dispatcher.submit(cb)

    async def _with_lease(self, lease: bool, op: Callable[[int], Awaitable[T]]) -> T:
        """Run ``op(lease_id)``; if etcd says the lease is gone, re-grant it and retry once."""
        if not lease:
            return await op(0)
        lease_id = self._lease_id
        try:
            return await op(lease_id)
        except grpc.aio.AioRpcError as exc:
            if not _lease_not_found(exc):
                raise
        await self._regrant(lease_id)
        return await op(self._lease_id)

    # -- key-value API -----------------------------------------------------------------------

    def get(self, key: str) -> bytes | None:
        async def op() -> bytes | None:
            resp = await self._kv.Range(rpc.RangeRequest(key=key.encode()), timeout=self._op_timeout)
            self._note(resp.header)
            return resp.kvs[0].value if resp.kvs else None

        return self._call(f"get {key!r}", op)

    def list(self, prefix: str) -> tuple[dict[str, bytes], int]:
        start, end = _prefix_range(prefix)

        async def op() -> tuple[dict[str, bytes], int]:
            resp = await self._kv.Range(
                rpc.RangeRequest(key=start, range_end=end, sort_order=rpc.RangeRequest.ASCEND),
                timeout=self._op_timeout,
            )
            self._note(resp.header)
            return {kv.key.decode(): kv.value for kv in resp.kvs}, resp.header.revision

        return self._call(f"list {prefix!r}", op)

    def put(self, key: str, value: bytes, *, lease: bool = False) -> int:
        check_key_value(self.endpoint, key, value)

        async def op(lease_id: int) -> int:
            resp = await self._kv.Put(
                rpc.PutRequest(key=key.encode(), value=bytes(value), lease=lease_id),
                timeout=self._op_timeout,
            )
            self._note(resp.header)
            return resp.header.revision

        return self._call(f"put {key!r}", lambda: self._with_lease(lease, op))

    def create(self, key: str, value: bytes, *, lease: bool = False) -> bool:
        return self.create_all({key: value}, lease=lease)

    def create_all(self, items: dict[str, bytes], *, lease: bool = False) -> bool:
        """One transaction: "version == 0" for every key, then put them all.  etcd caps a
        transaction at 128 operations by default (``--max-txn-ops``)."""
        for key, value in items.items():
            check_key_value(self.endpoint, key, value)
        if not items:
            return True
        encoded = [(k.encode(), bytes(v)) for k, v in items.items()]

        async def op(lease_id: int) -> bool:
            compare = [
                rpc.Compare(key=k, target=rpc.Compare.VERSION, result=rpc.Compare.EQUAL, version=0)
                for k, _ in encoded
            ]
            success = [
                rpc.RequestOp(request_put=rpc.PutRequest(key=k, value=v, lease=lease_id)) for k, v in encoded
            ]
            resp = await self._kv.Txn(
                rpc.TxnRequest(compare=compare, success=success), timeout=self._op_timeout
            )
            self._note(resp.header)
            return resp.succeeded

        what = f"create {next(iter(items))!r}" + (f" (+{len(items) - 1} keys)" if len(items) > 1 else "")
        return self._call(what, lambda: self._with_lease(lease, op))

    def delete(self, key: str) -> bool:
        async def op() -> bool:
            resp = await self._kv.DeleteRange(
                rpc.DeleteRangeRequest(key=key.encode()), timeout=self._op_timeout
            )
            self._note(resp.header)
            return resp.deleted > 0

        return self._call(f"delete {key!r}", op)

    def delete_prefix(self, prefix: str) -> int:
        start, end = _prefix_range(prefix)

        async def op() -> int:
            resp = await self._kv.DeleteRange(
                rpc.DeleteRangeRequest(key=start, range_end=end), timeout=self._op_timeout
            )
            self._note(resp.header)
            return resp.deleted

        return self._call(f"delete prefix {prefix!r}", op)

    # -- watches -----------------------------------------------------------------------------

    def watch(self, prefix: str, callback: WatchCallback, start_revision: int | None = None) -> Watch:
        """Returns once etcd confirmed the watch (so changes after this call are seen)."""
        w = _EtcdWatch(prefix, callback, self._cancel_watch)
        if start_revision is not None:
            w.next_revision = max(1, start_revision)

        async def op() -> None:
            loop = asyncio.get_running_loop()
            w.ready = loop.create_future()
            w.task = loop.create_task(self._run_watch(w))
            self._watches.add(w)
            try:
                await asyncio.shield(w.ready)
            except BaseException:
                self._watches.discard(w)
                w.task.cancel()
                raise

        self._call(f"watch {prefix!r}", op)
        return w

    def _cancel_watch(self, w: Watch) -> None:
        def cancel() -> None:
            assert isinstance(w, _EtcdWatch)
            self._watches.discard(w)
            if w.task is not None:
                w.task.cancel()

        with contextlib.suppress(RuntimeError):  # loop already closed: nothing runs anyway
            self._loop.call_soon_threadsafe(cancel)

    async def _run_watch(self, w: _EtcdWatch) -> None:
        """Keep ``w`` alive across broken streams; see the module docstring."""
        assert w.ready is not None
        backoff = WATCH_BACKOFF[0]
        while True:
            call = self._watch_stub.Watch()
            try:
                await call.write(
                    rpc.WatchRequest(
                        create_request=rpc.WatchCreateRequest(
                            key=w.key,
                            range_end=w.range_end,
                            start_revision=w.next_revision or 0,
                        )
                    )
                )
                resp = await asyncio.wait_for(call.read(), self._op_timeout)
                if resp is grpc.aio.EOF:
                    raise _StreamEnded("watch stream closed by etcd")
                if resp.compact_revision or resp.canceled:
                    await self._after_cancel(w, resp)
                    continue
                if not resp.created:
                    raise _StreamEnded("etcd answered a watch request without creating it")
                self._note(resp.header)
                if not w.seeded:
                    if w.next_revision is None:
                        w.next_revision = resp.header.revision + 1
                    await self._seed(w, w.next_revision - 1)
                if not w.ready.done():
                    w.ready.set_result(None)
                backoff = WATCH_BACKOFF[0]
                while True:
                    resp = await call.read()
                    if resp is grpc.aio.EOF:
                        raise _StreamEnded("watch stream closed by etcd")
                    if resp.compact_revision or resp.canceled:
                        await self._after_cancel(w, resp)
                        break
                    self._note(resp.header)
                    if resp.events:
                        self._deliver(w, resp.events)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if not w.ready.done():  # the first attempt: let watch() report it
                    w.ready.set_exception(exc)
                    return
                log.info(
                    "kvstore %s: watch %r interrupted (%s), resuming", self.endpoint, w.prefix, _reason(exc)
                )
                self._kick_now()
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, WATCH_BACKOFF[1])
            finally:
                call.cancel()

    async def _after_cancel(self, w: _EtcdWatch, resp: Any) -> None:
        """etcd ended the watch: resync if the revision was compacted, otherwise fail."""
        if not resp.compact_revision:
            raise _StreamEnded(f"etcd cancelled the watch: {resp.cancel_reason or 'no reason given'}")
        log.warning(
            "kvstore %s: watch %r needs revision %s, compacted up to %s: resyncing",
            self.endpoint,
            w.prefix,
            w.next_revision,
            resp.compact_revision,
        )
        await self._resync(w)

    def _deliver(self, w: _EtcdWatch, events: Any) -> None:
        batch = []
        for ev in events:
            key = ev.kv.key.decode()
            if ev.type == rpc.Event.DELETE:
                w.live.discard(key)
                batch.append(KvEvent("delete", key, None, ev.kv.mod_revision))
            else:
                w.live.add(key)
                batch.append(KvEvent("put", key, ev.kv.value, ev.kv.mod_revision))
        w.next_revision = batch[-1].revision + 1
        self._dispatcher.submit(w.deliver, batch)

    async def _seed(self, w: _EtcdWatch, revision: int) -> None:
        """The keys that existed at ``revision`` (what a caller who listed there knows about)."""
        if revision > 0:
            try:
                resp = await self._kv.Range(
                    rpc.RangeRequest(key=w.key, range_end=w.range_end, keys_only=True, revision=revision),
                    timeout=self._op_timeout,
                )
            except grpc.aio.AioRpcError as exc:
                if exc.code() != grpc.StatusCode.OUT_OF_RANGE:  # compacted or future: use the present
                    raise
                resp = await self._kv.Range(
                    rpc.RangeRequest(key=w.key, range_end=w.range_end, keys_only=True),
                    timeout=self._op_timeout,
                )
            w.live = {kv.key.decode() for kv in resp.kvs}
        w.seeded = True

    async def _resync(self, w: _EtcdWatch) -> None:
        resp = await self._kv.Range(
            rpc.RangeRequest(key=w.key, range_end=w.range_end, sort_order=rpc.RangeRequest.ASCEND),
            timeout=self._op_timeout,
        )
        self._note(resp.header)
        revision = resp.header.revision
        items = {kv.key.decode(): kv.value for kv in resp.kvs}
        batch = [KvEvent("delete", k, None, revision) for k in sorted(w.live - items.keys())]
        batch += [KvEvent("put", k, v, revision) for k, v in items.items()]
        w.live = set(items)
        w.seeded = True
        w.next_revision = revision + 1
        self._dispatcher.submit(w.deliver, batch)

    # -- the rest of the interface -------------------------------------------------------------

    def on_reconnect(self, callback: ReconnectCallback) -> None:
        with self._state_lock:
            self._reconnect_callbacks.append(callback)

    def status(self) -> KvStatus:
        with self._state_lock:
            return KvStatus(
                backend="etcd",
                endpoint=self.endpoint,
                connected=self._connected and not self._closed,
                error=self._error,
                revision=self._revision,
                lease_id=self._lease_id,
                since=self._since,
            )

    def close(self, revoke_lease: bool = True) -> None:
        """Stop the keeper and the watches, revoke the lease (unless told not to: then the leased
        keys live on until the TTL runs out, like a crashed node's) and end the threads."""
        with self._close_lock:
            if self._closed:
                return
            self._closed = True
        try:
            self._submit(self._shutdown(revoke_lease), self._op_timeout + 2.0)
        except Exception as exc:
            log.warning("kvstore %s: close: %s", self.endpoint, _reason(exc))
        with self._state_lock:
            self._connected, self._error, self._since = False, "closed", time.time()
        self._stop_threads()

    async def _shutdown(self, revoke_lease: bool) -> None:
        tasks = [w.task for w in self._watches if w.task is not None]
        if self._keeper is not None:
            tasks.append(self._keeper)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._watches.clear()
        if revoke_lease and self._lease_id:
            try:
                await self._lease.LeaseRevoke(
                    rpc.LeaseRevokeRequest(ID=self._lease_id), timeout=min(self._op_timeout, 1.0)
                )
            except grpc.aio.AioRpcError as exc:
                log.info(
                    "kvstore %s: lease not revoked (%s); it expires by itself", self.endpoint, _reason(exc)
                )
        await self._channel.close()

    def _stop_threads(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5.0)
        if not self._thread.is_alive():
            self._loop.close()
        self._dispatcher.stop()
