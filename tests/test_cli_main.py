"""The CLI's lazily loaded commands: every name resolves, and light commands stay light."""

from __future__ import annotations

import subprocess
import sys

from tendril.cli.main import COMMANDS, _load, cli


def test_every_command_resolves_to_its_name() -> None:
    for name in COMMANDS:
        cmd = _load(name)
        assert cmd is not None and cmd.name == name, name
    hubble = _load("hubble")
    assert {"observe", "status", "list", "relay", "enable", "ui"} <= set(hubble.commands)  # type: ignore[union-attr]
    assert cli.get_command(None, "nope") is None  # type: ignore[arg-type]


def test_workload_commands_do_not_load_the_agent_stack() -> None:
    """`tendril workload curl` runs inside pods for every connectivity action: no numpy/grpc/httpx."""
    code = (
        "import sys; from tendril.cli.main import cli\n"
        "try:\n    cli(['workload', '--help'], prog_name='tendril')\nexcept SystemExit:\n    pass\n"
        "print(sorted(m for m in ('numpy', 'grpc', 'httpx') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip().splitlines()[-1] == "[]"
