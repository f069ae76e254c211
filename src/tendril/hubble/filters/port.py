"""source_port / destination_port: decimal uint16 strings, matched on TCP, UDP and SCTP flows."""

from __future__ import annotations

import numpy as np

from tendril.hubble.api import flow_pb2
from tendril.hubble.filters.base import FilterError, Mask, RowPredicate, quote
from tendril.hubble.record import Tables

FIELDS = ("source_port", "destination_port")

PORT_PROTOCOLS = np.array([6, 17, 132])  # TCP, UDP, SCTP: the Layer4 kinds that carry ports


def parse_ports(field: str, values: list[str]) -> np.ndarray:
    ports = []
    for v in values:
        # strconv.ParseUint(v, 10, 16): ASCII digits only, no sign, no blanks, at most 65535
        if not (v.isascii() and v.isdigit()) or int(v) > 0xFFFF:
            raise FilterError(field, f"invalid port {quote(v)} (expected a number from 0 to 65535)")
        ports.append(int(v))
    return np.array(sorted(set(ports)), dtype=np.int64)


def _by_column(column: str, ports: np.ndarray) -> RowPredicate:
    def pred(rows: np.ndarray) -> Mask:
        return np.isin(rows["l4_proto"], PORT_PROTOCOLS) & np.isin(rows[column], ports)

    return pred


def build(ff: flow_pb2.FlowFilter, tables: Tables) -> list[RowPredicate]:
    preds: list[RowPredicate] = []
    if ff.source_port:
        preds.append(_by_column("src_port", parse_ports("source_port", list(ff.source_port))))
    if ff.destination_port:
        preds.append(_by_column("dst_port", parse_ports("destination_port", list(ff.destination_port))))
    return preds
