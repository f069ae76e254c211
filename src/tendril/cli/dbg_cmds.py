"""cilium-dbg style views of one node: endpoint list, bpf ct/metrics list, monitor, config, status."""

from __future__ import annotations

import json
import sys

import click

from tendril.cli.client import DEFAULT_LAB, AgentClient, resolve_nodes
from tendril.cli.monitor_format import monitor_line
from tendril.cli.tabwriter import render
from tendril.common.errors import InvalidInputError
from tendril.hubble.parser.flow import flow_from_wire
from tendril.monitor import api

node_option = click.option("--node", default=None, help="Node to ask (default: every node of the lab).")
lab_option = click.option("--lab", default=DEFAULT_LAB, envvar="TENDRIL_LAB", show_default=True)
json_option = click.option("-o", "--output", type=click.Choice(["table", "json"]), default="table")

TCP_FLAGS = {1: "FIN", 2: "SYN", 4: "RST", 8: "PSH", 16: "ACK"}
CT_FLAG_NAMES = [
    (1 << 2, "RxClosing"),
    (1 << 1, "TxClosing"),
    (1 << 0, "SeenNonSyn"),
    (1 << 3, "SeenReply"),
    (1 << 4, "Rst"),
]


@click.group()
def endpoint() -> None:
    """Endpoints managed by the agent."""


@endpoint.command("list")
@node_option
@lab_option
@json_option
def endpoint_list(node: str | None, lab: str, output: str) -> None:
    """List endpoints in the cilium-dbg endpoint list layout."""
    eps = []
    for n in resolve_nodes(lab, node):
        with AgentClient(n) as c:
            eps.extend(c.get("/v1/endpoints"))
    if output == "json":
        click.echo(json.dumps(eps, indent=2))
        return
    rows = [
        [
            "ENDPOINT",
            "POLICY (ingress)",
            "POLICY (egress)",
            "IDENTITY",
            "LABELS (source:key[=value])",
            "IPv6",
            "IPv4",
            "STATUS",
        ],
        ["", "ENFORCEMENT", "ENFORCEMENT", "", "", "", "", ""],
    ]
    for ep in sorted(eps, key=lambda e: e["id"]):
        labels = ep.get("identity_labels") or sorted(f"k8s:{k}={v}" for k, v in ep["labels"].items())
        rows.append(
            [
                str(ep["id"]),
                _enforcement(ep, "ingress"),
                _enforcement(ep, "egress"),
                str(ep["identity"]),
                "\n".join(labels),
                ep["ipv6"],
                ep["ipv4"],
                ep["state"],
            ]
        )
    click.echo(render(rows))


def _enforcement(ep: dict, direction: str) -> str:
    if not ep.get(f"policy_{direction}"):
        return "Disabled"
    return "Disabled (Audit)" if ep.get("policy_audit") else "Enabled"


@click.group()
def bpf() -> None:
    """Inspect the datapath's BPF maps."""


@bpf.group()
def ct() -> None:
    """Connection tracking table."""


def _flags_text(flags: int) -> str:
    names = [n for bit, n in CT_FLAG_NAMES if flags & bit]
    return f"Flags={flags:#06x} [ {' '.join(names)} ]" if names else f"Flags={flags:#06x} [ ]"


def _ct_line(e: dict) -> str:
    proto = e["proto_name"]
    fmt = "[{}]:{}" if e["ip_version"] == 6 else "{}:{}"
    src = fmt.format(e["saddr"], e["sport"])
    dst = fmt.format(e["daddr"], e["dport"])
    return (
        f"{proto} {e['scope']} {src} -> {dst} expires={e['expires_s']} ({e['remaining_s']}s) "
        f"RxPackets={e['rx_packets']} RxBytes={e['rx_bytes']} RxFlagsSeen={e['rx_flags_seen']:#04x} "
        f"LastRxReport={e['last_seen_s']} TxPackets={e['tx_packets']} TxBytes={e['tx_bytes']} "
        f"TxFlagsSeen={e['tx_flags_seen']:#04x} LastTxReport={e['last_seen_s']} {_flags_text(e['flags'])} "
        f"RevNAT=0 SourceSecurityID=0 IfIndex={e['ifindex']} EndpointID={e['ep_id']}"
    )


@ct.command("list")
@click.argument("scope", default="global", required=False)
@node_option
@lab_option
@json_option
def ct_list(scope: str, node: str | None, lab: str, output: str) -> None:
    """List conntrack entries (cilium-dbg bpf ct list global)."""
    entries = []
    for n in resolve_nodes(lab, node):
        with AgentClient(n) as c:
            entries.extend(c.get("/v1/bpf/ct"))
    if output == "json":
        click.echo(json.dumps(entries, indent=2))
        return
    for e in entries:
        click.echo(_ct_line(e))


@ct.command("flush")
@click.argument("scope", default="global", required=False)
@node_option
@lab_option
def ct_flush(scope: str, node: str | None, lab: str) -> None:
    """Delete every conntrack entry."""
    for n in resolve_nodes(lab, node):
        with AgentClient(n) as c:
            click.echo(f"Flushed {c.delete('/v1/bpf/ct')['deleted']} entries from {n}")


@bpf.group("policy")
def bpf_policy() -> None:
    """Per-endpoint policy maps."""


@bpf_policy.command("get")
@click.argument("endpoint", type=int)
@click.option("-o", "--output", type=click.Choice(["table", "json"]), default="table")
@node_option
@lab_option
def bpf_policy_get(endpoint: int, output: str, node: str | None, lab: str) -> None:
    """Show an endpoint's policy map entries (cilium-dbg bpf policy get ENDPOINT)."""
    from tendril.cli.policy_cmds import bpf_policy_get as show

    show(endpoint, lab, node, output)


@bpf.group()
def metrics() -> None:
    """Datapath packet/byte counters by reason and direction."""


@metrics.command("list")
@node_option
@lab_option
@json_option
def metrics_list(node: str | None, lab: str, output: str) -> None:
    """List metrics in the cilium-dbg bpf metrics list layout."""
    totals: dict[tuple[int, int], list[int]] = {}
    for n in resolve_nodes(lab, node):
        with AgentClient(n) as c:
            for r in c.get("/v1/bpf/metrics"):
                t = totals.setdefault((r["reason"], r["direction"]), [0, 0])
                t[0] += r["packets"]
                t[1] += r["bytes"]
    dirs = {1: "INGRESS", 2: "EGRESS", 3: "SERVICE"}
    rows_data = [
        {
            "reason": api.drop_reason_text(reason),
            "code": reason,
            "direction": dirs.get(d, "UNKNOWN"),
            "packets": p,
            "bytes": b,
        }
        for (reason, d), (p, b) in sorted(totals.items())
    ]
    if output == "json":
        click.echo(json.dumps(rows_data, indent=2))
        return
    rows = [["REASON", "DIRECTION", "PACKETS", "BYTES"]]
    rows += [[r["reason"], r["direction"], str(r["packets"]), str(r["bytes"])] for r in rows_data]
    click.echo(render(rows))


@click.command()
@click.option(
    "-t",
    "--type",
    "etype",
    type=click.Choice(["drop", "trace", "policy-verdict"]),
    default=None,
    help="Only this event type.",
)
@click.option("--related-to", type=int, default=None, help="Only events of this endpoint ID.")
@click.option("-o", "--output", type=click.Choice(["text", "json"]), default="text")
@node_option
@lab_option
def monitor(etype: str | None, related_to: int | None, output: str, node: str | None, lab: str) -> None:
    """Stream datapath events live, like cilium-dbg monitor."""
    nodes = resolve_nodes(lab, node)
    if len(nodes) > 1:
        click.echo(f"Monitoring node {nodes[0]} (use --node to pick another)", err=True)
    with AgentClient(nodes[0]) as c:
        for msg in c.stream("/v1/monitor", **({"type": etype} if etype else {})):
            if "hello" in msg:
                h = msg["hello"]
                if output == "text":
                    click.echo(
                        f"Listening for events on {h['cpus']} CPUs with "
                        f"{h['ring_bytes'] // 4096}x4096 of shared memory"
                    )
                    click.echo("Press Ctrl-C to quit")
                continue
            if "lost" in msg:
                click.echo(f"Lost {msg['lost']} events (the monitor fell behind the flow ring)")
                continue
            if "flow" not in msg:
                continue
            f = flow_from_wire(msg["flow"])
            if related_to is not None and f.ep_id != related_to:
                continue
            click.echo(json.dumps(f.to_hubble_dict()) if output == "json" else monitor_line(f))
            sys.stdout.flush()


@click.command()
@click.argument("settings", nargs=-1)
@node_option
@lab_option
def config(settings: tuple[str, ...], node: str | None, lab: str) -> None:
    """Show or change runtime options.

    MonitorAggregationLevel=none|medium|maximum, PolicyAuditMode=Enabled|Disabled,
    HTTPVisibility=NS[,NS...]|none (proxy-free HTTP flows for pods of these namespaces).
    """
    aliases = {
        "none": "all",
        "low": "all",
        "medium": "medium",
        "maximum": "none",
        "max": "none",
        "all": "all",
    }
    for n in resolve_nodes(lab, node):
        with AgentClient(n) as c:
            for s in settings:
                key, _, value = s.partition("=")
                if key in ("MonitorAggregationLevel", "MonitorAggregation", "monitor-aggregation"):
                    c.put("/v1/config", {"trace_level": aliases.get(value.lower(), value)})
                elif key == "PolicyAuditMode":
                    flag = {"enabled": True, "true": True, "disabled": False, "false": False}.get(
                        value.lower()
                    )
                    if flag is None:
                        raise InvalidInputError(f"PolicyAuditMode={value!r}: use Enabled or Disabled")
                    c.put("/v1/config", {"policy_audit": flag})
                elif key == "HTTPVisibility":
                    c.put("/v1/config", {"http_visibility": value})
                else:
                    raise InvalidInputError(
                        f"unknown option {key!r} "
                        "(supported: MonitorAggregationLevel, PolicyAuditMode, HTTPVisibility)"
                    )
            cfg = c.get("/v1/config")
        click.echo(f"##### {n} #####")
        click.echo(render([[f"{k}", ":", str(v)] for k, v in cfg.items()], padding=1))


@click.group()
def service() -> None:
    """Services (kube-proxy replacement)."""


@service.command("list")
@click.option("-o", "--output", type=click.Choice(["table", "json"]), default="table")
@node_option
@lab_option
def service_list(output: str, node: str | None, lab: str) -> None:
    """List services in the cilium-dbg service list layout."""
    with AgentClient(resolve_nodes(lab, node)[0]) as c:
        data = c.get("/v1/services")
    click.echo(json.dumps(data["services"], indent=2) if output == "json" else data["service_list"])


@bpf.group("lb")
def bpf_lb() -> None:
    """Load-balancing maps."""


@bpf_lb.command("list")
@click.option("--revnat", is_flag=True, help="Show the reverse-NAT table.")
@node_option
@lab_option
def bpf_lb_list(revnat: bool, node: str | None, lab: str) -> None:
    """List the LB map (cilium-dbg bpf lb list [--revnat])."""
    with AgentClient(resolve_nodes(lab, node)[0]) as c:
        data = c.get("/v1/services")
    click.echo(data["bpf_lb_revnat"] if revnat else data["bpf_lb_list"])


@click.group()
def fqdn() -> None:
    """toFQDNs: names the DNS proxy saw and the IPs they allow."""


@fqdn.group("cache")
def fqdn_cache() -> None:
    """The FQDN cache."""


@fqdn_cache.command("list")
@click.option("-o", "--output", type=click.Choice(["table", "json"]), default="table")
@node_option
@lab_option
def fqdn_cache_list(output: str, node: str | None, lab: str) -> None:
    """List cached names in the cilium-dbg fqdn cache list layout."""
    entries = []
    for n in resolve_nodes(lab, node):
        with AgentClient(n) as c:
            entries += c.get("/v1/fqdn/cache")
    if output == "json":
        click.echo(json.dumps(entries, indent=2))
        return
    rows = [["Endpoint", "Source", "FQDN", "TTL", "ExpirationTime", "IPs"]]
    rows += [
        [str(e["endpoint"]), e["source"], e["fqdn"], str(e["ttl"]), e["expiration"], ",".join(e["ips"])]
        for e in entries
    ]
    click.echo(render(rows))
