"""traffic_direction: INGRESS / EGRESS / TRAFFIC_DIRECTION_UNKNOWN, one isin on the column."""

from __future__ import annotations

from tendril.hubble.api import flow_pb2
from tendril.hubble.filters.base import RowPredicate, check_enum, isin
from tendril.hubble.record import Tables

FIELDS = ("traffic_direction",)


def build(ff: flow_pb2.FlowFilter, tables: Tables) -> list[RowPredicate]:
    if not ff.traffic_direction:
        return []
    dirs = check_enum("traffic_direction", ff.traffic_direction, flow_pb2.TrafficDirection)
    return [isin("traffic_direction", dirs)]
