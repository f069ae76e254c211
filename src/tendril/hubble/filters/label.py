"""source_label / destination_label: Kubernetes label selectors over the endpoint's Cilium labels.

`k8s:app=echo`, `app in (echo, web)`, `!k8s:debug`, `reserved:world` ... (syntax in
label_selector.py). Several selectors in one field are OR'ed. Each selector is evaluated once per
distinct interned endpoint; a row then costs one table lookup (design.md: "a label filter becomes a
lookup in a precomputed set of matching label-set ids").
"""

from __future__ import annotations

from collections.abc import Sequence

from tendril.hubble.api import flow_pb2
from tendril.hubble.filters.base import ENDPOINT_COLUMN, FilterError, RowPredicate, column_lookup, quote
from tendril.hubble.filters.label_selector import LabelArray, Selector, SelectorError, parse_cilium_selector
from tendril.hubble.record import EndpointMeta, Tables

FIELDS = ("source_label", "destination_label")


def compile_selectors(field: str, texts: Sequence[str]) -> list[Selector]:
    out = []
    for text in texts:
        try:
            out.append(parse_cilium_selector(text))
        except SelectorError as e:
            raise FilterError(field, f"{quote(text)} is not a valid label selector: {e}") from None
    return out


def matches_any(selectors: Sequence[Selector], labels: Sequence[str]) -> bool:
    arr = LabelArray(labels)
    return any(s.matches(arr) for s in selectors)


def _side(field: str, side: str, texts: Sequence[str], tables: Tables) -> RowPredicate:
    selectors = compile_selectors(field, texts)

    def ok(meta: object) -> bool:
        assert isinstance(meta, EndpointMeta)
        return matches_any(selectors, meta.labels)

    return column_lookup(ENDPOINT_COLUMN[side], tables.endpoints, ok)


def build(ff: flow_pb2.FlowFilter, tables: Tables) -> list[RowPredicate]:
    preds: list[RowPredicate] = []
    if ff.source_label:
        preds.append(_side("source_label", "source", ff.source_label, tables))
    if ff.destination_label:
        preds.append(_side("destination_label", "destination", ff.destination_label, tables))
    return preds
