"""Shared fixtures: a real lab (node netns + agent) with a unique name, always torn down."""

from __future__ import annotations

import json
import os
import random
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TENDRIL = str(Path(sys.executable).parent / "tendril")


def tendril(
    *args: str,
    check: bool = True,
    timeout: float = 60,
    env: dict[str, str] | None = None,
    input: str | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run the real CLI, as a user would."""
    r = subprocess.run(
        [TENDRIL, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
        input=input,
    )
    if check and r.returncode != 0:
        raise AssertionError(f"tendril {' '.join(args)} failed ({r.returncode}):\n{r.stdout}\n{r.stderr}")
    return r


class Lab:
    def __init__(self, name: str, underlay: str) -> None:
        self.name = name
        self.underlay = underlay
        self.node = f"{name}-node1"

    def run(self, *args: str, **kw) -> subprocess.CompletedProcess[str]:  # noqa: ANN003
        return tendril(*args, "--lab", self.name, **kw) if args[0] not in ("lab",) else tendril(*args, **kw)

    def apply(self, yaml_text: str) -> str:
        return tendril("apply", "-f", "-", "--lab", self.name, input=yaml_text).stdout

    def pods(self, namespace: str = "default") -> dict[str, dict]:
        out = tendril("get", "pods", "-n", namespace, "-o", "json", "--lab", self.name).stdout
        return {p["metadata"]["name"]: p for p in json.loads(out)["items"]}

    def wait_running(self, namespace: str, names: list[str], timeout: float = 20) -> dict[str, dict]:
        deadline = time.monotonic() + timeout
        while True:
            pods = self.pods(namespace)
            if all(n in pods and pods[n]["status"]["phase"] == "Running" for n in names):
                return pods
            if time.monotonic() > deadline:
                raise AssertionError(f"pods not running: {pods}")
            time.sleep(0.2)

    def pod_netns(self, namespace: str, pod: str) -> str:
        from tendril.datapath.podnet import pod_netns_name

        return pod_netns_name(self.node, namespace, pod)

    def in_pod(
        self, namespace: str, pod: str, code: str, timeout: float = 30
    ) -> subprocess.CompletedProcess[str]:
        """Run Python code inside the pod via `tendril exec` (netns + cgroup)."""
        return tendril(
            "exec",
            "-n",
            namespace,
            "--lab",
            self.name,
            pod,
            "--",
            sys.executable,
            "-c",
            code,
            timeout=timeout,
        )

    def flows(self, last: int = 100000) -> list[dict]:
        from tendril.cli.client import AgentClient

        with AgentClient(self.node) as c:
            return c.get("/v1/flows", last=last)

    def agent(self):  # noqa: ANN201
        from tendril.cli.client import AgentClient

        return AgentClient(self.node)


def wait_for(what: str, check, timeout: float = 30.0, interval: float = 0.3):  # noqa: ANN001, ANN201
    """Poll `check` until it returns something truthy (returned), failing after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(interval)


LOG_DIR = Path(os.environ.get("TENDRIL_TEST_LOGS", "/tmp/tendril-test-logs"))


def save_lab_logs(name: str) -> None:
    """Keep the agents' and relay's logs of a lab (they go with `lab down`) for post-mortems."""
    import shutil

    from tendril.common import paths

    dest = LOG_DIR / name
    for log in [*paths.RUN_ROOT.glob(f"{name}-node*/agent.log"), *paths.labs_dir().glob(f"{name}-*.log")]:
        dest.mkdir(parents=True, exist_ok=True)
        target = dest / (f"{log.parent.name}.log" if log.name == "agent.log" else log.name)
        shutil.copyfile(log, target)


def free_underlay() -> str:
    """A random 198.18.X.0/24 that no route of the machine uses (other labs may be up)."""
    routes = subprocess.run(["ip", "-4", "route"], capture_output=True, text=True, check=True).stdout
    used = {int(m) for m in re.findall(r"198\.18\.(\d+)\.", routes)}
    return f"198.18.{random.choice([x for x in range(1, 251) if x not in used])}.0/24"


def _require_root() -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root (network namespaces, eBPF)")


@pytest.fixture(scope="module")
def lab(request: pytest.FixtureRequest) -> Iterator[Lab]:
    """A one-node lab per test module; a module may set LAB_UP_ARGS for extra `lab up` flags."""
    _require_root()
    name = "t" + "".join(random.choices("0123456789abcdef", k=5))
    underlay = free_underlay()
    lab = Lab(name, underlay)
    try:
        extra = list(getattr(request.module, "LAB_UP_ARGS", []))
        tendril("lab", "up", "--name", name, "--underlay", underlay, *extra, timeout=120)
        yield lab
    finally:
        save_lab_logs(name)
        tendril("lab", "down", "--name", name, check=False, timeout=120)
