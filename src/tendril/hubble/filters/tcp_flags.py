"""tcp_flags: TCP flows carrying every flag of at least one of the given flag sets.

A filter `{SYN}` matches SYN and SYN/ACK; `{SYN, ACK}` only SYN/ACK. The stored tcp_flags column
holds the header's flag byte (FIN 0x01 ... CWR 0x80); NS is not recorded, so a set that requires
NS matches nothing.
"""

from __future__ import annotations

import numpy as np

from tendril.hubble.api import flow_pb2
from tendril.hubble.filters.base import Mask, RowPredicate, falses
from tendril.hubble.record import Tables

FIELDS = ("tcp_flags",)

IPPROTO_TCP = 6
FLAG_BITS = {
    "FIN": 0x01,
    "SYN": 0x02,
    "RST": 0x04,
    "PSH": 0x08,
    "ACK": 0x10,
    "URG": 0x20,
    "ECE": 0x40,
    "CWR": 0x80,
}


def build(ff: flow_pb2.FlowFilter, tables: Tables) -> list[RowPredicate]:
    if not ff.tcp_flags:
        return []
    required: list[int] = []
    for flags in ff.tcp_flags:
        if flags.NS:
            continue  # never satisfiable by a stored row
        required.append(sum(bit for name, bit in FLAG_BITS.items() if getattr(flags, name)))

    def pred(rows: np.ndarray) -> Mask:
        m = falses(rows)
        if not required:
            return m
        tcp = rows["l4_proto"] == IPPROTO_TCP
        have = rows["tcp_flags"]
        for req in required:
            m |= (have & np.uint8(req)) == np.uint8(req)
        return tcp & m

    return [pred]
