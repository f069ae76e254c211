"""`tendril workload ...`: built-in programs for lab pods (no container images needed)."""

from __future__ import annotations

import signal
import sys

import click


@click.group()
def workload() -> None:
    """Built-in workloads to run inside lab pods."""


@workload.command("http-echo")
@click.option("--port", default=8080, show_default=True)
def http_echo(port: int) -> None:
    """HTTP server answering every request with JSON describing it."""
    import asyncio

    from tendril.workload.http_echo import serve

    asyncio.run(serve(port))


@workload.command("udp-echo")
@click.option("--port", default=9000, show_default=True)
def udp_echo(port: int) -> None:
    """UDP server sending every datagram back."""
    from tendril.workload.udp_echo import serve

    serve(port)


@workload.command("dns-server")
@click.option("--port", default=53, show_default=True, help="UDP and TCP port (0 = any free port).")
@click.option(
    "--records",
    "records_path",
    required=True,
    type=click.Path(dir_okay=False),
    help="JSON records file (rewritten atomically by the agent; re-read when it changes).",
)
@click.option("--domain", default="cluster.local", show_default=True, help="Cluster domain.")
@click.option(
    "--upstream",
    type=click.Choice(["none"]),
    default="none",
    show_default=True,
    help="Forwarding for other names: none (the lab is sealed; they get REFUSED).",
)
@click.option(
    "--listen",
    multiple=True,
    help="Address to listen on (repeatable).  [default: 0.0.0.0 and ::]",
)
@click.option("--ttl", default=5, show_default=True, type=click.IntRange(0, 86400), help="Record TTL, s.")
@click.option("--log-queries", is_flag=True, help="Log every query and its answer.")
def dns_server(
    port: int,
    records_path: str,
    domain: str,
    upstream: str,
    listen: tuple[str, ...],
    ttl: int,
    log_queries: bool,
) -> None:
    """Cluster DNS: <svc>.<ns>.svc.<domain> A/AAAA/SRV/PTR from a records file."""
    from tendril.workload.dns_server import main

    main(records_path, port, domain, listen, ttl, log_queries)


@workload.command()
@click.argument("url")
@click.option("--connect-timeout", default=2.0, show_default=True)
@click.option("-m", "--max-time", default=10.0, show_default=True)
@click.option("--fail", is_flag=True, help="Exit 22 on HTTP errors.")
@click.option("-X", "--request", "method", default="GET")
@click.option("-w", "--write-out", default=None)
@click.option("-s", "--silent", is_flag=True, help="Do not print the body.")
def curl(
    url: str,
    connect_timeout: float,
    max_time: float,
    fail: bool,
    method: str,
    write_out: str | None,
    silent: bool,
) -> None:
    """Fetch URL over HTTP/1.1 (curl's exit codes)."""
    from tendril.workload.curl import fetch

    sys.exit(fetch(url, connect_timeout, max_time, fail, method, write_out, quiet=silent))


@workload.command()
def pause() -> None:
    """Do nothing until stopped (a pod with no command)."""
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    while True:
        signal.pause()
