"""Ring buffer -> parser -> flow store (+ metrics, exporter): the agent's one-way event pipeline.

The reader wakes on the BPF ring buffer's epoll readiness (plus a slow timer as a safety net),
drains in batches, parses each batch once into flow rows and appends them to the store; every
consumer (gRPC observers, monitor streams, metrics, exporter) reads those same rows.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

import numpy as np

from tendril.bpf import RingBufferReader
from tendril.hubble.container import FlowRing
from tendril.hubble.parser.events import Resolver, parse_events

log = logging.getLogger(__name__)

BatchSink = Callable[[np.ndarray], None]


def wall_offset_ns() -> int:
    """bpf_ktime_get_ns() is CLOCK_MONOTONIC; this offset turns it into wall-clock ns."""
    return time.time_ns() - time.monotonic_ns()


class RingPump:
    """Drains one BPF ring buffer on the agent's loop and hands each batch to ``handle``.

    Wake-ups are coalesced: handling has a fixed cost per batch (~0.2 ms to parse flows), so at high
    event rates draining on every ring readiness would spend a core on tiny batches. After a wake-up
    the reader sleeps ``coalesce_s``, then drains everything that arrived meanwhile in one batch; a
    slow timer is the safety net for a missed wake-up.
    """

    coalesce_s = 0.005

    def __init__(self, reader: RingBufferReader, batch: int = 16384) -> None:
        self.reader = reader
        self.batch = batch
        self.events_read = 0
        self.parse_errors = 0
        self.drains = 0  # drains that found records
        self._task: asyncio.Task[None] | None = None

    def handle(self, records: np.ndarray) -> None:
        raise NotImplementedError

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        loop.add_reader(self.reader.fileno(), self._readable)
        self._task = loop.create_task(self._tick())
        self.drain()  # events queued while no agent was running

    def stop(self, loop: asyncio.AbstractEventLoop) -> None:
        loop.remove_reader(self.reader.fileno())
        if self._task:
            self._task.cancel()

    def _readable(self) -> None:
        self._loop.remove_reader(self.reader.fileno())
        self._loop.call_later(self.coalesce_s, self._drain_and_rearm)

    def _drain_and_rearm(self) -> None:
        try:
            self.drain()
        finally:
            self._loop.add_reader(self.reader.fileno(), self._readable)

    async def _tick(self) -> None:
        while True:
            await asyncio.sleep(0.1)
            self.drain()

    def drain(self) -> int:
        total = 0
        while True:
            records = self.reader.drain(max_records=self.batch)
            if len(records) == 0:
                break
            total += len(records)
            self.drains += 1
            try:
                self.handle(records)
            except Exception:  # a parser bug must cost these events, not the whole pipeline
                log.exception("handling %d records failed; they are counted as lost", len(records))
                self.parse_errors += len(records)
            if len(records) < self.batch:
                break  # the ring was drained; what trickles in meanwhile waits for the next wake-up
        self.events_read += total
        return total


class EventPump(RingPump):
    """Flow events: parsed once into rows, appended to the store, handed to every consumer."""

    def __init__(
        self, reader: RingBufferReader, ring: FlowRing, node_id: int, resolver: Resolver, batch: int = 16384
    ) -> None:
        super().__init__(reader, batch)
        self.ring = ring
        self.node_id = node_id
        self.resolver = resolver
        self.sinks: list[BatchSink] = []

    def handle(self, records: np.ndarray) -> None:
        self.publish(parse_events(records, self.node_id, self.resolver, wall_offset_ns()))

    def publish(self, rows: np.ndarray) -> None:
        """Rows into the store and to every consumer (datapath events, and the L7 proxy's flows)."""
        self.ring.append(rows)
        for sink in self.sinks:
            try:
                sink(rows)
            except Exception:  # a consumer's bug must not stop the pipeline
                log.exception("flow sink %r failed", sink)
