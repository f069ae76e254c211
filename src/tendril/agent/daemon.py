"""`tendril agent --node NAME`: owns one node's datapath and answers on its Unix socket.

Start-up order matters for restarts: load the datapath through the pinned maps, re-assert the
recorded endpoints (links are switched atomically to the new programs), then drain what the kernel
queued in the ring buffer while no agent was running, then serve.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import os
import time
from pathlib import Path
from typing import Any

import uvicorn

from tendril.agent.api import build_app
from tendril.agent.config import ROUTING_MODES, TRACE_LEVELS, NodeConfig
from tendril.agent.datapath import Datapath
from tendril.agent.endpoints import EndpointManager
from tendril.agent.events import EventPump
from tendril.agent.pods import PodManager
from tendril.agent.policy import PolicyEngine
from tendril.agent.state import NodeState
from tendril.bpf import RingBufferReader, abi
from tendril.common import paths
from tendril.common.errors import InvalidInputError, TendrilError, require_root
from tendril.hubble.container import FlowRing
from tendril.hubble.record import Tables
from tendril.monitor.api import CT_STATE_TEXT

log = logging.getLogger("tendril.agent")

PROTO_NAMES = {6: "TCP", 17: "UDP", 1: "ICMP", 58: "ICMPv6", 132: "SCTP"}


class Agent:
    def __init__(self, config: NodeConfig) -> None:
        self.config = config
        self.state = NodeState.load(config.name)
        self.datapath = Datapath(config.name, ring_bytes=config.ring_bytes)
        self.lock = asyncio.Lock()
        self.started = time.time()
        self.ct_gc_runs = 0
        self.ct_gc_removed = 0
        self.lost_events: dict[str, int] = {}
        self.lost_hooks: list = []
        self._kernel_lost_seen = 0

    # ---- start-up ------------------------------------------------------------------------------
    def setup(self) -> None:
        require_root("agent")
        if self.config.netns:
            from tendril.datapath import netns

            if not netns.exists(self.config.netns):
                raise TendrilError(f"node network namespace {self.config.netns!r} does not exist")
        self.datapath.load()
        self.datapath.configure(TRACE_LEVELS[self.config.trace_level], audit=self.state.policy_audit)
        self._setup_routing()
        self.policy = PolicyEngine(self.config, self.state, self.datapath)
        from tendril.agent.fqdn import FQDNCache

        self.fqdn = FQDNCache(self, self.config.tofqdns_min_ttl)
        self.policy.resolver.fqdn_prefixes = self.fqdn.peer_prefixes
        self.policy.extra_prefixes = self.fqdn.prefixes
        self.tables = Tables()
        self.ring = FlowRing(self.config.hubble_buffer_capacity)
        self.endpoints = EndpointManager(self.config, self.state, self.datapath, self.tables)
        self.endpoints.policy = self.policy
        from tendril.agent.cluster import ClusterSync
        from tendril.hubble.peer import PeerSource

        self.peer_source = PeerSource()
        self.cluster = ClusterSync(self)  # an unreachable kvstore stops the start here, naming it
        self.policy.alloc.use_cluster_numbers(self.cluster.allocate_identity, self.cluster.release_identity)
        self.policy.remote_ipcache = self.cluster.ipcache_entries
        self.policy.remote_named_ports = self.cluster.remote_named_ports
        self.endpoints.cluster = self.cluster
        self._attach_services()
        failed = self.endpoints.restore()
        if failed:
            log.warning("endpoints not restored: %s", ", ".join(failed))
        self.policy.sync()
        self.pods = PodManager(self.config, self.state, self.endpoints)
        from tendril.agent.services import ServiceEngine

        self.services = ServiceEngine(self)
        self.endpoints.services = self.services
        self.pods.services = self.services
        self.services.sync()
        self.cluster.start()
        reader = RingBufferReader(self.datapath.events_map, abi.EVENT_DTYPE)
        node_id = self.tables.strings.intern(self.config.name)
        self.pump = EventPump(reader, self.ring, node_id, self.endpoints)
        self.pump.sinks.append(lambda rows: self._poll_kernel_lost())
        self._kernel_lost_seen = self.datapath.lost_events()  # losses before this agent are history
        self._setup_proxy(node_id)
        from tendril.agent.visibility import HttpVisibilityPump
        from tendril.proxy.flows import L7FlowWriter

        self.visibility = HttpVisibilityPump(self, L7FlowWriter(self.tables, node_id, self.pump.publish))
        from tendril.agent.observability import Observability

        self.observability = Observability(self)
        self.observability.attach()

    def _setup_proxy(self, node_id: int) -> None:
        """The L7 proxy (src/tendril/proxy): policy routing now, listeners once the loop runs."""
        self.proxy = None
        self.dns_proxy = None
        if not self.config.proxy_port and not self.config.dns_proxy_port:
            return
        from tendril.proxy.decide import ProxyPolicy
        from tendril.proxy.flows import L7FlowWriter
        from tendril.proxy.http import HTTPProxy
        from tendril.proxy.redirect import ensure_policy_routing

        ensure_policy_routing()
        self.tables.proxy_port = self.config.proxy_port
        self.tables.dns_proxy_port = self.config.dns_proxy_port
        flows = L7FlowWriter(self.tables, node_id, self.pump.publish)
        if self.config.proxy_port:
            self.proxy = HTTPProxy(self.config.proxy_port, ProxyPolicy(self, self.config.proxy_port), flows)
        if self.config.dns_proxy_port:
            from tendril.proxy.dns import DNSProxy

            self.dns_proxy = DNSProxy(
                self.config.dns_proxy_port,
                ProxyPolicy(self, self.config.dns_proxy_port),
                flows,
                on_answer=self._fqdn_answer,
            )

    async def _fqdn_answer(self, ctx: Any, name: str, ips: list[str], ttl: int) -> None:
        """toFQDNs: IPs of an allowed answer, into policy before the answer is released (fqdn.py)."""
        async with self.lock:
            await self.fqdn.observe(ctx, name, ips, ttl)

    async def _fqdn_sweep_loop(self, interval: float = 1.0) -> None:
        while True:
            await asyncio.sleep(interval)
            async with self.lock:
                try:
                    self.fqdn.sweep()
                except Exception:  # noqa: BLE001 - keep sweeping
                    log.exception("fqdn sweep")

    def _setup_routing(self) -> None:
        """VXLAN mode: the overlay device and its decapsulation program (native mode needs only the
        routes the cluster state brings)."""
        if self.config.routing not in ROUTING_MODES:
            raise TendrilError(f"routing {self.config.routing!r}: one of {', '.join(ROUTING_MODES)}")
        if self.config.routing == "vxlan" and self.config.netns:
            from tendril.datapath import overlay

            self.datapath.attach_overlay(overlay.ensure_vxlan(self.config.netns, self.config.mtu))

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        self.pump.start(loop)
        self.visibility.start(loop)
        if self.proxy is not None:
            await self.proxy.start()
        if self.dns_proxy is not None:
            await self.dns_proxy.start()
        self.cluster.attach_loop(loop)
        gc_task = loop.create_task(self._gc_loop())
        fqdn_task = loop.create_task(self._fqdn_sweep_loop())
        publish_task = loop.create_task(self._publish_loop())
        observer = await self._start_observer()
        self.observability.serve()
        sock = paths.agent_socket(self.config.name)
        sock.parent.mkdir(parents=True, exist_ok=True)
        sock.unlink(missing_ok=True)
        server = uvicorn.Server(
            uvicorn.Config(
                build_app(self), uds=str(sock), log_level="warning", lifespan="off", access_log=False
            )
        )
        # uvicorn handles SIGTERM/SIGINT with plain signal handlers. Never use loop.add_signal_handler
        # here: it shares a wakeup fd with every forked child (pyroute2 netns helpers), so a child
        # being terminated would look like a SIGTERM to the agent.
        serve = loop.create_task(server.serve())
        while not server.started and not serve.done():
            await asyncio.sleep(0.02)
        if server.started:
            os.chmod(sock, 0o600)
            log.info("agent for node %s listening on %s", self.config.name, sock)
        await serve
        await observer.stop(1.0)
        self.observability.close()
        gc_task.cancel()
        fqdn_task.cancel()
        publish_task.cancel()
        self.cluster.close()
        self.pump.stop(loop)
        self.visibility.stop(loop)
        self.datapath.close()

    async def _start_observer(self):  # noqa: ANN202 - grpc.aio.Server
        from tendril.hubble.observer.service import ObserverContext, start_observer

        addr = self.config.hubble_listen_address
        tcp = None
        if addr:
            host, _, port = addr.rpartition(":")
            tcp = f"{host or '0.0.0.0'}:{port}"
        ctx = ObserverContext(
            node_name=self.config.name,
            ring=self.ring,
            tables=self.tables,
            address=f"{self.config.underlay_ip}:{addr.rpartition(':')[2]}" if addr else "",
            namespaces=lambda: sorted({ep.namespace for ep in self.state.endpoints.values()}),
            on_lost=self._count_lost,
        )
        self.observer_ctx = ctx
        tls = None
        if self.config.hubble_tls_dir:
            from tendril.hubble.tls import TlsLayout

            tls = TlsLayout(Path(self.config.hubble_tls_dir)).node_server_tls(self.config.name)
        server = await start_observer(
            ctx, str(paths.hubble_socket(self.config.name)), tcp, peer_source=self.peer_source, tls=tls
        )
        log.info("hubble observer on %s and %s", paths.hubble_socket(self.config.name), tcp or "no TCP")
        return server

    def _count_lost(self, source: str, n: int) -> None:
        """Lost events by Hubble source name; metrics pick them up."""
        self.lost_events[source] = self.lost_events.get(source, 0) + n
        ctx = getattr(self, "observer_ctx", None)
        if ctx is not None and source == "perf_event_ring_buffer":
            ctx.record_loss("PERF_EVENT_RING_BUFFER", n)  # shown inline in GetFlows streams
        for hook in self.lost_hooks:
            hook(source, n)

    def _poll_kernel_lost(self) -> None:
        """The datapath counts ring-buffer reserve failures; report new ones as PERF_EVENT_RING_BUFFER."""
        total = self.datapath.lost_events()
        if total > self._kernel_lost_seen:
            self._count_lost("perf_event_ring_buffer", total - self._kernel_lost_seen)
        self._kernel_lost_seen = total

    def _attach_services(self) -> None:
        from tendril.datapath import cgroup, veth
        from tendril.datapath import netns as netns_mod

        node_cg = cgroup.create(cgroup.node_cgroup_path(self.config.name))
        ifindex = None
        if self.config.netns:
            with netns_mod.iproute(self.config.netns) as ipr:
                link = veth.get_link(ipr, "eth0")
                ifindex = link.ifindex if link else None
        self.datapath.attach_services(node_cg, ifindex)

    async def _publish_loop(self, interval: float = 1.0) -> None:
        """Pods become ready (or die) without an API call: keep the published endpoints current."""
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(interval)
            async with self.lock:
                await loop.run_in_executor(None, self.cluster.publish)

    async def _gc_loop(self, interval: float = 10.0) -> None:
        while True:
            await asyncio.sleep(interval)
            async with self.lock:
                self.ct_gc_removed += self.datapath.gc_ct()
                self.ct_gc_runs += 1
                self.pods.reap_all()
                self._poll_kernel_lost()
                self.observability.expire()
                self.services.sync()  # pods that died or came back change the backends

    # ---- operations used by the API ------------------------------------------------------------
    def status(self) -> dict[str, Any]:
        return {
            "node": self.config.name,
            "netns": self.config.netns,
            "uptime_s": round(time.time() - self.started, 3),
            "pid": os.getpid(),
            "endpoints": len(self.state.endpoints),
            "pods": len(self.state.pods),
            "policies": len(self.policy.repo),
            "events_read": self.pump.events_read,
            "events_lost": self.datapath.lost_events(),
            "ct_gc_runs": self.ct_gc_runs,
            "ct_gc_removed": self.ct_gc_removed,
            "trace_level": self.config.trace_level,
            "pod_cidr_v4": self.config.pod_cidr_v4,
            "pod_cidr_v6": self.config.pod_cidr_v6,
            "ring_bytes": self.config.ring_bytes,
            "cluster": self.cluster.status(),
            "hubble": {
                "num_flows": len(self.ring),
                "max_flows": self.ring.capacity,
                "seen_flows": self.ring.written,
                "lost": dict(self.lost_events),
                "metrics": self.config.hubble_metrics,
                "export_file": self.config.hubble_export_file,
            },
            "proxy": {
                "http_port": self.proxy.port if self.proxy else 0,
                "dns_port": self.dns_proxy.port if self.dns_proxy else 0,
                "redirects": self.proxy_redirects(),
                "visibility_endpoints": self.visibility.opted_in(),
            },
        }

    def proxy_status(self) -> dict[str, Any]:
        """The L7 proxy: port, counters, and how many policy entries redirect to it; and the
        proxy-free HTTP visibility's counters."""
        visibility = self.visibility.stats()
        if self.proxy is None:
            return {
                "port": 0,
                "connections": 0,
                "refused": 0,
                "requests": {},
                "redirects": 0,
                "visibility": visibility,
            }
        st = self.proxy.stats
        return {
            "visibility": visibility,
            "port": self.proxy.port,
            "connections": st.connections,
            "refused": st.refused,
            "requests": dict(st.requests),
            "redirects": self.proxy_redirects(),
            "dns": {
                "port": self.dns_proxy.port if self.dns_proxy else 0,
                "queries": dict(self.dns_proxy.stats.queries) if self.dns_proxy else {},
            },
        }

    def proxy_redirects(self, kind: str | None = None) -> int:
        """Policy-map entries that redirect to a proxy (of `kind`: http / dns), over this node's
        endpoints."""
        return sum(
            1
            for pol in self.policy.resolved.values()
            for e in pol.entries
            if e.proxy_port and (kind is None or e.l7[0].kind == kind)
        )

    def monitor_hello(self) -> dict[str, Any]:
        return {"cpus": os.cpu_count(), "ring_bytes": self.config.ring_bytes, "node": self.config.name}

    def runtime_config(self) -> dict[str, Any]:
        return {
            "MonitorAggregationLevel": self.config.trace_level,
            "PolicyAuditMode": "Enabled" if self.state.policy_audit else "Disabled",
            "PolicyEnforcement": "default",
            "HTTPVisibility": ",".join(self.state.http_visibility_namespaces) or "none",
            "SourceIPVerification": "Enabled",
        }

    def set_config(self, body: dict[str, Any]) -> dict[str, Any]:
        level = body.get("trace_level")
        if level is not None and level not in TRACE_LEVELS:
            raise InvalidInputError(f"invalid trace_level {level!r}: one of {', '.join(TRACE_LEVELS)}")
        audit = body.get("policy_audit")
        if audit is not None and not isinstance(audit, bool):
            raise InvalidInputError("PolicyAuditMode must be Enabled or Disabled")
        visibility = body.get("http_visibility")
        if visibility is not None:
            from tendril.agent.visibility import parse_namespaces

            visibility = parse_namespaces(str(visibility))  # checked before anything changes
        if level is not None:
            self.config.trace_level = level
            self.config.save()
        if visibility is not None:
            self.state.http_visibility_namespaces = visibility
            self.state.save()
            self.endpoints.refresh_flags()
        if audit is not None:
            self.state.policy_audit = audit
            self.state.save()
        self.datapath.configure(TRACE_LEVELS[self.config.trace_level], audit=self.state.policy_audit)
        return self.runtime_config()

    def endpoint_list(self) -> list[dict[str, Any]]:
        out = []
        for ep in self.endpoints.list():
            d = dict(ep.__dict__)
            ingress, egress = self.policy.enforcement(ep.id)
            d["policy_ingress"], d["policy_egress"] = ingress, egress
            d["policy_audit"] = self.state.policy_audit
            d["policy_error"] = self.policy.errors.get(ep.id, "")
            d["attach"] = self.datapath.attach_kind(ep.host_ifname)
            d["state"] = "ready"
            out.append(d)
        return out

    def endpoint_create(self, ns: str, pod: str, labels: dict[str, str]) -> dict[str, Any]:
        return dict(self.endpoints.create(ns, pod, labels).__dict__)

    def endpoint_delete(self, ns: str, pod: str) -> dict[str, Any]:
        return dict(self.endpoints.delete(ns, pod).__dict__)

    # ---- cluster configuration: applied here, then mirrored to the other nodes (kvstore) --------
    def namespace_apply(self, name: str, labels: dict[str, str]) -> dict[str, Any]:
        created = self.pods.ensure_namespace(name, labels)
        rev = self.cluster.publish_config("namespaces", name, {"labels": dict(labels)})
        return {"created": created, "kvstore_revision": rev}

    def namespace_delete(self, name: str) -> dict[str, Any]:
        deleted = self.pods.delete_namespace(name)
        rev = self.cluster.publish_config("namespaces", name, None)
        return {"deleted": deleted, "kvstore_revision": rev}

    def policy_import(self, text: str, source: str) -> dict[str, Any]:
        from tendril.agent.cluster import policy_name

        result = self.policy.import_text(text, source)
        by_name = {policy_name(p.kind, p.namespace, p.name): p for p in self.policy.repo.policies()}
        rev = 0
        for r in result["results"]:
            name = policy_name(r["kind"], r["namespace"], r["name"])
            doc = {"document": by_name[name].document}
            rev = max(rev, self.cluster.publish_config("policies", name, doc))
        result["kvstore_revision"] = rev
        return result

    def policy_delete(self, kind: str, namespace: str | None, name: str) -> dict[str, Any]:
        from tendril.agent.cluster import policy_name

        result = self.policy.delete(kind, namespace, name)
        d = result["deleted"]
        result["kvstore_revision"] = self.cluster.publish_config(
            "policies", policy_name(d["kind"], d["namespace"], d["name"]), None
        )
        return result

    def service_apply(self, text: str, source: str) -> dict[str, Any]:
        results = self.services.apply_text(text, source)
        rev = 0
        for r in results:
            rec = self.services.manager.get(r["namespace"], r["name"])
            if rec is not None:
                doc = {"document": self.services.filled_document(rec)}
                rev = max(rev, self.cluster.publish_config("services", rec.key, doc))
        return {"results": results, "kvstore_revision": rev}

    def service_delete(self, namespace: str, name: str) -> dict[str, Any]:
        result = self.services.delete(namespace, name)
        result["kvstore_revision"] = self.cluster.publish_config("services", f"{namespace}/{name}", None)
        return result

    def pod_apply(
        self,
        ns: str,
        name: str,
        labels: dict[str, str],
        annotations: dict[str, str],
        containers: list[dict[str, Any]],
        owner: str,
    ) -> dict[str, Any]:
        result = self.pods.apply(ns, name, labels, annotations, containers, owner)
        self.services.sync()  # a new or changed pod may be a service backend
        return {"result": result}

    def pod_delete(self, ns: str, name: str) -> dict[str, Any]:
        self.pods.delete(ns, name)
        self.services.sync()
        return {"result": "deleted"}

    def ct_list(self) -> list[dict[str, Any]]:
        keys, values = self.datapath.ct_entries()
        now = time.monotonic_ns()
        out = []
        for k, v in zip(keys, values, strict=True):
            ver = int(k["ip_version"])
            raw_s, raw_d = bytes(k["saddr"]), bytes(k["daddr"])
            if ver == 4:
                s, d = str(ipaddress.IPv4Address(raw_s[:4])), str(ipaddress.IPv4Address(raw_d[:4]))
            else:
                s, d = str(ipaddress.IPv6Address(raw_s)), str(ipaddress.IPv6Address(raw_d))
            out.append(
                {
                    "ifindex": int(k["ifindex"]),
                    "ip_version": ver,
                    "proto": int(k["proto"]),
                    "proto_name": PROTO_NAMES.get(int(k["proto"]), str(int(k["proto"]))),
                    "saddr": s,
                    "daddr": d,
                    "sport": int(k["sport"]),
                    "dport": int(k["dport"]),
                    "scope": "OUT" if int(v["scope"]) == abi.CtScope.EGRESS else "IN",
                    "expires_s": int(v["expires_ns"]) // 1_000_000_000,
                    "remaining_s": max(0, (int(v["expires_ns"]) - now) // 1_000_000_000),
                    "tx_packets": int(v["tx_packets"]),
                    "tx_bytes": int(v["tx_bytes"]),
                    "rx_packets": int(v["rx_packets"]),
                    "rx_bytes": int(v["rx_bytes"]),
                    "tx_flags_seen": int(v["tx_flags_seen"]),
                    "rx_flags_seen": int(v["rx_flags_seen"]),
                    "flags": int(v["flags"]),
                    "ep_id": int(v["ep_id"]),
                    "last_seen_s": int(v["last_seen_ns"]) // 1_000_000_000,
                }
            )
        out.sort(key=lambda e: (e["ifindex"], e["proto"], e["saddr"], e["sport"]))
        return out

    def map_usage(self) -> list[tuple[str, int, int]]:
        """(map name, entries, capacity) for the maps whose pressure matters."""
        ct_keys, _ = self.datapath.ct_entries()
        return [
            ("tnd_ct", len(ct_keys), self.datapath.ct.map.max_entries),
            ("tnd_endpoints", len(self.state.endpoints), self.datapath.endpoints.map.max_entries),
        ]

    def metrics_extra(self) -> dict[str, Any]:
        return {
            "datapath_conntrack_gc_runs_total": self.ct_gc_runs,
            "datapath_conntrack_gc_entries_removed_total": self.ct_gc_removed,
            "hubble_flows_seen_total": self.ring.written,
            "policy": len(self.policy.repo),
            "policy_max_revision": self.policy.repo.revision,
            "identity": self._identity_counts(),
            "hubble_flows_stored": len(self.ring),
            "monitor_events_read_total": self.pump.events_read,
            "lost_events_total": [({"source": s}, n) for s, n in sorted(self.lost_events.items())],
            # Cilium's cilium_proxy_redirects{protocol}: active redirects (policy entries to the proxy)
            "proxy_redirects": [
                ({"protocol": "http"}, self.proxy_redirects("http")),
                ({"protocol": "dns"}, self.proxy_redirects("dns")),
            ],
            "proxy_connections_total": self.proxy.stats.connections if self.proxy else 0,
            "proxy_requests_total": [
                ({"verdict": v}, n)
                for v, n in sorted((self.proxy.stats.requests if self.proxy else {}).items())
            ],
        }

    def _identity_counts(self) -> list[tuple[dict[str, str], int]]:
        counts = {"reserved": 0, "cluster_local": 0, "cidr": 0}
        for n in self.policy.alloc.identities():
            counts["cidr" if n >= 1 << 24 else "reserved" if n < 256 else "cluster_local"] += 1
        return [({"type": t}, c) for t, c in counts.items()]

    def ct_flush(self) -> dict[str, Any]:
        return {"deleted": self.datapath.flush_ct()}

    def metrics_list(self) -> list[dict[str, Any]]:
        rows = []
        for reason, direction, packets, nbytes in self.datapath.metrics_totals():
            rows.append({"reason": reason, "direction": direction, "packets": packets, "bytes": nbytes})
        return rows


def ct_state_name(state: int) -> str:
    return CT_STATE_TEXT.get(state, str(state))


def claim_cpu_weight(nice: int) -> None:
    """Linux shares a busy CPU equally between sessions (autogroups), whatever the nice values
    inside them, and every pod runs in a session of its own: at 0 the agent would weigh as much as
    one pod, and its proxy, flow parsing and HTTP visibility would fall behind whenever the pods
    saturate the CPUs. Like the system share kubelet and cilium-agent get beside the pods' slice,
    the agent's session gets `nice` (-5: about 3x a pod's weight). Only when the agent leads its
    session (`lab up` starts it so): a hand-run agent would renice the whole shell session."""
    path = Path("/proc/self/autogroup")
    if nice == 0 or not path.exists() or os.getsid(0) != os.getpid():
        return
    try:
        path.write_text(str(nice))
    except OSError as e:
        log.warning("cannot set the agent's autogroup nice to %d: %s", nice, e)


def run_agent(config: NodeConfig) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    claim_cpu_weight(config.cpu_nice)
    if config.netns:
        from tendril.datapath.netns import _setns_current_thread

        _setns_current_thread(config.netns)  # the whole (single-threaded so far) process joins the node
    agent = Agent(config)
    agent.setup()
    asyncio.run(agent.run())
