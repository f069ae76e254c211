"""source_ip / destination_ip / source_ip_xlated: exact addresses or CIDRs.

Addresses are compared as numbers on the stored 16-byte columns (IPv4 in the first four bytes,
network order), so a filter is a mask-and-compare per CIDR, never a string per row. Hubble
compares exact addresses as strings; comparing numbers gives the same answer for the canonical
spelling Hubble prints and also accepts other spellings of the same address (e.g. upper-case IPv6).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from tendril.hubble.api import flow_pb2
from tendril.hubble.filters.base import FilterError, Mask, RowPredicate, falses, field_offset, never, quote
from tendril.hubble.record import Tables

FIELDS = ("source_ip", "destination_ip", "source_ip_xlated")

_U64 = np.dtype((">u8", (2,)))
_ALL64 = (1 << 64) - 1


@dataclass
class IPSet:
    """Parsed IP filter values, split by family and by exact-vs-CIDR."""

    v4_exact: list[int] = field(default_factory=list)
    v4_nets: list[tuple[int, int]] = field(default_factory=list)  # (network, mask)
    v6_nets: list[tuple[int, int, int, int]] = field(
        default_factory=list
    )  # (net hi, net lo, mask hi, mask lo)


def parse_ips(field_name: str, values: Sequence[str]) -> IPSet:
    """Parse `1.2.3.4`, `10.0.0.0/8`, `fd00::1`, `fd00::/64`; anything else is a FilterError."""
    out = IPSet()
    for value in values:
        net = _parse_one(value)
        if net is None:
            raise FilterError(field_name, f"{quote(value)} is not an IP address or CIDR")
        if net.version == 4:
            if net.prefixlen == 32:
                out.v4_exact.append(int(net.network_address))
            else:
                out.v4_nets.append((int(net.network_address), int(net.netmask)))
        else:
            addr, mask = int(net.network_address), int(net.netmask)
            out.v6_nets.append((addr >> 64, addr & _ALL64, mask >> 64, mask & _ALL64))
    return out


def _parse_one(value: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network | None:
    if "%" in value or value != value.strip():  # Go rejects zones and surrounding blanks
        return None
    try:
        if "/" in value:
            addr, _, prefix = value.partition("/")
            if not prefix.isdigit() or not addr:  # no netmask spelling (255.0.0.0), like net.ParseCIDR
                return None
            return ipaddress.ip_network(value, strict=False)
        return ipaddress.ip_network(ipaddress.ip_address(value))
    except ValueError:
        return None


def match_ips(rows: np.ndarray, column: str, ips: IPSet) -> Mask:
    """Rows whose address column is in the set; rows without an IP header never match."""
    m = falses(rows)
    off = field_offset(column)
    version = rows["ip_version"]
    if ips.v4_exact or ips.v4_nets:
        a = rows.getfield(np.dtype(">u4"), off)
        v4 = falses(rows)
        if ips.v4_exact:
            v4 |= np.isin(a, np.array(ips.v4_exact, dtype=np.uint32))
        for net, mask in ips.v4_nets:
            v4 |= (a & np.uint32(mask)) == np.uint32(net)
        m |= v4 & (version == 4)
    if ips.v6_nets:
        words = rows.getfield(_U64, off)
        hi, lo = words[:, 0], words[:, 1]
        v6 = falses(rows)
        for net_hi, net_lo, mask_hi, mask_lo in ips.v6_nets:
            v6 |= ((hi & np.uint64(mask_hi)) == np.uint64(net_hi)) & (
                (lo & np.uint64(mask_lo)) == np.uint64(net_lo)
            )
        m |= v6 & (version == 6)
    return m


def _by_column(column: str, ips: IPSet) -> RowPredicate:
    return lambda rows: match_ips(rows, column, ips)


def build(ff: flow_pb2.FlowFilter, tables: Tables) -> list[RowPredicate]:
    preds: list[RowPredicate] = []
    if ff.source_ip:
        preds.append(_by_column("src_ip", parse_ips("source_ip", ff.source_ip)))
    if ff.destination_ip:
        preds.append(_by_column("dst_ip", parse_ips("destination_ip", ff.destination_ip)))
    if ff.source_ip_xlated:
        # Validated like the others; Tendril records no SNAT address yet (IP.source_xlated is
        # always empty), and Hubble never matches an empty address.
        parse_ips("source_ip_xlated", ff.source_ip_xlated)
        preds.append(never)
    return preds
