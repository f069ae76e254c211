"""The lab's kubelet: runs a pod's containers as processes inside the pod's netns and cgroup.

Processes are started in their own session so they outlive an agent killed with -9; their pid and
start time are persisted, so a restarted agent finds (and only ever signals) the processes it started.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any

from tendril.agent.config import NodeConfig
from tendril.agent.endpoints import EndpointManager
from tendril.agent.policy import named_ports_of
from tendril.agent.state import NodeState, PodRecord, ProcessRecord
from tendril.agent.visibility import annotation_choice
from tendril.common import paths
from tendril.common.errors import InvalidInputError, NotFoundError
from tendril.lab import runtime

log = logging.getLogger(__name__)


def spec_hash(labels: dict[str, str], annotations: dict[str, str], containers: list[dict[str, Any]]) -> str:
    blob = json.dumps([labels, annotations, containers], sort_keys=True).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def resolve_argv(argv: list[str]) -> list[str]:
    """`tendril ...` inside a pod means this installation's tendril (no images in the lab)."""
    if argv and argv[0] == "tendril":
        exe = Path(sys.executable).parent / "tendril"
        return [str(exe), *argv[1:]]
    return argv


class PodManager:
    def __init__(self, config: NodeConfig, state: NodeState, endpoints: EndpointManager) -> None:
        self.config = config
        self.state = state
        self.endpoints = endpoints
        self.exit_codes: dict[int, int] = {}

    def _log_dir(self) -> Path:
        d = paths.node_run_dir(self.config.name) / "pods"
        d.mkdir(parents=True, exist_ok=True)
        return d

    # ---- namespaces ----------------------------------------------------------------------------
    def ensure_namespace(self, name: str, labels: dict[str, str] | None = None) -> bool:
        created = name not in self.state.namespaces
        changed = self.state.namespaces.get(name) != dict(labels or {})
        self.state.namespaces[name] = dict(labels or {})
        self.state.save()
        if changed and not created and self.endpoints.policy is not None:
            self.endpoints.policy.sync()  # namespace labels are part of every pod's identity
        return created

    def delete_namespace(self, name: str) -> list[str]:
        if name not in self.state.namespaces:
            raise NotFoundError(f'namespaces "{name}" not found')
        deleted = [p.key for p in list(self.state.pods.values()) if p.namespace == name]
        for key in deleted:
            ns, pod = key.split("/", 1)
            self.delete(ns, pod)
        del self.state.namespaces[name]
        self.state.save()
        return deleted

    # ---- pods ----------------------------------------------------------------------------------
    def apply(
        self,
        namespace: str,
        name: str,
        labels: dict[str, str],
        annotations: dict[str, str],
        containers: list[dict[str, Any]],
        owner: str = "",
    ) -> str:
        """Create or update a pod; returns "created", "configured" or "unchanged"."""
        if namespace not in self.state.namespaces:
            raise InvalidInputError(f'namespaces "{namespace}" not found')
        annotation_choice(annotations, f"pod {namespace}/{name}")  # checked before anything changes
        h = spec_hash(labels, annotations, containers)
        key = f"{namespace}/{name}"
        existing = self.state.pods.get(key)
        if existing is not None and existing.spec_hash == h:
            self._ensure_running(existing)
            return "unchanged"
        if existing is not None and existing.containers == containers and existing.owner == owner:
            # Only labels or annotations changed: like Kubernetes, update them in place (the pod's
            # processes and connections keep running; its identity and service membership follow).
            existing.labels, existing.annotations, existing.spec_hash = dict(labels), dict(annotations), h
            self.endpoints.relabel(namespace, name, labels)
            self.endpoints.refresh_flags()
            self.state.save()
            return "configured"
        outcome = "configured" if existing is not None else "created"
        if existing is not None:
            self._stop_processes(existing)
        ep = self.endpoints.create(namespace, name, labels, owner, named_ports_of(containers))
        pod = PodRecord(
            namespace=namespace,
            name=name,
            labels=dict(labels),
            annotations=dict(annotations),
            containers=containers,
            owner=owner,
            spec_hash=h,
            created=existing.created if existing else time.time(),
        )
        self.state.pods[key] = pod
        self.endpoints.refresh_flags()  # the annotation is known now, before the pod's first packet
        self._start_processes(pod, ep.netns, ep.cgroup, ep.ipv4)
        self.state.save()
        return outcome

    def _env(self, pod: PodRecord, ip: str, container: dict[str, Any]) -> dict[str, str]:
        env = {
            "PATH": os.environ.get("PATH", "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"),
            "HOME": "/root",
            "HOSTNAME": pod.name,
            "POD_NAME": pod.name,
            "POD_NAMESPACE": pod.namespace,
            "POD_IP": ip,
            "NODE_NAME": self.config.name,
            "PYTHONUNBUFFERED": "1",
        }
        for item in container.get("env", []):
            env[item["name"]] = item.get("value", "")
        return env

    def _resolv_conf(self, pod: PodRecord) -> str | None:
        """The pod's own resolv.conf pointing at the cluster DNS service, as kubelet writes it, or
        None before the lab has a DNS service (and for the DNS pod itself)."""
        services = getattr(self, "services", None)
        if services is None or pod.labels.get("k8s-app") == "kube-dns":
            return None
        ips = services.cluster_ips("kube-system", "kube-dns")
        if not ips:
            return None
        from tendril.lab.resolvconf import pod_resolv_conf, write_resolv_conf

        path = self._log_dir() / f"{pod.namespace}_{pod.name}.resolv.conf"
        return str(write_resolv_conf(path, pod_resolv_conf(pod.namespace, ips)))

    def _start_processes(self, pod: PodRecord, netns: str, cgroup_path: str, ip: str) -> None:
        pod.processes = []
        resolv = self._resolv_conf(pod)
        for c in pod.containers:
            argv = resolve_argv(list(c["argv"]))
            if resolv:
                from tendril.lab.resolvconf import wrap_argv_with_resolvconf

                argv = wrap_argv_with_resolvconf(argv, resolv)
            log_path = self._log_dir() / f"{pod.namespace}_{pod.name}_{c['name']}.log"
            pid = runtime.spawn(netns, cgroup_path, argv, self._env(pod, ip, c), str(log_path))
            start = runtime.process_start_time(pid)
            pod.processes.append(ProcessRecord(c["name"], pid, start, argv, str(log_path)))

    def _ensure_running(self, pod: PodRecord) -> None:
        if not pod.processes:
            ep = self.endpoints.get(pod.namespace, pod.name)
            self._start_processes(pod, ep.netns, ep.cgroup, ep.ipv4)

    def _stop_processes(self, pod: PodRecord) -> None:
        for pr in pod.processes:
            runtime.stop(pr.pid, pr.start_time, timeout=3.0)
            self._reap(pr.pid)
        pod.processes = []

    def _reap(self, pid: int) -> None:
        try:
            done, status = os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            return
        if done:
            self.exit_codes[pid] = os.waitstatus_to_exitcode(status)

    def delete(self, namespace: str, name: str) -> None:
        key = f"{namespace}/{name}"
        pod = self.state.pods.get(key)
        if pod is None:
            raise NotFoundError(f'pods "{name}" not found in namespace "{namespace}"')
        self._stop_processes(pod)
        with contextlib.suppress(NotFoundError):
            self.endpoints.delete(namespace, name)
        del self.state.pods[key]
        self.state.save()

    def status(self, pod: PodRecord) -> dict[str, Any]:
        alive = 0
        codes = []
        for pr in pod.processes:
            self._reap(pr.pid)
            if pr.pid not in self.exit_codes and runtime.process_alive(pr.pid, pr.start_time):
                alive += 1
            else:
                codes.append(self.exit_codes.get(pr.pid))
        total = len(pod.containers)
        if alive == total:
            phase = "Running"
        elif codes and all(c == 0 for c in codes) and alive == 0:
            phase = "Completed"
        else:
            phase = "Error"
        ep = self.state.endpoints.get(pod.key)
        return {
            "namespace": pod.namespace,
            "name": pod.name,
            "labels": pod.labels,
            "annotations": pod.annotations,
            "owner": pod.owner,
            "ready": f"{alive}/{total}",
            "phase": phase,
            "restarts": 0,
            "created": pod.created,
            "node": self.config.name,
            "hostIP": self.config.underlay_ip,
            "podIP": ep.ipv4 if ep else "",
            "podIPs": [ep.ipv4, ep.ipv6] if ep else [],
            "endpointID": ep.id if ep else 0,
            "netns": ep.netns if ep else "",
            "cgroup": ep.cgroup if ep else "",
            "containers": pod.containers,
            "processes": [pr.__dict__ for pr in pod.processes],
        }

    def list(self, namespace: str | None = None) -> list[dict[str, Any]]:
        pods = [p for p in self.state.pods.values() if namespace is None or p.namespace == namespace]
        return [self.status(p) for p in sorted(pods, key=lambda p: (p.namespace, p.name))]

    def reap_all(self) -> None:
        for pod in self.state.pods.values():
            for pr in pod.processes:
                self._reap(pr.pid)
