"""Entry points of `hubble status` and `hubble list nodes|namespaces` over raw arguments.

Like `observe`, they parse their own flags (pflag rules, HUBBLE_* environment, config.yaml) so the
server flags behave identically across commands; each returns the process exit code.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from tendril.hubble.cli import flagdefs
from tendril.hubble.cli.conn import Connection, connect
from tendril.hubble.cli.errors import CLIError
from tendril.hubble.cli.listing import list_namespaces, list_nodes
from tendril.hubble.cli.pflags import FlagSet, HelpRequested
from tendril.hubble.cli.runio import RunIO
from tendril.hubble.cli.settings import Settings
from tendril.hubble.cli.status import run_status

_GROUPS = [flagdefs.FORMATTING, flagdefs.SERVER, flagdefs.GLOBAL]


def _run(
    args: Sequence[str],
    io: RunIO,
    fs: FlagSet,
    usage: str,
    body: Callable[[Connection, str], None],
) -> int:
    try:
        fs.parse(args)
    except HelpRequested:
        io.out(usage + fs.usage(_GROUPS))
        return 0
    except CLIError as e:
        io.err(f"{e}\n")
        return 1
    conn: Connection | None = None
    try:
        conn = connect(Settings(fs, io.env))
        body(conn, str(fs["output"]))
    except CLIError as e:
        io.err(f"{e}\n")
        return 1
    except KeyboardInterrupt:
        return 130
    finally:
        if conn is not None:
            conn.close()
    return 0


def run_status_command(
    args: Sequence[str], io: RunIO | None = None, prog: str = "tendril hubble status"
) -> int:
    io = io or RunIO()
    usage = (
        "Display shows the status of the Hubble server. This is intended as a basic\n"
        f"connectivity health check.\n\nUsage:\n  {prog} [flags]\n\n"
    )
    return _run(args, io, flagdefs.status_flagset(), usage, lambda c, o: run_status(c, o, io.out))


def run_list_command(
    what: str, args: Sequence[str], io: RunIO | None = None, prog: str = "tendril hubble list"
) -> int:
    """``what`` is "nodes" or "namespaces"."""
    io = io or RunIO()
    lister = list_nodes if what == "nodes" else list_namespaces
    usage = f"List Hubble {what}\n\nUsage:\n  {prog} {what} [flags]\n\n"
    return _run(args, io, flagdefs.list_flagset(), usage, lambda c, o: io.out(lister(c, o)))
