"""`tendril hubble relay` and `tendril hubble enable`: Hubble Relay and its certificates for a lab."""

from __future__ import annotations

from pathlib import Path

import click

from tendril.cli.client import DEFAULT_LAB
from tendril.common.errors import TendrilError
from tendril.hubble.relay.config import DEFAULT_LISTEN


@click.command("relay")
@click.option(
    "--peer-service",
    "peer_services",
    multiple=True,
    required=True,
    metavar="ADDR",
    help="Peer service to discover nodes from: unix:///path/hubble.sock, host:port or tls://host:port. "
    "Repeat for failover (the first reachable one is used).",
)
@click.option("--listen-address", default=DEFAULT_LISTEN, show_default=True, help="Where the relay serves.")
@click.option(
    "--tls-dir",
    type=click.Path(file_okay=False, path_type=Path),
    help="Certificates from `tendril hubble enable`: the client certificate used to reach nodes that "
    "serve TLS (without it the relay dials every node in plaintext).",
)
@click.option("--tls-server", is_flag=True, help="Serve TLS (relay server certificate from --tls-dir).")
@click.option("--cluster", default="default", show_default=True, help="Cluster name (namespaces' cluster).")
@click.option(
    "--peer-service-server-name",
    default="",
    help="TLS server name to verify for a tls:// peer service (default: its address).",
)
def relay(
    peer_services: tuple[str, ...],
    listen_address: str,
    tls_dir: Path | None,
    tls_server: bool,
    cluster: str,
    peer_service_server_name: str,
) -> None:
    """Run Hubble Relay: one Observer API for every node the peer service lists."""
    from tendril.hubble.relay import RelayConfig, run_relay

    if tls_server and tls_dir is None:
        raise TendrilError("--tls-server needs --tls-dir")
    run_relay(
        RelayConfig(
            peer_services=list(peer_services),
            listen_address=listen_address,
            tls_dir=tls_dir,
            tls_server=tls_server,
            cluster=cluster,
            peer_service_server_name=peer_service_server_name,
        )
    )


@click.command("enable")
@click.option("--lab", default=DEFAULT_LAB, envvar="TENDRIL_LAB", show_default=True, help="Lab name.")
@click.option(
    "--tls-dir",
    type=click.Path(file_okay=False, path_type=Path),
    help="Where to keep the certificates (default: next to the lab record, <lab>-tls/).",
)
def enable(lab: str, tls_dir: Path | None) -> None:
    """Create the lab's Hubble CA and certificates (node servers, relay); keeps valid ones."""
    from tendril.hubble.tls import ensure_certs, lab_tls_dir, tls_server_name
    from tendril.lab.cluster import load_lab

    record = load_lab(lab)
    if record is None:
        raise TendrilError(f"lab {lab!r} not found (run `tendril lab up --name {lab}` first)")
    nodes = [n["name"] for n in record.get("nodes", [])]
    ips = {n["name"]: str(n["underlay_ip"]) for n in record.get("nodes", []) if n.get("underlay_ip")}
    layout = ensure_certs(tls_dir or lab_tls_dir(lab), lab, nodes, ips)
    click.echo(f"🔑 Hubble certificates for lab {lab} in {layout.directory}")
    if not layout.created:
        click.echo("   all certificates present and valid, nothing created")
    for path in layout.created:
        click.echo(f"   created {path.relative_to(layout.directory)}")
    for node in nodes:
        click.echo(f"   node {node}: {tls_server_name(node, lab)}")


def register(hubble: click.Group) -> None:
    """Add the commands to `tendril hubble` (called from tendril.cli.main)."""
    hubble.add_command(relay)
    hubble.add_command(enable)
