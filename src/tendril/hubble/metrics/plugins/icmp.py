"""icmp: hubble_icmp_total{family,type} — every flow carrying an ICMP header, any verdict.

type is gopacket's ICMPv4/ICMPv6 TypeCode string as Hubble emits it: "EchoRequest",
"DestinationUnreachable(Port)", "TimeExceeded(TTLExceeded)", "42(0)" for unknown types. family
is "IPv4" for ICMPv4 and "IPv6" for ICMPv6 (Hubble's handler labels ICMPv6 "IPv4" too, an evident
slip we do not copy).
"""

from __future__ import annotations

import numpy as np

from tendril.hubble.metrics import names
from tendril.hubble.metrics.batch import Batch
from tendril.hubble.metrics.plugins.base import Plugin


def _family(l4_proto: int) -> str:
    return "IPv4" if l4_proto == names.IPPROTO_ICMP else "IPv6"


class IcmpPlugin(Plugin):
    name = "icmp"

    def setup(self) -> None:
        self.icmp = self.counter(
            "hubble_icmp_total", "Number of ICMP messages", ["family", "type", *self.ctx_names()]
        )

    def process(self, batch: Batch) -> None:
        r = batch.rows
        mask = np.isin(r["l4_proto"], (names.IPPROTO_ICMP, names.IPPROTO_ICMPV6))
        if not mask.any():
            return
        kind = batch.mapped(
            "icmp.type", [r["l4_proto"], r["icmp_type"], r["icmp_code"]], names.icmp_type_code
        )
        self.icmp.add(batch.groups(mask, [batch.field("l4_proto", _family), kind, *self.ctx_columns(batch)]))
