"""source_identity / destination_identity: numeric security identities.

A side's identity is the one the datapath reported in the row, or, when the row has none, the
identity in the endpoint metadata: the same value convert.py puts into Endpoint.identity.
"""

from __future__ import annotations

import numpy as np

from tendril.hubble.api import flow_pb2
from tendril.hubble.filters.base import ENDPOINT_COLUMN, IDENTITY_COLUMN, InternedLookup, Mask, RowPredicate
from tendril.hubble.record import EndpointMeta, Tables

FIELDS = ("source_identity", "destination_identity")


class IdentityColumn:
    """rows -> effective identity per row, for one side (row identity, else endpoint metadata's)."""

    def __init__(self, side: str, tables: Tables) -> None:
        self._ep = ENDPOINT_COLUMN[side]
        self._id = IDENTITY_COLUMN[side]
        self._meta = InternedLookup(tables.endpoints, _meta_identity, dtype=np.uint32)

    def __call__(self, rows: np.ndarray) -> np.ndarray:
        ident = rows[self._id]
        return np.where(ident != 0, ident, self._meta(rows[self._ep]))


def _meta_identity(meta: object) -> int:
    assert isinstance(meta, EndpointMeta)
    return meta.identity


def _side(side: str, identities: list[int], tables: Tables) -> RowPredicate:
    column = IdentityColumn(side, tables)
    wanted = np.array(sorted(set(identities)), dtype=np.int64)

    def pred(rows: np.ndarray) -> Mask:
        return np.isin(column(rows), wanted)

    return pred


def build(ff: flow_pb2.FlowFilter, tables: Tables) -> list[RowPredicate]:
    preds: list[RowPredicate] = []
    if ff.source_identity:
        preds.append(_side("source", list(ff.source_identity), tables))
    if ff.destination_identity:
        preds.append(_side("destination", list(ff.destination_identity), tables))
    return preds
