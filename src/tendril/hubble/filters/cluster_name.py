"""source_cluster_name / destination_cluster_name: exact cluster names of the flow's endpoints.

An empty name is an error (Hubble: "name must not be empty"); sides without metadata have no
cluster name and never match.
"""

from __future__ import annotations

from tendril.hubble.api import flow_pb2
from tendril.hubble.filters.base import ENDPOINT_COLUMN, FilterError, RowPredicate, column_lookup
from tendril.hubble.record import EndpointMeta, Tables

FIELDS = ("source_cluster_name", "destination_cluster_name")


def _side(field: str, side: str, names: list[str], tables: Tables) -> RowPredicate:
    if "" in names:
        raise FilterError(field, "a cluster name must not be empty")
    wanted = set(names)

    def ok(meta: object) -> bool:
        assert isinstance(meta, EndpointMeta)
        return meta.cluster_name in wanted

    return column_lookup(ENDPOINT_COLUMN[side], tables.endpoints, ok)


def build(ff: flow_pb2.FlowFilter, tables: Tables) -> list[RowPredicate]:
    preds: list[RowPredicate] = []
    if ff.source_cluster_name:
        preds.append(_side("source_cluster_name", "source", list(ff.source_cluster_name), tables))
    if ff.destination_cluster_name:
        preds.append(
            _side("destination_cluster_name", "destination", list(ff.destination_cluster_name), tables)
        )
    return preds
