"""experimental.cel_expression: CEL programs over the flow; Tendril does not evaluate CEL.

Rejected with INVALID_ARGUMENT rather than ignored, so `hubble observe --cel-expression ...` never
silently shows unfiltered flows.
"""

from __future__ import annotations

from tendril.hubble.api import flow_pb2
from tendril.hubble.filters.base import FilterError, RowPredicate
from tendril.hubble.record import Tables

FIELDS = ("experimental",)


def build(ff: flow_pb2.FlowFilter, tables: Tables) -> list[RowPredicate]:
    if ff.HasField("experimental") and ff.experimental.cel_expression:
        raise FilterError(
            "experimental.cel_expression",
            "CEL expressions are not supported by Tendril; use the other filter flags instead",
        )
    return []
