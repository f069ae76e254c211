"""drop_reason_desc: dropped flows whose flow.DropReason is one of the given values.

Like Hubble, only flows with verdict DROPPED can match (an ERROR-verdict drop does not).
"""

from __future__ import annotations

import numpy as np

from tendril.hubble.api import flow_pb2
from tendril.hubble.filters.base import Mask, RowPredicate, check_enum
from tendril.hubble.record import DROPPED, Tables

FIELDS = ("drop_reason_desc",)


def build(ff: flow_pb2.FlowFilter, tables: Tables) -> list[RowPredicate]:
    if not ff.drop_reason_desc:
        return []
    reasons = np.array(
        check_enum("drop_reason_desc", ff.drop_reason_desc, flow_pb2.DropReason), dtype=np.int64
    )

    def pred(rows: np.ndarray) -> Mask:
        return (rows["verdict"] == DROPPED) & np.isin(rows["drop_reason"], reasons)

    return [pred]
