"""kubectl-like verbs for the lab: apply, delete, get pods, exec."""

from __future__ import annotations

import json
import os
import subprocess
import time
from typing import TYPE_CHECKING, Any

import click

from tendril.cli.client import DEFAULT_LAB, AgentClient, cluster_write, resolve_nodes
from tendril.cli.tabwriter import render
from tendril.common.errors import NotFoundError, TendrilError

if TYPE_CHECKING:
    from tendril.lab import manifest as mf

lab_option = click.option("--lab", default=DEFAULT_LAB, envvar="TENDRIL_LAB", show_default=True)


def _containers(spec: mf.PodSpec) -> list[dict[str, Any]]:
    return [
        {
            "name": c.name,
            "argv": c.argv(),
            "env": [e.model_dump() for e in c.env],
            "ports": [p.model_dump() for p in c.ports],
        }
        for c in spec.containers
    ]


def _all_pods(nodes: list[str], namespace: str | None = None) -> list[dict[str, Any]]:
    pods: list[dict[str, Any]] = []
    for n in nodes:
        with AgentClient(n) as c:
            pods.extend(c.get("/v1/pods", namespace=namespace))
    return pods


def _known_namespaces(nodes: list[str]) -> set[str]:
    out: set[str] = set()
    for n in nodes:
        with AgentClient(n) as c:
            out.update(c.get("/v1/namespaces"))
    return out


def _pick_node(nodes: list[str], node_name: str | None, placed: dict[str, str]) -> str:
    """spec.nodeName when given, else round-robin: the node running the fewest pods (first on ties)."""
    if node_name:
        if node_name not in nodes:
            raise TendrilError(f'spec.nodeName "{node_name}" is not a node of this lab ({", ".join(nodes)})')
        return node_name
    load = {n: 0 for n in nodes}
    for n in placed.values():
        if n in load:
            load[n] += 1
    return min(nodes, key=lambda n: load[n])


def _apply_pod(
    nodes: list[str],
    ns: str,
    name: str,
    labels: dict[str, str],
    annotations: dict[str, str],
    spec: mf.PodSpec,
    owner: str,
    placed: dict[str, str],
) -> str:
    node = placed.get(f"{ns}/{name}") or _pick_node(nodes, spec.nodeName, placed)
    placed[f"{ns}/{name}"] = node
    body = {"labels": labels, "annotations": annotations, "containers": _containers(spec), "owner": owner}
    with AgentClient(node) as c:
        return c.put(f"/v1/pods/{ns}/{name}", body)["result"]


@click.command()
@click.option(
    "-f", "--filename", "files", multiple=True, required=True, help="Manifest file ('-' for stdin)."
)
@lab_option
def apply(files: tuple[str, ...], lab: str) -> None:
    """Create or update Namespaces, policies, Pods and Deployments from YAML.

    Every document of every file is validated first, so a bad file changes nothing. Policies are
    applied before pods, so new pods are enforced from their first packet.
    """
    import yaml

    from tendril.cli.policy_cmds import import_policies, print_results
    from tendril.lab import manifest as mf
    from tendril.loadbalancer import Service
    from tendril.policy import Policy

    objs = [o for f in files for o in mf.load_file(f)]
    policies = [o for o in objs if isinstance(o, Policy)]
    services = [o for o in objs if isinstance(o, Service)]
    objs = [o for o in objs if not isinstance(o, (Policy, Service))]
    nodes = resolve_nodes(lab, None)
    known = _known_namespaces(nodes) | {o.metadata.name for o in objs if isinstance(o, mf.Namespace)}
    for o in objs:
        if not isinstance(o, mf.Namespace):
            ns = o.metadata.namespace or "default"
            if ns not in known:
                raise TendrilError(f'{o.kind} "{o.metadata.name}": namespaces "{ns}" not found')
    for p in policies:
        if p.namespace and p.namespace not in known:
            raise TendrilError(f'{p.kind} "{p.name}": namespaces "{p.namespace}" not found')
    for s in services:
        if s.namespace not in known:
            raise TendrilError(f'Service "{s.metadata.name}": namespaces "{s.namespace}" not found')
    existing = _all_pods(nodes)
    placed = {f"{p['namespace']}/{p['name']}": p["node"] for p in existing}
    ordered = (
        [o for o in objs if isinstance(o, mf.Namespace)]
        + [None]
        + [o for o in objs if not isinstance(o, mf.Namespace)]
    )
    for o in ordered:
        if o is None:
            if policies:
                text = yaml.safe_dump_all([p.document for p in policies], sort_keys=False)
                print_results(import_policies(lab, text, ", ".join(files)))
            if services:
                text = yaml.safe_dump_all([s.document() for s in services], sort_keys=False)
                # thousands of services take a while: cluster_write allows for it
                body = {"text": text, "source": ", ".join(files)}
                for r in cluster_write(nodes, "PUT", "/v1/services", body)["results"]:
                    click.echo(f"service/{r['name']} {r['action']}")
        elif isinstance(o, mf.Namespace):
            body = {"labels": o.metadata.labels}
            created = cluster_write(nodes, "PUT", f"/v1/namespaces/{o.metadata.name}", body)["created"]
            click.echo(f"namespace/{o.metadata.name} {'created' if created else 'unchanged'}")
        elif isinstance(o, mf.Pod):
            ns = o.metadata.namespace or "default"
            res = _apply_pod(
                nodes, ns, o.metadata.name, o.metadata.labels, o.metadata.annotations, o.spec, "", placed
            )
            click.echo(f"pod/{o.metadata.name} {res}")
        else:
            click.echo(f"deployment.apps/{o.metadata.name} {_apply_deployment(nodes, o, existing, placed)}")


def _apply_deployment(
    nodes: list[str], dep: mf.Deployment, existing: list[dict[str, Any]], placed: dict[str, str]
) -> str:
    from tendril.lab import manifest as mf

    ns = dep.metadata.namespace or "default"
    owner = f"Deployment/{dep.metadata.name}"
    want = mf.deployment_pod_names(dep)
    have = {p["name"]: p for p in existing if p["namespace"] == ns and p["owner"] == owner}
    tmpl = dep.spec.template
    results = set()
    for name in want:
        results.add(
            _apply_pod(
                nodes, ns, name, tmpl.metadata.labels, tmpl.metadata.annotations, tmpl.spec, owner, placed
            )
        )
    for name, p in have.items():
        if name not in want:
            with AgentClient(p["node"]) as c:
                c.delete(f"/v1/pods/{ns}/{name}")
            results.add("configured")
    if not have:
        return "created"
    return "unchanged" if results == {"unchanged"} else "configured"


@click.command()
@click.option("-f", "--filename", "files", multiple=True, required=True)
@click.option("--ignore-not-found", is_flag=True)
@lab_option
def delete(files: tuple[str, ...], ignore_not_found: bool, lab: str) -> None:
    """Delete the objects named in YAML files."""
    from tendril.lab import manifest as mf
    from tendril.policy import Policy

    objs = [o for f in files for o in mf.load_file(f)]
    nodes = resolve_nodes(lab, None)
    pods = _all_pods(nodes)
    missing = []
    from tendril.loadbalancer import Service

    for o in reversed(objs):
        if isinstance(o, Service):
            try:
                cluster_write(nodes, "DELETE", f"/v1/services/{o.namespace}/{o.metadata.name}")
                click.echo(f'service "{o.metadata.name}" deleted')
            except TendrilError as e:
                missing.append(str(e))
            continue
        if isinstance(o, Policy):
            try:
                cluster_write(nodes, "DELETE", f"/v1/policies/{o.kind}/{o.namespace or '-'}/{o.name}")
                click.echo(
                    f"{o.kind.lower()}.{'networking.k8s.io' if o.kind == 'NetworkPolicy' else 'cilium.io'} "
                    f'"{o.name}" deleted'
                )
            except TendrilError as e:
                missing.append(str(e))
            continue
        ns = o.metadata.namespace or "default"
        if isinstance(o, mf.Pod):
            targets = [p for p in pods if p["namespace"] == ns and p["name"] == o.metadata.name]
            label = f'pod "{o.metadata.name}"'
        elif isinstance(o, mf.Deployment):
            owner = f"Deployment/{o.metadata.name}"
            targets = [p for p in pods if p["namespace"] == ns and p["owner"] == owner]
            label = f'deployment.apps "{o.metadata.name}"'
        else:
            try:
                cluster_write(nodes, "DELETE", f"/v1/namespaces/{o.metadata.name}")
                found = True
            except TendrilError:
                found = False
            if found:
                click.echo(f'namespace "{o.metadata.name}" deleted')
            else:
                missing.append(f'namespaces "{o.metadata.name}" not found')
            continue
        if not targets and isinstance(o, mf.Pod):
            missing.append(f'pods "{o.metadata.name}" not found')
            continue
        for p in targets:
            with AgentClient(p["node"]) as c:
                c.delete(f"/v1/pods/{p['namespace']}/{p['name']}")
        click.echo(f"{label} deleted")
    if missing and not ignore_not_found:
        raise NotFoundError("; ".join(missing))


def _svc_port(p: dict[str, Any], node_ports: dict[str, int]) -> str:
    """kubectl's PORT(S) cell: 80/TCP, or 80:30080/TCP for a NodePort."""
    node_port = node_ports.get(f"{p['port']}/{p['protocol']}")
    return f"{p['port']}:{node_port}/{p['protocol']}" if node_port else f"{p['port']}/{p['protocol']}"


def _age(created: float) -> str:
    s = int(time.time() - created)
    if s < 120:
        return f"{s}s"
    if s < 7200:
        return f"{s // 60}m"
    return f"{s // 3600}h"


@click.command()
@click.argument(
    "resource", type=click.Choice(["pods", "pod", "po", "namespaces", "ns", "services", "service", "svc"])
)
@click.option("-n", "--namespace", default=None)
@click.option("-A", "--all-namespaces", is_flag=True)
@click.option("-o", "--output", type=click.Choice(["wide", "json"]), default=None)
@lab_option
def get(resource: str, namespace: str | None, all_namespaces: bool, output: str | None, lab: str) -> None:
    """List pods (or namespaces) like kubectl get."""
    nodes = resolve_nodes(lab, None)
    if resource in ("services", "service", "svc"):
        with AgentClient(nodes[0]) as c:
            svcs = c.get("/v1/services")["services"]
        if output == "json":
            click.echo(json.dumps(svcs, indent=2))
            return
        rows = [(["NAMESPACE"] if all_namespaces else []) + ["NAME", "TYPE", "CLUSTER-IP", "PORT(S)", "AGE"]]
        for s in svcs:
            if not all_namespaces and s["namespace"] != (namespace or "default"):
                continue
            ports = ",".join(_svc_port(p, s["node_ports"]) for p in s["ports"])
            rows.append(
                ([s["namespace"]] if all_namespaces else [])
                + [s["name"], s["type"], ",".join(s["cluster_ips"]) or "None", ports, _age(s["created"])]
            )
        click.echo(render(rows))
        return
    if resource in ("namespaces", "ns"):
        names = sorted(_known_namespaces(nodes))
        click.echo(render([["NAME", "STATUS"], *[[n, "Active"] for n in names]]))
        return
    ns = None if all_namespaces else (namespace or "default")
    pods = sorted(_all_pods(nodes, ns), key=lambda p: (p["namespace"], p["name"]))
    if output == "json":
        items = [
            {
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": {"name": p["name"], "namespace": p["namespace"], "labels": p["labels"]},
                "spec": {
                    "nodeName": p["node"],
                    "containers": [{"name": c["name"], "command": c["argv"]} for c in p["containers"]],
                },
                "status": {
                    "phase": p["phase"],
                    "podIP": p["podIP"],
                    "podIPs": [{"ip": i} for i in p["podIPs"]],
                    "hostIP": p["hostIP"],
                },
            }
            for p in pods
        ]
        click.echo(json.dumps({"apiVersion": "v1", "kind": "List", "items": items}, indent=4))
        return
    if not pods:
        click.echo(f"No resources found in {ns} namespace." if ns else "No resources found", err=True)
        return
    head = (["NAMESPACE"] if all_namespaces else []) + ["NAME", "READY", "STATUS", "RESTARTS", "AGE"]
    if output == "wide":
        head += ["IP", "NODE"]
    rows = [head]
    for p in pods:
        row = ([p["namespace"]] if all_namespaces else []) + [
            p["name"],
            p["ready"],
            p["phase"],
            str(p["restarts"]),
            _age(p["created"]),
        ]
        if output == "wide":
            row += [p["podIP"], p["node"]]
        rows.append(row)
    click.echo(render(rows))


def _pod_resolv_conf(p: dict[str, Any]) -> Any:
    from pathlib import Path

    from tendril.common import paths

    node = p.get("node")
    if not node:
        return None
    path = Path(paths.node_run_dir(node)) / "pods" / f"{p['namespace']}_{p['name']}.resolv.conf"
    return path if path.exists() else None


def find_pod(lab: str, namespace: str, name: str) -> dict[str, Any]:
    """Ask the agents; if one is down, read its persisted state (exec must work without an agent)."""
    from tendril.agent.state import NodeState

    for node in resolve_nodes(lab, None):
        try:
            with AgentClient(node) as c:
                pods = c.get("/v1/pods", namespace=namespace)
        except TendrilError:
            ep = NodeState.load(node).endpoints.get(f"{namespace}/{name}")
            if ep is not None:
                return {
                    "name": name,
                    "namespace": namespace,
                    "netns": ep.netns,
                    "cgroup": ep.cgroup,
                    "podIP": ep.ipv4,
                }
            continue
        for p in pods:
            if p["name"] == name:
                return p
    raise NotFoundError(f'pods "{name}" not found in namespace "{namespace}"')


@click.command("exec", context_settings={"ignore_unknown_options": True, "allow_interspersed_args": False})
@click.option("-n", "--namespace", default="default")
@lab_option
@click.argument("pod")
@click.argument("command", nargs=-1, required=True, type=click.UNPROCESSED)
def exec_(namespace: str, lab: str, pod: str, command: tuple[str, ...]) -> None:
    """Run COMMAND inside POD's network namespace and cgroup: tendril exec POD -- CMD ARGS..."""
    from tendril.agent.pods import resolve_argv
    from tendril.datapath.netns import nsenter_argv

    p = find_pod(lab, namespace, pod)
    argv = list(command[1:] if command and command[0] == "--" else command)
    procs = os.path.join(p["cgroup"], "cgroup.procs")

    def join() -> None:
        with open(procs, "w") as f:
            f.write(str(os.getpid()))

    env = dict(os.environ, POD_NAME=p["name"], POD_NAMESPACE=p["namespace"], POD_IP=p["podIP"])
    argv = resolve_argv(argv)
    resolv = _pod_resolv_conf(p)
    if resolv is not None:  # like kubectl exec: the container's own /etc/resolv.conf
        from tendril.lab.resolvconf import wrap_argv_with_resolvconf

        argv = wrap_argv_with_resolvconf(argv, str(resolv))
    rc = subprocess.call(nsenter_argv(p["netns"], argv), preexec_fn=join, env=env)
    raise SystemExit(rc)
