"""ip_version: IP_NOT_USED / IPv4 / IPv6 against the stored ip_version column (0, 4, 6)."""

from __future__ import annotations

from tendril.hubble.api import flow_pb2
from tendril.hubble.filters.base import RowPredicate, check_enum, isin
from tendril.hubble.record import Tables

FIELDS = ("ip_version",)

# flow.IPVersion -> value of the ip_version column
_COLUMN = {flow_pb2.IP_NOT_USED: 0, flow_pb2.IPv4: 4, flow_pb2.IPv6: 6}


def build(ff: flow_pb2.FlowFilter, tables: Tables) -> list[RowPredicate]:
    if not ff.ip_version:
        return []
    versions = check_enum("ip_version", ff.ip_version, flow_pb2.IPVersion)
    return [isin("ip_version", (_COLUMN[v] for v in versions))]
