"""`tendril lab up|down|status`."""

from __future__ import annotations

import json

import click

from tendril.cli.agent_cmd import hubble_options
from tendril.cli.client import DEFAULT_LAB
from tendril.cli.tabwriter import render

lab_option = click.option(
    "--name",
    "lab",
    default=DEFAULT_LAB,
    envvar="TENDRIL_LAB",
    show_default=True,
    help="Lab name (prefix of every namespace, link and pin it creates).",
)


@click.group()
def lab() -> None:
    """Build and tear down the local lab cluster."""


def _progress(msg: str) -> None:
    click.echo(f"⏳ {msg}")


@lab.command()
@lab_option
@click.option("--nodes", default=1, show_default=True, type=click.IntRange(1, 16))
@click.option(
    "--underlay", default=None, help="Underlay IPv4 subnet for the node bridge (default 198.18.0.0/24)."
)
@click.option(
    "--monitor-aggregation",
    "trace_level",
    type=click.Choice(["all", "medium", "none"]),
    default="medium",
    show_default=True,
)
@hubble_options
def up(lab: str, nodes: int, underlay: str | None, trace_level: str, **hubble: object) -> None:
    """Create the lab: node namespaces on an underlay bridge, one agent per node."""
    from tendril.lab import cluster, topology

    if hubble.get("hubble_metrics") is None:
        hubble["hubble_metrics"] = cluster.DEFAULT_LAB_METRICS
    record = cluster.lab_up(
        lab, nodes, underlay or str(topology.DEFAULT_UNDERLAY), trace_level, _progress, hubble=hubble
    )
    click.echo(f"✅ lab {lab!r} is up with {len(record['nodes'])} node(s)")


@lab.command()
@lab_option
def down(lab: str) -> None:
    """Remove every namespace, link, cgroup, pin and process the lab created."""
    from tendril.lab import cluster

    cluster.lab_down(lab, _progress)
    click.echo(f"✅ lab {lab!r} removed")


@lab.command("status")
@lab_option
@click.option("-o", "--output", type=click.Choice(["table", "json"]), default="table")
def lab_status(lab: str, output: str) -> None:
    """Show the lab's nodes and whether their agents answer."""
    from tendril.cli.client import AgentClient
    from tendril.common.errors import TendrilError
    from tendril.lab import cluster

    record = cluster.load_lab(lab)
    if not record:
        raise TendrilError(f"lab {lab!r} is not up: run `tendril lab up`")
    rows = [["NODE", "UNDERLAY IP", "POD CIDRS", "AGENT"]]
    for n in record["nodes"]:
        with AgentClient(n["name"]) as c:
            n["agent"] = "Ok" if c.healthy() else "Unreachable"
        rows.append([n["name"], n["underlay_ip"], f"{n['pod_cidr_v4']}, {n['pod_cidr_v6']}", n["agent"]])
    click.echo(json.dumps(record, indent=2) if output == "json" else render(rows))
