"""`tendril`: one command line for the agent, the lab, and the cilium-dbg / hubble style views."""

from __future__ import annotations

import importlib
import os
import sys

# gRPC's fork handlers are not needed (children exec at once) and crash forked children of a
# process whose gRPC threads are busy; read once when grpc is first imported, so set it first.
os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "false")

import click

from tendril.common.errors import TendrilError

# Command name -> (module, attribute). Loaded on first use: `tendril workload curl` runs inside pods
# for every connectivity action and demo request, and needs none of numpy, grpc or httpx.
COMMANDS: dict[str, tuple[str, str]] = {
    "agent": ("agent_cmd", "agent"),
    "lab": ("lab_cmds", "lab"),
    "apply": ("k8s_cmds", "apply"),
    "delete": ("k8s_cmds", "delete"),
    "get": ("k8s_cmds", "get"),
    "exec": ("k8s_cmds", "exec_"),
    "endpoint": ("dbg_cmds", "endpoint"),
    "bpf": ("dbg_cmds", "bpf"),
    "monitor": ("dbg_cmds", "monitor"),
    "config": ("dbg_cmds", "config"),
    "service": ("dbg_cmds", "service"),
    "fqdn": ("dbg_cmds", "fqdn"),
    "status": ("status_cmd", "status"),
    "observe": ("observe_cmd", "observe"),
    "hubble": ("hubble_cmds", "hubble"),
    "workload": ("workload_cmds", "workload"),
    "policy": ("policy_cmds", "policy"),
    "identity": ("policy_cmds", "identity"),
    "connectivity": ("connectivity_cmd", "connectivity"),
}


def _load(name: str) -> click.Command | None:
    entry = COMMANDS.get(name)
    if entry is None:
        return None
    module = importlib.import_module(f"tendril.cli.{entry[0]}")
    cmd = getattr(module, entry[1])
    if name == "hubble" and "relay" not in cmd.commands:  # its subcommands live in other modules
        from tendril.cli import relay_cmds, ui_cmd

        relay_cmds.register(cmd)  # tendril hubble relay|enable
        ui_cmd.register(cmd)  # tendril hubble ui
    return cmd


class TendrilGroup(click.Group):
    """Loads subcommands on first use, and turns every TendrilError (and missing privileges) into
    one line on stderr and exit code 1."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(COMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        return _load(cmd_name)

    def invoke(self, ctx: click.Context):  # noqa: ANN201
        try:
            return super().invoke(ctx)
        except TendrilError as e:
            click.echo(f"Error: {e}", err=True)
            sys.exit(1)
        except PermissionError as e:
            click.echo(f"Error: permission denied ({e.filename or e}): tendril needs root", err=True)
            sys.exit(1)


@click.group(cls=TendrilGroup, context_settings={"help_option_names": ["-h", "--help"]})
def cli() -> None:
    """Tendril: an eBPF datapath with Hubble-compatible observability."""


def main() -> None:
    cli(prog_name="tendril")


if __name__ == "__main__":
    main()
