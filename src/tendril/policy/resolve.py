"""Policy resolution: policies + identities -> each local endpoint's policy-map entries.

Rules (Cilium's, see docs.cilium.io "Policy Enforcement Modes" and the policy language):

- An endpoint selected by a rule that is default-deny in a direction is enforced (default deny) in
  that direction; allow entries are only written for enforced directions, deny entries always.
- Peers become identities: label selectors via the selector cache, entities via `entities.py`, CIDR
  rules via CIDR identities (`cidr.py`); "any peer" is identity 0.
- Ports become (protocol, port prefix) keys: ANY = TCP+UDP+SCTP, no ports at all = any protocol.
  Named ports resolve against the endpoint's own ports on ingress and the peer's on egress.
- Deny beats allow, including across port specificity (`policymap.build_entries`).
- More than `max_entries` map entries (16384 like Cilium) -> `PolicyMapFull` naming the endpoint.
- `allow_localhost` (Cilium's default `allow-localhost`): the local host may always reach endpoints
  whose ingress is enforced (kubelet probes), unless a deny rule says otherwise.

Host policies (CCNP `nodeSelector`) select the endpoint whose identity is HOST (1), matched against
the labels the identity map gives id 1: add the node's labels there (`k8s:<key>=<value>` next to
`reserved:host`) for node selectors to match.

Endpoints with the same identity and named ports share one computation; peer sets and keys are
cached per rule object and recomputed only when the identity universe changes.
"""

from __future__ import annotations

import ipaddress
import weakref
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

from tendril.identity.labels import CIDR, K8S, POD_NAMESPACE_LABEL
from tendril.identity.reserved import LOCAL_ID_MIN, ReservedIdentity
from tendril.policy.cidr import selects_prefix
from tendril.policy.constants import ANY_EXPANSION, POLICY_MAX_ENTRIES
from tendril.policy.entities import entity_selectors
from tendril.policy.errors import PolicyMapFull
from tendril.policy.policymap import EndpointPolicy, Key, KeyTable, PolicyEntry, build_entries
from tendril.policy.ports import port_prefixes
from tendril.policy.rules import (
    AllPeers,
    CIDRPeer,
    EndpointPeers,
    EntityPeers,
    FQDNPeer,
    IPNetwork,
    PeerRule,
    Policy,
    PortSpec,
    Rule,
)
from tendril.policy.selector import IN, SelectorCache

HOST = int(ReservedIdentity.HOST)
WORLD = int(ReservedIdentity.WORLD)
#: named ports of peers: identity -> {name: {(port, proto), ...}}; identity 0 = every peer's
PeerNamedPorts = Callable[[int], Mapping[str, Collection[tuple[int, int]]]]
Enforcement = Literal["default", "always", "never"]
#: (proto, first port, port prefix bits)
ProtoPort = tuple[int, int, int]


@dataclass(frozen=True)
class LocalEndpoint:
    """An endpoint on this node. `named_ports`: container port name -> (port, IP protocol number)."""

    endpoint_id: int
    identity: int
    named_ports: Mapping[str, tuple[int, int]] = field(default_factory=dict)
    name: str = ""


@dataclass
class ResolveResult:
    policies: dict[int, EndpointPolicy] = field(default_factory=dict)
    errors: dict[int, PolicyMapFull] = field(default_factory=dict)


def _no_named_ports(_identity: int) -> Mapping[str, Collection[tuple[int, int]]]:
    return {}


def proto_ports(spec: PortSpec) -> list[ProtoPort]:
    protos = ANY_EXPANSION if spec.proto is None else (spec.proto,)
    prefixes = port_prefixes(spec.port_lo, spec.port_hi)
    return [(int(p), port, bits) for p in protos for port, bits in prefixes]


def named_proto_ports(spec: PortSpec, ports: Iterable[tuple[int, int]]) -> list[ProtoPort]:
    """Named-port matches: the rule's protocol (ANY = TCP/UDP/SCTP) must agree with the port's."""
    allowed = ANY_EXPANSION if spec.proto is None else (spec.proto,)
    return [(proto, port, 16) for port, proto in ports if proto in allowed and 1 <= port <= 65535]


class PolicyResolver:
    """Computes `EndpointPolicy`s. Keep one per agent; feed it identity changes via `set_identities`."""

    def __init__(
        self,
        identities: Mapping[int, frozenset[str]] | None = None,
        *,
        cluster_name: str = "default",
        allow_localhost: bool = True,
        enforcement: Enforcement = "default",
        max_entries: int = POLICY_MAX_ENTRIES,
        peer_named_ports: PeerNamedPorts | None = None,
        proxy_port: int = 0,
        dns_proxy_port: int = 0,
        fqdn_prefixes: Callable[[FQDNPeer], frozenset[IPNetwork]] | None = None,
    ) -> None:
        self.cache = SelectorCache()
        self.cluster_name = cluster_name
        self.allow_localhost = allow_localhost
        self.enforcement = enforcement
        self.max_entries = max_entries
        self.peer_named_ports = peer_named_ports or _no_named_ports
        self.proxy_port = proxy_port  # the node's L7 proxy; 0 = none (HTTP rules not enforced)
        self.dns_proxy_port = dns_proxy_port  # the node's DNS proxy; 0 = none (DNS rules not enforced)
        self.fqdn_prefixes = fqdn_prefixes or (lambda peer: frozenset())  # toFQDNs: cached IPs
        self._cidr_ids: list[tuple[int, IPNetwork]] = []
        self._peer_ids: weakref.WeakKeyDictionary[PeerRule, frozenset[int]] = weakref.WeakKeyDictionary()
        self._keys: weakref.WeakKeyDictionary[PeerRule, tuple[Key, ...]] = weakref.WeakKeyDictionary()
        self._entries: dict[tuple, PolicyEntry] = {}  # shared entry objects
        if identities:
            self.set_identities(identities)

    # ---- identities ----------------------------------------------------------------------------
    def set_identities(self, identities: Mapping[int, frozenset[str]]) -> None:
        """The full id -> labels map (reserved, cluster and CIDR identities), whenever it changes."""
        if not self.cache.set_identities(identities):
            return
        self._peer_ids.clear()
        self._keys.clear()
        self._entries.clear()
        cidrs = []
        for n, labels in identities.items():
            if n >= LOCAL_ID_MIN:
                for lbl in labels:
                    if lbl.startswith(f"{CIDR}:"):
                        cidrs.append((n, ipaddress.ip_network(lbl[len(CIDR) + 1 :])))
        self._cidr_ids = cidrs

    # ---- peers ---------------------------------------------------------------------------------
    def peer_identities(self, pr: PeerRule) -> frozenset[int]:
        """Identities a peer rule selects; {0} when it selects any peer."""
        hit = self._peer_ids.get(pr)
        if hit is None:
            hit = self._peer_ids[pr] = self._compute_peers(pr)
        return hit

    def _compute_peers(self, pr: PeerRule) -> frozenset[int]:
        ids: set[int] = set()
        sel = self.cache.selections
        for peer in pr.peers:
            if isinstance(peer, AllPeers):
                return frozenset({0})
            if isinstance(peer, EndpointPeers):
                for s in peer.selectors:
                    ids |= sel(s)
            elif isinstance(peer, EntityPeers):
                for ent in peer.entities:
                    if ent == "all":
                        return frozenset({0})
                    if ent in ("world-ipv4", "world-ipv6"):
                        version = 4 if ent == "world-ipv4" else 6
                        ids.add(WORLD)
                        ids.update(n for n, net in self._cidr_ids if net.version == version)
                    for s in entity_selectors(ent, self.cluster_name):
                        ids |= sel(s)
            elif isinstance(peer, CIDRPeer):
                if peer.prefix.prefixlen == 0:
                    ids.add(WORLD)
                ids.update(n for n, net in self._cidr_ids if selects_prefix(peer, net))
            elif isinstance(peer, FQDNPeer):
                nets = self.fqdn_prefixes(peer)
                ids.update(n for n, net in self._cidr_ids if net in nets)
        return frozenset(ids)

    def fqdn_changed(self) -> None:
        """The FQDN cache changed: toFQDNs peers select other identities now."""
        self._peer_ids.clear()
        self._keys.clear()
        self._entries.clear()

    def _static_keys(self, pr: PeerRule) -> tuple[Key, ...]:
        """Keys of a peer rule that do not depend on named ports (cached per rule)."""
        hit = self._keys.get(pr)
        if hit is None:
            pps: list[ProtoPort]
            if pr.ports is None:
                pps = [(0, 0, 0)]
            else:
                pps = [pp for spec in pr.ports if spec.name is None for pp in proto_ports(spec)]
            ids = self.peer_identities(pr)
            hit = self._keys[pr] = tuple(
                (i, pr.egress, *pp) for i in sorted(ids) for pp in dict.fromkeys(pps)
            )
        return hit

    def _named_keys(self, pr: PeerRule, ep: LocalEndpoint) -> list[Key]:
        named = [s for s in pr.ports or () if s.name is not None]
        if not named:
            return []
        out: list[Key] = []
        if not pr.egress:
            for spec in named:
                own = ep.named_ports.get(spec.name)  # type: ignore[arg-type]
                if own is not None:
                    pps = named_proto_ports(spec, [own])
                    out.extend((i, False, *pp) for i in self.peer_identities(pr) for pp in pps)
            return out
        for i in self.peer_identities(pr):
            theirs = self.peer_named_ports(i)
            for spec in named:
                out.extend((i, True, *pp) for pp in named_proto_ports(spec, theirs.get(spec.name, ())))  # type: ignore[arg-type]
        return out

    # ---- endpoints -----------------------------------------------------------------------------
    def selects(self, rule: Rule, identity: int) -> bool:
        """Whether a rule applies to endpoints of this identity (host rules only to the host)."""
        if rule.host != (identity == HOST):
            return False
        return self.cache.matches(rule.subject, identity)

    def resolve(self, policies: Sequence[Policy], endpoint: LocalEndpoint) -> EndpointPolicy:
        """One endpoint's policy; raises PolicyMapFull when it does not fit the map."""
        result = self.resolve_all(policies, [endpoint])
        if endpoint.endpoint_id in result.errors:
            raise result.errors[endpoint.endpoint_id]
        return result.policies[endpoint.endpoint_id]

    def resolve_all(self, policies: Sequence[Policy], endpoints: Iterable[LocalEndpoint]) -> ResolveResult:
        """Every endpoint's policy; one endpoint's overflow does not stop the others."""
        index = _RuleIndex(policies)
        out = ResolveResult()
        shared: dict[tuple[int, frozenset[tuple[str, tuple[int, int]]]], EndpointPolicy] = {}
        for ep in endpoints:
            if ep.identity not in self.cache.identities:
                raise ValueError(
                    f"endpoint {ep.endpoint_id}: identity {ep.identity} is unknown to the resolver"
                )
            key = (ep.identity, frozenset(ep.named_ports.items()))
            base = shared.get(key)
            if base is None:
                base = shared[key] = self._compute(index, ep)
            if base.map_entries > self.max_entries:
                err = PolicyMapFull(ep.endpoint_id, ep.name, base.map_entries, self.max_entries)
                out.errors[ep.endpoint_id] = err
                continue
            out.policies[ep.endpoint_id] = EndpointPolicy(
                ep.endpoint_id,
                ep.identity,
                base.ingress_enforced,
                base.egress_enforced,
                base.entries,
                base.notices,
            )
        return out

    def _namespace_of(self, identity: int) -> str | None:
        for source, value in self.cache.index(identity).get(POD_NAMESPACE_LABEL, ()):
            if source == K8S:
                return value
        return None

    def _compute(self, index: _RuleIndex, ep: LocalEndpoint) -> EndpointPolicy:
        selected: list[Rule] = []
        notices: dict[str, None] = {}
        for policy, rule in index.candidates(self._namespace_of(ep.identity)):
            if self.selects(rule, ep.identity):
                selected.append(rule)
                notices.update(dict.fromkeys(policy.notices))
        if self.enforcement == "never":
            return EndpointPolicy(ep.endpoint_id, ep.identity, False, False, ())
        always = self.enforcement == "always"
        ingress = always or any(r.ingress_default_deny for r in selected)
        egress = always or any(r.egress_default_deny for r in selected)
        table = KeyTable()
        for rule in selected:
            for pr in rule.peer_rules:
                if not pr.deny and not (egress if pr.egress else ingress):
                    continue
                table.add_many(self._static_keys(pr), pr.deny, pr.ref, pr.l7_rules)
                named = self._named_keys(pr, ep)
                if named:
                    table.add_many(named, pr.deny, pr.ref, pr.l7_rules)
        if self.allow_localhost and ingress and ep.identity != HOST:
            table.add((HOST, False, 0, 0, 0), False, "allow-localhost")
        entries = tuple(build_entries(table, self._entries, self.proxy_port, self.dns_proxy_port))
        return EndpointPolicy(ep.endpoint_id, ep.identity, ingress, egress, entries, tuple(notices))


class _RuleIndex:
    """Rules bucketed by the namespace their subject is pinned to, in policy-key order.

    Every CNP/NetworkPolicy subject names its namespace, so an endpoint only needs to test the rules
    of its own namespace plus the cluster-wide ones instead of all of them.
    """

    def __init__(self, policies: Sequence[Policy]) -> None:
        self._by_ns: dict[str | None, list[tuple[int, Policy, Rule]]] = {}
        pos = 0
        for policy in sorted(policies, key=lambda p: p.key):
            for rule in policy.rules:
                self._by_ns.setdefault(_pinned_namespace(rule), []).append((pos, policy, rule))
                pos += 1
        self._merged: dict[str | None, list[tuple[Policy, Rule]]] = {}

    def candidates(self, namespace: str | None) -> list[tuple[Policy, Rule]]:
        hit = self._merged.get(namespace)
        if hit is None:
            rows = self._by_ns.get(None, []) + (self._by_ns.get(namespace, []) if namespace else [])
            hit = self._merged[namespace] = [(p, r) for _, p, r in sorted(rows, key=lambda row: row[0])]
        return hit


def _pinned_namespace(rule: Rule) -> str | None:
    for req in rule.subject.requirements:
        if req.source == K8S and req.key == POD_NAMESPACE_LABEL and req.op == IN and len(req.values) == 1:
            return req.values[0]
    return None
