"""`tendril`: one command line for the agent, the lab, and the cilium-dbg / hubble style views."""

from __future__ import annotations

import os
import sys

# gRPC's fork handlers are not needed (children exec at once) and crash forked children of a
# process whose gRPC threads are busy; read once when grpc is first imported, so set it first.
os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "false")

import click

from tendril.common.errors import TendrilError


class TendrilGroup(click.Group):
    """Turns every TendrilError (and missing privileges) into one line on stderr and exit code 1."""

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


def _register() -> None:
    from tendril.cli import (
        agent_cmd,
        connectivity_cmd,
        dbg_cmds,
        hubble_cmds,
        k8s_cmds,
        lab_cmds,
        observe_cmd,
        policy_cmds,
        relay_cmds,
        status_cmd,
        ui_cmd,
        workload_cmds,
    )

    cli.add_command(agent_cmd.agent)
    cli.add_command(lab_cmds.lab)
    for cmd in (k8s_cmds.apply, k8s_cmds.delete, k8s_cmds.get, k8s_cmds.exec_):
        cli.add_command(cmd)
    for cmd in (
        dbg_cmds.endpoint,
        dbg_cmds.bpf,
        dbg_cmds.monitor,
        dbg_cmds.config,
        dbg_cmds.service,
        dbg_cmds.fqdn,
    ):
        cli.add_command(cmd)
    cli.add_command(status_cmd.status)
    cli.add_command(observe_cmd.observe)
    cli.add_command(hubble_cmds.hubble)
    relay_cmds.register(hubble_cmds.hubble)  # tendril hubble relay|enable
    ui_cmd.register(hubble_cmds.hubble)  # tendril hubble ui
    cli.add_command(workload_cmds.workload)
    cli.add_command(policy_cmds.policy)
    cli.add_command(policy_cmds.identity)
    cli.add_command(connectivity_cmd.connectivity)


_register()


def main() -> None:
    cli(prog_name="tendril")


if __name__ == "__main__":
    main()
