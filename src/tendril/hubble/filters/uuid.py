"""uuid: flow identifiers, compared as Hubble does (exact canonical strings).

Hubble compares the strings, so only the canonical lower-case hyphenated form can match; any other
spelling matches nothing rather than being an error. A row with an all-zero uuid has no uuid (""),
which only the empty string matches.
"""

from __future__ import annotations

import uuid as _uuid

import numpy as np

from tendril.hubble.api import flow_pb2
from tendril.hubble.filters.base import Mask, RowPredicate, falses, field_offset
from tendril.hubble.record import Tables

FIELDS = ("uuid",)

_U64 = np.dtype((">u8", (2,)))


def _words(value: str) -> tuple[int, int] | None:
    if value == "":
        return (0, 0)
    try:
        u = _uuid.UUID(value)
    except ValueError:
        return None
    if str(u) != value:
        return None
    return (u.int >> 64, u.int & ((1 << 64) - 1))


def build(ff: flow_pb2.FlowFilter, tables: Tables) -> list[RowPredicate]:
    if not ff.uuid:
        return []
    wanted = [w for w in (_words(v) for v in ff.uuid) if w is not None]
    off = field_offset("uuid")

    def pred(rows: np.ndarray) -> Mask:
        m = falses(rows)
        if not wanted:
            return m
        words = rows.getfield(_U64, off)
        hi, lo = words[:, 0], words[:, 1]
        for w_hi, w_lo in wanted:
            m |= (hi == np.uint64(w_hi)) & (lo == np.uint64(w_lo))
        return m

    return [pred]
