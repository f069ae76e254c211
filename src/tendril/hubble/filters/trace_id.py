"""trace_id (trace context) and ip_trace_id (IP option trace id).

Tendril records neither: every flow has an empty trace context (Hubble compares the trace id
string, so only "" matches) and no IPTraceID (nothing matches). Kept as real filters so the answer
is Hubble's, and so a later issue only has to supply the columns.
"""

from __future__ import annotations

from tendril.hubble.api import flow_pb2
from tendril.hubble.filters.base import RowPredicate, never, trues
from tendril.hubble.record import Tables

FIELDS = ("trace_id", "ip_trace_id")


def build(ff: flow_pb2.FlowFilter, tables: Tables) -> list[RowPredicate]:
    preds: list[RowPredicate] = []
    if ff.trace_id:
        preds.append(trues if "" in ff.trace_id else never)
    if ff.ip_trace_id:
        preds.append(never)
    return preds
