"""interface: {index, name} of the network interface that observed the flow.

A zero index or empty name in the filter matches any; flows without an interface (ifindex 0)
never match. Names are compared through the string interner, looked up at match time so that
interfaces that appear after the request was compiled (follow mode) still match.
"""

from __future__ import annotations

import numpy as np

from tendril.hubble.api import flow_pb2
from tendril.hubble.filters.base import Mask, RowPredicate, falses
from tendril.hubble.record import Tables

FIELDS = ("interface",)


def build(ff: flow_pb2.FlowFilter, tables: Tables) -> list[RowPredicate]:
    if not ff.interface:
        return []
    wanted = [(int(i.index), i.name) for i in ff.interface]

    def pred(rows: np.ndarray) -> Mask:
        ifindex = rows["ifindex"]
        m = falses(rows)
        for index, name in wanted:
            part = ifindex != 0
            if index:
                part &= ifindex == index
            if name:
                sid = tables.strings.lookup(name)
                if sid is None:
                    continue
                part &= rows["ifname"] == sid
            m |= part
        return m

    return [pred]
