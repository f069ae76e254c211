"""tcp: hubble_tcp_flags_total{flag,family} — handshake and teardown flags of forwarded TCP flows.

As Hubble's tcp handler: only FORWARDED or REDIRECTED flows with an IP and a TCP header count
(both directions; replies included, which is where SYN-ACK comes from). One flow can add to
several flags: FIN, then SYN-ACK (SYN with ACK) or SYN (without ACK), then RST. family is
"IPv4" / "IPv6".
"""

from __future__ import annotations

import numpy as np

from tendril.hubble import record
from tendril.hubble.metrics import names
from tendril.hubble.metrics.batch import Batch
from tendril.hubble.metrics.plugins.base import Plugin


class TcpPlugin(Plugin):
    name = "tcp"

    def setup(self) -> None:
        self.flags = self.counter(
            "hubble_tcp_flags_total", "TCP flag occurrences", ["flag", "family", *self.ctx_names()]
        )

    def process(self, batch: Batch) -> None:
        r = batch.rows
        base = (
            np.isin(r["verdict"], (record.FORWARDED, record.REDIRECTED))
            & (r["l4_proto"] == names.IPPROTO_TCP)
            & np.isin(r["ip_version"], (4, 6))
        )
        if not base.any():
            return
        flags = r["tcp_flags"]
        syn = (flags & names.TCP_SYN) != 0
        ack = (flags & names.TCP_ACK) != 0
        family = batch.field("ip_version", names.ip_family)
        ctx = self.ctx_columns(batch)
        for flag, sel in (
            ("FIN", (flags & names.TCP_FIN) != 0),
            ("SYN-ACK", syn & ack),
            ("SYN", syn & ~ack),
            ("RST", (flags & names.TCP_RST) != 0),
        ):
            self.flags.add(batch.groups(base & sel, [batch.const(flag), family, *ctx]))
