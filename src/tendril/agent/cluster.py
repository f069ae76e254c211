"""Cluster state through the kvstore: what this node tells the others, and what it learns from them.

Every agent publishes, under its session lease (so a dead node's entries expire by themselves):
its node record (addresses, pod CIDRs, Hubble address), its endpoints (pod IPs, labels, identity,
ports, readiness) and a reference on every identity its pods use. Identities are numbered cluster-
wide with one compare-and-swap transaction per new label set, so two agents racing on the same labels
end up with the same number. Cluster configuration (namespaces, policies, services) is mirrored
without a lease: the agent that receives an `apply` publishes the document (services with their
allocated addresses filled in, so every node uses the same ClusterIP), the others watch and converge;
a deletion leaves a tombstone so a node that was away when it happened does not bring it back.

Watch callbacks arrive on the kvstore's thread; they only update caches and mark what is dirty. One
coalesced `converge` step then runs on the agent's loop under the agent lock (like an API call):
routes and the overlay for new or gone nodes, identities and the ipcache (`PolicyEngine.sync`),
services (remote pods are backends too), configuration changes, and the peer list Hubble serves.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import logging
import threading
import time
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

import yaml

from tendril.agent.endpoints import workloads_of
from tendril.agent.policy import host_prefix
from tendril.common import paths
from tendril.common.errors import TendrilError
from tendril.identity import ReservedIdentity
from tendril.kvstore import KvEvent, KVStore, KvStoreError, open_store

if TYPE_CHECKING:
    from tendril.agent.daemon import Agent
    from tendril.hubble.record import EndpointMeta

log = logging.getLogger(__name__)

PREFIX = "tendril/state/"
NODES = PREFIX + "nodes/v1/"
IDS = PREFIX + "identities/v1/id/"
ID_VALUES = PREFIX + "identities/v1/value/"
ID_REFS = PREFIX + "identities/v1/refs/"
ENDPOINTS = PREFIX + "endpoints/v1/"
CONFIG = PREFIX + "config/v1/"
CONFIG_KINDS = ("namespaces", "policies", "services")
_ALLOC_ATTEMPTS = 64


@dataclass(frozen=True)
class ClusterNode:
    """A node as published in the kvstore."""

    name: str
    underlay_ip: str
    underlay_ip6: str = ""
    pod_cidr_v4: str = ""
    pod_cidr_v6: str = ""
    router_v4: str = ""
    router_v6: str = ""
    hubble_address: str = ""
    tls_server_name: str = ""
    routing: str = "native"
    started: float = 0.0


@dataclass(frozen=True)
class ClusterEndpoint:
    """A pod as published by the node that runs it."""

    namespace: str
    pod: str
    node: str
    ipv4: str
    ipv6: str
    identity: int
    identity_labels: tuple[str, ...] = ()
    labels: tuple[tuple[str, str], ...] = ()
    ports: tuple[tuple[int, str, str], ...] = ()  # (containerPort, name, protocol)
    named_ports: tuple[tuple[str, int, int], ...] = ()  # (name, port, IP protocol)
    ready: bool = False
    owner: str = ""

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.pod}"

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ClusterEndpoint:
        return cls(
            namespace=data["namespace"],
            pod=data["pod"],
            node=data["node"],
            ipv4=data["ipv4"],
            ipv6=data["ipv6"],
            identity=int(data["identity"]),
            identity_labels=tuple(data.get("identity_labels", ())),
            labels=tuple((k, v) for k, v in sorted(data.get("labels", {}).items())),
            ports=tuple((int(p[0]), p[1] or "", p[2]) for p in data.get("ports", ())),
            named_ports=tuple((n, int(p), int(x)) for n, p, x in data.get("named_ports", ())),
            ready=bool(data.get("ready")),
            owner=data.get("owner", ""),
        )

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["labels"] = dict(self.labels)
        return d


def labels_key(labels: frozenset[str]) -> str:
    """A label set as one kvstore key segment (sorted, ';'-joined; labels never contain ';')."""
    return ";".join(sorted(labels))


def _dumps(obj: Any) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()


@dataclass
class _Dirty:
    nodes: bool = False
    identities: bool = False
    endpoints: bool = False
    config: list[KvEvent] = field(default_factory=list)

    def any(self) -> bool:
        return self.nodes or self.identities or self.endpoints or bool(self.config)


class ClusterSync:
    """One node's view of, and contribution to, the cluster state in the kvstore."""

    def __init__(self, agent: Agent) -> None:
        self.agent = agent
        cfg = agent.config
        self.node_name = cfg.name
        state_file = None if cfg.kvstore.startswith("etcd") else paths.node_run_dir(cfg.name) / "kvstore.json"
        self.store: KVStore = open_store(cfg.kvstore, lease_ttl=cfg.kvstore_lease_ttl, state_file=state_file)
        self.nodes: dict[str, ClusterNode] = {}
        self.endpoints: dict[str, ClusterEndpoint] = {}  # remote only: "<node>/<ns>/<pod>"
        self.identities: dict[int, frozenset[str]] = {}
        self._by_ip: dict[bytes, ClusterEndpoint] = {}
        self._lock = threading.Lock()
        self._dirty = _Dirty()
        self._published: dict[str, bytes] = {}  # leased keys as last written
        self._config_written: dict[str, bytes] = {}  # config keys this node wrote (echo suppression)
        self._pending_config: dict[str, bytes] = {}  # config to publish once the kvstore is back
        self._loop: asyncio.AbstractEventLoop | None = None
        self._scheduled = False
        self._watches: list[Any] = []
        self.config_revision = 0  # the last kvstore revision of configuration applied here
        self.errors: list[str] = []
        self._republish = False

    # ---- start-up ------------------------------------------------------------------------------
    def start(self) -> None:
        """Load the cluster's current state (before the agent serves), publish ours, then watch."""
        handlers = {IDS: self._on_identities, NODES: self._on_nodes, ENDPOINTS: self._on_endpoints}
        listed_at: dict[str, int] = {}  # each prefix is watched from just after its own read
        for prefix, handler in handlers.items():
            items, listed_at[prefix] = self.store.list(prefix)
            handler([KvEvent("put", k, v, listed_at[prefix]) for k, v in sorted(items.items())])
        listed_at[CONFIG] = self._initial_config()
        self._converge_sync()
        self.publish()
        for prefix, handler in (*handlers.items(), (CONFIG, self._on_config)):
            self._watches.append(self.store.watch(prefix, handler, start_revision=listed_at[prefix] + 1))
        self.store.on_reconnect(self._on_reconnect)

    def attach_loop(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        if self._dirty.any():
            self._schedule()

    def close(self) -> None:
        for w in self._watches:
            with contextlib.suppress(Exception):  # the store may already be gone
                w.cancel()
        self.store.close(revoke_lease=True)

    # ---- what this node publishes --------------------------------------------------------------
    def node_record(self) -> ClusterNode:
        cfg = self.agent.config
        port = cfg.hubble_listen_address.rpartition(":")[2] if cfg.hubble_listen_address else ""
        tls_name = ""
        if cfg.hubble_tls_dir:
            from tendril.hubble.peer import tls_server_name

            tls_name = tls_server_name(cfg.name, cfg.cluster)
        return ClusterNode(
            name=cfg.name,
            underlay_ip=cfg.underlay_ip,
            underlay_ip6=cfg.underlay_ip6,
            pod_cidr_v4=cfg.pod_cidr_v4,
            pod_cidr_v6=cfg.pod_cidr_v6,
            router_v4=cfg.router_v4,
            router_v6=cfg.router_v6,
            hubble_address=f"{cfg.underlay_ip}:{port}" if port and cfg.underlay_ip else "",
            tls_server_name=tls_name,
            routing=cfg.routing,
            started=self.agent.started,
        )

    def _local_endpoints(self) -> dict[str, bytes]:
        agent = self.agent
        out: dict[str, bytes] = {}
        for ep in agent.state.endpoints.values():
            pod = agent.state.pods.get(ep.key)
            ready = pod is not None and agent.pods.status(pod)["phase"] == "Running"
            ports = [
                (int(p["containerPort"]), p.get("name") or "", p.get("protocol", "TCP"))
                for c in (pod.containers if pod else [])
                for p in c.get("ports", [])
            ]
            rec = ClusterEndpoint(
                namespace=ep.namespace,
                pod=ep.pod,
                node=self.node_name,
                ipv4=ep.ipv4,
                ipv6=ep.ipv6,
                identity=ep.identity,
                identity_labels=tuple(ep.identity_labels),
                labels=tuple(sorted(ep.labels.items())),
                ports=tuple(ports),
                named_ports=tuple((n, int(v[0]), int(v[1])) for n, v in sorted(ep.named_ports.items())),
                ready=ready,
                owner=ep.owner,
            )
            out[f"{ENDPOINTS}{self.node_name}/{ep.namespace}/{ep.pod}"] = _dumps(rec.to_json())
        return out

    def desired_leased(self) -> dict[str, bytes]:
        want = {NODES + self.node_name: _dumps(asdict(self.node_record()))}
        want.update(self._local_endpoints())
        for n in self.agent.policy.alloc.local_cluster_ids():
            want[f"{ID_REFS}{n}/{self.node_name}"] = b"1"
        return want

    def publish(self) -> None:
        """Write what changed in our leased keys (all of them after a reconnect); cheap when idle."""
        if self._republish:
            self._published = {}
            self._republish = False
        want = self.desired_leased()
        try:
            for key, value in want.items():
                if self._published.get(key) != value:
                    self.store.put(key, value, lease=True)
                    self._published[key] = value
            for key in set(self._published) - set(want):
                self.store.delete(key)
                del self._published[key]
            for key, value in list(self._pending_config.items()):
                self.store.put(key, value)
                self._config_written[key] = value
                del self._pending_config[key]
        except KvStoreError as e:
            log.warning("kvstore: publishing deferred: %s", e)

    def _on_reconnect(self) -> None:
        """The kvstore came back or our lease was re-granted: re-put every leased key."""
        log.info("kvstore reconnected: republishing this node's entries")
        self._republish = True
        self._mark(lambda d: setattr(d, "nodes", True))

    # ---- identities ----------------------------------------------------------------------------
    def allocate_identity(self, labels: frozenset[str]) -> int:
        """The cluster-wide number for a label set: an existing one, or the lowest free number
        claimed with one create-if-absent transaction on both the id and the labels key."""
        from tendril.identity.reserved import CLUSTER_ID_MAX, CLUSTER_ID_MIN

        lk = labels_key(labels)
        value = json.dumps(sorted(labels)).encode()
        for _ in range(_ALLOC_ATTEMPTS):
            found = self.store.get(ID_VALUES + lk)
            if found is not None:
                n = int(found)
                break
            items, _rev = self.store.list(IDS)
            used = {int(k[len(IDS) :]) for k in items}
            n = next((i for i in range(CLUSTER_ID_MIN, CLUSTER_ID_MAX + 1) if i not in used), 0)
            if not n:
                raise TendrilError(f"no free cluster identity left in {CLUSTER_ID_MIN}..{CLUSTER_ID_MAX}")
            if self.store.create_all({IDS + str(n): value, ID_VALUES + lk: str(n).encode()}):
                break
        else:
            raise TendrilError(f"identity allocation for {lk!r} did not settle after {_ALLOC_ATTEMPTS} tries")
        self.store.put(f"{ID_REFS}{n}/{self.node_name}", b"1", lease=True)
        self._published[f"{ID_REFS}{n}/{self.node_name}"] = b"1"
        with self._lock:
            self.identities = {**self.identities, n: frozenset(labels)}
        return n

    def release_identity(self, n: int) -> None:
        """The last local user is gone: drop this node's reference (numbers stay reserved)."""
        key = f"{ID_REFS}{n}/{self.node_name}"
        try:
            self.store.delete(key)
        except KvStoreError as e:
            log.warning("kvstore: cannot drop identity reference %s: %s", n, e)
        self._published.pop(key, None)

    # ---- watch callbacks (kvstore thread) ------------------------------------------------------
    def _on_identities(self, events: list[KvEvent]) -> None:
        with self._lock:
            ids = dict(self.identities)
            for ev in events:
                n = int(ev.key[len(IDS) :])
                if ev.kind == "put" and ev.value is not None:
                    ids[n] = frozenset(json.loads(ev.value))
                else:
                    ids.pop(n, None)
            self.identities = ids
        self._mark(lambda d: setattr(d, "identities", True))

    def _on_nodes(self, events: list[KvEvent]) -> None:
        with self._lock:
            nodes = dict(self.nodes)
            for ev in events:
                name = ev.key[len(NODES) :]
                if ev.kind == "put" and ev.value is not None:
                    nodes[name] = ClusterNode(**json.loads(ev.value))
                else:
                    nodes.pop(name, None)
            self.nodes = nodes
        self._mark(lambda d: setattr(d, "nodes", True))

    def _on_endpoints(self, events: list[KvEvent]) -> None:
        with self._lock:
            eps = dict(self.endpoints)
            for ev in events:
                key = ev.key[len(ENDPOINTS) :]
                if key.split("/", 1)[0] == self.node_name:
                    continue  # our own, already known
                if ev.kind == "put" and ev.value is not None:
                    eps[key] = ClusterEndpoint.from_json(json.loads(ev.value))
                else:
                    eps.pop(key, None)
            self.endpoints = eps
            by_ip: dict[bytes, ClusterEndpoint] = {}
            for ep in eps.values():
                by_ip[ipaddress.IPv4Address(ep.ipv4).packed + bytes(12)] = ep
                by_ip[ipaddress.IPv6Address(ep.ipv6).packed] = ep
            self._by_ip = by_ip
        self._mark(lambda d: setattr(d, "endpoints", True))

    def _on_config(self, events: list[KvEvent]) -> None:
        self._mark(lambda d: d.config.extend(events))

    def _mark(self, change: Any) -> None:
        with self._lock:
            change(self._dirty)
        self._schedule()

    def _schedule(self) -> None:
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        loop.call_soon_threadsafe(self._ensure_task)

    def _ensure_task(self) -> None:
        if not self._scheduled:
            self._scheduled = True
            asyncio.get_running_loop().create_task(self._converge_task())

    async def _converge_task(self) -> None:
        await asyncio.sleep(0.02)  # coalesce a burst of watch events into one step
        self._scheduled = False
        async with self.agent.lock:
            try:
                await asyncio.get_running_loop().run_in_executor(None, self._converge_sync)
            except Exception:
                log.exception("cluster converge failed")

    # ---- converge (agent loop, under the agent lock) -------------------------------------------
    def _converge_sync(self) -> None:
        with self._lock:
            dirty, self._dirty = self._dirty, _Dirty()
        agent = self.agent
        if dirty.nodes:
            self._sync_nodes()
        if dirty.config:
            self._apply_config_events(dirty.config)
        if dirty.nodes or dirty.identities or dirty.endpoints:
            agent.policy.alloc.set_remote(self.identities)
            agent.policy.sync()
            agent.services.sync()
        self.publish()

    def _sync_nodes(self) -> None:
        from tendril.datapath import routes

        agent = self.agent
        remote = [n for name, n in sorted(self.nodes.items()) if name != self.node_name]
        if agent.config.netns:
            try:
                routes.sync_remote_routes(
                    agent.config.netns,
                    [
                        routes.RemoteNodeRoutes(
                            n.name, n.underlay_ip, n.underlay_ip6, n.pod_cidr_v4, n.pod_cidr_v6
                        )
                        for n in remote
                        if n.underlay_ip
                    ],
                )
            except Exception as e:  # keep the rest converging; status shows it
                log.error("routes to remote nodes: %s", e)
                self.errors = [f"routes: {e}"]
        peers = getattr(agent, "peer_source", None)
        if peers is not None:
            from tendril.hubble.peer import PeerInfo

            own = self.node_record()
            known = {**{n.name: n for n in remote}, own.name: own}
            peers.set_peers(
                PeerInfo(n.name, n.hubble_address, n.tls_server_name)
                for n in known.values()
                if n.hubble_address
            )

    # ---- what the datapath and the flow parser need --------------------------------------------
    def ipcache_entries(self) -> dict[str, tuple[int, str]]:
        """Remote pods and nodes: prefix -> (identity, tunnel endpoint or "")."""
        out: dict[str, tuple[int, str]] = {}
        vxlan = self.agent.config.routing == "vxlan"
        remote_node = int(ReservedIdentity.REMOTE_NODE)
        for name, n in self.nodes.items():
            if name == self.node_name:
                continue
            for ip in (n.underlay_ip, n.underlay_ip6, n.router_v4, n.router_v6):
                if ip:
                    out[host_prefix(ip)] = (remote_node, "")
        for ep in self.endpoints.values():
            node = self.nodes.get(ep.node)
            if node is None:
                continue  # its node is gone: the entries expire with it
            tunnel = node.underlay_ip if vxlan else ""
            out[host_prefix(ep.ipv4)] = (ep.identity, tunnel)
            out[host_prefix(ep.ipv6)] = (ep.identity, tunnel)
        return out

    def endpoint_by_ip(self, raw16: bytes) -> ClusterEndpoint | None:
        return self._by_ip.get(raw16)

    def remote_meta(self, raw16: bytes) -> EndpointMeta | None:
        from tendril.hubble.record import EndpointMeta

        ep = self._by_ip.get(raw16)
        if ep is None:
            return None
        return EndpointMeta(
            identity=ep.identity,
            namespace=ep.namespace,
            pod_name=ep.pod,
            labels=ep.identity_labels,
            workloads=workloads_of(ep.owner, ep.pod),
        )

    def remote_named_ports(self, identity: int) -> dict[str, list[tuple[int, int]]]:
        out: dict[str, list[tuple[int, int]]] = {}
        for ep in self.endpoints.values():
            if ep.identity == identity:
                for name, port, proto in ep.named_ports:
                    out.setdefault(name, []).append((port, proto))
        return out

    def remote_ready_endpoints(self) -> list[ClusterEndpoint]:
        return [ep for ep in self.endpoints.values() if ep.node in self.nodes]

    # ---- cluster configuration -----------------------------------------------------------------
    def publish_config(self, kind: str, name: str, doc: dict[str, Any] | None) -> int:
        """Mirror a namespace/policy/service (doc None: a tombstone). Returns the kvstore revision
        (0 when deferred because the kvstore is unreachable: it is written once it is back)."""
        key = f"{CONFIG}{kind}/{name}"
        value = _dumps({"deleted": True, "at": time.time()} if doc is None else {"doc": doc})
        self._config_written[key] = value
        try:
            rev = self.store.put(key, value)
        except KvStoreError as e:
            log.warning("kvstore: %s %s not published yet: %s", kind, name, e)
            self._pending_config[key] = value
            return 0
        self.config_revision = max(self.config_revision, rev)
        return rev

    def _initial_config(self) -> int:
        """Union at start-up: apply what the cluster has; publish what only this node has (it was
        applied while the kvstore was unreachable, or before this node joined a cluster store).
        Returns the revision of the read."""
        items, rev = self.store.list(CONFIG)
        self._apply_config_events([KvEvent("put", k, v, rev) for k, v in sorted(items.items())])
        for kind, name, doc in self._local_config():
            key = f"{CONFIG}{kind}/{name}"
            if key not in items:
                self.publish_config(kind, name, doc)
        self.config_revision = max(self.config_revision, rev)
        return rev

    def _local_config(self) -> list[tuple[str, str, dict[str, Any]]]:
        agent = self.agent
        out: list[tuple[str, str, dict[str, Any]]] = []
        for name, labels in sorted(agent.state.namespaces.items()):
            out.append(("namespaces", name, {"labels": labels}))
        for p in agent.policy.repo.policies():
            out.append(("policies", policy_name(p.kind, p.namespace, p.name), {"document": p.document}))
        for rec in agent.services.manager.list():
            out.append(("services", rec.key, {"document": agent.services.filled_document(rec)}))
        return out

    def _apply_config_events(self, events: list[KvEvent]) -> None:
        for ev in events:
            self.config_revision = max(self.config_revision, ev.revision)
            if ev.kind != "put" or ev.value is None:
                continue  # tombstones are puts; a real delete only happens when someone cleans up
            if self._config_written.get(ev.key) == ev.value:
                continue  # our own write coming back
            kind, _, name = ev.key[len(CONFIG) :].partition("/")
            data = json.loads(ev.value)
            try:
                if data.get("deleted"):
                    self._remove_local(kind, name)
                else:
                    self._apply_local(kind, name, data["doc"])
            except TendrilError as e:
                log.warning("cluster %s %s not applied here: %s", kind, name, e)
                self.errors = [*self.errors[-9:], f"{kind} {name}: {e}"]
            self._config_written[ev.key] = ev.value

    def _apply_local(self, kind: str, name: str, doc: dict[str, Any]) -> None:
        agent = self.agent
        if kind == "namespaces":
            if agent.state.namespaces.get(name) != doc.get("labels", {}):
                agent.pods.ensure_namespace(name, doc.get("labels", {}))
        elif kind == "policies":
            current = {policy_name(p.kind, p.namespace, p.name): p for p in agent.policy.repo.policies()}
            if name not in current or current[name].document != doc["document"]:
                agent.policy.import_text(yaml.safe_dump(doc["document"], sort_keys=False), "kvstore")
        elif kind == "services":
            ns, _, svc = name.partition("/")
            rec = agent.services.manager.get(ns, svc)
            if rec is None or agent.services.filled_document(rec) != doc["document"]:
                agent.services.apply_text(yaml.safe_dump(doc["document"], sort_keys=False), "kvstore")

    def _remove_local(self, kind: str, name: str) -> None:
        agent = self.agent
        if kind == "namespaces":
            if name in agent.state.namespaces:
                agent.pods.delete_namespace(name)
        elif kind == "policies":
            k, ns, pname = name.split("/", 2)
            current = {policy_name(p.kind, p.namespace, p.name) for p in agent.policy.repo.policies()}
            if name in current:
                agent.policy.delete(k, None if ns == "-" else ns, pname)
        elif kind == "services":
            ns, _, svc = name.partition("/")
            if agent.services.manager.get(ns, svc) is not None:
                agent.services.delete(ns, svc)

    # ---- status --------------------------------------------------------------------------------
    def status(self) -> dict[str, Any]:
        st = self.store.status()
        return {
            "kvstore": asdict(st),
            "nodes": sorted(self.nodes),
            "remote_endpoints": len(self.endpoints),
            "identities": len(self.identities),
            "config_revision": self.config_revision,
            "routing": self.agent.config.routing,
            "errors": list(self.errors),
        }


def policy_name(kind: str, namespace: str | None, name: str) -> str:
    return f"{kind}/{namespace or '-'}/{name}"
