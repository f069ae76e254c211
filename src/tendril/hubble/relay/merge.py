"""Putting several nodes' GetFlows responses into one time order.

Historical answers are complete per node (each already oldest-first), so a k-way merge orders
them exactly. Follow streams never end, so they go through Hubble Relay's sort buffer: hold up to
`max_len` responses ordered by time and release the oldest when it overflows, or everything once
the oldest arrival has waited `drain_after` seconds. That bounds both memory and latency while
absorbing the small skew between nodes.
"""

from __future__ import annotations

import heapq
import itertools
import time

from tendril.hubble.api import observer_pb2
from tendril.hubble.observer.service import _ns

Response = observer_pb2.GetFlowsResponse


def response_ns(resp: Response) -> int:
    return _ns(resp.time)


class SortBuffer:
    def __init__(self, max_len: int = 100, drain_after: float = 1.0) -> None:
        self.max_len = max_len
        self.drain_after = drain_after
        self._heap: list[tuple[int, int, Response]] = []
        self._seq = itertools.count()  # ties keep arrival order, and Response is never compared
        self._first_arrival: float | None = None

    def __len__(self) -> int:
        return len(self._heap)

    def push(self, resp: Response) -> list[Response]:
        """Add one response; returns the responses that overflowed the buffer, oldest first."""
        heapq.heappush(self._heap, (response_ns(resp), next(self._seq), resp))
        if self._first_arrival is None:
            self._first_arrival = time.monotonic()
        out = []
        while len(self._heap) > self.max_len:
            out.append(heapq.heappop(self._heap)[2])
        return out

    def timeout(self) -> float | None:
        """Seconds until the buffer must be drained; None when it is empty (nothing to wait for)."""
        if self._first_arrival is None:
            return None
        return max(0.0, self._first_arrival + self.drain_after - time.monotonic())

    def drain(self) -> list[Response]:
        out = [heapq.heappop(self._heap)[2] for _ in range(len(self._heap))]
        self._first_arrival = None
        return out
