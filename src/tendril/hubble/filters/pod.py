"""source_pod / destination_pod: `[namespace/][pod-name-prefix]` against the endpoint metadata.

As in Hubble: no slash means namespace `default`; `ns/` is every pod of ns; the pod part is a name
prefix; an empty value (or a bare `/`) is an error; flows whose side has neither namespace nor pod
name never match. Decided once per distinct interned endpoint.
"""

from __future__ import annotations

from collections.abc import Sequence

from tendril.hubble.api import flow_pb2
from tendril.hubble.filters.base import ENDPOINT_COLUMN, FilterError, RowPredicate, column_lookup, quote
from tendril.hubble.record import EndpointMeta, Tables

FIELDS = ("source_pod", "destination_pod")

DEFAULT_NAMESPACE = "default"


def parse_namespaced_name(value: str) -> tuple[str, str]:
    """`ns/name` -> (ns, name); `name` -> (default, name); like Hubble, text after a second `/` is ignored."""
    parts = value.split("/")
    if len(parts) > 1:
        return parts[0], parts[1]
    if parts[0] == "":
        return "", ""
    return DEFAULT_NAMESPACE, parts[0]


def parse_names(field: str, values: Sequence[str]) -> list[tuple[str, str]]:
    out = []
    for v in values:
        ns, prefix = parse_namespaced_name(v)
        if ns == "" and prefix == "":
            raise FilterError(field, f"{quote(v)} is not [namespace/][<name>]: it names nothing")
        out.append((ns, prefix))
    return out


def match_namespaced(names: list[tuple[str, str]], ns: str, name: str) -> bool:
    if not ns and not name:
        return False
    return any(f_ns == ns and name.startswith(f_prefix) for f_ns, f_prefix in names)


def _side(field: str, side: str, values: Sequence[str], tables: Tables) -> RowPredicate:
    names = parse_names(field, values)

    def ok(meta: object) -> bool:
        assert isinstance(meta, EndpointMeta)
        return match_namespaced(names, meta.namespace, meta.pod_name)

    return column_lookup(ENDPOINT_COLUMN[side], tables.endpoints, ok)


def build(ff: flow_pb2.FlowFilter, tables: Tables) -> list[RowPredicate]:
    preds: list[RowPredicate] = []
    if ff.source_pod:
        preds.append(_side("source_pod", "source", ff.source_pod, tables))
    if ff.destination_pod:
        preds.append(_side("destination_pod", "destination", ff.destination_pod, tables))
    return preds
