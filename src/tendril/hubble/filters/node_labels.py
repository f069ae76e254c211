"""node_labels: label selectors over the labels of the node that observed the flow.

Tendril records no node labels (Flow.node_labels is always empty), so each selector is evaluated
once against the empty label set: `!foo` matches every flow, `foo=bar` none, exactly what Hubble
answers for a flow without node labels. Invalid selectors are rejected as for source_label.
"""

from __future__ import annotations

from tendril.hubble.api import flow_pb2
from tendril.hubble.filters.base import RowPredicate, falses, trues
from tendril.hubble.filters.label import compile_selectors, matches_any
from tendril.hubble.record import Tables

FIELDS = ("node_labels",)


def build(ff: flow_pb2.FlowFilter, tables: Tables) -> list[RowPredicate]:
    if not ff.node_labels:
        return []
    selectors = compile_selectors("node_labels", ff.node_labels)
    return [trues if matches_any(selectors, ()) else falses]
