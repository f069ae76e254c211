"""source_fqdn / destination_fqdn: glob patterns over Flow.source_names / destination_names.

Tendril does not resolve DNS names for flow addresses yet (the names lists are always empty, and
Hubble never matches a flow without names), so a valid pattern matches nothing today; the patterns
are still validated so a bad one is rejected as Hubble rejects it. `match_names` is the per-value
test for when a names column arrives.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from tendril.hubble.api import flow_pb2
from tendril.hubble.filters.base import FilterError, RowPredicate, never
from tendril.hubble.filters.patterns import PatternError, compile_fqdn_patterns
from tendril.hubble.record import Tables

FIELDS = ("source_fqdn", "destination_fqdn")


def compile_patterns(field: str, patterns: Iterable[str]) -> re.Pattern[str]:
    try:
        return compile_fqdn_patterns(list(patterns))
    except PatternError as e:
        raise FilterError(field, str(e)) from None


def match_names(regex: re.Pattern[str], names: Iterable[str]) -> bool:
    return any(regex.match(n) for n in names)


def build(ff: flow_pb2.FlowFilter, tables: Tables) -> list[RowPredicate]:
    preds: list[RowPredicate] = []
    for name in FIELDS:
        values = getattr(ff, name)
        if values:
            compile_patterns(name, values)
            preds.append(never)  # no flow has names yet
    return preds
