"""`tendril agent`: run one node's agent in the foreground."""

from __future__ import annotations

import click

from tendril.agent.config import TRACE_LEVELS, NodeConfig

# option name -> NodeConfig attribute, for the Hubble/Prometheus settings shared with `lab up`
HUBBLE_OPTIONS = {
    "hubble_buffer_capacity": "hubble_buffer_capacity",
    "hubble_listen_address": "hubble_listen_address",
    "hubble_metrics": "hubble_metrics",
    "hubble_metrics_server": "hubble_metrics_server",
    "hubble_export_file": "hubble_export_file",
    "hubble_export_file_max_size_mb": "hubble_export_file_max_size_mb",
    "hubble_export_file_max_backups": "hubble_export_file_max_backups",
    "prometheus_serve_addr": "prometheus_serve_addr",
    "bpf_lb_algorithm": "bpf_lb_algorithm",
    "bpf_lb_maglev_table_size": "bpf_lb_maglev_table_size",
    "tofqdns_min_ttl": "tofqdns_min_ttl",
}


def hubble_options(f):  # noqa: ANN001, ANN201 - click decorator
    """The Hubble flags Cilium's agent has, with the same names."""
    opts = [
        click.option(
            "--hubble-buffer-capacity",
            type=int,
            default=None,
            help="Flows kept per node (2^n-1; default 65535, Hubble's is 4095).",
        ),
        click.option("--hubble-listen-address", default=None, help="Observer TCP address (default :4244)."),
        click.option(
            "--hubble-metrics",
            default=None,
            help='Hubble metrics in Hubble\'s syntax, e.g. "flow drop tcp:sourceContext=pod".',
        ),
        click.option("--hubble-metrics-server", default=None, help="Hubble metrics address (default :9965)."),
        click.option(
            "--hubble-export-file", default=None, help="Write every flow as JSON lines to this file."
        ),
        click.option("--hubble-export-file-max-size-mb", type=int, default=None),
        click.option("--hubble-export-file-max-backups", type=int, default=None),
        click.option("--prometheus-serve-addr", default=None, help="Agent metrics address (default :9962)."),
        click.option(
            "--bpf-lb-algorithm",
            type=click.Choice(["random", "maglev"]),
            default=None,
            help="Backend selection for services (default random).",
        ),
        click.option(
            "--bpf-lb-maglev-table-size",
            type=int,
            default=None,
            help="Maglev table size, a prime (default 16381).",
        ),
        click.option(
            "--tofqdns-min-ttl",
            type=click.IntRange(0),
            default=None,
            help="Seconds a toFQDNs IP stays allowed at least, whatever the DNS TTL (default 3600).",
        ),
    ]
    for o in reversed(opts):
        f = o(f)
    return f


def apply_hubble_options(cfg: NodeConfig, values: dict) -> None:
    for opt, attr in HUBBLE_OPTIONS.items():
        if values.get(opt) is not None:
            setattr(cfg, attr, values[opt])


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
@click.option("--kvstore", default=None, help="etcd://host:port, or 'embedded' (default: from node.json).")
@click.option("--routing", type=click.Choice(["native", "vxlan"]), default=None)
@hubble_options
def agent(
    node: str,
    netns: str | None,
    pod_cidr_v4: str | None,
    pod_cidr_v6: str | None,
    trace_level: str | None,
    kvstore: str | None,
    routing: str | None,
    **hubble: object,
) -> None:
    """Run the Tendril agent for NODE (needs root)."""
    from tendril.agent.daemon import run_agent
    from tendril.common.errors import require_root
    from tendril.hubble.container.ring import RingError, validate_capacity

    require_root("agent")
    cfg = NodeConfig.load(node)
    if netns is not None:
        cfg.netns = netns
    if pod_cidr_v4:
        cfg.pod_cidr_v4 = pod_cidr_v4
    if pod_cidr_v6:
        cfg.pod_cidr_v6 = pod_cidr_v6
    if trace_level:
        cfg.trace_level = trace_level
    if kvstore is not None:
        cfg.kvstore = "" if kvstore == "embedded" else kvstore
    if routing:
        cfg.routing = routing
    apply_hubble_options(cfg, hubble)
    try:
        validate_capacity(cfg.hubble_buffer_capacity)
    except RingError as e:
        raise click.BadParameter(str(e), param_hint="--hubble-buffer-capacity") from None
    cfg.save()
    run_agent(cfg)
