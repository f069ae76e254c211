"""The load-balancer state the datapath needs, computed from Services, pods and node addresses.

One *frontend* per address a client can use: each cluster IP x Service port, and for NodePort
Services also each node address x nodePort plus the all-zero address ("any local address", which the
packet LB uses and the socket LB ignores). Each frontend has its own rev_nat_id (Cilium's service
ID), slot 0 with the count of active backends, flags and affinity timeout, slots 1..count with the
active backends' IDs, and, with Maglev, a table of backend IDs. Backends are shared between
frontends and Services: one ID per address+port+protocol.

A frontend of one family only gets backends of that family (no NAT46/64 in the lab).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

import numpy as np

from tendril.loadbalancer.allocator import Allocation
from tendril.loadbalancer.diff import LBEntries
from tendril.loadbalancer.endpoints import Endpoint, PodInfo, endpoints, selected_pods, unknown_target_ports
from tendril.loadbalancer.entries import (
    BACKEND_ACTIVE,
    BACKEND_TERMINATING,
    BACKENDS_MAX,
    SERVICES_MAX,
    SLOT_MAX,
    BackendEntry,
    L3n4Addr,
    LBKey,
    LBValue,
    RevNatEntry,
    SvcFlag,
    zero_address,
)
from tendril.loadbalancer.errors import ServiceCapacityError
from tendril.loadbalancer.ids import IdAllocator
from tendril.loadbalancer.maglev import MaglevCache, MaglevTables, TableSpec
from tendril.loadbalancer.model import Service

CLUSTER_IP = "ClusterIP"
NODE_PORT = "NodePort"


@dataclass(frozen=True)
class Frontend:
    """One frontend and what the datapath holds for it."""

    address: L3n4Addr
    rev_nat_id: int
    service: str  # namespace/name
    port_name: str  # the Service port's name ("" when unnamed)
    type: str  # ClusterIP | NodePort
    flags: int  # SvcFlag
    affinity_timeout_s: int
    active: tuple[int, ...] = ()  # backend IDs; slot i + 1 holds active[i]
    terminating: tuple[int, ...] = ()  # backend IDs kept for open connections, in no slot

    @property
    def maglev(self) -> bool:
        return bool(self.flags & SvcFlag.MAGLEV)

    def master(self) -> LBValue:
        return LBValue(0, len(self.active), self.rev_nat_id, int(self.flags), self.affinity_timeout_s)

    def slot_entries(self) -> dict[LBKey, LBValue]:
        """Slot 0 and slots 1..count, as tnd_lb_services holds them."""
        out = {LBKey.of(self.address, 0): self.master()}
        for i, bid in enumerate(self.active, start=1):
            out[LBKey.of(self.address, i)] = LBValue(backend_id=bid, rev_nat_id=self.rev_nat_id)
        return out


@dataclass(frozen=True)
class LBState:
    """Everything the four load-balancer maps should hold, plus notices for the user."""

    frontends: tuple[Frontend, ...] = ()  # sorted by rev_nat_id
    backends: Mapping[int, BackendEntry] = field(default_factory=dict)
    maglev: Mapping[int, np.ndarray] = field(default_factory=dict)  # rev_nat_id -> uint32[M]
    notices: tuple[str, ...] = ()

    def frontend(self, address: L3n4Addr) -> Frontend | None:
        return next((f for f in self.frontends if f.address == address), None)

    def of_service(self, key: str) -> list[Frontend]:
        return [f for f in self.frontends if f.service == key]

    def entries(self) -> LBEntries:
        services: dict[LBKey, LBValue] = {}
        for fe in self.frontends:
            services.update(fe.slot_entries())
        revnat = {
            fe.rev_nat_id: RevNatEntry(fe.address.addr, fe.address.port, fe.address.family)
            for fe in self.frontends
        }
        return LBEntries(services, dict(self.backends), revnat, self.maglev)


@dataclass(frozen=True)
class LBConfig:
    """Agent-wide load-balancer settings (Cilium's --bpf-lb-algorithm, maglev table size, seed)."""

    algorithm: str = "random"  # default for Services without the lb-algorithm annotation
    maglev: MaglevCache = field(default_factory=MaglevCache)


def _normalize(addresses: Iterable[str]) -> list[str]:
    ips = {ipaddress.ip_address(a) for a in addresses}
    ips = {ip for ip in ips if not ip.is_unspecified}
    return [str(ip) for ip in sorted(ips, key=lambda ip: (ip.version, int(ip)))]


def _frontend_addresses(
    svc: Service, alloc: Allocation, family: int, nodes: list[str]
) -> list[tuple[str, str]]:
    """(type, address) of every frontend of one family, ClusterIP first."""
    vip = alloc.ip(family)
    if vip is None:
        return []  # the Service is not of this family
    out = [(CLUSTER_IP, vip)]
    if svc.type == NODE_PORT:
        out += [(NODE_PORT, a) for a in nodes if ipaddress.ip_address(a).version == family]
        out.append((NODE_PORT, zero_address(family)))
    return out


def _backends(
    eps: list[Endpoint], backend_ids: IdAllocator, backend_state: dict[str, int]
) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """(active, terminating) backend IDs of one frontend's endpoints, sorted (slot order: older
    backends, with lower IDs, keep their slots when others are added); records each backend's state
    in `backend_state` (active wins if a backend is both, which only a changing pod can cause)."""
    for ep in eps:
        name = str(ep.address)
        state = BACKEND_TERMINATING if ep.terminating else BACKEND_ACTIVE
        backend_state[name] = min(backend_state.get(name, BACKEND_TERMINATING), state)
    active = {backend_ids.allocate(str(e.address)) for e in eps if not e.terminating}
    terminating = {backend_ids.allocate(str(e.address)) for e in eps if e.terminating} - active
    return tuple(sorted(active)), tuple(sorted(terminating))


def compute_state(
    services: Iterable[tuple[Service, Allocation]],
    pods: Iterable[PodInfo],
    node_addresses: Iterable[str],
    revnat_ids: IdAllocator,
    backend_ids: IdAllocator,
    config: LBConfig | None = None,
) -> LBState:
    """The desired state. Allocates IDs in `revnat_ids`/`backend_ids` (pass copies to keep the
    originals) and releases those no longer used; deterministic for equal inputs."""
    config = config or LBConfig()
    by_namespace: dict[str, list[PodInfo]] = {}
    for p in pods:
        by_namespace.setdefault(p.namespace, []).append(p)
    nodes = _normalize(node_addresses)
    frontends: list[Frontend] = []
    backend_state: dict[str, int] = {}
    notices: list[str] = []
    seen: set[L3n4Addr] = set()
    for svc, alloc in sorted(services, key=lambda sa: sa[0].key):
        if svc.headless:
            continue  # DNS only: no virtual IP to balance
        chosen = selected_pods(svc, by_namespace.get(svc.namespace, ()))
        notices += [f"Service {svc.key!r}: {msg}" for msg in unknown_target_ports(svc, chosen)]
        algorithm = svc.lb_algorithm or config.algorithm
        extra = SvcFlag.MAGLEV if algorithm == "maglev" else SvcFlag(0)
        if svc.affinity_timeout:
            extra |= SvcFlag.AFFINITY
        for port in svc.spec.ports:
            for family in svc.families:
                eps = endpoints(svc, port, chosen, family)
                active, terminating = _backends(eps, backend_ids, backend_state)
                for kind, addr in _frontend_addresses(svc, alloc, family, nodes):
                    number = port.port if kind == CLUSTER_IP else alloc.node_ports[port.label]
                    address = L3n4Addr.of(addr, number, port.protocol)
                    if address in seen:
                        notices.append(f"Service {svc.key!r}: frontend {address} is already in use; skipped")
                        continue
                    seen.add(address)
                    try:
                        rid = revnat_ids.allocate(str(address))
                    except OverflowError:
                        raise ServiceCapacityError(
                            f"more than {revnat_ids.max_id} service frontends; delete some Services"
                        ) from None
                    flags = (SvcFlag.CLUSTERIP if kind == CLUSTER_IP else SvcFlag.NODEPORT) | extra
                    frontends.append(
                        Frontend(
                            address,
                            rid,
                            svc.key,
                            port.name or "",
                            kind,
                            int(flags),
                            svc.affinity_timeout,
                            active,
                            terminating,
                        )
                    )
    revnat_ids.retain(str(f.address) for f in frontends)
    backend_ids.retain(backend_state)
    backends = {
        backend_ids.allocate(name): BackendEntry.of(L3n4Addr.parse(name), st)
        for name, st in backend_state.items()
    }
    _check_capacity(frontends, backends)
    names = {bid: str(be.address) for bid, be in backends.items()}
    maglev = MaglevTables(config.maglev, maglev_specs(frontends, names))
    frontends.sort(key=lambda f: f.rev_nat_id)
    return LBState(tuple(frontends), dict(sorted(backends.items())), maglev, tuple(notices))


def maglev_specs(frontends: Iterable[Frontend], names: Mapping[int, str]) -> dict[int, TableSpec]:
    """What each Maglev frontend's table is built from: its active backends' names and IDs."""
    return {
        fe.rev_nat_id: tuple(sorted((names[b], b) for b in fe.active))
        for fe in frontends
        if fe.maglev and fe.active
    }


def _check_capacity(frontends: list[Frontend], backends: Mapping[int, BackendEntry]) -> None:
    for fe in frontends:
        if len(fe.active) > SLOT_MAX:
            raise ServiceCapacityError(
                f"Service {fe.service!r}: {len(fe.active)} backends for {fe.address}; a frontend holds "
                f"at most {SLOT_MAX}"
            )
    entries = sum(1 + len(fe.active) for fe in frontends)
    if entries > SERVICES_MAX:
        raise ServiceCapacityError(
            f"the services need {entries} tnd_lb_services entries, more than the {SERVICES_MAX} the map "
            "holds; delete some Services or NodePorts"
        )
    if len(backends) > BACKENDS_MAX:
        raise ServiceCapacityError(
            f"{len(backends)} service backends, more than the {BACKENDS_MAX} tnd_lb_backends holds"
        )
