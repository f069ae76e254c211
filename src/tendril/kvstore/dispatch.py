"""The callback thread: every watch batch and reconnect notice of one store runs here, in order.

One thread per store, separate from the callers and from the etcd client's event loop, because a
callback may call the synchronous store API (re-put leased keys, read a prefix) and that must not
block the loop that serves the call.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable
from typing import Any

log = logging.getLogger(__name__)

_STOP = object()


class Dispatcher:
    """A FIFO of callables run by one daemon thread; a failing callback is logged, not fatal."""

    def __init__(self, name: str) -> None:
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def submit(self, fn: Callable[..., None], *args: Any) -> None:
        self._queue.put((fn, args))

    def in_dispatcher(self) -> bool:
        return threading.current_thread() is self._thread

    def stop(self, timeout: float = 5.0) -> None:
        """Run what is queued, then end the thread (without waiting if called from a callback)."""
        self._queue.put(_STOP)
        if not self.in_dispatcher():
            self._thread.join(timeout)

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is _STOP:
                return
            fn, args = item
            try:
                fn(*args)
            except Exception:
                log.exception("kvstore callback %r failed", fn)
