"""`tendril observe`: Hubble's `hubble observe`, flag for flag and byte for byte.

Flows come from a Hubble Observer over gRPC (by default the local Tendril agent's socket) or from
a saved `-o jsonpb` file with `--input-file`. The flags are hubble's (pflag semantics, order-
sensitive `--not`), so they are handed to `tendril.hubble.cli` unparsed rather than declared as
click options; `tendril hubble observe` is the same command.
"""

from __future__ import annotations

import sys

import click

from tendril.hubble.cli.observe import run_observe

RAW_ARGS = {"ignore_unknown_options": True, "allow_extra_args": True, "help_option_names": []}


def make_observe_command(prog: str) -> click.Command:
    """An `observe` click command whose arguments are parsed the hubble way."""

    @click.command("observe", context_settings=RAW_ARGS, add_help_option=False)
    @click.argument("args", nargs=-1, type=click.UNPROCESSED)
    def observe(args: tuple[str, ...]) -> None:
        """Observe flows of a Hubble server (hubble observe compatible; --help lists the flags)."""
        sys.exit(run_observe(list(args), prog=prog))

    return observe


observe = make_observe_command("tendril observe")
