"""ClusterIP and NodePort allocation, the part of the Kubernetes API server the lab has to play.

Why here and not in the load balancer: addresses and node ports belong to the *Service object*, not to
its endpoints, and must not change when pods come and go; they change only when the Service is
deleted. Allocation is idempotent per service key (re-applying the same Service keeps its VIPs and
nodePorts) and atomic (a Service whose second port collides leaves nothing half-allocated;
`allocate_all` extends that to a whole file).

Automatic picks are deterministic: the search starts at a hash of the service key, so the same lab
re-created from the same manifests gets the same addresses, which makes notes and scripts portable,
while still looking spread out like Kubernetes' random picks.
"""

from __future__ import annotations

import copy
import hashlib
import ipaddress
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from tendril.loadbalancer.errors import ServiceAllocationError
from tendril.loadbalancer.model import NODE_PORT_RANGE, Service

DEFAULT_SERVICE_CIDRS = ("10.96.0.0/16", "fd00:10:96::/112")
#: the Service that may take the first address of each CIDR, as in Kubernetes
KUBERNETES_API_SERVICE = "default/kubernetes"

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True)
class Allocation:
    """What one Service holds: cluster IPs (primary family first; none when headless) and the
    nodePort of each `port/PROTO` (NodePort Services only)."""

    cluster_ips: tuple[str, ...] = ()
    node_ports: Mapping[str, int] = field(default_factory=dict)

    def ip(self, family: int) -> str | None:
        return next((ip for ip in self.cluster_ips if ipaddress.ip_address(ip).version == family), None)

    @property
    def ipv4(self) -> str | None:
        return self.ip(4)

    @property
    def ipv6(self) -> str | None:
        return self.ip(6)

    def to_dict(self) -> dict[str, Any]:
        return {"clusterIPs": list(self.cluster_ips), "nodePorts": dict(self.node_ports)}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Allocation:
        return cls(tuple(d.get("clusterIPs", ())), {k: int(v) for k, v in d.get("nodePorts", {}).items()})


def _start(seed: str, size: int) -> int:
    return int.from_bytes(hashlib.blake2b(seed.encode(), digest_size=8).digest(), "big") % size


class ServiceAllocator:
    """Cluster IPs from the service CIDRs (one per family) and node ports from a port range."""

    def __init__(
        self,
        cidrs: Iterable[str] = DEFAULT_SERVICE_CIDRS,
        node_port_range: tuple[int, int] = NODE_PORT_RANGE,
    ) -> None:
        self.cidrs: dict[int, IPNetwork] = {}
        for text in cidrs:
            net = ipaddress.ip_network(text, strict=True)
            if net.num_addresses < 4:
                raise ValueError(f"service CIDR {text} is too small")
            self.cidrs[net.version] = net
        self.node_port_range = node_port_range
        self._allocs: dict[str, Allocation] = {}
        self._ip_owner: dict[str, str] = {}
        self._port_owner: dict[int, str] = {}

    # ---- queries ---------------------------------------------------------------------------------
    def get(self, key: str) -> Allocation | None:
        return self._allocs.get(key)

    def allocations(self) -> dict[str, Allocation]:
        return dict(self._allocs)

    def owner_of_ip(self, ip: str) -> str | None:
        return self._ip_owner.get(str(ipaddress.ip_address(ip)))

    def owner_of_node_port(self, port: int) -> str | None:
        return self._port_owner.get(port)

    def reserved(self, family: int) -> tuple[str, ...]:
        """Addresses never handed out automatically: the network address, the first host address
        (the `kubernetes` API Service's in Kubernetes) and, for IPv4, the broadcast address."""
        net = self.cidrs[family]
        out = [net.network_address, net.network_address + 1]
        if family == 4:
            out.append(net.broadcast_address)
        return tuple(str(a) for a in out)

    # ---- changes ---------------------------------------------------------------------------------
    def allocate(self, svc: Service, source: str | None = None) -> Allocation:
        """The Service's allocation, created or updated; ServiceAllocationError changes nothing."""
        where = f"{source}: Service {svc.name!r}" if source else f"Service {svc.key!r}"
        try:
            alloc = self._plan(svc)
        except _Conflict as e:
            raise ServiceAllocationError(f'{where}: invalid value for "{e.path}": {e.message}') from None
        self._commit(svc.key, alloc)
        return alloc

    def allocate_all(self, services: Iterable[Service], source: str | None = None) -> list[Allocation]:
        """Allocate for every Service of a file, or for none of them."""
        saved = (copy.copy(self._allocs), copy.copy(self._ip_owner), copy.copy(self._port_owner))
        try:
            return [self.allocate(s, source) for s in services]
        except ServiceAllocationError:
            self._allocs, self._ip_owner, self._port_owner = saved
            raise

    def release(self, key: str) -> Allocation | None:
        """Free everything the Service held (it was deleted); None if it held nothing."""
        alloc = self._allocs.pop(key, None)
        if alloc is not None:
            for ip in alloc.cluster_ips:
                self._ip_owner.pop(ip, None)
            for port in set(alloc.node_ports.values()):
                if self._port_owner.get(port) == key:
                    del self._port_owner[port]
        return alloc

    # ---- planning (no side effects) -----------------------------------------------------------------
    def _plan(self, svc: Service) -> Allocation:
        old = self._allocs.get(svc.key)
        ips = self._plan_ips(svc, old)
        ports = self._plan_node_ports(svc, old) if svc.type == "NodePort" else {}
        return Allocation(ips, ports)

    def _plan_ips(self, svc: Service, old: Allocation | None) -> tuple[str, ...]:
        # Kubernetes keeps spec.clusterIP immutable: headless stays headless and the primary family
        # stays; only a second family may be added or dropped (ipFamilyPolicy changes)
        if old is not None and bool(old.cluster_ips) == svc.headless:
            change = "make it headless" if svc.headless else "give it a cluster IP"
            raise _Conflict("spec.clusterIP", f"field is immutable: delete the Service to {change}")
        if svc.headless:
            return ()
        if old is not None:
            had = ipaddress.ip_address(old.cluster_ips[0]).version
            if svc.families[0] != had:
                raise _Conflict("spec.ipFamilies[0]", f"field is immutable: the primary family is IPv{had}")
        out: list[str] = []
        for i, family in enumerate(svc.families):
            path = "spec.clusterIP" if i == 0 and not svc.spec.clusterIPs else f"spec.clusterIPs[{i}]"
            requested = svc.requested_ips[i] if i < len(svc.requested_ips) else None
            if family not in self.cidrs:
                optional = i > 0 and requested is None and svc.spec.ipFamilyPolicy != "RequireDualStack"
                if optional:  # PreferDualStack on a single-stack service CIDR: one family it is
                    continue
                raise _Conflict("spec.ipFamilies", f"there is no IPv{family} service CIDR")
            previous = old.ip(family) if old is not None else None
            if requested is not None:
                if previous is not None and previous != requested:
                    raise _Conflict(path, f"field is immutable: the Service has {previous}")
                self._check_requested(svc.key, path, requested)
                out.append(requested)
            elif previous is not None:
                out.append(previous)
            else:
                out.append(self._pick_ip(svc.key, family))
        return tuple(out)

    def _check_requested(self, key: str, path: str, ip: str) -> None:
        addr = ipaddress.ip_address(ip)
        net = self.cidrs[addr.version]  # the family was checked by the caller
        if addr not in net:
            raise _Conflict(path, f"{ip} is not in the service CIDR {net}")
        api_ip = key == KUBERNETES_API_SERVICE and addr == net.network_address + 1
        if ip in self.reserved(addr.version) and not api_ip:
            raise _Conflict(path, f"{ip} is reserved in the service CIDR {net}")
        owner = self._ip_owner.get(ip)
        if owner is not None and owner != key:
            raise _Conflict(path, f"duplicate service IP {ip} (already allocated to Service {owner!r})")

    def _pick_ip(self, key: str, family: int) -> str:
        net = self.cidrs[family]
        base = int(net.network_address)
        size = net.num_addresses
        reserved = set(self.reserved(family))
        start = _start(f"{key}/{family}", size)
        for step in range(size):
            text = str(ipaddress.ip_address(base + (start + step) % size))
            if text not in reserved and text not in self._ip_owner:
                return text
        raise _Conflict("spec.clusterIP", f"the service CIDR {net} is full")

    def _plan_node_ports(self, svc: Service, old: Allocation | None) -> dict[str, int]:
        lo, hi = self.node_port_range
        out: dict[str, int] = {}
        taken: set[int] = set()
        for i, p in enumerate(svc.spec.ports):  # explicit ones first, so automatic picks avoid them
            if p.nodePort is None:
                continue
            path = f"spec.ports[{i}].nodePort"
            if not lo <= p.nodePort <= hi:
                raise _Conflict(path, f"{p.nodePort} is not in the NodePort range {lo}-{hi}")
            owner = self._port_owner.get(p.nodePort)
            if owner is not None and owner != svc.key:
                raise _Conflict(
                    path, f"duplicate nodePort {p.nodePort} (already allocated to Service {owner!r})"
                )
            out[p.label] = p.nodePort
            taken.add(p.nodePort)
        by_number: dict[int, int] = {}  # service port -> nodePort: TCP and UDP of one port share it
        for p in svc.spec.ports:
            if p.label in out:
                by_number.setdefault(p.port, out[p.label])
        for p in svc.spec.ports:
            if p.label in out:
                continue
            previous = old.node_ports.get(p.label) if old is not None else None
            if previous is not None and previous not in taken and lo <= previous <= hi:
                out[p.label] = previous
            elif p.port in by_number:
                out[p.label] = by_number[p.port]
            else:
                out[p.label] = self._pick_port(svc.key, p.label, taken)
            taken.add(out[p.label])
            by_number.setdefault(p.port, out[p.label])
        return out

    def _pick_port(self, key: str, label: str, taken: set[int]) -> int:
        lo, hi = self.node_port_range
        size = hi - lo + 1
        start = _start(f"{key}/{label}", size)
        for step in range(size):
            port = lo + (start + step) % size
            owner = self._port_owner.get(port)
            if port not in taken and (owner is None or owner == key):
                # a port this Service held for another of its ports is free again only if unused now
                return port
        raise _Conflict("spec.ports", f"no free nodePort in {lo}-{hi}")

    def _commit(self, key: str, alloc: Allocation) -> None:
        self.release(key)
        self._allocs[key] = alloc
        for ip in alloc.cluster_ips:
            self._ip_owner[ip] = key
        for port in alloc.node_ports.values():
            self._port_owner[port] = key

    # ---- persistence -----------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {
            "cidrs": [str(n) for n in self.cidrs.values()],
            "nodePortRange": list(self.node_port_range),
            "services": {k: a.to_dict() for k, a in sorted(self._allocs.items())},
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ServiceAllocator:
        lo, hi = d.get("nodePortRange", NODE_PORT_RANGE)
        out = cls(d.get("cidrs", DEFAULT_SERVICE_CIDRS), (int(lo), int(hi)))
        for key, a in d.get("services", {}).items():
            out._commit(key, Allocation.from_dict(a))
        return out


class _Conflict(Exception):
    def __init__(self, path: str, message: str) -> None:
        super().__init__(message)
        self.path, self.message = path, message
