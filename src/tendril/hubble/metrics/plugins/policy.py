"""policy: hubble_policy_verdicts_total{direction,match,action} — policy-verdict events.

One count per policy-verdict event (monitor type 5), skipping verdicts whose source is the host
(identity 1: the host may reach any local endpoint) or that involve health (identity 4, source or
destination), as Hubble's handler does. Values lower-cased as Hubble does: direction
"ingress"/"egress", match the monitor PolicyMatchType ("l3-only", "l3-l4", "l4-only", "all",
"l3-proto", "proto-only", "none"), action the verdict ("forwarded", "dropped", "audit",
"redirected"). L7 verdicts (match "l7/http" etc.) follow with the L7 issue.
"""

from __future__ import annotations

from tendril.hubble.metrics import names
from tendril.hubble.metrics.batch import Batch
from tendril.hubble.metrics.plugins.base import Plugin


def _direction(direction: int) -> str:
    return names.direction_name(direction).lower()


def _action(verdict: int) -> str:
    return names.verdict_name(verdict).lower()


class PolicyPlugin(Plugin):
    name = "policy"

    def setup(self) -> None:
        self.verdicts = self.counter(
            "hubble_policy_verdicts_total",
            "Total number of Cilium network policy verdicts",
            ["direction", "match", "action", *self.ctx_names()],
        )

    def process(self, batch: Batch) -> None:
        r = batch.rows
        mask = (
            (r["event_type"] == names.MSG_POLICY_VERDICT)
            & (r["src_identity"] != names.IDENTITY_HOST)
            & (r["src_identity"] != names.IDENTITY_HEALTH)
            & (r["dst_identity"] != names.IDENTITY_HEALTH)
        )
        if not mask.any():
            return
        cols = [
            batch.field("traffic_direction", _direction),
            batch.field("policy_match", names.policy_match_name),
            batch.field("verdict", _action),
            *self.ctx_columns(batch),
        ]
        self.verdicts.add(batch.groups(mask, cols))
