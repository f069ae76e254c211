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
