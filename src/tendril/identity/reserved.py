"""Reserved identities and the numbering ranges of the datapath ABI.

The numbers mirror `TND_ID_*` in bpf/include/tendril_abi.h (and Cilium's), so flows, `cilium`-style
listings and policy maps read the same everywhere; tests/test_policy_abi.py checks they agree.
"""

from __future__ import annotations

from enum import IntEnum


class ReservedIdentity(IntEnum):
    """Identities with a fixed meaning, never allocated from labels."""

    UNKNOWN = 0
    HOST = 1
    WORLD = 2
    UNMANAGED = 3
    HEALTH = 4
    INIT = 5
    REMOTE_NODE = 6
    KUBE_APISERVER = 7
    INGRESS = 8

    @property
    def label(self) -> str:
        """The identity's only label, e.g. `reserved:remote-node` (what `reserved:` selectors name)."""
        return f"reserved:{RESERVED_NAMES[self]}"


#: reserved identity -> the name used in `reserved:<name>` labels and in policy entities.
RESERVED_NAMES: dict[ReservedIdentity, str] = {
    ReservedIdentity.UNKNOWN: "unknown",
    ReservedIdentity.HOST: "host",
    ReservedIdentity.WORLD: "world",
    ReservedIdentity.UNMANAGED: "unmanaged",
    ReservedIdentity.HEALTH: "health",
    ReservedIdentity.INIT: "init",
    ReservedIdentity.REMOTE_NODE: "remote-node",
    ReservedIdentity.KUBE_APISERVER: "kube-apiserver",
    ReservedIdentity.INGRESS: "ingress",
}

#: label-based (cluster) identities: TND_ID_CLUSTER_MIN..65535 ("Global Identity Range" in Cilium).
CLUSTER_ID_MIN = 256
CLUSTER_ID_MAX = 65535
#: node-local CIDR identities: TND_ID_LOCAL_MIN upward (Cilium's local scope, 1 << 24).
LOCAL_ID_MIN = 1 << 24
LOCAL_ID_MAX = (1 << 25) - 1
#: the policy-map key identity that marks a direction as enforced (never a real identity).
ENFORCED_MARKER = 0xFFFFFFFF


def reserved_identities() -> dict[int, frozenset[str]]:
    """Reserved identity -> label set, for 1..8 (0 'unknown' is never a peer)."""
    return {int(r): frozenset({r.label}) for r in ReservedIdentity if r is not ReservedIdentity.UNKNOWN}
