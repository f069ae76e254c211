"""Selectors: source prefixes, matchExpressions, implicit namespaces, and the selector cache."""

from __future__ import annotations

import textwrap

from tendril.identity import IdentityAllocator, identity_labels
from tendril.policy import PolicyResolver, parse_policy_documents
from tendril.policy.rules import EndpointPeers
from tendril.policy.selector import (
    DOES_NOT_EXIST,
    EXISTS,
    IN,
    NOT_IN,
    Requirement,
    Selector,
    SelectorCache,
    selector_from_k8s,
)

WEB = identity_labels("shop", {"app": "web", "tier": "front"}, {"team": "blue"})
DB = identity_labels("shop", {"app": "db"}, {"team": "blue"})
OTHER_WEB = identity_labels("lab", {"app": "web"}, {"team": "red"})


def sel(
    labels: dict[str, str] | None = None, exprs: list[tuple[str, str, list[str]]] | None = None
) -> Selector:
    return selector_from_k8s(labels or {}, exprs or [])


def test_match_labels_sources() -> None:
    assert sel({"app": "web"}).matches_labels(WEB)  # no source = any source
    assert sel({"any:app": "web"}).matches_labels(WEB)
    assert sel({"k8s:app": "web"}).matches_labels(WEB)
    assert not sel({"reserved:app": "web"}).matches_labels(WEB)
    assert not sel({"app": "db"}).matches_labels(WEB)
    assert sel({"reserved:host": ""}).matches_labels({"reserved:host"})
    assert not sel({"reserved:host": ""}).matches_labels(WEB)
    assert sel().matches_labels(WEB) and sel().matches_labels({"reserved:world"})  # empty = everything
    assert sel({"app": "web", "tier": "front"}).matches_labels(WEB)
    assert not sel({"app": "web", "tier": "front"}).matches_labels(OTHER_WEB)  # AND


def test_match_expressions() -> None:
    assert sel(exprs=[("app", IN, ["web", "db"])]).matches_labels(DB)
    assert not sel(exprs=[("app", NOT_IN, ["web", "db"])]).matches_labels(DB)
    assert sel(exprs=[("tier", NOT_IN, ["back"])]).matches_labels(DB)  # absent key satisfies NotIn
    assert sel(exprs=[("tier", EXISTS, [])]).matches_labels(WEB)
    assert not sel(exprs=[("tier", EXISTS, [])]).matches_labels(DB)
    assert sel(exprs=[("tier", DOES_NOT_EXIST, [])]).matches_labels(DB)
    assert not sel(exprs=[("k8s:tier", DOES_NOT_EXIST, [])]).matches_labels(WEB)
    ns = "io.cilium.k8s.namespace.labels.team"
    assert sel({ns: "blue"}).matches_labels(WEB) and not sel({ns: "blue"}).matches_labels(OTHER_WEB)


def test_selectors_are_values() -> None:
    a = Selector([Requirement("k8s", "a", IN, ("1",)), Requirement("any", "b", EXISTS)])
    b = Selector([Requirement("any", "b", EXISTS), Requirement("k8s", "a", IN, ("1",))])
    assert a == b and hash(a) == hash(b) and len({a, b}) == 1


def _peer_selectors(doc: str) -> list[Selector]:
    (policy,) = parse_policy_documents(textwrap.dedent(doc), "p.yaml")
    (peer,) = policy.rules[0].peer_rules[0].peers
    assert isinstance(peer, EndpointPeers)
    return list(peer.selectors)


def _world() -> tuple[PolicyResolver, dict[str, int]]:
    alloc = IdentityAllocator()
    ids = {
        "web": alloc.acquire(WEB),
        "db": alloc.acquire(DB),
        "other": alloc.acquire(OTHER_WEB),
    }
    return PolicyResolver(alloc.identities()), ids


def test_cnp_peer_selectors_get_the_policy_namespace() -> None:
    resolver, ids = _world()
    cnp = """
        apiVersion: cilium.io/v2
        kind: CiliumNetworkPolicy
        metadata: {name: p, namespace: shop}
        spec:
          endpointSelector: {}
          ingress:
          - fromEndpoints:
            - {}
            - matchLabels: {app: web}
            - matchLabels: {app: web, k8s:io.kubernetes.pod.namespace: lab}
            - matchLabels: {io.cilium.k8s.namespace.labels.team: red}
            - matchLabels: {reserved:host: ""}
        """
    empty, web, explicit, by_ns_label, host = (resolver.cache.selections(s) for s in _peer_selectors(cnp))
    assert empty == {ids["web"], ids["db"]}  # `{}` = every pod of the policy's namespace
    assert web == {ids["web"]}
    assert explicit == {ids["other"]}  # naming the namespace overrides the implicit one
    assert by_ns_label == {ids["other"]}  # namespace labels select across namespaces
    assert host == {1}  # reserved selectors get no namespace


def test_ccnp_peer_selectors_need_a_namespace_but_not_a_particular_one() -> None:
    resolver, ids = _world()
    ccnp = """
        apiVersion: cilium.io/v2
        kind: CiliumClusterwideNetworkPolicy
        metadata: {name: p}
        spec:
          endpointSelector: {}
          ingress:
          - fromEndpoints: [{}, {matchLabels: {app: web}}]
        """
    everything, web = (resolver.cache.selections(s) for s in _peer_selectors(ccnp))
    assert everything == set(ids.values())  # every pod, but not host/world/...
    assert web == {ids["web"], ids["other"]}


def test_subject_selection_cnp_vs_ccnp() -> None:
    resolver, ids = _world()
    docs = parse_policy_documents(
        textwrap.dedent(
            """
            apiVersion: cilium.io/v2
            kind: CiliumNetworkPolicy
            metadata: {name: p, namespace: shop}
            spec: {endpointSelector: {matchLabels: {app: web}}, ingress: [{}]}
            ---
            apiVersion: cilium.io/v2
            kind: CiliumClusterwideNetworkPolicy
            metadata: {name: p}
            spec: {endpointSelector: {matchLabels: {app: web}}, ingress: [{}]}
            """
        ),
        "p.yaml",
    )
    cnp, ccnp = (d.rules[0] for d in docs)
    assert resolver.selects(cnp, ids["web"]) and not resolver.selects(cnp, ids["other"])
    assert resolver.selects(ccnp, ids["web"]) and resolver.selects(ccnp, ids["other"])
    assert not resolver.selects(ccnp, 1)  # endpoint selectors never select the host


def test_cache_evaluates_each_selector_identity_pair_once() -> None:
    alloc = IdentityAllocator()
    web = alloc.acquire(WEB)
    cache = SelectorCache(alloc.identities())
    s = sel({"app": "web"})
    assert cache.selections(s) == {web}
    first = cache.evaluations
    assert first == 1  # the inverted label index leaves one candidate to evaluate
    for _ in range(3):
        assert cache.matches(s, web)
        assert cache.selections(s) == {web}
    assert cache.evaluations == first
    # a new identity is evaluated once against the known selectors, the rest is kept
    other = alloc.acquire(OTHER_WEB)
    changed = cache.set_identities(alloc.identities())
    assert changed == {other}
    assert cache.selections(s) == {web, other}
    assert cache.evaluations == first + 1
    alloc.release(WEB)
    cache.set_identities(alloc.identities())
    assert cache.selections(s) == {other}
