"""source_workload / destination_workload: {name, kind} pairs; an empty name or kind matches any."""

from __future__ import annotations

from tendril.hubble.api import flow_pb2
from tendril.hubble.filters.base import ENDPOINT_COLUMN, RowPredicate, column_lookup
from tendril.hubble.record import EndpointMeta, Tables

FIELDS = ("source_workload", "destination_workload")


def _side(side: str, wanted: list[tuple[str, str]], tables: Tables) -> RowPredicate:
    def ok(meta: object) -> bool:
        assert isinstance(meta, EndpointMeta)
        return any(
            (not name or name == w_name) and (not kind or kind == w_kind)
            for w_name, w_kind in meta.workloads
            for name, kind in wanted
        )

    return column_lookup(ENDPOINT_COLUMN[side], tables.endpoints, ok)


def build(ff: flow_pb2.FlowFilter, tables: Tables) -> list[RowPredicate]:
    preds: list[RowPredicate] = []
    if ff.source_workload:
        preds.append(_side("source", [(w.name, w.kind) for w in ff.source_workload], tables))
    if ff.destination_workload:
        preds.append(_side("destination", [(w.name, w.kind) for w in ff.destination_workload], tables))
    return preds
