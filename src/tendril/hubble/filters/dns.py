"""dns_query: unanchored regular expressions over the L7 DNS record's query name.

Flows without a DNS record never match (every flow, until Tendril parses DNS; see l7.py).
"""

from __future__ import annotations

from tendril.hubble.api import flow_pb2
from tendril.hubble.filters import l7
from tendril.hubble.filters.base import RowPredicate, compile_regex
from tendril.hubble.record import Tables

FIELDS = ("dns_query",)


def build(ff: flow_pb2.FlowFilter, tables: Tables) -> list[RowPredicate]:
    if not ff.dns_query:
        return []
    queries = [compile_regex("dns_query", q) for q in ff.dns_query]

    def query_ok(rec: object) -> bool:
        dns = l7.part(rec, "dns")
        if dns is None:
            return False
        query = str(getattr(dns, "query", "") or "")
        return any(r.search(query) for r in queries)

    return [l7.record_predicate(tables, query_ok)]
