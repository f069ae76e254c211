"""Hubble flow filters over the columnar flow store (Cilium's pkg/hubble/filters, vectorised).

    predicate = compile_filters(request.whitelist, request.blacklist, tables)
    mask = predicate(rows)          # rows: FLOW_DTYPE array -> bool array

Invalid filters raise FilterError, which the gRPC layer turns into INVALID_ARGUMENT.
"""

from tendril.hubble.filters.base import FilterError, RowPredicate
from tendril.hubble.filters.build import HANDLED_FIELDS, FlowPredicate, build_flow_filter, compile_filters

__all__ = [
    "HANDLED_FIELDS",
    "FilterError",
    "FlowPredicate",
    "RowPredicate",
    "build_flow_filter",
    "compile_filters",
]
