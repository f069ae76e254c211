"""CiliumNetworkPolicy / CiliumClusterwideNetworkPolicy (cilium.io/v2) as documents.

The schema follows Cilium's CRDs field for field so existing policies parse unchanged; semantic
checks (ports, CIDRs, entities, combinations Cilium rejects) live in `tendril.policy.model.compile_cilium`,
which knows the field paths for its errors.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, field_validator

from tendril.policy.model.common import EndpointSelector, ObjectMeta, Strict


def _port_text(v: Any) -> Any:
    """Cilium's `port` is a string; a bare YAML number is accepted and means the same."""
    if isinstance(v, int) and not isinstance(v, bool):
        return str(v)
    return v


class PortProtocol(Strict):
    port: str | None = None
    endPort: int | None = None
    protocol: str = "ANY"

    _port = field_validator("port", mode="before")(_port_text)


class HTTPRule(Strict):
    method: str | None = None
    path: str | None = None
    host: str | None = None
    headers: list[str] | None = None
    headerMatches: list[dict[str, Any]] | None = None


class DNSRule(Strict):
    matchName: str | None = None
    matchPattern: str | None = None


class KafkaRule(Strict):
    role: str | None = None
    apiKey: str | None = None
    apiVersion: str | None = None
    clientID: str | None = None
    topic: str | None = None


class L7Rules(Strict):
    http: list[HTTPRule] | None = None
    kafka: list[KafkaRule] | None = None
    dns: list[DNSRule] | None = None
    l7proto: str | None = None
    l7: list[dict[str, str]] | None = None

    def kinds(self) -> list[str]:
        """Which L7 protocols this names (empty lists count: `http: [{}]` still needs a proxy)."""
        out = [k.upper() for k in ("http", "kafka", "dns") if getattr(self, k) is not None]
        if self.l7proto:
            out.append(self.l7proto)
        return out


class PortRule(Strict):
    ports: list[PortProtocol] = Field(default_factory=list)
    rules: L7Rules | None = None
    terminatingTLS: dict[str, Any] | None = None
    originatingTLS: dict[str, Any] | None = None
    serverNames: list[str] | None = None
    listener: dict[str, Any] | None = None


class PortDenyRule(Strict):
    ports: list[PortProtocol] = Field(default_factory=list)


class ICMPField(Strict):
    family: Literal["IPv4", "IPv6"] = "IPv4"
    type: int | str


class ICMPRule(Strict):
    fields: list[ICMPField] = Field(default_factory=list)


class CIDRRule(Strict):
    cidr: str | None = None
    except_: list[str] = Field(default_factory=list, alias="except")
    cidrGroupRef: str | None = None
    cidrGroupSelector: EndpointSelector | None = None


class FQDNSelector(Strict):
    matchName: str | None = None
    matchPattern: str | None = None


class Authentication(Strict):
    mode: str


class _IngressCommon(Strict):
    fromEndpoints: list[EndpointSelector] | None = None
    fromRequires: list[EndpointSelector] | None = None
    fromCIDR: list[str] | None = None
    fromCIDRSet: list[CIDRRule] | None = None
    fromEntities: list[str] | None = None
    fromGroups: list[dict[str, Any]] | None = None
    fromNodes: list[EndpointSelector] | None = None
    icmps: list[ICMPRule] | None = None


class IngressRule(_IngressCommon):
    toPorts: list[PortRule] | None = None
    authentication: Authentication | None = None


class IngressDenyRule(_IngressCommon):
    toPorts: list[PortDenyRule] | None = None


class _EgressCommon(Strict):
    toEndpoints: list[EndpointSelector] | None = None
    toRequires: list[EndpointSelector] | None = None
    toCIDR: list[str] | None = None
    toCIDRSet: list[CIDRRule] | None = None
    toEntities: list[str] | None = None
    toServices: list[dict[str, Any]] | None = None
    toGroups: list[dict[str, Any]] | None = None
    toNodes: list[EndpointSelector] | None = None
    icmps: list[ICMPRule] | None = None


class EgressRule(_EgressCommon):
    toPorts: list[PortRule] | None = None
    toFQDNs: list[FQDNSelector] | None = None
    authentication: Authentication | None = None


class EgressDenyRule(_EgressCommon):
    toPorts: list[PortDenyRule] | None = None


class DefaultDeny(Strict):
    ingress: bool | None = None
    egress: bool | None = None


class RuleLabel(Strict):
    key: str
    value: str = ""
    source: str = ""


class Rule(Strict):
    endpointSelector: EndpointSelector | None = None
    nodeSelector: EndpointSelector | None = None
    ingress: list[IngressRule] | None = None
    ingressDeny: list[IngressDenyRule] | None = None
    egress: list[EgressRule] | None = None
    egressDeny: list[EgressDenyRule] | None = None
    labels: list[RuleLabel] | None = None
    description: str | None = None
    enableDefaultDeny: DefaultDeny | None = None


class CiliumNetworkPolicy(Strict):
    apiVersion: Literal["cilium.io/v2"]
    kind: Literal["CiliumNetworkPolicy"]
    metadata: ObjectMeta
    spec: Rule | None = None
    specs: list[Rule] | None = None


class CiliumClusterwideNetworkPolicy(Strict):
    apiVersion: Literal["cilium.io/v2"]
    kind: Literal["CiliumClusterwideNetworkPolicy"]
    metadata: ObjectMeta
    spec: Rule | None = None
    specs: list[Rule] | None = None
