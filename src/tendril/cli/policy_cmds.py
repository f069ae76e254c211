"""`tendril policy ...`, `tendril identity list`, `tendril bpf policy get`: policy the cilium-dbg way."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import click
import yaml

from tendril.cli.client import DEFAULT_LAB, AgentClient, cluster_write, resolve_nodes
from tendril.cli.tabwriter import render
from tendril.common.errors import InvalidInputError

lab_option = click.option("--lab", default=DEFAULT_LAB, envvar="TENDRIL_LAB", show_default=True)
node_option = click.option("--node", default=None, help="Node to ask (default: every node of the lab).")
PROTO = {0: "ANY", 1: "ICMP", 6: "TCP", 17: "UDP", 58: "ICMPv6", 132: "SCTP"}


def read_policy_file(path: str) -> tuple[str, list[Any]]:
    """Validate every document locally first: a bad file must change nothing on any node."""
    from tendril.policy import PolicyValidationError, parse_policy_documents

    text = sys.stdin.read() if path == "-" else _read(path)
    source = "<stdin>" if path == "-" else path
    try:
        policies = parse_policy_documents(text, source)
    except PolicyValidationError as e:
        raise InvalidInputError(str(e)) from None
    if not policies:
        raise InvalidInputError(f"{source}: no policy documents found")
    return text, policies


def _read(path: str) -> str:
    p = Path(path)
    if not p.exists():
        raise InvalidInputError(f"{path}: no such file")
    return p.read_text()


def import_policies(lab: str, text: str, source: str) -> list[dict[str, Any]]:
    """Send validated policy text to one node, which mirrors it to the others through the kvstore."""
    nodes = resolve_nodes(lab, None)
    r = cluster_write(nodes, "PUT", "/v1/policies", {"text": text, "source": source})
    for ep, err in r.get("errors", {}).items():
        click.echo(f"Warning: node {nodes[0]} endpoint {ep}: {err}", err=True)
    return r["results"]


def print_results(results: list[dict[str, Any]]) -> None:
    short = {
        "CiliumNetworkPolicy": "ciliumnetworkpolicy.cilium.io",
        "CiliumClusterwideNetworkPolicy": "ciliumclusterwidenetworkpolicy.cilium.io",
        "NetworkPolicy": "networkpolicy.networking.k8s.io",
    }
    for r in results:
        click.echo(f"{short.get(r['kind'], r['kind'])}/{r['name']} {r['action']}")
        for notice in r.get("notices", []):
            click.echo(f"  note: {notice}")


@click.group()
def policy() -> None:
    """Manage network policies (CiliumNetworkPolicy, CiliumClusterwideNetworkPolicy, NetworkPolicy)."""


@policy.command("import")
@click.argument("path")
@lab_option
def policy_import(path: str, lab: str) -> None:
    """Import policies from a YAML file ('-' for stdin)."""
    text, _ = read_policy_file(path)
    print_results(import_policies(lab, text, "<stdin>" if path == "-" else path))


@policy.command("validate")
@click.argument("path")
def policy_validate(path: str) -> None:
    """Validate a policy file without applying it."""
    _, policies = read_policy_file(path)
    for p in policies:
        where = f"{p.namespace}/" if p.namespace else ""
        click.echo(f"{p.kind} {where}{p.name}: valid ({len(p.rules)} rules)")
        for notice in p.notices:
            click.echo(f"  note: {notice}")


@policy.command("get")
@click.option("-o", "--output", type=click.Choice(["yaml", "json"]), default="yaml")
@node_option
@lab_option
def policy_get(output: str, node: str | None, lab: str) -> None:
    """Show the imported policies and the policy revision."""
    with AgentClient(resolve_nodes(lab, node)[0]) as c:
        data = c.get("/v1/policies")
    docs = [p["document"] for p in data["policies"]]
    if output == "json":
        click.echo(json.dumps(docs, indent=2))
    else:
        click.echo(yaml.safe_dump_all(docs, sort_keys=False).rstrip() if docs else "")
    click.echo(f"Revision: {data['revision']}")


@policy.command("delete")
@click.argument("name", required=False)
@click.option("-n", "--namespace", default="default")
@click.option(
    "--kind",
    default="CiliumNetworkPolicy",
    show_default=True,
    help="CiliumNetworkPolicy (cnp), CiliumClusterwideNetworkPolicy (ccnp) or NetworkPolicy (netpol).",
)
@click.option("--all", "delete_all", is_flag=True, help="Delete every policy.")
@lab_option
def policy_delete(name: str | None, namespace: str, kind: str, delete_all: bool, lab: str) -> None:
    """Delete a policy by name (or --all)."""
    nodes = resolve_nodes(lab, None)
    if delete_all:
        with AgentClient(nodes[0]) as c:
            targets = [(p["kind"], p["namespace"], p["name"]) for p in c.get("/v1/policies")["policies"]]
    elif name:
        targets = [(kind, namespace, name)]
    else:
        raise InvalidInputError("give a policy NAME or --all")
    for k, ns, nm in targets:
        cluster_write(nodes, "DELETE", f"/v1/policies/{k}/{ns or '-'}/{nm}")
        click.echo(f"{k} {nm!r} deleted")


@click.group()
def identity() -> None:
    """Security identities."""


@identity.command("list")
@click.option("-o", "--output", type=click.Choice(["table", "json"]), default="table")
@node_option
@lab_option
def identity_list(output: str, node: str | None, lab: str) -> None:
    """List identities (cilium-dbg identity list)."""
    with AgentClient(resolve_nodes(lab, node)[0]) as c:
        ids = c.get("/v1/identities")
    if output == "json":
        click.echo(json.dumps(ids, indent=2))
        return
    rows = [["ID", "LABELS"]] + [[str(i["id"]), "\n".join(i["labels"])] for i in ids]
    click.echo(render(rows))


def _port_text(e: dict[str, Any]) -> str:
    proto = PROTO.get(e["proto"], str(e["proto"]))
    if e["prefixlen"] <= 40:
        return "ANY"
    if e["prefixlen"] == 48:
        return f"ANY/{proto}"
    bits = e["prefixlen"] - 48
    lo = e["port"]
    hi = lo + (1 << (16 - bits)) - 1
    return f"{lo}/{proto}" if lo == hi else f"{lo}-{hi}/{proto}"


def bpf_policy_get(endpoint: int, lab: str, node: str | None, output: str) -> None:
    for n in resolve_nodes(lab, node):
        with AgentClient(n) as c:
            if not any(ep["id"] == endpoint for ep in c.get("/v1/endpoints")):
                continue
            data = c.get(f"/v1/bpf/policy/{endpoint}")
        if output == "json":
            click.echo(json.dumps(data, indent=2))
            return
        if not data["enforced"]:
            click.echo(f"Endpoint {endpoint}: policy enforcement disabled (no policy map)")
            return
        rows = [["POLICY", "DIRECTION", "LABELS (source:key[=value])", "PORT/PROTO", "PROXY PORT", "RULE"]]
        for e in sorted(data["entries"], key=lambda e: (e["egress"], e["marker"], e["identity"], e["port"])):
            direction = "Egress" if e["egress"] else "Ingress"
            if e["marker"]:
                rows.append(["Default", direction, "(enforced: default deny)", "", "", ""])
                continue
            labels = "\n".join(e["labels"]) if e["identity"] else "reserved:unknown"
            rows.append(
                ["Deny" if e["deny"] else "Allow", direction, labels, _port_text(e), "NONE", e["rule"]]
            )
        click.echo(render(rows))
        return
    raise InvalidInputError(f"endpoint {endpoint} not found")
