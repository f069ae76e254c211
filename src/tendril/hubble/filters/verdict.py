"""verdict: the stored verdict column holds flow.Verdict values, so this is one isin."""

from __future__ import annotations

from tendril.hubble.api import flow_pb2
from tendril.hubble.filters.base import RowPredicate, check_enum, isin
from tendril.hubble.record import Tables

FIELDS = ("verdict",)


def build(ff: flow_pb2.FlowFilter, tables: Tables) -> list[RowPredicate]:
    if not ff.verdict:
        return []
    return [isin("verdict", check_enum("verdict", ff.verdict, flow_pb2.Verdict))]
