"""Kubernetes NetworkPolicy: the classic recipes resolve to what Kubernetes users expect."""

from __future__ import annotations

import textwrap

from tendril.identity import IdentityAllocator, identity_labels
from tendril.policy import EndpointPolicy, LocalEndpoint, PolicyResolver, parse_policy_documents

TCP, UDP = 6, 17
PODS = {
    "web": ("shop", {"app": "web"}),
    "api": ("shop", {"app": "api"}),
    "lab-client": ("lab", {"app": "client"}),
    "monitoring": ("monitoring", {"app": "prometheus"}),
    "dns": ("kube-system", {"k8s-app": "kube-dns"}),
    "other-sys": ("kube-system", {"k8s-app": "metrics-server"}),
}
NS_LABELS = {"shop": {}, "lab": {}, "monitoring": {"purpose": "monitoring"}, "kube-system": {}}


class World:
    def __init__(self, doc: str) -> None:
        self.alloc = IdentityAllocator()
        self.ids = {
            n: self.alloc.acquire(identity_labels(ns, lb, NS_LABELS[ns])) for n, (ns, lb) in PODS.items()
        }
        self.cidr = {p: self.alloc.cidr_identity(p) for p in ("10.0.0.0/8", "10.1.0.0/16", "192.0.2.0/24")}
        head = "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: p, namespace: shop}\n"
        self.policies = parse_policy_documents(head + textwrap.dedent(doc), "np.yaml")
        self.resolver = PolicyResolver(self.alloc.identities(), allow_localhost=False)

    def resolve(self, who: str = "web") -> EndpointPolicy:
        return self.resolver.resolve(self.policies, LocalEndpoint(1, self.ids[who]))

    def allowed_from(self, who: str = "web", proto: int = TCP, port: int = 80) -> set[str]:
        ep = self.resolve(who)
        peers = {**self.ids, **self.cidr, "world": 2}
        return {name for name, n in peers.items() if ep.lookup(n, False, proto, port).allowed}

    def allowed_to(self, who: str = "web", proto: int = TCP, port: int = 80) -> set[str]:
        ep = self.resolve(who)
        peers = {**self.ids, **self.cidr, "world": 2}
        return {name for name, n in peers.items() if ep.lookup(n, True, proto, port).allowed}


ALL = {*PODS, "10.0.0.0/8", "10.1.0.0/16", "192.0.2.0/24", "world"}


def test_deny_all_ingress() -> None:
    w = World("spec:\n  podSelector: {}\n  policyTypes: [Ingress]\n")
    ep = w.resolve()
    assert ep.ingress_enforced and not ep.egress_enforced and ep.entries == ()
    assert w.allowed_from() == set()
    assert w.allowed_to() == ALL
    assert not w.resolve("lab-client").ingress_enforced  # other namespaces are untouched


def test_allow_all_ingress_and_default_policy_types() -> None:
    w = World("spec:\n  podSelector: {}\n  ingress: [{}]\n")
    assert w.allowed_from() == ALL
    assert not w.resolve().egress_enforced  # default policyTypes: [Ingress] when no egress rules
    both = World("spec:\n  podSelector: {}\n  egress: [{ports: [{port: 53, protocol: UDP}]}]\n").resolve()
    assert both.ingress_enforced and both.egress_enforced  # egress rules add Egress


def test_allow_from_same_namespace() -> None:
    w = World("spec:\n  podSelector: {matchLabels: {app: web}}\n  ingress: [{from: [{podSelector: {}}]}]\n")
    assert w.allowed_from() == {"web", "api"}
    assert not w.resolve("api").ingress_enforced  # podSelector picks web only


def test_allow_from_another_namespace_by_label() -> None:
    w = World(
        """
        spec:
          podSelector: {}
          ingress:
          - from:
            - namespaceSelector: {matchLabels: {purpose: monitoring}}
          - from:
            - namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: lab}}
              podSelector: {matchLabels: {app: client}}
        """
    )
    assert w.allowed_from() == {"monitoring", "lab-client"}


def test_namespace_and_pod_selector_and_vs_or() -> None:
    anded = World(
        """
        spec:
          podSelector: {}
          ingress:
          - from: [{namespaceSelector: {}, podSelector: {matchLabels: {k8s-app: kube-dns}}}]
        """
    )
    assert anded.allowed_from() == {"dns"}  # namespaceSelector {} = every namespace
    ored = World(
        """
        spec:
          podSelector: {}
          ingress:
          - from: [{namespaceSelector: {}}, {podSelector: {matchLabels: {app: api}}}]
        """
    )
    assert ored.allowed_from() == set(PODS)  # every pod, but not world or CIDRs


def test_allow_only_one_port() -> None:
    w = World(
        """
        spec:
          podSelector: {matchLabels: {app: web}}
          ingress:
          - ports: [{port: 8080}]
        """
    )
    assert w.allowed_from(port=8080) == ALL
    assert w.allowed_from(port=80) == set()
    assert w.allowed_from(proto=UDP, port=8080) == set()  # protocol defaults to TCP


def test_deny_egress_except_dns() -> None:
    w = World(
        """
        spec:
          podSelector: {}
          policyTypes: [Egress]
          egress:
          - to:
            - namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: kube-system}}
              podSelector: {matchLabels: {k8s-app: kube-dns}}
            ports:
            - {port: 53, protocol: UDP}
            - {port: 53, protocol: TCP}
        """
    )
    ep = w.resolve()
    assert ep.egress_enforced and not ep.ingress_enforced
    assert w.allowed_to(proto=UDP, port=53) == {"dns"}
    assert w.allowed_to(proto=TCP, port=53) == {"dns"}
    assert w.allowed_to(proto=TCP, port=80) == set()
    assert w.allowed_from() == ALL


def test_ip_block_with_except_and_port_range() -> None:
    w = World(
        """
        spec:
          podSelector: {}
          policyTypes: [Egress]
          egress:
          - to: [{ipBlock: {cidr: 10.0.0.0/8, except: [10.1.0.0/16]}}]
            ports: [{port: 32000, endPort: 32768}]
        """
    )
    assert w.allowed_to(port=32000) == {"10.0.0.0/8"}
    assert w.allowed_to(port=32768) == {"10.0.0.0/8"}
    assert w.allowed_to(port=32769) == set()


def test_named_port_from_the_pod_spec() -> None:
    w = World("spec:\n  podSelector: {}\n  ingress: [{ports: [{port: http}]}]\n")
    ep = w.resolver.resolve(w.policies, LocalEndpoint(1, w.ids["web"], {"http": (8080, TCP)}))
    assert [(e.identity, e.proto, e.port_lo) for e in ep.entries] == [(0, TCP, 8080)]
