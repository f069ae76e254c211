"""protocol: L4 protocol names (case-insensitive) or L7 protocol names.

`icmp` is ICMPv4 or ICMPv6. `http` / `dns` / `kafka` match flows whose L7 record has that part;
unknown names are an error, as in Hubble.
"""

from __future__ import annotations

from tendril.hubble.api import flow_pb2
from tendril.hubble.filters import l7
from tendril.hubble.filters.base import FilterError, RowPredicate, any_of, isin, quote
from tendril.hubble.record import Tables

FIELDS = ("protocol",)

# name -> IPPROTO_* numbers in the l4_proto column
L4_PROTOCOLS: dict[str, tuple[int, ...]] = {
    "icmp": (1, 58),
    "icmpv4": (1,),
    "icmpv6": (58,),
    "tcp": (6,),
    "udp": (17,),
    "sctp": (132,),
    "vrrp": (112,),
    "igmp": (2,),
}
L7_PROTOCOLS = ("dns", "http", "kafka")


def build(ff: flow_pb2.FlowFilter, tables: Tables) -> list[RowPredicate]:
    if not ff.protocol:
        return []
    l4_numbers: set[int] = set()
    l7_parts: list[str] = []
    for p in ff.protocol:
        name = p.lower()
        if name in L4_PROTOCOLS:
            l4_numbers.update(L4_PROTOCOLS[name])
        elif name in L7_PROTOCOLS:
            l7_parts.append(name)
        else:
            known = ", ".join([*L4_PROTOCOLS, *L7_PROTOCOLS])
            raise FilterError("protocol", f"unknown protocol {quote(p)} (known: {known})")
    preds: list[RowPredicate] = []
    if l4_numbers:
        preds.append(isin("l4_proto", l4_numbers))
    for part in l7_parts:
        preds.append(l7.record_predicate(tables, lambda rec, part=part: l7.part(rec, part) is not None))
    return [any_of(preds)]
