"""reply: is_reply true/false. Unknown direction never matches, except that Hubble treats a
DROPPED flow with unknown is_reply as "not a reply" (compatibility with the deprecated `reply`)."""

from __future__ import annotations

import numpy as np

from tendril.hubble.api import flow_pb2
from tendril.hubble.filters.base import Mask, RowPredicate, falses
from tendril.hubble.record import DROPPED, REPLY_UNKNOWN, Tables

FIELDS = ("reply",)


def build(ff: flow_pb2.FlowFilter, tables: Tables) -> list[RowPredicate]:
    if not ff.reply:
        return []
    want = set(bool(r) for r in ff.reply)

    def pred(rows: np.ndarray) -> Mask:
        reply = rows["is_reply"]
        candidate = (reply != REPLY_UNKNOWN) | (rows["verdict"] == DROPPED)
        is_reply = reply == 1
        m = falses(rows)
        if True in want:
            m |= is_reply
        if False in want:
            m |= ~is_reply
        return candidate & m

    return [pred]
