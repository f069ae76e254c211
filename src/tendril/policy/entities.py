"""Policy entities (`fromEntities`/`toEntities`) and the identities each one stands for.

Follows Cilium's pkg/policy/api/entity.go: `world` is every identity labelled `reserved:world` (the
world identity and every CIDR identity); `cluster` is the node-ish reserved identities (host,
remote-node, init, ingress, health, unmanaged, kube-apiserver) plus every identity of this cluster
(`k8s:io.cilium.k8s.policy.cluster=<name>`); `all` is any peer (identity 0 in the policy map);
`none` is nobody. tendril has one world identity for both families, so `world-ipv4`/`world-ipv6`
select it plus the CIDR identities of their family.
"""

from __future__ import annotations

from tendril.identity.labels import K8S, POLICY_CLUSTER_LABEL, RESERVED
from tendril.identity.reserved import ReservedIdentity
from tendril.policy.selector import EXISTS, IN, Requirement, Selector

ENTITIES = (
    "all",
    "world",
    "world-ipv4",
    "world-ipv6",
    "cluster",
    "host",
    "init",
    "ingress",
    "unmanaged",
    "remote-node",
    "health",
    "none",
    "kube-apiserver",
)

_R = ReservedIdentity
_SINGLE = {
    "host": _R.HOST,
    "init": _R.INIT,
    "ingress": _R.INGRESS,
    "unmanaged": _R.UNMANAGED,
    "remote-node": _R.REMOTE_NODE,
    "health": _R.HEALTH,
    "kube-apiserver": _R.KUBE_APISERVER,
}
_CLUSTER_RESERVED = ("host", "remote-node", "init", "ingress", "health", "unmanaged", "kube-apiserver")


def _reserved(name: str) -> Selector:
    return Selector([Requirement(RESERVED, name, EXISTS)])


WORLD_SELECTOR = _reserved("world")


def entity_selectors(entity: str, cluster_name: str) -> tuple[Selector, ...]:
    """The label selectors an entity stands for (`all`, `world-ipv4/6` are handled by the caller)."""
    if entity in _SINGLE:
        return (_reserved(_SINGLE[entity].label.split(":", 1)[1]),)
    if entity == "world":
        return (WORLD_SELECTOR,)
    if entity == "cluster":
        own = Selector([Requirement(K8S, POLICY_CLUSTER_LABEL, IN, (cluster_name,))])
        return (*(_reserved(n) for n in _CLUSTER_RESERVED), own)
    return ()
