"""flows-to-world: hubble_flows_to_world_total{protocol,verdict[,port]} — traffic leaving the cluster.

As Hubble's handler: flows with an L4 header whose destination is reserved:world (identity 2, or
world-ipv4 9 / world-ipv6 10, or an endpoint record labelled reserved:world*). Drops count only
when the reason is POLICY_DENIED unless `any-drop`; non-dropped replies never count. `syn-only`
keeps only TCP SYN packets that are not replies (so one count per connection attempt); `port` adds
the destination port ("" for ICMP). Every event type counts, as in Hubble (a trace and a
policy-verdict event for one packet are two flows).
"""

from __future__ import annotations

import numpy as np

from tendril.hubble import record
from tendril.hubble.metrics import names
from tendril.hubble.metrics.batch import Batch
from tendril.hubble.metrics.plugins.base import Plugin

_WORLD_LABELS = ("reserved:world", "reserved:world-ipv4", "reserved:world-ipv6")
POLICY_DENIED = 133


def _port(l4_proto: int, port: int) -> str:
    return str(port) if l4_proto in names.PORT_PROTOCOLS else ""


class FlowsToWorldPlugin(Plugin):
    name = "flows-to-world"
    plugin_options = ("any-drop", "port", "syn-only")

    def setup(self) -> None:
        self.any_drop = self.spec.has("any-drop")
        self.port = self.spec.has("port")
        self.syn_only = self.spec.has("syn-only")
        labels = ["protocol", "verdict", *(["port"] if self.port else []), *self.ctx_names()]
        self.flows = self.counter(
            "hubble_flows_to_world_total", "Total number of flows to reserved:world", labels
        )

    def _to_world(self, batch: Batch) -> np.ndarray:
        r = batch.rows
        by_identity = np.isin(r["dst_identity"], names.WORLD_IDENTITIES)
        eps = np.unique(r["dst_ep"])
        labelled = [
            int(e) for e in eps if e and any(x in _WORLD_LABELS for x in batch.tables.endpoint(e).labels)
        ]
        return by_identity | np.isin(r["dst_ep"], labelled) if labelled else by_identity

    def process(self, batch: Batch) -> None:
        r = batch.rows
        mask = batch.has_l4() & self._to_world(batch)
        if not mask.any():
            return
        dropped = r["verdict"] == record.DROPPED
        reply = r["is_reply"] == 1
        if not self.any_drop:
            mask &= ~dropped | (r["drop_reason"] == POLICY_DENIED)
        mask &= dropped | ~reply
        if self.syn_only:
            syn = (r["l4_proto"] == names.IPPROTO_TCP) & ((r["tcp_flags"] & names.TCP_SYN) != 0)
            mask &= syn & ~reply
        cols = [batch.protocol(), batch.verdict()]
        if self.port:
            cols.append(batch.mapped("world.port", [r["l4_proto"], r["dst_port"]], _port))
        self.flows.add(batch.groups(mask, [*cols, *self.ctx_columns(batch)]))
