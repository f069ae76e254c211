"""Endpoints: a pod's network identity on this node (netns, veth, addresses, cgroup, datapath hook).

Create and restore share one path (`_realise`): every step is idempotent, so an agent restarted after
kill -9 simply re-asserts each recorded endpoint and nothing that already matches is touched.
"""

from __future__ import annotations

import ipaddress
import logging
import time
from typing import Any

import numpy as np

from tendril.agent.config import NodeConfig
from tendril.agent.datapath import Datapath
from tendril.agent.state import EndpointRecord, NodeState
from tendril.agent.visibility import endpoint_flags
from tendril.common.errors import NotFoundError
from tendril.datapath import cgroup, podnet
from tendril.endpoint.ipam import IPAM
from tendril.hubble.record import EndpointMeta, Tables

log = logging.getLogger(__name__)


def workloads_of(owner: str, pod: str) -> tuple[tuple[str, str], ...]:
    """Hubble's workloads of a pod: its owner ("Deployment/<name>"), or the bare pod itself."""
    if owner:
        kind, _, name = owner.partition("/")
        return ((name, kind),)
    return ((pod, "Pod"),)


_ROUTER_LL = ipaddress.IPv6Address("fe80::1").packed  # the node side of every pod veth


class EndpointManager:
    def __init__(self, config: NodeConfig, state: NodeState, datapath: Datapath, tables: Tables) -> None:
        self.config = config
        self.tables = tables
        self.state = state
        self.datapath = datapath
        self.ipam = IPAM.from_dict(state.ipam) if state.ipam else IPAM(config.pod_cidr_v4, config.pod_cidr_v6)
        self.on_delete: list = []  # callbacks(EndpointMeta) when an endpoint goes away
        self.policy: Any = None  # the PolicyEngine, set by the agent once it exists
        self.cluster: Any = None  # the ClusterSync (remote pods' names for flows), set by the agent
        self._ip_ids: dict[bytes, int] = {}
        self._ifnames: dict[int, str] = {}
        self._reindex()

    # ---- lookups used by the flow parser -------------------------------------------------------
    def _reindex(self) -> None:
        ip_ids: dict[bytes, int] = {}
        ifnames: dict[int, str] = {}
        for ep in self.state.endpoints.values():
            meta = self.meta(ep)
            meta_id = self.tables.endpoints.intern(meta)
            ip_ids[ipaddress.IPv4Address(ep.ipv4).packed + bytes(12)] = meta_id
            ip_ids[ipaddress.IPv6Address(ep.ipv6).packed] = meta_id
            ifnames[ep.host_ifindex] = ep.host_ifname
        self._ip_ids, self._ifnames = ip_ids, ifnames

    # ---- the parser's Resolver (vectorised callers pass distinct values) -------------------------
    def endpoint_ids(self, addrs: np.ndarray) -> np.ndarray:
        """Local endpoints by address; any other address gets the metadata of its ipcache identity
        (world, host, a CIDR identity), as Hubble shows `reserved:world` peers."""
        ids = self._ip_ids
        out = np.zeros(len(addrs), dtype=np.uint32)
        for i, a in enumerate(addrs):
            raw = a.tobytes()
            meta_id = ids.get(raw)
            if meta_id is None:
                meta_id = self._peer_meta_id(raw)
            out[i] = meta_id
        return out

    def _peer_meta_id(self, raw: bytes) -> int:
        if self.policy is None or raw == bytes(16):
            return 0
        remote = self.cluster.remote_meta(raw) if self.cluster is not None else None
        if remote is not None:  # a pod on another node: named as Hubble names remote pods
            return self.tables.endpoints.intern(remote)
        ip = ipaddress.IPv4Address(raw[:4]) if raw[4:] == bytes(12) else ipaddress.IPv6Address(raw)
        # fe80::1 is the node's router on every veth: the host
        ident = 1 if raw == _ROUTER_LL else self.policy.ipcache.lookup(ip)
        labels = tuple(sorted(self.policy.alloc.lookup(ident) or ()))
        return self.tables.endpoints.intern(EndpointMeta(identity=ident, labels=labels))

    def endpoint_ids_by_epid(self, ep_ids: np.ndarray) -> np.ndarray:
        """Endpoint IDs (socket-LB events know the pod by its cgroup, not an address) -> meta ids."""
        by_id = {ep.id: ep for ep in self.state.endpoints.values()}
        intern = self.tables.endpoints.intern
        return np.fromiter(
            (intern(self.meta(by_id[int(i)])) if int(i) in by_id else 0 for i in ep_ids),
            np.uint32,
            len(ep_ids),
        )

    def endpoint_addrs(self, ep_ids: np.ndarray, versions: np.ndarray) -> np.ndarray:
        """The endpoints' own addresses (V16) in the given IP versions."""
        by_id = {ep.id: ep for ep in self.state.endpoints.values()}
        out = np.zeros(len(ep_ids), "V16")
        for i, (ep_id, version) in enumerate(zip(ep_ids.tolist(), versions.tolist(), strict=True)):
            ep = by_id.get(ep_id)
            if ep is not None:
                ip = ipaddress.ip_address(ep.ipv4 if version == 4 else ep.ipv6)
                out[i] = np.void(ip.packed + bytes(16 - len(ip.packed)))
        return out

    def service_ids(self, keys: np.ndarray) -> np.ndarray:
        """Distinct (address, port, protocol) keys -> interned "namespace/name" of the service whose
        frontend or backend it is (0 = none)."""
        svc = getattr(self, "services", None)
        if svc is None:
            return np.zeros(len(keys), np.uint32)
        intern = self.tables.strings.intern
        out = np.zeros(len(keys), np.uint32)
        for i, k in enumerate(keys):
            name = svc.service_of(bytes(k["a"]), int(k["p"]), int(k["x"]))
            out[i] = intern(name) if name else 0
        return out

    def identity_of(self, meta_ids: np.ndarray) -> np.ndarray:
        ep = self.tables.endpoint
        return np.fromiter((ep(i).identity for i in meta_ids), dtype=np.uint32, count=len(meta_ids))

    def ifname_ids(self, ifindexes: np.ndarray) -> np.ndarray:
        intern, names = self.tables.strings.intern, self._ifnames
        return np.fromiter(
            (intern(names.get(int(i), "")) for i in ifindexes), dtype=np.uint32, count=len(ifindexes)
        )

    @staticmethod
    def meta(ep: EndpointRecord) -> EndpointMeta:
        labels = tuple(ep.identity_labels) or tuple(sorted(f"k8s:{k}={v}" for k, v in ep.labels.items())) + (
            f"k8s:io.kubernetes.pod.namespace={ep.namespace}",
        )
        return EndpointMeta(
            id=ep.id,
            namespace=ep.namespace,
            pod_name=ep.pod,
            labels=labels,
            identity=ep.identity,
            workloads=workloads_of(ep.owner, ep.pod),
        )

    # ---- lifecycle -----------------------------------------------------------------------------
    def get(self, namespace: str, pod: str) -> EndpointRecord:
        ep = self.state.endpoints.get(f"{namespace}/{pod}")
        if ep is None:
            raise NotFoundError(f'endpoint for pod "{namespace}/{pod}" not found')
        return ep

    def by_id(self, ep_id: int) -> EndpointRecord:
        for ep in self.state.endpoints.values():
            if ep.id == ep_id:
                return ep
        raise NotFoundError(f"endpoint {ep_id} not found")

    def list(self) -> list[EndpointRecord]:
        return sorted(self.state.endpoints.values(), key=lambda e: e.id)

    def create(
        self,
        namespace: str,
        pod: str,
        labels: dict[str, str],
        owner: str = "",
        named_ports: dict[str, list[int]] | None = None,
    ) -> EndpointRecord:
        key = f"{namespace}/{pod}"
        ep = self.state.endpoints.get(key)
        if ep is None:
            v4, v6 = self.ipam.allocate(key)
            ep = EndpointRecord(
                id=self.state.allocate_endpoint_id(),
                namespace=namespace,
                pod=pod,
                labels=dict(labels),
                ipv4=str(v4),
                ipv6=str(v6),
                netns=podnet.pod_netns_name(self.config.name, namespace, pod),
                host_ifname=podnet.host_ifname_for(self.config.name, namespace, pod),
                host_ifindex=0,
                cgroup="",
                created=time.time(),
            )
        ep.labels = dict(labels)
        ep.owner = owner
        ep.named_ports = dict(named_ports or {})
        self._realise(ep, new=True)
        self.state.endpoints[key] = ep
        self.state.ipam = self.ipam.to_dict()
        self.state.save()
        self._reindex()
        return ep

    def relabel(self, namespace: str, pod: str, labels: dict[str, str]) -> EndpointRecord:
        """New pod labels: a new identity (policy maps, ipcache) without touching the network."""
        ep = self.get(namespace, pod)
        ep.labels = dict(labels)
        if self.policy is not None:
            self.policy.sync()
        self.state.save()
        self._reindex()
        return ep

    def _realise(self, ep: EndpointRecord, new: bool = False) -> None:
        net = podnet.create_pod_network(
            node_netns=self.config.netns,
            pod_netns=ep.netns,
            host_ifname=ep.host_ifname,
            ipv4=ep.ipv4,
            ipv6=ep.ipv6,
            router_v4=self.config.router_v4,
            mtu=self.config.mtu,
        )
        ep.host_ifindex = net.host_ifindex
        ep.cgroup = str(cgroup.create_pod_cgroup(self.config.name, podnet.pod_key(ep.namespace, ep.pod)))
        if new and self.policy is not None:
            # identity, policy map and ipcache exist before the programs see the pod's first packet
            self.policy.sync(pending=ep)
        flags = endpoint_flags(self.state, ep.namespace, ep.pod)
        self.datapath.attach_endpoint(
            ep.host_ifindex, ep.host_ifname, ep.id, ep.ipv4, ep.ipv6, ep.identity, flags
        )
        self.datapath.register_cgroup(ep.cgroup, ep.id)

    def refresh_flags(self) -> None:
        """Pod annotations or the namespace list changed: every endpoint's EPF_* bits follow."""
        for ep in self.state.endpoints.values():
            self.datapath.set_endpoint_flags(
                ep.host_ifindex, endpoint_flags(self.state, ep.namespace, ep.pod)
            )

    def restore(self) -> list[str]:
        """Re-assert every recorded endpoint; returns the keys that could not be restored."""
        failed = []
        for key, ep in list(self.state.endpoints.items()):
            try:
                self._realise(ep)
            except Exception as e:  # keep the rest of the node working
                log.error("restoring endpoint %s failed: %s", key, e)
                failed.append(key)
        self.state.save()
        self._reindex()
        return failed

    def delete(self, namespace: str, pod: str) -> EndpointRecord:
        ep = self.get(namespace, pod)
        self.datapath.detach_endpoint(ep.host_ifindex, ep.host_ifname)
        self.datapath.unregister_cgroup(ep.cgroup)
        if ep.cgroup:
            cgroup.remove(
                cgroup.pod_cgroup_path(self.config.name, podnet.pod_key(ep.namespace, ep.pod)), kill=True
            )
        podnet.delete_pod_network(
            node_netns=self.config.netns, pod_netns=ep.netns, host_ifname=ep.host_ifname
        )
        self.ipam.release(ep.key)
        del self.state.endpoints[ep.key]
        if self.policy is not None:
            self.policy.forget_endpoint(ep)
        for hook in self.on_delete:
            hook(self.meta(ep))
        self.state.ipam = self.ipam.to_dict()
        self.state.save()
        self._reindex()
        return ep
