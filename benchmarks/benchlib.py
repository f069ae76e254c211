"""Helpers every lab benchmark shares: run the real CLI, wait for pods, read load and CPU time.

Benchmarks are scripts (`python benchmarks/<name>.py`), so this module sits beside them and is
imported by name.
"""

from __future__ import annotations

import json
import os
import random
import secrets
import subprocess
import sys
import time
from pathlib import Path

TENDRIL = str(Path(sys.executable).parent / "tendril")


def tendril(*args: str, timeout: float = 120, input: str | None = None) -> str:
    """The real CLI, as a user types it; a failure raises with its output."""
    r = subprocess.run([TENDRIL, *args], capture_output=True, text=True, timeout=timeout, input=input)
    if r.returncode != 0:
        raise RuntimeError(f"tendril {' '.join(args)} failed ({r.returncode}):\n{r.stdout}{r.stderr}")
    return r.stdout


def wait_pods(lab: str, namespace: str, names: tuple[str, ...], timeout: float = 30) -> dict[str, dict]:
    """Pods of `namespace` once all of `names` run (kubectl-style JSON items by name)."""
    deadline = time.monotonic() + timeout
    while True:
        out = tendril("get", "pods", "-n", namespace, "-o", "json", "--lab", lab)
        pods = {p["metadata"]["name"]: p for p in json.loads(out)["items"]}
        if all(pods.get(n, {}).get("status", {}).get("phase") == "Running" for n in names):
            return pods
        if time.monotonic() > deadline:
            raise RuntimeError(f"pods not running after {timeout:.0f}s: {pods}")
        time.sleep(0.2)


def loadavg() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process (all its threads)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except FileNotFoundError:
        return float("nan")
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def lab_up(prefix: str, *args: str) -> tuple[str, str]:
    """Bring up a lab named `<prefix><4 hex>` on a random 198.18.X.0/24 underlay (extra `lab up`
    flags in `args`); returns (name, underlay). Retried with another subnet only when it clashes."""
    errors = []
    for _ in range(3):
        name, underlay = prefix + secrets.token_hex(2), f"198.18.{random.randint(1, 250)}.0/24"
        try:
            tendril("lab", "up", "--name", name, "--underlay", underlay, *args)
            return name, underlay
        except RuntimeError as e:
            errors.append(str(e))
            subprocess.run([TENDRIL, "lab", "down", "--name", name], capture_output=True, timeout=120)
            if "overlaps" not in str(e):  # only an underlay clash is worth another random subnet
                break
    raise RuntimeError("lab up failed:\n" + "\n".join(errors))
