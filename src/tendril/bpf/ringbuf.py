"""A BPF ring buffer consumer that mmaps the map itself and decodes batches with numpy.

Why not libbpf's ring_buffer__poll: on libbpf 1.1 it can spin forever under sustained load, and a
Python callback per record caps out around 2 M records/s. Reading the ring directly lets us decode
a whole contiguous batch of fixed-size records with one numpy view (tens of M records/s).

Kernel layout (kernel/bpf/ringbuf.c):
  offset 0, 1 page, RW:        consumer_pos (u64 at 0)
  offset page_size, RO:        producer page (producer_pos u64 at 0), then the data area of
                               max_entries bytes mapped twice back to back, so a record that wraps
                               around the end is still contiguous in our mapping.
  record: 8-byte header {u32 len (bit 31 BUSY, bit 30 DISCARD), u32 pg_off}, payload padded to 8.
Positions only grow; offset in the data area = pos & (max_entries - 1).
"""

from __future__ import annotations

import mmap
import select

import numpy as np

from tendril.bpf import libbpf as lb
from tendril.bpf.maps import Map

BUSY_BIT = 1 << 31
DISCARD_BIT = 1 << 30
HDR_SIZE = 8
PAGE_SIZE = mmap.PAGESIZE


def _round8(n: int) -> int:
    return (n + 7) & ~7


class RingBufferReader:
    """Drains fixed-size records (``record_dtype``) from a BPF_MAP_TYPE_RINGBUF map.

    Single consumer: two readers on one ring would race on consumer_pos. A new reader on the same
    (e.g. pinned) map continues where the previous one stopped, because the position lives in the
    kernel's consumer page. Records of another size are skipped and counted in ``skipped``.
    """

    def __init__(self, map: Map, record_dtype: np.dtype) -> None:  # noqa: A002
        if map.map_type != lb.BPF_MAP_TYPE_RINGBUF:
            raise ValueError(f"{map.name} is not a ring buffer map (type {map.map_type})")
        self.map = map
        self.record_dtype = np.dtype(record_dtype)
        self.size = map.max_entries
        self.mask = self.size - 1
        self.rec_size = _round8(self.record_dtype.itemsize + HDR_SIZE)
        self._slot_dtype = np.dtype(
            {
                "names": ["len", "pg_off", "rec"],
                "formats": [np.uint32, np.uint32, self.record_dtype],
                "offsets": [0, 4, HDR_SIZE],
                "itemsize": self.rec_size,
            }
        )
        self.skipped = 0  # records of an unexpected size that were stepped over
        self.discarded = 0  # records the producer discarded
        self._cons_mm = mmap.mmap(
            map.fd, PAGE_SIZE, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE, offset=0
        )
        self._prod_mm = mmap.mmap(
            map.fd, PAGE_SIZE + 2 * self.size, mmap.MAP_SHARED, mmap.PROT_READ, offset=PAGE_SIZE
        )
        self._cons = np.frombuffer(self._cons_mm, np.uint64, count=1)
        self._prod = np.frombuffer(self._prod_mm, np.uint64, count=1)
        self._data = np.frombuffer(self._prod_mm, np.uint8, offset=PAGE_SIZE)
        self._data_u32 = self._data.view(np.uint32)
        self._poll = select.poll()
        self._poll.register(map.fd, select.POLLIN)

    # ---- positions ----

    @property
    def consumer_pos(self) -> int:
        return int(self._cons[0])

    @property
    def producer_pos(self) -> int:
        return int(self._prod[0])

    def pending_bytes(self) -> int:
        """Bytes produced (committed or not) but not consumed yet."""
        return int(self._prod[0]) - int(self._cons[0])

    @property
    def capacity_records(self) -> int:
        """How many records of record_dtype fit in the ring."""
        return self.size // self.rec_size

    def fileno(self) -> int:
        """The map fd: readable (EPOLLIN) when data is available; use with loop.add_reader."""
        return self.map.fd

    def poll(self, timeout_ms: int | None = None) -> bool:
        """Block until data is available or the timeout passes; True if data is pending."""
        if self.pending_bytes() > 0:
            return True
        self._poll.poll(timeout_ms)
        return self.pending_bytes() > 0

    # ---- draining ----

    def _walk(self, limit: int | None, sink) -> int:
        """Hand contiguous batches of slots to ``sink(slots)``, advance consumer_pos; return count."""
        cons = int(self._cons[0])
        prod = int(self._prod[0])
        itemsize = self.record_dtype.itemsize
        got = 0
        while cons < prod and (limit is None or got < limit):
            n = (prod - cons) // self.rec_size
            if limit is not None:
                n = min(n, limit - got)
            off = cons & self.mask
            k = 0
            if n > 0:
                slots = np.frombuffer(self._data, self._slot_dtype, count=n, offset=off)
                lens = slots["len"]
                # BUSY makes the masked length differ too, so one comparison finds the first
                # record that is busy or of another size.
                bad = (lens & ~np.uint32(DISCARD_BIT)) != itemsize
                k = int(bad.argmax()) if bad.any() else n
                if k:
                    batch = slots[:k]
                    disc = (lens[:k] & DISCARD_BIT) != 0
                    if disc.any():
                        nd = int(disc.sum())
                        self.discarded += nd
                        batch = batch[~disc]
                    if len(batch):
                        sink(batch["rec"])
                        got += len(batch)
                    cons += k * self.rec_size
            if k == n:
                if k == 0 or (prod - cons) < self.rec_size:
                    # Not a whole fixed-size record left: look at the header directly.
                    if cons >= prod or not self._step_odd(cons):
                        break
                    cons = self._odd_next
                continue
            # Record at cons is busy or of another size.
            if not self._step_odd(cons):
                break
            cons = self._odd_next
        self._cons[0] = cons  # x86 TSO: a plain aligned store is a release store
        return got

    def _step_odd(self, cons: int) -> bool:
        """Skip one non-matching record at ``cons``; False if it is still being written."""
        hdr = int(self._data_u32[(cons & self.mask) >> 2])
        if hdr & BUSY_BIT:
            return False
        length = hdr & ~(BUSY_BIT | DISCARD_BIT)
        if not hdr & DISCARD_BIT and length == self.record_dtype.itemsize:
            # The producer committed it between the batch scan and this re-read: it is a normal
            # record, so hand it back to the batch path instead of skipping it.
            self._odd_next = cons
            return True
        if hdr & DISCARD_BIT:
            self.discarded += 1
        else:
            self.skipped += 1
        self._odd_next = cons + _round8(length + HDR_SIZE)
        return True

    def drain(self, max_records: int | None = None) -> np.ndarray:
        """Copy out every committed record (up to max_records) as one array of record_dtype."""
        parts: list[np.ndarray] = []

        def sink(recs: np.ndarray) -> None:
            parts.append(recs.copy())  # copy before consumer_pos moves and the producer reuses it

        self._walk(max_records, sink)
        if not parts:
            return np.empty(0, self.record_dtype)
        return parts[0] if len(parts) == 1 else np.concatenate(parts)

    def drain_into(self, out: np.ndarray) -> int:
        """Copy records into a preallocated array (no allocation); return how many were written."""
        pos = 0

        def sink(recs: np.ndarray) -> None:
            nonlocal pos
            out[pos : pos + len(recs)] = recs
            pos += len(recs)

        self._walk(len(out), sink)
        return pos

    # ---- lifecycle ----

    def close(self) -> None:
        """Unmap (the map fd belongs to the caller)."""
        if self._cons_mm is None:
            return
        if self.map.fd >= 0:
            self._poll.unregister(self.map.fd)
        del self._cons, self._prod, self._data, self._data_u32
        self._cons_mm.close()
        self._prod_mm.close()
        self._cons_mm = self._prod_mm = None

    def __enter__(self) -> RingBufferReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
