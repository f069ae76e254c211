"""Which pods back which Service port: the lab's EndpointSlice controller, as pure functions.

A pod backs a Service when it is in the Service's namespace and its labels contain every
`spec.selector` pair (a Service without a selector selects nothing, as in Kubernetes, where its
endpoints would be managed by hand). It is a backend while it is ready; once it is terminating it
becomes a *terminating* backend (kept for its open connections, never picked for new ones) until
the agent drops it from the pod list, which is how the agent says it is gone.

Named targetPorts are resolved per pod, like kube-proxy and Cilium do: the container port with that
name *and the Service port's protocol*. A pod without it is simply not a backend of that port, so a
rolling update that renames a port works pod by pod. Only when pods are selected and none of them
declares the name is it reported ("unknown targetPort name"): as a notice in the load-balancer state,
and, for callers that want the API-style rejection at apply time, by `check_target_ports`.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from tendril.loadbalancer.entries import L3n4Addr
from tendril.loadbalancer.errors import ServiceValidationError
from tendril.loadbalancer.model import Service, ServicePort


@dataclass(frozen=True)
class PodPort:
    """A declared container port (`spec.containers[*].ports[*]`)."""

    port: int
    name: str | None = None
    protocol: str = "TCP"


@dataclass(frozen=True)
class PodInfo:
    """What the load balancer needs to know about a pod (the agent builds these from its pods)."""

    namespace: str
    name: str
    labels: Mapping[str, str] = field(default_factory=dict)
    ready: bool = True
    ipv4: str | None = None
    ipv6: str | None = None
    ports: tuple[PodPort, ...] = ()
    terminating: bool = False

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"

    def address(self, family: int) -> str | None:
        ip = self.ipv4 if family == 4 else self.ipv6
        return str(ipaddress.ip_address(ip)) if ip else None


@dataclass(frozen=True)
class Endpoint:
    """One backend address of one Service port, with the pod it came from."""

    address: L3n4Addr
    pod: str
    terminating: bool


def selects(svc: Service, pod: PodInfo) -> bool:
    selector = svc.spec.selector
    if not selector or pod.namespace != svc.namespace:
        return False
    return all(pod.labels.get(k) == v for k, v in selector.items())


def selected_pods(svc: Service, pods: Iterable[PodInfo]) -> list[PodInfo]:
    return [p for p in pods if selects(svc, p)]


def target_port(port: ServicePort, pod: PodInfo) -> int | None:
    """The pod's port for this Service port: the number, or the same-protocol container port of
    that name; None when the pod does not declare the name."""
    target = port.target
    if isinstance(target, int):
        return target
    for p in pod.ports:
        if p.name == target and p.protocol == port.protocol:
            return p.port
    return None


def endpoints(svc: Service, port: ServicePort, pods: Iterable[PodInfo], family: int) -> list[Endpoint]:
    """Backends of one Service port in one IP family: ready pods, and terminating ones marked so."""
    out = []
    for pod in selected_pods(svc, pods):
        if not (pod.ready or pod.terminating):
            continue
        ip = pod.address(family)
        tport = target_port(port, pod)
        if ip is None or tport is None:
            continue
        out.append(Endpoint(L3n4Addr.of(ip, tport, port.protocol), pod.key, pod.terminating))
    out.sort(key=lambda e: (e.address.sort_key(), e.pod))  # independent of the caller's pod order
    return out


def unknown_target_ports(svc: Service, pods: Iterable[PodInfo]) -> list[str]:
    """One message per named targetPort that no selected pod declares (when some pod is selected)."""
    chosen = selected_pods(svc, pods)
    if not chosen:
        return []
    out = []
    for i, port in enumerate(svc.spec.ports):
        if isinstance(port.target, str) and all(target_port(port, p) is None for p in chosen):
            out.append(
                f'invalid value for "spec.ports[{i}].targetPort": unknown targetPort name '
                f'"{port.target}": none of the {len(chosen)} selected pod(s) declares a '
                f"{port.protocol} container port of that name"
            )
    return out


def check_target_ports(svc: Service, pods: Iterable[PodInfo], source: str | None = None) -> None:
    """API-style rejection of a Service whose named targetPort matches no selected pod.

    Deliberately lenient: with no pod selected yet (a Service applied before its Deployment), the
    name cannot be judged and the Service is accepted; the load balancer then resolves names pod by
    pod as they appear and reports a name no selected pod has as a notice.
    """
    problems = unknown_target_ports(svc, pods)
    if problems:
        where = f"{source}: Service {svc.name!r}" if source else f"Service {svc.key!r}"
        raise ServiceValidationError(f"{where}: {problems[0]}")
