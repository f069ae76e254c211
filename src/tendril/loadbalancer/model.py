"""Kubernetes Service objects (apiVersion v1, kind Service), validated strictly.

Structure is checked by pydantic (unknown fields are errors, as with `kubectl apply
--validate=strict`), then the cross-field rules Kubernetes' API server enforces (named multi-port
services, unique port/protocol pairs, clusterIP vs clusterIPs vs ipFamilies, ...) are checked here,
so a Service that reaches the allocator and the load balancer is one the API server would accept.
Errors are one line naming the file, the object and the field, like the lab's other manifests:
`<file>: Service 'web': unknown field "spec.prots"`.

What the lab does not implement is rejected with a clear "not supported" message instead of being
silently ignored (type LoadBalancer/ExternalName, SCTP, externalTrafficPolicy Local).
"""

from __future__ import annotations

import ipaddress
import re
from functools import cached_property
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, StrictInt, ValidationError, field_validator

from tendril.common.manifests import DNS1123_LABEL, pydantic_message
from tendril.loadbalancer.errors import FieldError, ServiceValidationError, invalid, missing
from tendril.policy.selector import label_key_error, label_value_error

SUPPORTED_TYPES = ("ClusterIP", "NodePort")
SUPPORTED_PROTOCOLS = ("TCP", "UDP")
NODE_PORT_RANGE = (30000, 32767)
DEFAULT_AFFINITY_TIMEOUT = 10800  # Kubernetes' default for sessionAffinity ClientIP (3 hours)
MAX_AFFINITY_TIMEOUT = 86400
FAMILY_POLICIES = ("SingleStack", "PreferDualStack", "RequireDualStack")
FAMILY_NAMES = {"IPv4": 4, "IPv6": 6}
#: Cilium's per-service annotation for the backend selection algorithm
LB_ALGORITHM_ANNOTATION = "service.cilium.io/lb-algorithm"
LB_ALGORITHMS = ("random", "maglev")

_DNS1035_LABEL = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
_IANA_SVC_NAME = re.compile(r"^[a-z0-9]([a-z0-9-]*[a-z0-9])?$")

Port = Annotated[StrictInt, Field(ge=1, le=65535)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True, frozen=True)


def port_name_error(name: str) -> str | None:
    """Why a container/target port name is not an IANA_SVC_NAME (the rule Kubernetes applies)."""
    if len(name) > 15 or not _IANA_SVC_NAME.match(name) or "--" in name or not any(c.isalpha() for c in name):
        return (
            f"{name!r} is not a valid port name: at most 15 lowercase letters, digits and '-', "
            "with at least one letter, no '--', not starting or ending with '-'"
        )
    return None


class ServiceMeta(_Strict):
    name: str
    namespace: str | None = None
    labels: dict[str, str] = Field(default_factory=dict)
    annotations: dict[str, str] = Field(default_factory=dict)

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        # Service names become DNS labels (<svc>.<ns>.svc), hence the stricter DNS-1035 rule
        if len(v) > 63 or not _DNS1035_LABEL.match(v):
            raise ValueError(
                f"invalid name {v!r}: a Service name must be a DNS-1035 label (lowercase letters, digits "
                "and '-', starting with a letter, at most 63 characters)"
            )
        return v

    @field_validator("namespace")
    @classmethod
    def _namespace(cls, v: str | None) -> str | None:
        if v is not None and (len(v) > 63 or not DNS1123_LABEL.match(v)):
            raise ValueError(f"invalid namespace {v!r}: must be a lowercase RFC 1123 label")
        return v

    @field_validator("annotations")
    @classmethod
    def _annotations(cls, v: dict[str, str]) -> dict[str, str]:
        algo = v.get(LB_ALGORITHM_ANNOTATION)
        if algo is not None and algo not in LB_ALGORITHMS:
            raise ValueError(
                f"{LB_ALGORITHM_ANNOTATION} must be one of {', '.join(LB_ALGORITHMS)}, not {algo!r}"
            )
        return v


class ServicePort(_Strict):
    name: str | None = None
    protocol: str = "TCP"
    port: Port
    targetPort: Port | str | None = None
    nodePort: StrictInt | None = None
    appProtocol: str | None = None  # informational, as in Kubernetes

    @field_validator("name")
    @classmethod
    def _name(cls, v: str | None) -> str | None:
        if v is not None and (len(v) > 63 or not DNS1123_LABEL.match(v)):
            raise ValueError(f"invalid port name {v!r}: must be a lowercase RFC 1123 label")
        return v

    @field_validator("protocol")
    @classmethod
    def _protocol(cls, v: str) -> str:
        if v == "SCTP":
            raise ValueError("SCTP is not supported (supported: TCP, UDP)")
        if v not in SUPPORTED_PROTOCOLS:
            raise ValueError(f"unknown protocol {v!r} (supported: TCP, UDP)")
        return v

    @field_validator("targetPort")
    @classmethod
    def _target_port(cls, v: int | str | None) -> int | str | None:
        if isinstance(v, str):
            if v.isdigit():  # YAML "8080" is a string, which Kubernetes reads as a port *name*
                raise ValueError(f"{v!r} is a string; write the port number without quotes")
            err = port_name_error(v)
            if err:
                raise ValueError(err)
        return v

    @field_validator("nodePort")
    @classmethod
    def _node_port(cls, v: int | None) -> int | None:
        lo, hi = NODE_PORT_RANGE
        if v is not None and not lo <= v <= hi:
            raise ValueError(f"{v} is not in the NodePort range {lo}-{hi}")
        return v

    @property
    def target(self) -> int | str:
        """The backend port: a number, or a container port name resolved per pod."""
        return self.port if self.targetPort is None else self.targetPort

    @property
    def label(self) -> str:
        """`port/PROTO`: how allocations and frontends refer to this port (unique within a Service)."""
        return f"{self.port}/{self.protocol}"


class ClientIPConfig(_Strict):
    timeoutSeconds: Annotated[StrictInt, Field(ge=1, le=MAX_AFFINITY_TIMEOUT)] = DEFAULT_AFFINITY_TIMEOUT


class SessionAffinityConfig(_Strict):
    clientIP: ClientIPConfig | None = None


class ServiceSpec(_Strict):
    type: str = "ClusterIP"
    selector: dict[str, str] | None = None
    ports: list[ServicePort] = Field(default_factory=list)
    clusterIP: str | None = None
    clusterIPs: list[str] | None = None
    ipFamilies: list[str] | None = None
    ipFamilyPolicy: str | None = None
    sessionAffinity: str = "None"
    sessionAffinityConfig: SessionAffinityConfig | None = None
    externalTrafficPolicy: str | None = None
    internalTrafficPolicy: str | None = None

    @field_validator("type")
    @classmethod
    def _type(cls, v: str) -> str:
        if v in ("LoadBalancer", "ExternalName"):
            raise ValueError(f"type {v} is not supported (supported: {', '.join(SUPPORTED_TYPES)})")
        if v not in SUPPORTED_TYPES:
            raise ValueError(f"unknown type {v!r} (supported: {', '.join(SUPPORTED_TYPES)})")
        return v

    @field_validator("selector")
    @classmethod
    def _selector(cls, v: dict[str, str] | None) -> dict[str, str] | None:
        for key, value in (v or {}).items():
            err = label_key_error(key, allow_source=False) or label_value_error(value)
            if err:
                raise ValueError(err)
        return v

    @field_validator("ipFamilies")
    @classmethod
    def _families(cls, v: list[str] | None) -> list[str] | None:
        for fam in v or []:
            if fam not in FAMILY_NAMES:
                raise ValueError(f"unknown IP family {fam!r} (IPv4 or IPv6)")
        if v is not None and (len(v) > 2 or len(set(v)) != len(v)):
            raise ValueError("at most two different IP families")
        return v

    @field_validator("ipFamilyPolicy")
    @classmethod
    def _family_policy(cls, v: str | None) -> str | None:
        if v is not None and v not in FAMILY_POLICIES:
            raise ValueError(f"unknown ipFamilyPolicy {v!r} (allowed: {', '.join(FAMILY_POLICIES)})")
        return v

    @field_validator("sessionAffinity")
    @classmethod
    def _affinity(cls, v: str) -> str:
        if v not in ("None", "ClientIP"):
            raise ValueError(f"unknown sessionAffinity {v!r} (allowed: None, ClientIP)")
        return v

    @field_validator("externalTrafficPolicy", "internalTrafficPolicy")
    @classmethod
    def _traffic_policy(cls, v: str | None) -> str | None:
        if v == "Local":
            raise ValueError("Local is not supported (the lab routes to all backends: Cluster)")
        if v not in (None, "Cluster"):
            raise ValueError(f"unknown traffic policy {v!r} (supported: Cluster)")
        return v


class Service(_Strict):
    """One Service. Derived views (`key`, `families`, `headless`, ...) are what the rest of the
    package reads, so the defaulting rules live in one place."""

    apiVersion: Literal["v1"]
    kind: Literal["Service"]
    metadata: ServiceMeta
    spec: ServiceSpec
    status: dict[str, Any] | None = None  # what `kubectl get -o yaml` prints; ignored, as the API does

    @property
    def name(self) -> str:
        return self.metadata.name

    @property
    def namespace(self) -> str:
        return self.metadata.namespace or "default"

    @property
    def key(self) -> str:
        """`namespace/name`: the identity allocations and load-balancer state are kept under."""
        return f"{self.namespace}/{self.metadata.name}"

    @property
    def type(self) -> str:
        return self.spec.type

    @property
    def headless(self) -> bool:
        """clusterIP "None": DNS-only, so no virtual IP and no load-balancer entries."""
        return self.spec.clusterIP == "None" or (self.spec.clusterIPs or [None])[0] == "None"

    @cached_property
    def requested_ips(self) -> tuple[str, ...]:
        """Explicit cluster IPs, primary first (normalised text); empty when allocation is automatic."""
        return _requested_ips(self.spec)

    @cached_property
    def families(self) -> tuple[int, ...]:
        """IP families (4/6), primary first. The lab is dual-stack, so with no ipFamilyPolicy a
        Service gets both (PreferDualStack) unless explicit IPs or ipFamilies say otherwise."""
        return _resolve_families(self.spec, self.requested_ips)

    @property
    def affinity_timeout(self) -> int:
        """sessionAffinity ClientIP timeout in seconds, 0 when there is no affinity."""
        if self.spec.sessionAffinity != "ClientIP":
            return 0
        cfg = self.spec.sessionAffinityConfig
        if cfg is None or cfg.clientIP is None:
            return DEFAULT_AFFINITY_TIMEOUT
        return cfg.clientIP.timeoutSeconds

    @property
    def lb_algorithm(self) -> str | None:
        """The per-service algorithm annotation (random/maglev), None to use the agent's default."""
        return self.metadata.annotations.get(LB_ALGORITHM_ANNOTATION)

    def document(self) -> dict[str, Any]:
        """The fields the user set, as plain JSON types: persisting this and parsing it back gives an
        equal Service (used to detect "unchanged" re-applies and to survive agent restarts)."""
        return self.model_dump(mode="json", exclude_unset=True)


# ---- cross-field rules -----------------------------------------------------------------------


def _family_of(ip: str) -> int:
    return ipaddress.ip_address(ip).version


def _parse_ip(path: str, text: str) -> str:
    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        raise invalid(path, f'"{text}" is not an IP address (or "None" for a headless Service)') from None


def _requested_ips(spec: ServiceSpec) -> tuple[str, ...]:
    single = spec.clusterIP if spec.clusterIP not in (None, "") else None
    many = [ip for ip in (spec.clusterIPs or []) if ip != ""]
    if single == "None" or many[:1] == ["None"]:
        if many and many != ["None"]:
            raise invalid("spec.clusterIPs", 'a headless Service must have exactly ["None"]')
        if single not in (None, "None"):
            raise invalid("spec.clusterIPs", f'must start with spec.clusterIP "{single}"')
        return ()
    if len(many) > 2:
        raise invalid("spec.clusterIPs", "at most two addresses (one per IP family)")
    ips = [_parse_ip(f"spec.clusterIPs[{i}]", ip) for i, ip in enumerate(many)]
    if "None" in many:
        raise invalid("spec.clusterIPs", '"None" must be the only entry')
    if single is not None:
        first = _parse_ip("spec.clusterIP", single)
        if ips and ips[0] != first:
            raise invalid("spec.clusterIPs[0]", f'must equal spec.clusterIP "{single}"')
        ips = ips or [first]
    if len(ips) == 2 and _family_of(ips[0]) == _family_of(ips[1]):
        raise invalid("spec.clusterIPs[1]", "the two addresses must be of different IP families")
    return tuple(ips)


def _resolve_families(spec: ServiceSpec, ips: tuple[str, ...]) -> tuple[int, ...]:
    wanted = [FAMILY_NAMES[f] for f in spec.ipFamilies or []]
    given = [_family_of(ip) for ip in ips]
    for i, (w, g) in enumerate(zip(wanted, given, strict=False)):
        if w != g:
            raise invalid(
                f"spec.ipFamilies[{i}]",
                f"IPv{w} does not match the family of spec.clusterIPs[{i}] ({ips[i]})",
            )
    policy = spec.ipFamilyPolicy or "PreferDualStack"
    primary = (given or wanted or [4])[0]
    if policy == "SingleStack":
        if max(len(wanted), len(given)) > 1:
            raise invalid("spec.ipFamilyPolicy", "SingleStack allows one IP family, but two are requested")
        return (primary,)
    return (primary, 10 - primary)  # the other family (4 <-> 6): the lab's nodes are dual-stack


def _check(svc: Service) -> None:
    """Kubernetes' cross-field validation; raises FieldError with the field path."""
    spec = svc.spec
    svc.requested_ips  # noqa: B018 - computing them validates clusterIP/clusterIPs
    svc.families  # noqa: B018 - and the families against them
    if svc.headless and spec.type == "NodePort":
        raise invalid("spec.clusterIP", 'a NodePort Service cannot be headless ("None")')
    if not spec.ports and not svc.headless:
        raise missing("spec.ports", ": a Service needs at least one port (unless it is headless)")
    names: set[str] = set()
    seen: set[str] = set()
    node_ports: set[tuple[int, str]] = set()
    for i, p in enumerate(spec.ports):
        where = f"spec.ports[{i}]"
        if len(spec.ports) > 1:
            if not p.name:
                raise missing(f"{where}.name", ": every port of a multi-port Service needs a name")
            if p.name in names:
                raise invalid(f"{where}.name", f'duplicate port name "{p.name}"')
            names.add(p.name)
        if p.label in seen:
            raise invalid(where, f"duplicate port {p.label} (each port/protocol pair may appear once)")
        seen.add(p.label)
        if p.nodePort is not None:
            if spec.type != "NodePort":
                raise invalid(
                    f"{where}.nodePort", f"only NodePort Services have node ports (spec.type is {spec.type})"
                )
            if (p.nodePort, p.protocol) in node_ports:
                raise invalid(f"{where}.nodePort", f"duplicate nodePort {p.nodePort}/{p.protocol}")
            node_ports.add((p.nodePort, p.protocol))
    if spec.sessionAffinityConfig is not None and spec.sessionAffinity != "ClientIP":
        raise invalid("spec.sessionAffinityConfig", "must not be set unless spec.sessionAffinity is ClientIP")


# ---- parsing -----------------------------------------------------------------------------------


def is_service_document(doc: Any) -> bool:
    """Whether a parsed YAML document is a Service (for manifest files mixing kinds)."""
    return isinstance(doc, dict) and doc.get("kind") == "Service" and doc.get("apiVersion", "v1") == "v1"


def parse_service(doc: Any, source: str = "<stdin>", index: int = 0) -> Service:
    """Validate one already-loaded YAML document (`index` is 0-based, for the error text)."""
    where = f"{source}: document {index + 1}"
    if not isinstance(doc, dict):
        raise ServiceValidationError(
            f"{where}: expected a mapping with apiVersion/kind, got {type(doc).__name__}"
        )
    meta = doc.get("metadata")
    name = meta.get("name") if isinstance(meta, dict) else None
    if name and isinstance(name, str):
        where = f"{source}: Service {name!r}"
    try:
        svc = Service.model_validate(doc)
    except ValidationError as e:
        raise ServiceValidationError(f"{where}: {pydantic_message(e)}") from None
    try:
        _check(svc)
    except FieldError as e:
        raise ServiceValidationError(f"{where}: {e.text}") from None
    return svc


def parse_service_documents(text: str, source: str = "<stdin>") -> list[Service]:
    """Every document of a file must be a valid Service; one ServiceValidationError otherwise."""
    try:
        docs = [d for d in yaml.safe_load_all(text) if d is not None]
    except yaml.YAMLError as e:
        raise ServiceValidationError(f"{source}: malformed YAML: {e}".replace("\n", " ")) from None
    out = []
    for i, doc in enumerate(docs):
        if not is_service_document(doc):
            kind = doc.get("kind") if isinstance(doc, dict) else type(doc).__name__
            raise ServiceValidationError(f"{source}: document {i + 1}: expected a v1 Service, got {kind!r}")
        out.append(parse_service(doc, source, i))
    return out
