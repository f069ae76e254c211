"""Kubernetes NetworkPolicy (networking.k8s.io/v1) as a document, field for field."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, field_validator

from tendril.policy.model.common import LabelSelector, ObjectMeta, Strict


class IPBlock(Strict):
    cidr: str
    except_: list[str] = Field(default_factory=list, alias="except")


class NetworkPolicyPeer(Strict):
    podSelector: LabelSelector | None = None
    namespaceSelector: LabelSelector | None = None
    ipBlock: IPBlock | None = None


class NetworkPolicyPort(Strict):
    protocol: Literal["TCP", "UDP", "SCTP"] = "TCP"
    port: int | str | None = None
    endPort: int | None = None

    @field_validator("port", mode="before")
    @classmethod
    def _port(cls, v: Any) -> Any:
        # one error message for any bad type instead of pydantic's per-union-member ones
        if v is None or isinstance(v, str) or (isinstance(v, int) and not isinstance(v, bool)):
            return v
        raise ValueError("must be a port number or a port name")


class NetworkPolicyIngressRule(Strict):
    from_: list[NetworkPolicyPeer] | None = Field(default=None, alias="from")
    ports: list[NetworkPolicyPort] | None = None


class NetworkPolicyEgressRule(Strict):
    to: list[NetworkPolicyPeer] | None = None
    ports: list[NetworkPolicyPort] | None = None


class NetworkPolicySpec(Strict):
    podSelector: LabelSelector
    ingress: list[NetworkPolicyIngressRule] | None = None
    egress: list[NetworkPolicyEgressRule] | None = None
    policyTypes: list[Literal["Ingress", "Egress"]] | None = None


class NetworkPolicy(Strict):
    apiVersion: Literal["networking.k8s.io/v1"]
    kind: Literal["NetworkPolicy"]
    metadata: ObjectMeta
    spec: NetworkPolicySpec
