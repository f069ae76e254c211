"""The agent's persisted desired state for its node (endpoints, pods, namespaces, IPAM).

Written atomically after every change; a restarted agent reads it back and re-asserts it against the
kernel (netns, veths, maps, links) without disturbing what still matches.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from tendril.common import paths
from tendril.common.jsonfile import read_json, write_json


@dataclass
class EndpointRecord:
    id: int
    namespace: str
    pod: str
    labels: dict[str, str]
    ipv4: str
    ipv6: str
    netns: str
    host_ifname: str
    host_ifindex: int
    cgroup: str
    created: float
    owner: str = ""  # "Deployment/<name>" for replicas, "" for bare pods
    identity: int = 5  # reserved:init until the policy engine gives it its labels' identity
    identity_labels: list[str] = field(default_factory=list)
    named_ports: dict[str, list[int]] = field(default_factory=dict)  # name -> [port, IP protocol]

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.pod}"


@dataclass
class ProcessRecord:
    container: str
    pid: int
    start_time: int
    argv: list[str]
    log: str


@dataclass
class PodRecord:
    namespace: str
    name: str
    labels: dict[str, str]
    annotations: dict[str, str]
    containers: list[dict[str, Any]]
    owner: str  # "" for bare pods, "Deployment/<name>" otherwise
    spec_hash: str
    created: float
    processes: list[ProcessRecord] = field(default_factory=list)

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"


@dataclass
class NodeState:
    node: str
    next_endpoint_id: int = 1
    ipam: dict[str, Any] = field(default_factory=dict)
    namespaces: dict[str, dict[str, str]] = field(default_factory=dict)
    endpoints: dict[str, EndpointRecord] = field(default_factory=dict)
    pods: dict[str, PodRecord] = field(default_factory=dict)
    identities: dict[str, Any] = field(default_factory=dict)  # IdentityAllocator.to_dict()
    policies: dict[str, Any] = field(default_factory=dict)  # PolicyRepository.to_dict()
    policy_audit: bool = False
    http_visibility_namespaces: list[str] = field(default_factory=list)  # `tendril config HTTPVisibility`
    services: dict[str, Any] = field(default_factory=dict)  # ServiceManager.to_dict()

    def save(self) -> None:
        write_json(paths.node_state_file(self.node), asdict(self))

    @classmethod
    def load(cls, node: str) -> NodeState:
        data = read_json(paths.node_state_file(node))
        if not data:
            return cls(node=node, namespaces={"default": {}, "kube-system": {}})
        pods = {}
        for k, p in data.get("pods", {}).items():
            procs = [ProcessRecord(**pr) for pr in p.pop("processes", [])]
            pods[k] = PodRecord(**p, processes=procs)
        return cls(
            node=node,
            next_endpoint_id=data.get("next_endpoint_id", 1),
            ipam=data.get("ipam", {}),
            namespaces=data.get("namespaces", {}),
            endpoints={k: EndpointRecord(**e) for k, e in data.get("endpoints", {}).items()},
            pods=pods,
            identities=data.get("identities", {}),
            policies=data.get("policies", {}),
            policy_audit=data.get("policy_audit", False),
            http_visibility_namespaces=data.get("http_visibility_namespaces", []),
            services=data.get("services", {}),
        )

    def allocate_endpoint_id(self) -> int:
        used = {e.id for e in self.endpoints.values()}
        ep_id = self.next_endpoint_id
        while ep_id in used or ep_id == 0:
            ep_id = ep_id % 4095 + 1
        self.next_endpoint_id = ep_id % 4095 + 1
        return ep_id
