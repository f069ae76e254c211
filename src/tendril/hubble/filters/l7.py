"""Where L7 filters (http, dns, protocol http/dns/kafka) find a flow's L7 record.

A row's `l7` column is an interned L7 record id, 0 = no L7 record. Tendril does not parse L7 yet;
the L7 issue will add an interner `tables.l7` whose values look like flow.Layer7 (a flow_pb2.Layer7
or any object with the same attribute names: `http.code`, `http.method`, `dns.query` ...). Until
then every flow has no L7 record and every L7 filter matches nothing, exactly as Hubble's filters
do on L3/L4 flows. Filters evaluate their test once per distinct record, never per row.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from tendril.hubble.filters.base import InternedLookup, Mask, RowPredicate, falses
from tendril.hubble.record import Tables


def records(tables: Tables) -> object | None:
    """The L7 record interner of these tables, if this build of Tendril has one."""
    return getattr(tables, "l7", None)


def part(record: object, name: str) -> object | None:
    """record.<name> (`http`, `dns`, `kafka`) if present: protobuf presence or a non-None attribute."""
    if record is None:
        return None
    has_field = getattr(record, "HasField", None)
    if has_field is not None:
        try:
            return getattr(record, name) if has_field(name) else None
        except ValueError:  # not a field of this message
            return None
    return getattr(record, name, None)


def record_predicate(tables: Tables, fn: Callable[[object], bool]) -> RowPredicate:
    """Rows whose L7 record satisfies fn; rows without an L7 record never match."""
    interner = records(tables)
    if interner is None:
        return falses

    def guarded(rec: object) -> bool:
        return rec is not None and bool(fn(rec))

    lut = InternedLookup(interner, guarded)  # type: ignore[arg-type]

    def pred(rows: np.ndarray) -> Mask:
        ids = rows["l7"]
        return (ids != 0) & lut(ids)

    return pred
