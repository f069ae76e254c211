"""The internal rule form both document formats compile to, and resolution consumes.

A `Policy` (one document) holds `Rule`s (one per CNP spec, one per NetworkPolicy); a `Rule` selects
subject endpoints and holds `PeerRule`s, each one ingress or egress, allow or deny: "these peers, on
these ports". Everything here is immutable and validated; resolution never fails on a rule.
Rules hash by identity (eq=False) so resolution can cache per rule object cheaply.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from typing import Any

from tendril.policy.l7 import DNSMatch, L7Rules
from tendril.policy.selector import Selector

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

CNP = "CiliumNetworkPolicy"
CCNP = "CiliumClusterwideNetworkPolicy"
KNP = "NetworkPolicy"


@dataclass(frozen=True, slots=True)
class PortSpec:
    """One L4 match. `proto` None means ANY (TCP, UDP and SCTP, as in Cilium).

    `port_lo`/`port_hi` is an inclusive range, (0, 0) = every port. For ICMP/ICMPv6 the "port" is the
    ICMP type. `name` is a named port, resolved per endpoint (ingress) or per peer (egress).
    """

    proto: int | None
    port_lo: int = 0
    port_hi: int = 0
    name: str | None = None


@dataclass(frozen=True, slots=True)
class AllPeers:
    """Any peer at all (entity `all`, a rule with ports but no peers, Kubernetes' empty `from`)."""


@dataclass(frozen=True, slots=True)
class EndpointPeers:
    """Identities picked by label selectors (namespace scoping already folded in)."""

    selectors: tuple[Selector, ...]


@dataclass(frozen=True, slots=True)
class EntityPeers:
    entities: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class CIDRPeer:
    """External peers in `prefix`, minus `excepts` (which get their own, unselected, identities)."""

    prefix: IPNetwork
    excepts: tuple[IPNetwork, ...] = ()


@dataclass(frozen=True, eq=False)
class FQDNPeer:
    """`toFQDNs`: the IPs the DNS proxy saw in allowed answers for matching names (FQDN cache),
    each selected through its /32 or /128 CIDR identity while its TTL lasts."""

    matchers: tuple[DNSMatch, ...]

    def matches(self, name: str) -> bool:
        return any(m.matches(name) for m in self.matchers)


@dataclass(frozen=True, slots=True)
class NoPeers:
    """A peer kind tendril cannot enforce yet in an allow rule: it selects nothing (fails closed)."""

    reason: str


Peer = AllPeers | EndpointPeers | EntityPeers | CIDRPeer | FQDNPeer | NoPeers


@dataclass(frozen=True, eq=False)
class PeerRule:
    """Allow or deny `peers` on `ports` in one direction. `ports` None = all traffic (L3 only)."""

    egress: bool
    deny: bool
    peers: tuple[Peer, ...]
    ports: tuple[PortSpec, ...] | None
    ref: str
    l7: bool = False
    #: HTTP rules the proxy enforces on these ports (None: plain L3/L4 allow, or L7 not enforced)
    l7_rules: L7Rules | None = None


@dataclass(frozen=True, eq=False)
class Rule:
    """Which endpoints a rule applies to, whether it makes them default-deny, and its peer rules.

    `host` rules (CCNP `nodeSelector`) select only the host endpoint; other rules never select it.
    """

    subject: Selector
    host: bool
    ingress_default_deny: bool
    egress_default_deny: bool
    peer_rules: tuple[PeerRule, ...]
    ref: str


@dataclass(frozen=True, eq=False)
class Policy:
    """One validated policy document. `namespace` is None for cluster-wide policies."""

    kind: str
    namespace: str | None
    name: str
    source: str
    rules: tuple[Rule, ...]
    notices: tuple[str, ...] = ()
    document: dict[str, Any] = field(default_factory=dict)

    @property
    def key(self) -> tuple[str, str, str]:
        """(kind, namespace, name): what identifies the object, as in Kubernetes."""
        return (self.kind, self.namespace or "", self.name)

    def __repr__(self) -> str:
        where = f"{self.namespace}/" if self.namespace else ""
        return f"<Policy {self.kind} {where}{self.name}: {len(self.rules)} rules>"
