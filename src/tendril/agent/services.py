"""The agent's service engine: Kubernetes Services -> the LB maps, kept in sync with the pods.

The pure part (validation, ClusterIP/NodePort allocation, backends, Maglev, diffs) lives in
tendril.loadbalancer; this module feeds it the node's pods and applies its diffs to the pinned maps
in the order it gives (backends and tables before the slots that point at them, deletions last),
so a connection never lands on a half-written service. It also runs the cluster DNS records file.
"""

from __future__ import annotations

import ipaddress
import logging
import time
from typing import TYPE_CHECKING, Any

import numpy as np

from tendril.bpf import abi
from tendril.bpf.maps import Map, TypedMap, create_map
from tendril.common.errors import InvalidInputError
from tendril.loadbalancer import (
    MAP_BACKENDS,
    MAP_MAGLEV,
    MAP_REVNAT,
    MAP_SERVICES,
    PodInfo,
    PodPort,
    ServiceManager,
    check_target_ports,
    parse_service_documents,
)

if TYPE_CHECKING:
    from tendril.agent.daemon import Agent

log = logging.getLogger(__name__)

BPF_MAP_TYPE_ARRAY = 2
U16, U32 = np.dtype("<u2"), np.dtype("<u4")


class ServiceEngine:
    def __init__(self, agent: Agent) -> None:
        self.agent = agent
        state = agent.state.services
        cfg = agent.config
        try:
            if state:
                self.manager = ServiceManager.from_dict(
                    state, algorithm=cfg.bpf_lb_algorithm, maglev_table_size=cfg.bpf_lb_maglev_table_size
                )
            else:
                self.manager = ServiceManager(
                    algorithm=cfg.bpf_lb_algorithm, maglev_table_size=cfg.bpf_lb_maglev_table_size
                )
        except ValueError as e:
            raise InvalidInputError(f"--bpf-lb-*: {e}") from None
        obj = agent.datapath.obj
        assert obj is not None
        self.services = TypedMap(obj.map(MAP_SERVICES), abi.LB_KEY_DTYPE, abi.LB_VALUE_DTYPE)
        self.backends = TypedMap(obj.map(MAP_BACKENDS), U32, abi.LB_BACKEND_DTYPE)
        self.revnat = TypedMap(obj.map(MAP_REVNAT), U16, abi.LB_REVNAT_DTYPE)
        self.maglev: Map = obj.map(MAP_MAGLEV)

    # ---- desired state -------------------------------------------------------------------------
    def pods(self) -> list[PodInfo]:
        out = []
        for pod in self.agent.state.pods.values():
            ep = self.agent.state.endpoints.get(pod.key)
            if ep is None:
                continue
            status = self.agent.pods.status(pod)
            ports = tuple(
                PodPort(int(p["containerPort"]), p.get("name"), p.get("protocol", "TCP"))
                for c in pod.containers
                for p in c.get("ports", [])
            )
            out.append(
                PodInfo(
                    pod.namespace,
                    pod.name,
                    dict(pod.labels),
                    status["phase"] == "Running",
                    ep.ipv4,
                    ep.ipv6,
                    ports,
                )
            )
        return out

    def all_pods(self) -> list[PodInfo]:
        return self.pods() + self.remote_pods()

    def remote_pods(self) -> list[PodInfo]:
        """Pods on the other nodes (from the kvstore): backends like local ones; the datapath routes
        or tunnels to them."""
        cluster = getattr(self.agent, "cluster", None)
        if cluster is None:
            return []
        return [
            PodInfo(
                ep.namespace,
                ep.pod,
                dict(ep.labels),
                ep.ready,
                ep.ipv4,
                ep.ipv6,
                tuple(PodPort(port, name or None, proto) for port, name, proto in ep.ports),
            )
            for ep in sorted(cluster.remote_ready_endpoints(), key=lambda e: e.key)
        ]

    def filled_document(self, record: Any) -> dict[str, Any]:
        """The Service as applied plus what was allocated for it (ClusterIPs, nodePorts), so every
        node of a cluster that applies this document uses the same addresses."""
        import copy

        doc = copy.deepcopy(record.service.document())
        spec = doc.setdefault("spec", {})
        ips = list(record.allocation.cluster_ips)
        if ips and not record.service.headless:
            spec["clusterIP"], spec["clusterIPs"] = ips[0], ips
        for port in spec.get("ports", []):
            node_port = record.allocation.node_ports.get(f"{port['port']}/{port.get('protocol', 'TCP')}")
            if node_port:
                port["nodePort"] = node_port
        return doc

    def node_addresses(self) -> list[str]:
        return [a for a in (self.agent.config.underlay_ip,) if a]

    def sync(self, force: bool = False) -> dict[str, int]:
        """Bring the maps to the desired state; a no-op (no recomputation) when neither the services
        nor the pods' readiness, labels or addresses changed since the last sync."""
        pods = self.all_pods()
        fingerprint = (self.manager.revision, tuple(pods), tuple(self.node_addresses()))
        if not force and fingerprint == getattr(self, "_last", None):
            return {}
        self._last = fingerprint
        diff = self.manager.sync(pods, self.node_addresses())
        for op in diff.ops:
            self._apply(op)
        self._reindex()
        self.agent.state.services = self.manager.to_dict()
        self.agent.state.save()
        self.write_dns_records()
        return diff.summary()

    def _reindex(self) -> None:
        """(16-byte address, port, protocol) of every frontend and backend -> "namespace/name", for
        the flow parser's source_service / destination_service."""
        state = self.manager.state
        index: dict[tuple[bytes, int, int], str] = {}
        for fe in state.frontends:
            index[(_addr16(fe.address.addr), fe.address.port, fe.address.proto)] = fe.service
            for bid in (*fe.active, *fe.terminating):
                b = state.backends.get(bid)
                if b is not None:
                    index.setdefault((_addr16(b.addr), b.port, b.proto), fe.service)
        self.index = index

    def cluster_ips(self, namespace: str, name: str) -> list[str]:
        r = self.manager.get(namespace, name)
        return list(r.allocation.cluster_ips) if r is not None else []

    def service_of(self, addr16: bytes, port: int, proto: int) -> str:
        return getattr(self, "index", {}).get((addr16, port, proto), "")

    # ---- map writes ----------------------------------------------------------------------------
    def _apply(self, op: Any) -> None:
        upsert = op.op == "upsert"
        if op.map == MAP_BACKENDS:
            key = np.uint32(op.key)
            if upsert:
                v = op.value
                self.backends.update(key, abi.lb_backend(v.addr, v.port, v.proto, v.state))
            else:
                self.backends.delete(key)
        elif op.map == MAP_REVNAT:
            key = np.uint16(op.key)
            if upsert:
                self.revnat.update(key, abi.lb_revnat(op.value.addr, op.value.port))
            else:
                self.revnat.delete(key)
        elif op.map == MAP_MAGLEV:
            key = np.uint16(op.key).tobytes()
            if upsert:
                table = np.asarray(op.value, dtype=np.uint32)
                inner = create_map(
                    BPF_MAP_TYPE_ARRAY,
                    4,
                    4,
                    len(table),
                    flags=abi.MAP_F_INNER_MAP,
                    name=f"tnd_mag_{op.key}",
                    inner_map_fd=None,
                )
                try:
                    arr = TypedMap(inner, U32, U32)
                    for i, backend in enumerate(table.tolist()):
                        arr.update(np.uint32(i), np.uint32(backend))
                    self.maglev.set_inner(key, inner)
                finally:
                    inner.close()
            else:
                self.maglev.delete(key)
        elif op.map == MAP_SERVICES:
            k = op.key
            key = abi.lb_key(k.addr if _nonzero(k.addr) else None, k.port, k.proto, k.slot, family=k.family)
            if upsert:
                v = op.value
                value = (
                    abi.lb_master(v.count, v.rev_nat_id, v.flags, v.affinity_timeout_s)
                    if k.slot == 0
                    else abi.lb_slot(v.backend_id, v.rev_nat_id)
                )
                self.services.update(key, value)
            else:
                self.services.delete(key)

    # ---- API -----------------------------------------------------------------------------------
    def apply_text(self, text: str, source: str) -> list[dict[str, Any]]:
        services = parse_service_documents(text, source)
        if not services:
            raise InvalidInputError(f"{source}: no Service documents found")
        for svc in services:
            if svc.namespace not in self.agent.state.namespaces:
                raise InvalidInputError(
                    f'Service "{svc.metadata.name}": namespaces "{svc.namespace}" not found'
                )
        pods = self.all_pods()
        for svc in services:  # every document is checked before anything is applied
            check_target_ports(svc, pods, source)
        results = self.manager.apply(services, source, time.time())
        self.sync()
        return [
            {"action": a, "namespace": r.service.namespace, "name": r.service.metadata.name}
            for a, r in results
        ]

    def delete(self, namespace: str, name: str) -> dict[str, Any]:
        self.manager.delete(namespace, name)
        self.sync()
        return {"deleted": f"{namespace}/{name}"}

    def list(self) -> dict[str, Any]:
        from tendril.loadbalancer.views import format_bpf_lb_list, format_bpf_lb_revnat, format_service_list

        state = self.manager.state
        entries = state.entries()
        return {
            "services": [
                {
                    "namespace": r.service.namespace,
                    "name": r.service.metadata.name,
                    "type": r.service.type,
                    "cluster_ips": list(r.allocation.cluster_ips),
                    "node_ports": dict(r.allocation.node_ports),
                    "ports": [p.model_dump() for p in r.service.spec.ports],
                    "created": r.created,
                }
                for r in self.manager.list()
            ],
            "service_list": format_service_list(state),
            "bpf_lb_list": format_bpf_lb_list(entries),
            "bpf_lb_revnat": format_bpf_lb_revnat(entries),
        }

    # ---- DNS -----------------------------------------------------------------------------------
    def write_dns_records(self) -> None:
        """Records for the cluster DNS pod (kube-system/kube-dns), rewritten atomically."""
        from tendril.common import paths
        from tendril.workload.dns_server import write_records

        services = []
        pods = {(p.namespace, p.name): p for p in self.all_pods()}
        for r in self.manager.list():
            svc = r.service
            endpoints = []
            if svc.headless:
                for p in pods.values():
                    if (
                        p.namespace == svc.namespace
                        and p.ready
                        and svc.spec.selector
                        and all(p.labels.get(k) == v for k, v in svc.spec.selector.items())
                    ):
                        endpoints += [p.ipv4, p.ipv6]
            services.append(
                {
                    "name": svc.metadata.name,
                    "namespace": svc.namespace,
                    "ips": list(r.allocation.cluster_ips),
                    "headless": svc.headless,
                    "endpoints": endpoints,
                    "ports": [
                        {"name": p.name or "", "port": p.port, "protocol": p.protocol} for p in svc.spec.ports
                    ],
                }
            )
        write_records(paths.node_run_dir(self.agent.config.name) / "dns-records.json", services)


def _addr16(addr: str) -> bytes:
    packed = ipaddress.ip_address(addr).packed
    return packed + bytes(16 - len(packed))


def _nonzero(addr: str) -> bool:
    """False for the all-zero NodePort wildcard (0.0.0.0 / ::)."""
    return bool(addr) and int(ipaddress.ip_address(addr)) != 0
