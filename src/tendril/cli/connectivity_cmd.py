"""`tendril connectivity test`: cilium-cli's connectivity test against the lab, offline."""

from __future__ import annotations

import json
import signal
import sys
from typing import Any

import click

from tendril.cli.client import DEFAULT_LAB


@click.group()
def connectivity() -> None:
    """Connectivity tests for the lab (cilium connectivity test)."""


@connectivity.command("test")
@click.option("--lab", default=DEFAULT_LAB, envvar="TENDRIL_LAB", show_default=True)
@click.option(
    "--test",
    "tests",
    multiple=True,
    metavar="REGEX",
    help="Run tests whose name (or test/scenario) matches; a leading '!' skips them (repeatable), "
    "e.g. --test no-policies --test '!/pod-to-host$'.",
)
@click.option("--json", "json_path", metavar="FILE", help="Write a machine-readable report ('-' for stdout).")
@click.option("--keep", "--no-cleanup", "keep", is_flag=True, help="Leave the test namespace deployed.")
@click.option(
    "--namespace", default="tendril-test", show_default=True, help="Namespace of the test workloads."
)
@click.option(
    "--connect-timeout", default=2.0, show_default=True, type=click.FloatRange(0.1, 60), help="Seconds."
)
@click.option(
    "--request-timeout", default=5.0, show_default=True, type=click.FloatRange(0.1, 120), help="Seconds."
)
@click.option(
    "--flow-validation",
    type=click.Choice(["strict", "warning", "disabled"]),
    default="strict",
    show_default=True,
    help="Check the flows Hubble Relay recorded for every action.",
)
@click.option(
    "--concurrency", default=8, show_default=True, type=click.IntRange(1, 64), help="Actions at once."
)
@click.option("--print-flows", is_flag=True, help="Print the flows of every action, not only of failed ones.")
@click.option("--list", "list_only", is_flag=True, help="List the tests (after --test) and exit.")
def test(
    lab: str,
    tests: tuple[str, ...],
    json_path: str | None,
    keep: bool,
    namespace: str,
    connect_timeout: float,
    request_timeout: float,
    flow_validation: str,
    concurrency: int,
    print_flows: bool,
    list_only: bool,
) -> None:
    """Deploy test workloads into the lab and check pod, service, world and host connectivity
    under a series of policies, validating every action against Hubble's flows."""
    from tendril.connectivity import report
    from tendril.connectivity.report import Console
    from tendril.connectivity.runner import Options, Runner, Selection, list_tests

    if list_only:
        for name, reason in list_tests(Selection(tests)):
            click.echo(f"{name}" + (f"  [skipped: {reason}]" if reason else ""))
        return
    out = sys.stderr if json_path == "-" else sys.stdout
    console = Console(out, lab, print_flows=print_flows)
    opts = Options(
        lab=lab,
        tests=tests,
        namespace=namespace,
        keep=keep,
        connect_timeout=connect_timeout,
        request_timeout=request_timeout,
        flow_validation=flow_validation,
        concurrency=concurrency,
        print_flows=print_flows,
    )
    runner = Runner(opts, console)
    previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        outcomes = runner.run()
    except KeyboardInterrupt:
        kept = f", namespace {namespace} kept" if keep else ", workloads"
        console.line(f"\n⚠️  Interrupted: the test's policies{kept} and the world servers were removed")
        sys.exit(130)
    finally:
        signal.signal(signal.SIGTERM, previous)
    console.summary(outcomes)
    if json_path:
        _write_json(json_path, report.to_json(outcomes, runner.meta))
    if any(o.ran and not o.ok for o in outcomes):
        sys.exit(1)


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def _write_json(path: str, doc: dict[str, Any]) -> None:
    text = json.dumps(doc, indent=2, ensure_ascii=False) + "\n"
    if path == "-":
        sys.stdout.write(text)
        sys.stdout.flush()
    else:
        with open(path, "w") as f:
            f.write(text)
