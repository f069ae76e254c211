"""`tendril observe`: recent and live flows in hubble's compact or JSON form.

Reads the agent's recent-flow buffer over the local API; the Hubble-compatible gRPC Observer takes
over this command when it lands.
"""

from __future__ import annotations

import json

import click

from tendril.cli.client import DEFAULT_LAB, AgentClient, resolve_nodes
from tendril.cli.format_flows import compact_line
from tendril.hubble.parser.flow import Flow, flow_from_wire


@click.command()
@click.option("--last", default=20, show_default=True, help="Number of recent flows per node.")
@click.option("-f", "--follow", is_flag=True, help="Keep printing new flows.")
@click.option("-t", "--type", "etype", type=click.Choice(["drop", "trace"]), default=None)
@click.option("-o", "--output", type=click.Choice(["compact", "json", "jsonpb"]), default="compact")
@click.option("--numeric", is_flag=True, help="Print IPs instead of pod names.")
@click.option("--print-node-name", is_flag=True)
@click.option("--node", default=None)
@click.option("--lab", default=DEFAULT_LAB, envvar="TENDRIL_LAB", show_default=True)
def observe(
    last: int,
    follow: bool,
    etype: str | None,
    output: str,
    numeric: bool,
    print_node_name: bool,
    node: str | None,
    lab: str,
) -> None:
    """Show flows observed by the datapath."""

    def show(f: Flow) -> None:
        if output == "compact":
            click.echo(compact_line(f, numeric=numeric, node_name=print_node_name))
        else:
            click.echo(
                json.dumps(
                    {"flow": f.to_hubble_dict(), "node_name": f.node_name, "time": f.to_hubble_dict()["time"]}
                )
            )

    nodes = resolve_nodes(lab, node)
    flows: list[Flow] = []
    for n in nodes:
        with AgentClient(n) as c:
            flows.extend(flow_from_wire(d) for d in c.get("/v1/flows", last=last, type=etype))
    for f in sorted(flows, key=lambda f: f.time_ns):
        show(f)
    if follow:
        with AgentClient(nodes[0]) as c:
            for msg in c.stream("/v1/monitor", **({"type": etype} if etype else {})):
                if "flow" in msg:
                    show(flow_from_wire(msg["flow"]))
