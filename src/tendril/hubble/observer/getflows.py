"""GetFlows request handling over the flow ring: selection (last/first/since/until), filters, follow.

Scans run over ring chunks with vectorised masks, newest-first for `--last N` and oldest-first for
`--first N`; only the selected rows are ever turned into protobuf messages.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

import numpy as np

from tendril.hubble import record as rec
from tendril.hubble.container import FlowRing

CHUNK = 65536  # forward scans
FIRST_CHUNK = 512  # backward scans start small (the newest rows usually answer `--last N`) and grow
Predicate = Callable[[np.ndarray], np.ndarray]


@dataclass
class Selection:
    number: int  # 0 = unlimited
    first: bool
    follow: bool
    since_ns: int | None
    until_ns: int | None


def _mask(rows: np.ndarray, pred: Predicate, sel: Selection, use_until: bool = True) -> np.ndarray:
    m = pred(rows)
    if sel.since_ns is not None:
        m &= rows["time_ns"] >= sel.since_ns
    if use_until and sel.until_ns is not None:
        m &= rows["time_ns"] <= sel.until_ns
    return m


def historical(ring: FlowRing, pred: Predicate, sel: Selection) -> tuple[np.ndarray, np.ndarray, int]:
    """The stored rows the request selects (oldest first), their sequence numbers, and the
    sequence to follow from."""
    end = ring.written
    start = ring.oldest
    if sel.follow and sel.number == 0 and sel.since_ns is None:
        return rec.empty(0), np.zeros(0, np.int64), end  # plain --follow: only new flows
    picked: list[tuple[np.ndarray, np.ndarray]] = []
    count = 0
    limit = sel.number or None
    if sel.first:
        pos = start
        while pos < end and (limit is None or count < limit):
            rows = ring.read(pos, min(pos + CHUNK, end))
            seqs = np.nonzero(_mask(rows, pred, sel))[0] + pos
            pos += CHUNK
            if limit is not None:
                seqs = seqs[: limit - count]
            picked.append((rows[seqs - (pos - CHUNK)], seqs))
            count += len(seqs)
    else:
        pos = end
        chunk = FIRST_CHUNK
        while pos > start and (limit is None or count < limit):
            lo = max(start, pos - chunk)
            rows = ring.read(lo, pos)
            pos = lo
            chunk = min(chunk * 4, 4 * CHUNK)
            idx = np.nonzero(_mask(rows, pred, sel))[0]
            if limit is not None:
                idx = idx[max(0, len(idx) - (limit - count)) :]
            picked.append((rows[idx], idx + lo))
            count += len(idx)
        picked.reverse()
    if not picked:
        return rec.empty(0), np.zeros(0, np.int64), end
    return np.concatenate([p[0] for p in picked]), np.concatenate([p[1] for p in picked]), end


async def follow(
    ring: FlowRing, pred: Predicate, sel: Selection, cursor: int
) -> AsyncIterator[tuple[np.ndarray, int, int, int]]:
    """Yield (new matching rows, rows lost because the reader was lapped, from_seq, to_seq)."""
    while True:
        await ring.wait(cursor, timeout=1.0)
        end = ring.written
        if end == cursor:
            yield rec.empty(0), 0, cursor, end  # heartbeat: lets the caller notice a cancelled stream
            continue
        lost = max(0, ring.oldest - cursor)
        rows = ring.read(cursor, end)
        start, cursor = cursor, end
        yield rows[_mask(rows, pred, sel, use_until=False)], lost, start, end
