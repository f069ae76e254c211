"""`tendril agent`: run one node's agent in the foreground."""

from __future__ import annotations

import click

from tendril.agent.config import TRACE_LEVELS, NodeConfig


@click.command()
@click.option("--node", required=True, help="Node name (pins, socket and state are keyed by it).")
@click.option("--netns", default=None, help="The node's network namespace (default: from node.json).")
@click.option("--pod-cidr-v4", default=None, help="IPv4 pod CIDR of this node.")
@click.option("--pod-cidr-v6", default=None, help="IPv6 pod CIDR of this node.")
@click.option(
    "--monitor-aggregation",
    "trace_level",
    type=click.Choice(list(TRACE_LEVELS)),
    default=None,
    help="Trace events: all (every packet), medium (new connections, TCP SYN/FIN/RST; default) "
    "or none (drops only).",
)
def agent(
    node: str, netns: str | None, pod_cidr_v4: str | None, pod_cidr_v6: str | None, trace_level: str | None
) -> None:
    """Run the Tendril agent for NODE (needs root)."""
    from tendril.agent.daemon import run_agent

    cfg = NodeConfig.load(node)
    if netns is not None:
        cfg.netns = netns
    if pod_cidr_v4:
        cfg.pod_cidr_v4 = pod_cidr_v4
    if pod_cidr_v6:
        cfg.pod_cidr_v6 = pod_cidr_v6
    if trace_level:
        cfg.trace_level = trace_level
    cfg.save()
    run_agent(cfg)
