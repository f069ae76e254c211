"""A ring of flow rows with Hubble's semantics, stored as one numpy array.

Capacity is a power of two minus one, like Hubble's (`--hubble-buffer-capacity`). Every row ever
written has a sequence number; a reader remembers the next sequence it wants and learns, exactly,
how many rows it lost when the writer lapped it (Hubble's HUBBLE_RING_BUFFER lost events). Rows are
fixed-size records (about 130 bytes), so a million flows is a single allocation, not a million
Python objects.
"""

from __future__ import annotations

import asyncio

import numpy as np

from tendril.hubble import record as rec

DEFAULT_CAPACITY = 65535


class RingError(ValueError):
    pass


def validate_capacity(capacity: int) -> int:
    if capacity < 1 or (capacity + 1) & capacity:
        raise RingError(
            f"invalid hubble buffer capacity {capacity}: "
            "must be a power of two minus one (e.g. 4095, 65535, 1048575)"
        )
    return capacity


def _bytes_view(rows: np.ndarray) -> np.ndarray:
    rows = np.ascontiguousarray(rows, dtype=rec.FLOW_DTYPE)
    return rows.view(np.uint8).reshape(len(rows), rec.FLOW_DTYPE.itemsize)


class FlowRing:
    def __init__(self, capacity: int = DEFAULT_CAPACITY) -> None:
        self.capacity = validate_capacity(capacity)
        self._mask = capacity  # buffer length capacity + 1, a power of two
        self._buf = rec.empty(capacity + 1)
        # Copies go through a plain byte view: numpy copies packed structured rows field by field,
        # which is an order of magnitude slower than moving the same bytes as one block.
        self._raw = self._buf.view(np.uint8).reshape(capacity + 1, rec.FLOW_DTYPE.itemsize)
        self.written = 0  # rows ever appended: Hubble's seen_flows
        self._waiters: list[asyncio.Future[None]] = []

    # ---- writer --------------------------------------------------------------------------------
    def append(self, rows: np.ndarray) -> None:
        n = len(rows)
        if n == 0:
            return
        if n > self.capacity:  # only the newest fit; the rest count as written and lapped at once
            self.written += n - self.capacity
            rows = rows[n - self.capacity :]
            n = self.capacity
        start = self.written & self._mask
        first = min(n, len(self._buf) - start)
        raw = _bytes_view(rows)
        self._raw[start : start + first] = raw[:first]
        if first < n:
            self._raw[: n - first] = raw[first:]
        self.written += n
        waiters, self._waiters = self._waiters, []
        for w in waiters:
            if not w.done():
                w.set_result(None)

    # ---- readers -------------------------------------------------------------------------------
    @property
    def oldest(self) -> int:
        """Sequence number of the oldest row still readable."""
        return max(0, self.written - self.capacity)

    def __len__(self) -> int:
        return self.written - self.oldest

    def read(self, start: int, end: int) -> np.ndarray:
        """Copy of rows [start, end) (clipped to what is readable), in write order."""
        start = max(start, self.oldest)
        end = min(end, self.written)
        if end <= start:
            return rec.empty(0)
        s, e = start & self._mask, end & self._mask
        out = self._raw[s:e].copy() if s < e else np.concatenate((self._raw[s:], self._raw[:e]))
        return out.view(rec.FLOW_DTYPE).reshape(end - start)

    def view_all(self) -> np.ndarray:
        """Every readable row, oldest first (a copy)."""
        return self.read(self.oldest, self.written)

    async def wait(self, after: int, timeout: float | None = None) -> bool:
        """Wait until rows beyond sequence `after` exist; False on timeout."""
        if self.written > after:
            return True
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(fut)
        try:
            await asyncio.wait_for(fut, timeout)
        except TimeoutError:
            return False
        return True

    def nbytes(self) -> int:
        return self._buf.nbytes
