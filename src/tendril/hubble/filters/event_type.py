"""event_type: Cilium monitor message type, optionally with a sub-type.

The stored event_type / sub_type columns are exactly Flow.event_type.{type, sub_type}: the monitor
type (1 drop, 4 trace, 5 policy verdict, 7 trace-sock, 129 L7) and the drop reason or trace
observation point in monitor numbering (0 = to-endpoint). type 0 in a filter means "any type".
"""

from __future__ import annotations

import numpy as np

from tendril.hubble.api import flow_pb2
from tendril.hubble.filters.base import Mask, RowPredicate, falses
from tendril.hubble.record import Tables

FIELDS = ("event_type",)


def build(ff: flow_pb2.FlowFilter, tables: Tables) -> list[RowPredicate]:
    if not ff.event_type:
        return []
    wanted = [(int(t.type), bool(t.match_sub_type), int(t.sub_type)) for t in ff.event_type]

    def pred(rows: np.ndarray) -> Mask:
        etype = rows["event_type"].astype(np.int64)
        sub = rows["sub_type"].astype(np.int64)
        m = falses(rows)
        for typ, match_sub, sub_type in wanted:
            part = (etype == typ) if typ != 0 else np.ones(len(rows), dtype=bool)
            if match_sub:
                part &= sub == sub_type
            m |= part
        return m

    return [pred]
