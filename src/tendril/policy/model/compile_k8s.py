"""Kubernetes NetworkPolicy documents -> the same internal rules as Cilium policies.

Kubernetes semantics (as Cilium translates them, pkg/k8s/network_policy.go):

- `policyTypes` defaults to [Ingress], plus Egress when the policy has egress rules; a listed type
  without rules denies everything in that direction. Rules of a type not listed are ignored by
  Kubernetes; tendril reports that as a notice instead of ignoring it silently.
- `podSelector: {}` selects every pod of the policy's namespace.
- A rule with no (or an empty) `from`/`to` allows every peer; no (or empty) `ports` allows every
  port and protocol; `ingress: [{}]` therefore allows everything.
- A peer's `podSelector` alone means pods of the policy's namespace; `namespaceSelector` alone means
  every pod of the matching namespaces (`{}` = all namespaces); both in one peer means AND.
- `ipBlock` (with `except`) selects external addresses by CIDR, like Cilium's `fromCIDRSet`.
"""

from __future__ import annotations

from tendril.identity.labels import K8S, NAMESPACE_LABELS_PREFIX, POD_NAMESPACE_LABEL
from tendril.policy.cidr import check_except, parse_cidr
from tendril.policy.errors import invalid
from tendril.policy.model.k8s import NetworkPolicy, NetworkPolicyPeer, NetworkPolicyPort
from tendril.policy.ports import K8S_PROTOCOLS, check_end_port, parse_port
from tendril.policy.rules import AllPeers, CIDRPeer, EndpointPeers, Peer, PeerRule, PortSpec, Rule
from tendril.policy.selector import EXISTS, IN, Requirement, Selector


def compile_k8s(doc: NetworkPolicy, namespace: str, ref_prefix: str) -> tuple[tuple[Rule, ...], list[str]]:
    """Validate a NetworkPolicy's semantics and build its one rule; FieldError names the field."""
    spec = doc.spec
    notices: list[str] = []
    types = spec.policyTypes
    if types is not None:
        for t in ("Ingress", "Egress"):
            if types.count(t) > 1:  # type: ignore[arg-type]
                raise invalid("spec.policyTypes", f"lists {t} more than once")
    else:
        types = ["Ingress", "Egress"] if spec.egress else ["Ingress"]
    ns_req = Requirement(K8S, POD_NAMESPACE_LABEL, IN, (namespace,))
    subject = spec.podSelector.to_selector(default_source=K8S).plus(ns_req)

    peer_rules: list[PeerRule] = []
    for section, type_name, egress in (("ingress", "Ingress", False), ("egress", "Egress", True)):
        rules = getattr(spec, section) or []
        if type_name not in types:
            if rules:
                notices.append(f"spec.{section}: ignored, spec.policyTypes does not include {type_name}")
            continue
        peer_field = "to" if egress else "from"
        for i, r in enumerate(rules):
            path = f"spec.{section}[{i}]"
            raw_peers = r.to if egress else r.from_  # type: ignore[union-attr]
            peers: tuple[Peer, ...] = (
                tuple(_peer(p, f"{path}.{peer_field}[{j}]", namespace) for j, p in enumerate(raw_peers))
                if raw_peers
                else (AllPeers(),)
            )
            ports = tuple(_port(p, f"{path}.ports[{j}]") for j, p in enumerate(r.ports)) if r.ports else None
            peer_rules.append(PeerRule(egress, False, peers, ports, f"{ref_prefix}:{path}"))
    rule = Rule(
        subject=subject,
        host=False,
        ingress_default_deny="Ingress" in types,
        egress_default_deny="Egress" in types,
        peer_rules=tuple(peer_rules),
        ref=f"{ref_prefix}:spec",
    )
    return (rule,), notices


def _peer(peer: NetworkPolicyPeer, path: str, namespace: str) -> Peer:
    if peer.ipBlock is not None:
        if peer.podSelector is not None or peer.namespaceSelector is not None:
            raise invalid(path, "ipBlock cannot be combined with podSelector or namespaceSelector")
        try:
            prefix = parse_cidr(peer.ipBlock.cidr, allow_bare_ip=False)
        except ValueError as e:
            raise invalid(f"{path}.ipBlock.cidr", str(e)) from None
        excepts = []
        for k, text in enumerate(peer.ipBlock.except_):
            try:
                exc = parse_cidr(text, allow_bare_ip=False)
                check_except(prefix, exc)
            except ValueError as e:
                raise invalid(f"{path}.ipBlock.except[{k}]", str(e)) from None
            excepts.append(exc)
        return CIDRPeer(prefix, tuple(dict.fromkeys(excepts)))
    if peer.podSelector is None and peer.namespaceSelector is None:
        raise invalid(path, "a peer needs podSelector, namespaceSelector or ipBlock")
    sel = peer.podSelector.to_selector(default_source=K8S) if peer.podSelector is not None else Selector()
    if peer.namespaceSelector is None:
        sel = sel.plus(Requirement(K8S, POD_NAMESPACE_LABEL, IN, (namespace,)))
    else:
        ns_sel = peer.namespaceSelector.to_selector(default_source=K8S, key_prefix=NAMESPACE_LABELS_PREFIX)
        # "has a namespace" keeps NotIn/DoesNotExist namespace selectors from matching non-pods
        sel = sel.plus(*ns_sel.requirements, Requirement(K8S, POD_NAMESPACE_LABEL, EXISTS))
    return EndpointPeers((sel,))


def _port(p: NetworkPolicyPort, path: str) -> PortSpec:
    proto = K8S_PROTOCOLS[p.protocol]
    if p.port is None:
        if p.endPort is not None:
            raise invalid(f"{path}.endPort", "endPort needs a numeric port")
        return PortSpec(proto)
    try:
        number, name = parse_port(p.port)
    except ValueError as e:
        raise invalid(f"{path}.port", str(e)) from None
    if p.endPort is not None:
        try:
            check_end_port(number, p.endPort)
        except ValueError as e:
            raise invalid(f"{path}.endPort", str(e)) from None
    if name is not None:
        return PortSpec(proto, name=name)
    assert number is not None
    return PortSpec(proto, number, p.endPort or number)
