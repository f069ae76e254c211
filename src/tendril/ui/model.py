"""What the UI shows, computed from flow.Flow messages: table rows, the service map, the flow window.

Service map
    Nodes are workloads: pods grouped by namespace and app label (`app`, `k8s-app`,
    `app.kubernetes.io/name`, `name`, else the pod's first workload, else the pod name), plus one node
    per reserved identity met (`world` for reserved:world, CIDR identities and addresses outside the
    cluster; `host`, `remote-node`, `health`, ...). A flow is oriented from the side that opened the
    connection (a reply is turned around), so an edge (source node, destination node, protocol,
    destination port) reads "client -> server:port".

    Every packet of a connection may be traced at several points: a denied TCP SYN is FORWARDED where
    it leaves the client and DROPPED where policy stops it. So an edge's colour comes from its
    connections (the 5-tuple, client to server): a connection with any drop is dropped. L7 flows
    (the proxy's, or proxy-free HTTP visibility's) add their protocol to the edge (`l7`: HTTP, DNS),
    which the map writes after the port. The edge is
    `dropped` (red) when all its connections were dropped, `forwarded` (green) when none was, `mixed`
    (amber) otherwise. Flow counts by verdict and the time last seen come with it. Link-level
    control traffic (ICMPv6 neighbour discovery and MLD, both sides unknown addresses) and socket-LB
    translations stay in the flow table but draw no edge.

Flow window
    A bounded deque per namespace (a flow is filed under its source's and its destination's
    namespace, flows with neither under ""), deduplicated by flow UUID, so a busy namespace does not
    push a quiet one's history out; a selection of namespaces merges their deques in time order.
"""

from __future__ import annotations

import ipaddress
from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime

from tendril.hubble.api import flow_pb2
from tendril.hubble.api.jsonpb import dumps as jsonpb_dumps
from tendril.monitor.api import RESERVED_IDENTITY_NAMES

# Cilium's reserved identities, by number and by their `reserved:` label
RESERVED_NAMES: dict[int, str] = {
    n: "world" if name.startswith("world") else name for n, name in RESERVED_IDENTITY_NAMES.items() if n
}
_RESERVED_LABELS = {
    "host": "host",
    "world": "world",
    "world-ipv4": "world",
    "world-ipv6": "world",
    "unmanaged": "unmanaged",
    "health": "health",
    "init": "init",
    "remote-node": "remote-node",
    "kube-apiserver": "kube-apiserver",
    "ingress": "ingress",
}
CIDR_IDENTITY_MIN = 1 << 24
APP_LABEL_KEYS = ("app", "k8s-app", "app.kubernetes.io/name", "name")
# Addresses Tendril's pods and services use (node i owns 10.244.i.0/24): anything else is outside.
CLUSTER_NETWORKS = tuple(
    ipaddress.ip_network(n) for n in ("10.244.0.0/16", "10.96.0.0/16", "fd00:10:244::/48", "fd00:10:96::/112")
)

EVENT_POLICY_VERDICT = 5
EVENT_TRACE_SOCK = 7
_PORT_KINDS = ("TCP", "UDP", "SCTP")
DROP_VERDICTS = (flow_pb2.DROPPED, flow_pb2.ERROR)
# ICMPv6 MLD (130-132, 143), router/neighbour solicitation and advertisement, redirect (133-137)
ICMPV6_LINK_CONTROL = frozenset({130, 131, 132, 133, 134, 135, 136, 137, 143})


# --- endpoints -> map nodes ---------------------------------------------------------------------


def parse_labels(labels: Iterable[str]) -> dict[str, str]:
    """`k8s:app=web` / `reserved:host` -> {"app": "web", "reserved:host": ""} (source prefix dropped,
    except for reserved labels, which keep it)."""
    out: dict[str, str] = {}
    for label in labels:
        key, _, value = label.partition("=")
        source, colon, rest = key.partition(":")
        if colon and source == "reserved":
            out[key] = value
        elif colon and "/" not in source:
            out[rest] = value
        else:
            out[key] = value
    return out


def app_name(ep: flow_pb2.Endpoint) -> str:
    labels = parse_labels(ep.labels)
    for key in APP_LABEL_KEYS:
        if labels.get(key):
            return labels[key]
    if ep.workloads:
        return ep.workloads[0].name
    return ep.pod_name or f"identity-{ep.identity}"


def _in_cluster(ip: str) -> bool:
    try:
        addr = ipaddress.ip_address(ip)
    except ValueError:
        return False
    return any(addr in net for net in CLUSTER_NETWORKS)


@dataclass(frozen=True)
class MapNode:
    id: str
    kind: str  # workload, world, host, remote-node, health, ...
    name: str
    namespace: str = ""


def map_node(ep: flow_pb2.Endpoint, ip: str) -> MapNode:
    """The service-map node an endpoint belongs to."""
    namespace = ep.namespace or parse_labels(ep.labels).get("io.kubernetes.pod.namespace", "")
    if namespace or ep.pod_name:
        name = app_name(ep)
        return MapNode(id=f"{namespace}/{name}", kind="workload", name=name, namespace=namespace)
    reserved = [
        _RESERVED_LABELS[k.partition(":")[2]]
        for k in parse_labels(ep.labels)
        if k.startswith("reserved:") and k.partition(":")[2] in _RESERVED_LABELS
    ]
    kind = (
        reserved[0]
        if reserved
        else RESERVED_NAMES.get(ep.identity)
        or ("world" if ep.identity >= CIDR_IDENTITY_MIN or not _in_cluster(ip) else "unknown")
    )
    return MapNode(id=kind, kind=kind, name=kind)


# --- flow -> table row --------------------------------------------------------------------------


def l4_kind(f: flow_pb2.Flow) -> str:
    kind = f.l4.WhichOneof("protocol") if f.HasField("l4") else None
    return kind or ("IP" if f.HasField("IP") else "")


def ports(f: flow_pb2.Flow) -> tuple[int, int]:
    kind = f.l4.WhichOneof("protocol") if f.HasField("l4") else None
    if kind not in _PORT_KINDS:
        return 0, 0
    l4 = getattr(f.l4, kind)
    return l4.source_port, l4.destination_port


def time_ns(f: flow_pb2.Flow) -> int:
    return f.time.seconds * 1_000_000_000 + f.time.nanos


def iso_time(ns: int) -> str:
    if not ns:
        return ""
    dt = datetime.fromtimestamp(ns // 1_000_000_000, tz=UTC)
    return dt.strftime("%Y-%m-%dT%H:%M:%S") + f".{(ns % 1_000_000_000) // 1_000_000:03d}Z"


def _identity_text(identity: int) -> str:
    return RESERVED_NAMES.get(identity, str(identity)) if identity < 256 else str(identity)


def _side(ep: flow_pb2.Endpoint, ip: str, port: int) -> dict:
    node = map_node(ep, ip)
    if ep.pod_name:
        label = f"{ep.namespace}/{ep.pod_name}"
    elif node.kind != "workload":
        label = f"{ip} ({node.name})" if ip else node.name
    else:
        label = ip
    return {
        "label": label,
        "namespace": ep.namespace,
        "pod": ep.pod_name,
        "ip": ip,
        "port": port,
        "identity": ep.identity,
        "identity_name": _identity_text(ep.identity),
        "workload": node.name if node.kind == "workload" else "",
        "node": node.id,
    }


def flow_row(flow_id: int, f: flow_pb2.Flow) -> dict:
    """One row of the flow table."""
    from tendril.hubble.cli.printer import flow_type

    sport, dport = ports(f)
    t = time_ns(f)
    return {
        "id": flow_id,
        "time": iso_time(t),
        "time_ns": t,
        "node_name": f.node_name,
        "verdict": flow_pb2.Verdict.Name(f.verdict)
        if f.verdict in flow_pb2.Verdict.values()
        else str(f.verdict),
        "drop_reason": flow_pb2.DropReason.Name(f.drop_reason_desc)
        if f.drop_reason_desc and f.drop_reason_desc in flow_pb2.DropReason.values()
        else "",
        "type": flow_type(f),
        "protocol": l4_kind(f),
        "source": _side(f.source, f.IP.source, sport),
        "destination": _side(f.destination, f.IP.destination, dport),
        "is_reply": f.is_reply.value if f.HasField("is_reply") else None,
        "direction": flow_pb2.TrafficDirection.Name(f.traffic_direction)
        if f.traffic_direction in flow_pb2.TrafficDirection.values()
        else "",
        "summary": f.Summary,
    }


def flow_json(f: flow_pb2.Flow) -> str:
    """The flow as `hubble observe -o jsonpb` prints it (proto field names)."""
    return jsonpb_dumps(f)


# --- service map ---------------------------------------------------------------------------------


@dataclass
class _Edge:
    source: str
    target: str
    protocol: str
    port: int
    forwarded: int = 0
    dropped: int = 0
    other: int = 0
    last_seen_ns: int = 0
    connections: set[tuple] = field(default_factory=set)
    l7: set[str] = field(default_factory=set)  # "HTTP", "DNS": seen through the proxy or visibility


def _oriented(f: flow_pb2.Flow) -> tuple[flow_pb2.Endpoint, str, int, flow_pb2.Endpoint, str, int]:
    """(client endpoint, ip, port, server endpoint, ip, port): replies turned around."""
    sport, dport = ports(f)
    src = (f.source, f.IP.source, sport)
    dst = (f.destination, f.IP.destination, dport)
    if f.HasField("is_reply") and f.is_reply.value:
        src, dst = dst, src
    return (*src, *dst)


def service_map(flows: Iterable[flow_pb2.Flow]) -> dict:
    """{"nodes": [...], "edges": [...]} for these flows (see the module docstring)."""
    nodes: dict[str, MapNode] = {}
    node_pods: dict[str, set[str]] = {}
    node_flows: dict[str, int] = {}
    edges: dict[tuple[str, str, str, int], _Edge] = {}
    dropped_conns: set[tuple] = set()
    for f in flows:
        if not f.HasField("IP") or f.event_type.type == EVENT_TRACE_SOCK or f.verdict == flow_pb2.TRANSLATED:
            continue  # L2-only, or a socket-LB translation (not a packet on the wire)
        if f.l4.HasField("ICMPv6") and f.l4.ICMPv6.type in ICMPV6_LINK_CONTROL:
            continue  # neighbour discovery / MLD with the node's router address: not a service
        cep, cip, cport, sep, sip, sport = _oriented(f)
        client, server = map_node(cep, cip), map_node(sep, sip)
        if client.kind == "world" and server.kind == "world":
            continue  # nothing known on either side (link-local / multicast chatter)
        for node, ep in ((client, cep), (server, sep)):
            nodes.setdefault(node.id, node)
            node_flows[node.id] = node_flows.get(node.id, 0) + 1
            if ep.pod_name:
                node_pods.setdefault(node.id, set()).add(ep.pod_name)
        kind = l4_kind(f)
        key = (client.id, server.id, kind, sport)
        edge = edges.get(key)
        if edge is None:
            edge = edges[key] = _Edge(client.id, server.id, kind, sport)
        conn = (kind, cip, cport, sip, sport)
        edge.connections.add(conn)
        if f.verdict in DROP_VERDICTS:
            edge.dropped += 1
            dropped_conns.add(conn)
        elif f.verdict in (flow_pb2.FORWARDED, flow_pb2.REDIRECTED, flow_pb2.AUDIT):
            edge.forwarded += 1
        else:
            edge.other += 1
        edge.last_seen_ns = max(edge.last_seen_ns, time_ns(f))
        if f.HasField("l7") and (record := f.l7.WhichOneof("record")):
            edge.l7.add(record.upper())

    out_edges = []
    for e in sorted(edges.values(), key=lambda e: (e.source, e.target, e.protocol, e.port)):
        n_dropped = len(e.connections & dropped_conns)
        n_forwarded = len(e.connections) - n_dropped
        state = "mixed" if n_dropped and n_forwarded else "dropped" if n_dropped else "forwarded"
        label = f"{e.protocol}/{e.port}" if e.protocol in _PORT_KINDS else e.protocol
        out_edges.append(
            {
                "id": f"{e.source}>{e.target}:{label}",
                "l7": sorted(e.l7),
                "source": e.source,
                "target": e.target,
                "protocol": e.protocol,
                "port": e.port,
                "label": " · ".join([label, *sorted(e.l7)]),
                "state": state,
                "flows": {"forwarded": e.forwarded, "dropped": e.dropped, "other": e.other},
                "connections": {"forwarded": n_forwarded, "dropped": n_dropped},
                "last_seen": iso_time(e.last_seen_ns),
                "last_seen_ns": e.last_seen_ns,
            }
        )
    out_nodes = [
        {
            "id": n.id,
            "kind": n.kind,
            "name": n.name,
            "namespace": n.namespace,
            "pods": sorted(node_pods.get(n.id, ())),
            "flows": node_flows[n.id],
        }
        for n in sorted(nodes.values(), key=lambda n: (n.kind != "workload", n.namespace, n.name))
    ]
    return {"nodes": out_nodes, "edges": out_edges}


# --- the flow window ----------------------------------------------------------------------------


@dataclass
class Entry:
    id: int
    flow: flow_pb2.Flow
    time_ns: int
    key: str
    refs: int = 0


def flow_key(f: flow_pb2.Flow) -> str:
    """The flow's identity for de-duplication (a flow can arrive from a follow stream and a backfill)."""
    if f.uuid:
        return f.uuid
    return f"{f.node_name}|{time_ns(f)}|{f.IP.source}|{f.IP.destination}|{f.Summary}|{f.event_type.type}"


class FlowWindow:
    """Recent flows, bounded per namespace; `version` grows on every change (for live updates)."""

    def __init__(self, per_namespace: int = 2000) -> None:
        if per_namespace < 1:
            raise ValueError("per_namespace must be at least 1")
        self.per_namespace = per_namespace
        self._buckets: dict[str, deque[Entry]] = {}
        self._by_key: dict[str, Entry] = {}
        self._by_id: dict[int, Entry] = {}
        self._next_id = 1
        self.version = 0
        self.added = 0

    def __len__(self) -> int:
        return len(self._by_id)

    def add(self, f: flow_pb2.Flow) -> Entry | None:
        """File a flow (None if it is already here)."""
        key = flow_key(f)
        if key in self._by_key:
            return None
        entry = Entry(self._next_id, f, time_ns(f), key)
        self._next_id += 1
        names = {f.source.namespace, f.destination.namespace} - {""} or {""}
        for ns in names:
            bucket = self._buckets.get(ns)
            if bucket is None:
                bucket = self._buckets[ns] = deque()
            if len(bucket) >= self.per_namespace:
                if entry.time_ns < bucket[0].time_ns:
                    continue  # older than all this namespace keeps: not worth a newer flow's place
                self._release(bucket.popleft())
            # keep each bucket in time order: a backfill brings older flows after newer ones
            if bucket and bucket[-1].time_ns > entry.time_ns:
                self._insert_sorted(bucket, entry)
            else:
                bucket.append(entry)
            entry.refs += 1
        if not entry.refs:
            return None
        self._by_key[key] = entry
        self._by_id[entry.id] = entry
        self.added += 1
        self.version += 1
        return entry

    @staticmethod
    def _insert_sorted(bucket: deque[Entry], entry: Entry) -> None:
        i = len(bucket)
        while i > 0 and bucket[i - 1].time_ns > entry.time_ns:
            i -= 1
        bucket.insert(i, entry)

    def _release(self, entry: Entry) -> None:
        entry.refs -= 1
        if entry.refs <= 0:
            self._by_key.pop(entry.key, None)
            self._by_id.pop(entry.id, None)

    def namespaces(self) -> list[str]:
        return sorted(ns for ns, b in self._buckets.items() if ns and b)

    def get(self, flow_id: int) -> Entry | None:
        return self._by_id.get(flow_id)

    def select(self, namespaces: Iterable[str] = ()) -> list[Entry]:
        """Entries of these namespaces (every flow when none is named), oldest first."""
        wanted = list(namespaces)
        if not wanted:
            entries: Iterator[Entry] = iter(self._by_id.values())
        else:
            seen: dict[int, Entry] = {}
            for ns in wanted:
                for e in self._buckets.get(ns, ()):
                    seen[e.id] = e
            entries = iter(seen.values())
        return sorted(entries, key=lambda e: (e.time_ns, e.id))
