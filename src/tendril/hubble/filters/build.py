"""FlowFilter lists -> one vectorised predicate, with Hubble's combination rules.

OR within one field's repeated values (inside each filter module), AND across the fields of one
FlowFilter, OR across the FlowFilters of a list; the result keeps a row when the whitelist is empty
or any whitelist filter matches, and no blacklist filter matches. An empty FlowFilter matches every
flow (so an empty one in the blacklist hides everything, as in Hubble).
"""

from __future__ import annotations

from collections.abc import Sequence
from types import ModuleType

import numpy as np

from tendril.hubble.api import flow_pb2
from tendril.hubble.filters import (
    cluster_name,
    dns,
    drop_reason,
    encrypted,
    event_type,
    experimental,
    fqdn,
    http,
    identity,
    interface,
    ip,
    ip_version,
    label,
    node_labels,
    node_name,
    pod,
    port,
    protocol,
    reply,
    service,
    tcp_flags,
    trace_id,
    traffic_direction,
    uuid,
    verdict,
    workload,
)
from tendril.hubble.filters.base import FilterError, Mask, RowPredicate, all_of, falses, trues
from tendril.hubble.record import Tables

# One module per filter kind; each has FIELDS (the FlowFilter fields it reads) and build().
# Cheap, selective column filters come first so that all_of can stop early on an empty mask.
MODULES: tuple[ModuleType, ...] = (
    experimental,
    uuid,
    event_type,
    verdict,
    drop_reason,
    traffic_direction,
    ip_version,
    reply,
    protocol,
    port,
    tcp_flags,
    ip,
    identity,
    pod,
    label,
    workload,
    cluster_name,
    service,
    fqdn,
    node_name,
    node_labels,
    interface,
    http,
    dns,
    trace_id,
    encrypted,
)

HANDLED_FIELDS = frozenset(f for m in MODULES for f in m.FIELDS)


def build_flow_filter(ff: flow_pb2.FlowFilter, tables: Tables) -> RowPredicate:
    """One FlowFilter -> AND of its fields. A field nobody reads is an error, never ignored."""
    for fd, _ in ff.ListFields():
        if fd.name not in HANDLED_FIELDS:
            raise FilterError(fd.name, "this FlowFilter field is not supported by Tendril")
    preds: list[RowPredicate] = []
    for module in MODULES:
        preds.extend(module.build(ff, tables))
    return all_of(preds)


class FlowPredicate:
    """Compiled whitelist/blacklist: call it with FLOW_DTYPE rows to get the boolean mask."""

    def __init__(self, whitelist: Sequence[RowPredicate], blacklist: Sequence[RowPredicate]) -> None:
        self.whitelist = tuple(whitelist)
        self.blacklist = tuple(blacklist)

    @property
    def matches_everything(self) -> bool:
        """True when no filter was given: callers may skip the call altogether."""
        return not self.whitelist and not self.blacklist

    def __call__(self, rows: np.ndarray) -> Mask:
        if self.whitelist:
            keep = falses(rows)
            for w in self.whitelist:
                keep |= w(rows)
        else:
            keep = trues(rows)
        for b in self.blacklist:
            if not keep.any():
                break
            keep &= ~b(rows)
        return keep


def compile_filters(
    whitelist: Sequence[flow_pb2.FlowFilter],
    blacklist: Sequence[flow_pb2.FlowFilter],
    tables: Tables,
) -> FlowPredicate:
    """Parse and validate every filter once per request; FilterError names the offending field."""
    return FlowPredicate(
        [build_flow_filter(ff, tables) for ff in whitelist],
        [build_flow_filter(ff, tables) for ff in blacklist],
    )
