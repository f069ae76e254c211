"""node_name: glob patterns (`k8s*`, `kind-worker?`, `cluster/node`) over the flow's node name.

Hubble matches `[cluster/]node` patterns against `<cluster>/<node>`, putting node names without a
cluster into the `default` cluster; an empty or missing cluster part matches any cluster. The test
runs once per distinct interned node name.
"""

from __future__ import annotations

from tendril.hubble.api import flow_pb2
from tendril.hubble.filters.base import FilterError, RowPredicate, column_lookup
from tendril.hubble.filters.patterns import PatternError, compile_node_name_patterns
from tendril.hubble.record import Tables

FIELDS = ("node_name",)

DEFAULT_CLUSTER = "default"


def build(ff: flow_pb2.FlowFilter, tables: Tables) -> list[RowPredicate]:
    if not ff.node_name:
        return []
    try:
        regex = compile_node_name_patterns(list(ff.node_name))
    except PatternError as e:
        raise FilterError("node_name", str(e)) from None

    def node_ok(name: object) -> bool:
        s = str(name)
        if not s:
            return False
        if "/" not in s:
            s = f"{DEFAULT_CLUSTER}/{s}"
        return regex.match(s) is not None

    return [column_lookup("node", tables.strings, node_ok)]
