"""`tendril hubble ui`: a Hubble UI-like web page (service map + flow table) over Hubble Relay."""

from __future__ import annotations

import ipaddress
import socket

import click

from tendril.common.errors import TendrilError
from tendril.ui import DEFAULT_ADDRESS, DEFAULT_PORT, DEFAULT_RELAY


def _relay_of_lab(lab: str) -> str:
    from tendril.lab.cluster import load_lab

    record = load_lab(lab)
    if record is None:
        raise TendrilError(f"lab {lab!r} not found (run `tendril lab up --name {lab}` first)")
    relay = record.get("relay")
    if not relay or not relay.get("port"):
        raise TendrilError(f"lab {lab!r} has no Hubble Relay (it was brought up with --relay-port 0)")
    return f"127.0.0.1:{relay['port']}"


def _check_port_free(address: str, port: int) -> None:
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    with socket.socket(family) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((address, port))
        except OSError as e:
            raise TendrilError(f"cannot listen on {address}:{port}: {e.strerror or e}") from None


@click.command("ui")
@click.option(
    "--server",
    default=None,
    metavar="HOST:PORT",
    help=f"Hubble Relay (plaintext gRPC) to read flows from.  [default: {DEFAULT_RELAY}]",
)
@click.option(
    "--lab", default=None, metavar="NAME", help="Use the Hubble Relay of this lab (from its record)."
)
@click.option("--address", default=DEFAULT_ADDRESS, show_default=True, help="Address to serve the UI on.")
@click.option(
    "--port", default=DEFAULT_PORT, show_default=True, type=click.IntRange(1, 65535), help="Port to serve on."
)
@click.option(
    "--last",
    default=2000,
    show_default=True,
    type=click.IntRange(0, 1_000_000),
    help="Flows to start with: per node, and per namespace when one is first selected.",
)
@click.option(
    "--window",
    "per_namespace",
    default=2000,
    show_default=True,
    type=click.IntRange(1, 1_000_000),
    help="Recent flows kept per namespace.",
)
@click.option(
    "--push-interval",
    default=1.0,
    show_default=True,
    type=click.FloatRange(0.05, 60),
    help="Seconds between live updates to the page.",
)
def ui(
    server: str | None,
    lab: str | None,
    address: str,
    port: int,
    last: int,
    per_namespace: int,
    push_interval: float,
) -> None:
    """Serve a web UI (service map, flow table with filters) for the flows of a Hubble Relay."""
    from tendril.ui.server import serve

    if server and lab:
        raise TendrilError("give --server or --lab, not both")
    relay = _relay_of_lab(lab) if lab else (server or DEFAULT_RELAY)
    _check_port_free(address, port)
    host = f"[{address}]" if ":" in address else address
    click.echo(f"🔭 Hubble UI on http://{host}:{port}/ (flows from Hubble Relay {relay}); Ctrl-C stops it")
    try:
        loopback = ipaddress.ip_address(address).is_loopback
    except ValueError:
        loopback = address == "localhost"
    if not loopback:
        click.echo(
            f"⚠️  serving on {address}, not only this machine: whoever reaches it sees the flows", err=True
        )
    serve(
        relay, address=address, port=port, last=last, per_namespace=per_namespace, push_interval=push_interval
    )


def register(hubble: click.Group) -> None:
    """Add `ui` to `tendril hubble` (called from tendril.cli.main)."""
    hubble.add_command(ui)
