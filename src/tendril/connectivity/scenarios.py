"""Scenarios: who talks to whom in a test (cilium-cli's `tests` package).

Each scenario turns the deployment into actions: a source (a client pod, or a node's host
namespace), a destination (a pod, a service, a NodePort, the world, a node, the cluster DNS) and
the protocol. Expectations are not decided here: the test does that.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from tendril.connectivity.deploy import Deployment, Service
from tendril.connectivity.model import Action, Destination, Host, Pod, Scenario

WORLD_HTTP_PORTS = (80, 443)


# ---- destinations ----------------------------------------------------------------------------


def to_pod(p: Pod, port: int = 0) -> Destination:
    return Destination(
        kind="pod", name=p.key, address=p.ipv4, port=port, addresses=set(p.ips),
        ports={port} if port else set(), backends=[p], labels=dict(p.labels),
    )  # fmt: skip


def to_service(s: Service) -> Destination:
    backend_ips = {ip for b in s.backends for ip in b.ips}
    return Destination(
        kind="service", name=f"{s.namespace}/{s.name}", address=s.name, port=s.port,
        addresses=set(s.cluster_ips) | backend_ips, ports={s.port, s.target_port},
        backends=list(s.backends), labels={"kind": "echo"},
    )  # fmt: skip


def to_nodeport(s: Service, host: Host) -> Destination:
    backend_ips = {ip for b in s.backends for ip in b.ips}
    return Destination(
        kind="nodeport", name=f"{s.namespace}/{s.name}", address=host.ip, port=s.node_port,
        addresses={host.ip} | set(s.cluster_ips) | backend_ips, ports={s.node_port, s.port, s.target_port},
        backends=list(s.backends), labels={"kind": "echo"},
    )  # fmt: skip


def to_external(ip: str, port: int, name: str, target: str = "") -> Destination:
    """The world at `ip`, addressed by IP or by `target`, a name the cluster DNS resolves to it."""
    return Destination(
        kind="external", name=name, address=target or ip, port=port, addresses={ip}, ports={port}
    )


def to_host(h: Host) -> Destination:
    return Destination(kind="host", name=h.node, address=h.ip, addresses={h.ip})


def to_dns(d: Deployment) -> Destination:
    s = d.kube_dns
    name = f"{d.services[0].name}.{d.namespace}.svc.cluster.local."
    return Destination(
        kind="dns", name=f"{s.namespace}/{s.name}", address=name, port=53,
        addresses=set(s.cluster_ips) | {ip for b in s.backends for ip in b.ips}, ports={53},
        backends=list(s.backends), labels={"k8s-app": "kube-dns"},
    )  # fmt: skip


# ---- scenarios -------------------------------------------------------------------------------

Pair = tuple[str, Pod | Host, Destination, str]  # (action name, source, destination, protocol)


def _actions(test: str, scenario: str, pairs: Iterable[Pair]) -> list[Action]:
    return [Action(test, scenario, name, src, dst, proto) for name, src, dst, proto in pairs]


def _scenario(name: str, min_nodes: int = 1) -> Callable[[Callable[[Deployment], Iterable[Pair]]], Scenario]:
    def wrap(fn: Callable[[Deployment], Iterable[Pair]]) -> Scenario:
        return Scenario(name, lambda d, test, sc: _actions(test, sc, fn(d)), min_nodes)

    return wrap


@_scenario("pod-to-pod")
def pod_to_pod(d: Deployment) -> Iterable[Pair]:
    i = 0
    for src in d.clients:
        for echo in d.echos:
            yield f"curl-ipv4-{i}", src, to_pod(echo, 8080), "tcp"
            i += 1


@_scenario("client-to-client")
def client_to_client(d: Deployment) -> Iterable[Pair]:
    i = 0
    for src in d.clients:
        for dst in d.clients:
            if dst is not src:
                yield f"ping-ipv4-{i}", src, to_pod(dst), "icmp"
                i += 1


@_scenario("pod-to-service")
def pod_to_service(d: Deployment) -> Iterable[Pair]:
    i = 0
    for src in d.clients:
        for svc in d.services:
            yield f"curl-{i}", src, to_service(svc), "tcp"
            i += 1


@_scenario("pod-to-local-nodeport")
def pod_to_local_nodeport(d: Deployment) -> Iterable[Pair]:
    if d.nodeport is None:
        return
    for i, src in enumerate(d.clients):
        yield f"curl-{i}", src, to_nodeport(d.nodeport, d.host_of(src.node)), "tcp"


@_scenario("pod-to-remote-nodeport", min_nodes=2)
def pod_to_remote_nodeport(d: Deployment) -> Iterable[Pair]:
    """Every other node's NodePort, as cilium-cli: a node without a local backend SNATs the
    connection to a backend elsewhere (externalTrafficPolicy Cluster)."""
    if d.nodeport is None:
        return
    i = 0
    for src in d.clients:
        for h in d.hosts:
            if h.node != src.node:
                yield f"curl-{i}", src, to_nodeport(d.nodeport, h), "tcp"
                i += 1


@_scenario("pod-to-world")
def pod_to_world(d: Deployment) -> Iterable[Pair]:
    """By name, as cilium-cli's PodToWorld (one.one.one.one)."""
    for i, src in enumerate(d.clients):
        for port in WORLD_HTTP_PORTS:
            name = f"http-to-world-{i}" if port == 80 else f"http-to-world-{port}-{i}"
            yield name, src, to_external(d.external_ip, port, f"world-http-{port}", d.external_target), "tcp"


@_scenario("pod-to-world-2")
def pod_to_world_2(d: Deployment) -> Iterable[Pair]:
    """Another world name (cilium-cli's PodToWorld2: cilium.io), on port 80 (no TLS in the lab)."""
    dst = to_external(d.external_other_ip, 80, "world-other-http", d.external_other_target)
    for i, src in enumerate(d.clients):
        yield f"http-to-world-other-{i}", src, dst, "tcp"


@_scenario("pod-to-cidr")
def pod_to_cidr(d: Deployment) -> Iterable[Pair]:
    for ip in (d.external_ip, d.external_other_ip):
        for i, src in enumerate(d.clients):
            yield f"external-{ip}-{i}", src, to_external(ip, 80, f"external-{ip}"), "tcp"


@_scenario("pod-to-host")
def pod_to_host(d: Deployment) -> Iterable[Pair]:
    i = 0
    for src in d.clients:
        for h in d.hosts:
            yield f"ping-ipv4-{i}", src, to_host(h), "icmp"
            i += 1


@_scenario("host-to-pod")
def host_to_pod(d: Deployment) -> Iterable[Pair]:
    i = 0
    for h in d.hosts:
        for echo in d.echos:
            yield f"curl-ipv4-{i}", h, to_pod(echo, 8080), "tcp"
            i += 1


@_scenario("pod-to-dns")
def pod_to_dns(d: Deployment) -> Iterable[Pair]:
    for i, src in enumerate(d.clients):
        yield f"dns-lookup-{i}", src, to_dns(d), "udp"


# (action suffix, method, path, headers) of the echo servers' endpoints, as cilium-cli's
# PodToPodWithEndpoints requests them
Request = tuple[str, str, str, dict[str, str]]
ROOT: Request = ("root", "GET", "/", {})
PRIVATE: Request = ("private", "GET", "/private", {})
PRIVATE_WITH_TOKEN: Request = ("private-with-token", "GET", "/private", {"X-Very-Secret-Token": "42"})
POST_ROOT: Request = ("post-root", "POST", "/", {})


def pod_to_pod_with_endpoints(*requests: Request, name: str = "pod-to-pod-with-endpoints") -> Scenario:
    """HTTP requests (method, path, headers) from every client to every echo server's port 8080."""

    def build(d: Deployment, test: str, scenario: str) -> list[Action]:
        out = []
        i = 0
        for src in d.clients:
            for echo in d.echos:
                for suffix, method, path, headers in requests:
                    a = Action(test, scenario, f"curl-ipv4-{i}-{suffix}", src, to_pod(echo, 8080), "tcp")
                    a.method, a.path, a.headers = method, path, dict(headers)
                    out.append(a)
                i += 1
        return out

    return Scenario(name, build)
