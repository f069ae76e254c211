"""port-distribution: hubble_port_distribution_total{protocol,port} — destination ports in use.

As Hubble: FORWARDED or REDIRECTED flows known *not* to be replies (is_reply false; unknown
counts as a possible reply and is skipped, so ephemeral client ports stay out). protocol
TCP/UDP/SCTP with the destination port; ICMPv4/ICMPv6 with port "0".
"""

from __future__ import annotations

import numpy as np

from tendril.hubble import record
from tendril.hubble.metrics import names
from tendril.hubble.metrics.batch import Batch
from tendril.hubble.metrics.plugins.base import Plugin


def _port(l4_proto: int, port: int) -> str:
    return str(port) if l4_proto in names.PORT_PROTOCOLS else "0"


class PortDistributionPlugin(Plugin):
    name = "port-distribution"

    def setup(self) -> None:
        self.ports = self.counter(
            "hubble_port_distribution_total",
            "Numbers of packets distributed by destination port",
            ["protocol", "port", *self.ctx_names()],
        )

    def process(self, batch: Batch) -> None:
        r = batch.rows
        mask = (
            np.isin(r["verdict"], (record.FORWARDED, record.REDIRECTED))
            & (r["is_reply"] == 0)
            & batch.has_l4()
        )
        if not mask.any():
            return
        port = batch.mapped("dst_port", [r["l4_proto"], r["dst_port"]], _port)
        proto = batch.field("l4_proto", _l4_name)
        self.ports.add(batch.groups(mask, [proto, port, *self.ctx_columns(batch)]))


def _l4_name(l4_proto: int) -> str:
    return names.L4_NAMES.get(l4_proto, "")
