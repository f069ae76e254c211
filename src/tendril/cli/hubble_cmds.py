"""`tendril hubble ...`: the hubble CLI's observe, status and list commands against Tendril.

The commands take their arguments raw and parse them with hubble's rules (see
`tendril.hubble.cli`), so `tendril hubble` can stand in for `hubble` in scripts and muscle memory.
"""

from __future__ import annotations

import sys

import click

from tendril.cli.observe_cmd import RAW_ARGS, make_observe_command
from tendril.hubble.cli.commands import run_list_command, run_status_command


@click.group("hubble")
def hubble() -> None:
    """Hubble CLI commands (observe, status, list) against Tendril's Hubble Observer."""


hubble.add_command(make_observe_command("tendril hubble observe"))


@hubble.command("status", context_settings=RAW_ARGS, add_help_option=False)
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
def status(args: tuple[str, ...]) -> None:
    """Display status of Hubble server (health check, flows, uptime)."""
    sys.exit(run_status_command(list(args)))


@hubble.group("list")
def list_() -> None:
    """List Hubble objects (nodes, namespaces)."""


def _list_command(what: str, name: str, hidden: bool = False) -> click.Command:
    @click.command(name, context_settings=RAW_ARGS, add_help_option=False, hidden=hidden)
    @click.argument("args", nargs=-1, type=click.UNPROCESSED)
    def cmd(args: tuple[str, ...]) -> None:
        sys.exit(run_list_command(what, list(args)))

    cmd.help = f"List Hubble {what}"
    return cmd


list_.add_command(_list_command("nodes", "nodes"))
list_.add_command(_list_command("nodes", "node", hidden=True))
list_.add_command(_list_command("namespaces", "namespaces"))
