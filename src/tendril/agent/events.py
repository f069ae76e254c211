"""Ring buffer -> decoder -> subscribers: the agent's one-way event pipeline.

The reader wakes on the ring buffer's epoll readiness (plus a slow timer as a safety net), drains in
batches, decodes each batch once and hands the same Flow objects to every consumer.
"""

from __future__ import annotations

import asyncio
import collections
import logging
from collections.abc import Callable

from tendril.bpf import RingBufferReader, abi
from tendril.hubble.parser.decode import EventDecoder
from tendril.hubble.parser.flow import Flow

log = logging.getLogger(__name__)


class Subscription:
    def __init__(self, predicate: Callable[[Flow], bool], maxsize: int = 65536) -> None:
        self.queue: asyncio.Queue[Flow] = asyncio.Queue(maxsize=maxsize)
        self.predicate = predicate
        self.dropped = 0


class EventPump:
    def __init__(self, reader: RingBufferReader, decoder: EventDecoder, history: int = 16384) -> None:
        self.reader = reader
        self.decoder = decoder
        self.recent: collections.deque[Flow] = collections.deque(maxlen=history)
        self.subscribers: set[Subscription] = set()
        self.events_read = 0
        self._task: asyncio.Task[None] | None = None

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        loop.add_reader(self.reader.fileno(), self.drain)
        self._task = loop.create_task(self._tick())
        self.drain()  # events queued while no agent was running

    def stop(self, loop: asyncio.AbstractEventLoop) -> None:
        loop.remove_reader(self.reader.fileno())
        if self._task:
            self._task.cancel()

    async def _tick(self) -> None:
        while True:
            await asyncio.sleep(0.1)
            self.drain()

    def drain(self) -> int:
        total = 0
        while True:
            records = self.reader.drain(max_records=8192)
            if len(records) == 0:
                break
            total += len(records)
            self._publish(self.decoder.decode(records))
        self.events_read += total
        return total

    def _publish(self, flows: list[Flow]) -> None:
        self.recent.extend(flows)
        for sub in list(self.subscribers):
            for f in flows:
                if sub.predicate(f):
                    try:
                        sub.queue.put_nowait(f)
                    except asyncio.QueueFull:
                        sub.dropped += 1

    def subscribe(self, predicate: Callable[[Flow], bool]) -> Subscription:
        sub = Subscription(predicate)
        self.subscribers.add(sub)
        return sub

    def unsubscribe(self, sub: Subscription) -> None:
        self.subscribers.discard(sub)


def record_dtype():  # noqa: ANN201 - numpy dtype
    return abi.EVENT_DTYPE
