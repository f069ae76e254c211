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
@click.option(
    "--routing",
    type=click.Choice(["native", "vxlan"]),
    default="native",
    show_default=True,
    help="Between nodes: native routes, or a VXLAN overlay carrying the source identity in the VNI.",
)
@click.option(
    "--kvstore",
    default=None,
    help="etcd://host:port to use an existing etcd (reachable from the lab's namespaces), or "
    "'embedded'. Default: embedded for one node, the lab's own etcd for more.",
)
@click.option("--kvstore-lease-ttl", type=float, default=10.0, show_default=True, help="Seconds.")
@click.option(
    "--relay-port",
    type=click.IntRange(0, 65535),
    default=4245,
    show_default=True,
    help="Hubble Relay port on 127.0.0.1 (0: no relay).",
)
@click.option(
    "--ui-port",
    type=click.IntRange(0, 65535),
    default=0,
    show_default=True,
    help="Also start Hubble UI on 127.0.0.1:PORT (e.g. 12000; 0: no UI).",
)
@click.option(
    "--hubble-tls/--no-hubble-tls",
    default=None,
    help="mTLS between relay and agents (default: on with more than one node).",
)
@hubble_options
def up(
    lab: str,
    nodes: int,
    underlay: str | None,
    trace_level: str,
    routing: str,
    kvstore: str | None,
    kvstore_lease_ttl: float,
    relay_port: int,
    ui_port: int,
    hubble_tls: bool | None,
    **hubble: object,
) -> None:
    """Create the lab: node namespaces on an underlay bridge, one agent per node, etcd for many nodes,
    and Hubble Relay."""
    from tendril.lab import cluster, topology

    if hubble.get("hubble_metrics") is None:
        hubble["hubble_metrics"] = cluster.DEFAULT_LAB_METRICS
    record = cluster.lab_up(
        lab,
        nodes,
        underlay or str(topology.DEFAULT_UNDERLAY),
        trace_level,
        _progress,
        hubble=hubble,
        routing=routing,
        kvstore=kvstore,
        relay_port=relay_port,
        hubble_tls=hubble_tls,
        kvstore_lease_ttl=kvstore_lease_ttl,
        ui_port=ui_port,
    )
    click.echo(f"✅ lab {lab!r} is up with {len(record['nodes'])} node(s), {record['routing']} routing")
    if record.get("relay"):
        click.echo(f"   Hubble Relay: 127.0.0.1:{record['relay']['port']} (hubble observe --server ...)")
    if record.get("ui"):
        click.echo(f"   Hubble UI:    http://127.0.0.1:{record['ui']['port']}/")


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
