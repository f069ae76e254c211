"""source_service / destination_service: `[namespace/][name-prefix]`, like pods, on Flow services.

The row's src_service / dst_service columns are interned "namespace/name" strings (0 = no
service). Tendril does not fill them yet (services issue), so these filters match nothing today;
they are already evaluated once per distinct interned service string.
"""

from __future__ import annotations

from collections.abc import Sequence

from tendril.hubble.api import flow_pb2
from tendril.hubble.filters.base import RowPredicate, column_lookup
from tendril.hubble.filters.pod import match_namespaced, parse_names
from tendril.hubble.record import Tables

FIELDS = ("source_service", "destination_service")

_COLUMN = {"source_service": "src_service", "destination_service": "dst_service"}


def split_service(value: str) -> tuple[str, str]:
    """Interned "namespace/name" -> (namespace, name)."""
    ns, _, name = value.partition("/")
    return (ns, name) if name or value.endswith("/") else ("", value)


def _side(field: str, values: Sequence[str], tables: Tables) -> RowPredicate:
    names = parse_names(field, values)

    def ok(value: object) -> bool:
        ns, name = split_service(str(value))
        return match_namespaced(names, ns, name)

    return column_lookup(_COLUMN[field], tables.strings, ok)


def build(ff: flow_pb2.FlowFilter, tables: Tables) -> list[RowPredicate]:
    return [_side(field, getattr(ff, field), tables) for field in FIELDS if getattr(ff, field)]
