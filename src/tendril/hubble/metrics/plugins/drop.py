"""drop: hubble_drop_total{reason,protocol} — every DROPPED flow.

reason is the flow.DropReason enum name ("POLICY_DENIED", "INVALID_SOURCE_IP", ...; the same
spelling as a flow's drop_reason_desc), protocol is v1.FlowProtocol ("TCP", ..., "Unknown L4").
Context labels come first, as in Hubble's drop handler.
"""

from __future__ import annotations

from tendril.hubble import record
from tendril.hubble.metrics.batch import Batch
from tendril.hubble.metrics.plugins.base import Plugin
from tendril.monitor import api


class DropPlugin(Plugin):
    name = "drop"

    def setup(self) -> None:
        self.drops = self.counter(
            "hubble_drop_total", "Number of drops", [*self.ctx_names(), "reason", "protocol"]
        )

    def process(self, batch: Batch) -> None:
        mask = batch.rows["verdict"] == record.DROPPED
        if not mask.any():
            return
        cols = [*self.ctx_columns(batch), batch.field("drop_reason", api.drop_reason_enum), batch.protocol()]
        self.drops.add(batch.groups(mask, cols))
