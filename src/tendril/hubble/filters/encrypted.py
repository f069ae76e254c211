"""encrypted: whether the flow's packet was encrypted (IPsec/WireGuard).

Tendril's datapath does not encrypt, so every flow is unencrypted (IP.encrypted false): `false`
matches every flow, `true` none.
"""

from __future__ import annotations

from tendril.hubble.api import flow_pb2
from tendril.hubble.filters.base import RowPredicate, never, trues
from tendril.hubble.record import Tables

FIELDS = ("encrypted",)


def build(ff: flow_pb2.FlowFilter, tables: Tables) -> list[RowPredicate]:
    if not ff.encrypted:
        return []
    return [trues if False in ff.encrypted else never]
