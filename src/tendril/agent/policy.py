"""The agent's policy engine: identities, ipcache and per-endpoint policy maps, kept in sync.

One `sync()` recomputes everything derived from the desired state (pods, namespaces, policies):
each endpoint's identity from its labels, the CIDR identities policies need, every endpoint's
resolved policy, and the ipcache. The order avoids windows where traffic is wrongly allowed or
dropped: identities are allocated first, then complete new policy maps (which already know the new
identities) are swapped in one update per endpoint, then the ipcache is switched to the new
identities, and only then are identities nobody uses any more released.
"""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np

from tendril.bpf import abi
from tendril.bpf.maps import TypedMap, create_policy_map
from tendril.common.errors import InvalidInputError, NotFoundError
from tendril.identity import IdentityAllocator, ReservedIdentity, identity_labels
from tendril.policy import (
    EndpointPolicy,
    LocalEndpoint,
    PolicyRepository,
    PolicyResolver,
    PolicyValidationError,
    normalize_kind,
    parse_policy_documents,
)
from tendril.policy.ports import K8S_PROTOCOLS

if TYPE_CHECKING:
    from tendril.agent.config import NodeConfig
    from tendril.agent.datapath import Datapath
    from tendril.agent.state import EndpointRecord, NodeState

log = logging.getLogger(__name__)


def host_prefix(ip: str) -> str:
    """`10.1.2.3` -> `10.1.2.3/32` (`/128` for IPv6): one address as an ipcache prefix."""
    a = ipaddress.ip_address(ip)
    return f"{a}/{a.max_prefixlen}"


class IpcacheMirror:
    """What the agent wrote into tnd_ipcache, with a longest-prefix lookup for the flow parser."""

    def __init__(self) -> None:
        self.entries: dict[str, int] = {}
        self._by_len: dict[tuple[int, int], dict[int, int]] = {}

    def replace(self, entries: dict[str, int]) -> None:
        self.entries = dict(entries)
        by_len: dict[tuple[int, int], dict[int, int]] = {}
        for prefix, ident in entries.items():
            net = ipaddress.ip_network(prefix)
            by_len.setdefault((net.version, net.prefixlen), {})[int(net.network_address)] = ident
        self._by_len = dict(sorted(by_len.items(), key=lambda kv: -kv[0][1]))

    def lookup(self, ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> int:
        value = int(ip)
        bits = ip.max_prefixlen
        for (version, plen), table in self._by_len.items():
            if version != ip.version:
                continue
            net = (value >> (bits - plen)) << (bits - plen) if plen else 0
            ident = table.get(net)
            if ident is not None:
                return ident
        return int(ReservedIdentity.WORLD)


class PolicyEngine:
    def __init__(self, config: NodeConfig, state: NodeState, datapath: Datapath) -> None:
        self.config = config
        self.state = state
        self.datapath = datapath
        self.alloc = (
            IdentityAllocator.from_dict(state.identities) if state.identities else IdentityAllocator()
        )
        self.repo = PolicyRepository.from_dict(state.policies) if state.policies else PolicyRepository()
        self.resolver = PolicyResolver(
            peer_named_ports=self._peer_named_ports,
            proxy_port=config.proxy_port,
            dns_proxy_port=config.dns_proxy_port,
        )
        self.ipcache = IpcacheMirror()
        self.extra_prefixes: Callable[[], set[str]] = set  # toFQDNs IPs (agent/fqdn.py)
        self.cidr_prefixes: set[str] = set(state.identities.get("tendril_cidr_prefixes", []))
        self.resolved: dict[int, EndpointPolicy] = {}
        self.errors: dict[int, str] = {}
        self.notices: list[str] = []
        self._ipcache_map = TypedMap(
            datapath.obj.map(abi.MAP_IPCACHE), abi.IPCACHE_KEY_DTYPE, abi.IPCACHE_VALUE_DTYPE
        )
        self._outer = datapath.obj.map(abi.MAP_POLICY)
        keys, _ = self._ipcache_map.to_arrays()
        self._written_ipcache = {_key_prefix(k) for k in keys}
        self._written_tunnels: dict[str, str] = {}  # unknown after a restart: rewritten once
        self._written_local: dict[str, int] = {}  # prefix -> ep_id written (unknown after a restart)
        # Remote pods and nodes (prefix -> (identity, tunnel endpoint)), from the cluster state.
        self.remote_ipcache: Callable[[], dict[str, tuple[int, str]]] = dict
        self.remote_named_ports: Callable[[int], dict[str, list[tuple[int, int]]]] = lambda ident: {}

    # ---- identities ----------------------------------------------------------------------------
    def labels_for(self, ep: EndpointRecord) -> list[str]:
        ns_labels = dict(self.state.namespaces.get(ep.namespace, {}))
        ns_labels.setdefault("kubernetes.io/metadata.name", ep.namespace)
        return sorted(identity_labels(ep.namespace, ep.labels, ns_labels, cluster="default"))

    def _peer_named_ports(self, identity: int) -> dict[str, list[tuple[int, int]]]:
        out: dict[str, list[tuple[int, int]]] = {
            name: list(ports) for name, ports in self.remote_named_ports(identity).items()
        }
        for ep in self.state.endpoints.values():
            if ep.identity == identity:
                for name, (port, proto) in ep.named_ports.items():
                    out.setdefault(name, []).append((port, proto))
        return out

    # ---- the one synchronisation step ----------------------------------------------------------
    def sync(self, pending: EndpointRecord | None = None) -> None:
        """Recompute identities, policy maps and ipcache. `pending` is an endpoint being created
        (not yet in the state): it gets its identity and policy map before its programs attach."""
        endpoints = list(self.state.endpoints.values())
        if pending is not None and pending not in endpoints:
            endpoints.append(pending)
        stale_labels: list[list[str]] = []
        for ep in endpoints:
            labels = self.labels_for(ep)
            if labels != ep.identity_labels:
                new_id = self.alloc.acquire(labels)
                if ep.identity_labels:
                    stale_labels.append(ep.identity_labels)
                ep.identity, ep.identity_labels = new_id, labels
        wanted_cidrs = set(self.repo.required_cidr_prefixes()) | self.extra_prefixes()
        for prefix in sorted(wanted_cidrs - self.cidr_prefixes):
            self.alloc.cidr_identity(prefix)
        self.resolver.set_identities(self.alloc.identities())
        local = [
            LocalEndpoint(
                ep.id, ep.identity, {n: (p[0], p[1]) for n, p in ep.named_ports.items()}, name=ep.key
            )
            for ep in endpoints
        ]
        result = self.resolver.resolve_all(self.repo.policies(), local)
        self.errors = {ep_id: str(err) for ep_id, err in result.errors.items()}
        for ep_id, pol in result.policies.items():
            self._write_policy(ep_id, pol)
        self.resolved = {
            **{k: v for k, v in self.resolved.items() if k in result.policies},
            **result.policies,
        }
        self.notices = sorted({n for p in self.repo.policies() for n in p.notices})
        self._write_ipcache(endpoints, wanted_cidrs)
        for labels in stale_labels:
            self.alloc.release(labels)
        for prefix in sorted(self.cidr_prefixes - wanted_cidrs):
            self.alloc.release_cidr(prefix)
        self.cidr_prefixes = wanted_cidrs
        for ep in endpoints:
            if ep.host_ifindex:
                self.datapath.set_endpoint_identity(ep.host_ifindex, ep.identity)
        self._persist()

    def _write_policy(self, ep_id: int, pol: EndpointPolicy) -> None:
        if ep_id >= abi.POLICY_ENDPOINTS:
            return
        if not (pol.ingress_enforced or pol.egress_enforced):
            self._outer.delete(np.uint32(ep_id).tobytes())  # unenforced: no map at all (fast path)
            return
        inner = create_policy_map(name=f"tnd_pol_{ep_id}")
        try:
            typed = TypedMap(inner, abi.POLICY_KEY_DTYPE, abi.POLICY_VALUE_DTYPE)
            for prefixlen, identity, egress, proto, port, flags, match, ref, proxy_port in pol.map_items():
                k = abi.policy_key(identity, bool(egress), proto, port, prefixlen=prefixlen)
                v = abi.policy_value(
                    match,
                    deny=bool(flags & abi.PolicyFlags.DENY),
                    proxy_port=proxy_port,
                    rule_ref=self.repo.rule_ref_id(ref) if ref else 0,
                )
                typed.update(k, v)
            self._outer.set_inner(ep_id, inner)  # one atomic swap per endpoint
        finally:
            inner.close()

    def _write_ipcache(self, endpoints: list[EndpointRecord], cidrs: set[str]) -> None:
        desired: dict[str, int] = {}
        tunnels: dict[str, str] = {}
        for prefix, (ident, tunnel) in self.remote_ipcache().items():
            desired[prefix] = ident
            if tunnel:
                tunnels[prefix] = tunnel
        for prefix in cidrs:
            ident = self.alloc.cidr_identity_of(prefix)
            if ident is not None and ident != ReservedIdentity.WORLD:  # /0 is what "no entry" means
                desired[prefix] = ident
        host = int(ReservedIdentity.HOST)
        for ip in (self.config.router_v4, self.config.router_v6, self.config.underlay_ip):
            if ip:
                desired[host_prefix(ip)] = host
        local: dict[str, int] = {}  # prefix -> endpoint ID of a pod on this node (L7 redirect)
        for ep in endpoints:
            for ip in (ep.ipv4, ep.ipv6):
                desired[host_prefix(ip)] = ep.identity
                tunnels.pop(host_prefix(ip), None)
                if ep.id < abi.POLICY_ENDPOINTS:
                    local[host_prefix(ip)] = ep.id
        for prefix, ident in desired.items():
            tunnel = tunnels.get(prefix, "")
            ep_id = local.get(prefix, 0)
            if (
                self.ipcache.entries.get(prefix) != ident
                or prefix not in self._written_ipcache
                or self._written_tunnels.get(prefix, "") != tunnel
                or self._written_local.get(prefix, 0) != ep_id
            ):
                value = abi.ipcache_value(ident, tunnel or "", ep_id)
                self._ipcache_map.update(abi.ipcache_key(prefix), value)
        for prefix in self._written_ipcache - set(desired):
            self._ipcache_map.delete(abi.ipcache_key(prefix))
        self._written_ipcache = set(desired)
        self._written_tunnels = tunnels
        self._written_local = local
        self.ipcache.replace(desired)

    def forget_endpoint(self, ep: EndpointRecord) -> None:
        """After an endpoint is gone: its map slot, identity reference and ipcache entries."""
        if ep.id < abi.POLICY_ENDPOINTS:
            self._outer.delete(np.uint32(ep.id).tobytes())
        self.resolved.pop(ep.id, None)
        if ep.identity_labels:
            self.alloc.release(ep.identity_labels)
            ep.identity_labels = []
        self.sync()

    def _persist(self) -> None:
        data = self.alloc.to_dict()
        data["tendril_cidr_prefixes"] = sorted(self.cidr_prefixes)
        self.state.identities = data
        self.state.policies = self.repo.to_dict()
        self.state.save()

    # ---- policy operations (API) ---------------------------------------------------------------
    def import_text(self, text: str, source: str) -> dict[str, Any]:
        try:
            policies = parse_policy_documents(text, source)
        except PolicyValidationError as e:
            raise InvalidInputError(str(e)) from None
        if not policies:
            raise InvalidInputError(f"{source}: no policy documents found")
        results = self.repo.apply(policies)
        self.sync()
        return {
            "results": [
                {
                    "action": a,
                    "kind": p.kind,
                    "namespace": p.namespace,
                    "name": p.name,
                    "notices": list(p.notices),
                }
                for a, p in results
            ],
            "revision": self.repo.revision,
            "errors": self.errors,
        }

    def delete(self, kind: str, namespace: str | None, name: str) -> dict[str, Any]:
        try:
            k = normalize_kind(kind)
        except ValueError as e:
            raise InvalidInputError(str(e)) from None
        p = self.repo.delete(k, namespace, name)
        self.sync()
        return {
            "deleted": {"kind": p.kind, "namespace": p.namespace, "name": p.name},
            "revision": self.repo.revision,
        }

    def list(self) -> dict[str, Any]:
        return {
            "revision": self.repo.revision,
            "policies": [
                {
                    "kind": p.kind,
                    "namespace": p.namespace,
                    "name": p.name,
                    "source": p.source,
                    "notices": list(p.notices),
                    "document": p.document,
                }
                for p in self.repo.policies()
            ],
        }

    def identity_list(self) -> list[dict[str, Any]]:
        used: dict[int, int] = {}
        for ep in self.state.endpoints.values():
            used[ep.identity] = used.get(ep.identity, 0) + 1
        return [
            {"id": n, "labels": sorted(labels), "endpoints": used.get(n, 0)}
            for n, labels in sorted(self.alloc.identities().items())
        ]

    def policy_map(self, ep_id: int) -> dict[str, Any]:
        inner = self._outer.inner_map(ep_id) if ep_id < abi.POLICY_ENDPOINTS else None
        if inner is None:
            return {"endpoint": ep_id, "enforced": False, "entries": []}
        try:
            keys, values = TypedMap(inner, abi.POLICY_KEY_DTYPE, abi.POLICY_VALUE_DTYPE).to_arrays()
        finally:
            inner.close()
        identities = self.alloc.identities()
        entries = []
        for k, v in zip(keys, values, strict=True):
            ident = int(k["identity"])
            entries.append(
                {
                    "identity": ident,
                    "labels": sorted(identities.get(ident, ()))
                    if ident != abi.Identity.ENFORCED_MARKER
                    else [],
                    "egress": bool(k["egress"]),
                    "proto": int(k["proto"]),
                    "port": int(k["dport"]),
                    "prefixlen": int(k["prefixlen"]),
                    "deny": bool(int(v["flags"]) & abi.PolicyFlags.DENY),
                    "match_type": int(v["match_type"]),
                    "rule": self.repo.rule_ref_name(int(v["rule_ref"])) or "",
                    "marker": ident == abi.Identity.ENFORCED_MARKER,
                }
            )
        return {"endpoint": ep_id, "enforced": True, "entries": entries}

    def enforcement(self, ep_id: int) -> tuple[bool, bool]:
        pol = self.resolved.get(ep_id)
        return (pol.ingress_enforced, pol.egress_enforced) if pol else (False, False)


def _key_prefix(k: np.void) -> str:
    plen = int(k["prefixlen"]) - 32
    raw = bytes(k["addr"])
    if int(k["family"]) == 4:
        return f"{ipaddress.IPv4Address(raw[:4])}/{plen}"
    return f"{ipaddress.IPv6Address(raw)}/{plen}"


def named_ports_of(containers: list[dict[str, Any]]) -> dict[str, list[int]]:
    """Container ports with a name -> [port, IP protocol number], for named-port rules."""
    out: dict[str, list[int]] = {}
    for c in containers:
        for p in c.get("ports", []):
            if p.get("name"):
                out[p["name"]] = [int(p["containerPort"]), int(K8S_PROTOCOLS[p.get("protocol", "TCP")])]
    return out


def ensure_policy_kind(kind: str) -> str:
    try:
        return normalize_kind(kind)
    except ValueError as e:
        raise NotFoundError(str(e)) from None
