"""Where Tendril keeps its runtime files. One place, so tests can redirect everything with one variable.

Runtime state lives under /var/run (tmpfs): it has the same lifetime as the network namespaces and
bpffs pins it describes, which a reboot also removes.
"""

from __future__ import annotations

import os
from pathlib import Path

RUN_ROOT = Path(os.environ.get("TENDRIL_RUN_DIR", "/var/run/tendril"))
BPFFS_ROOT = Path("/sys/fs/bpf")


def node_run_dir(node: str) -> Path:
    return RUN_ROOT / node


def agent_socket(node: str) -> Path:
    return node_run_dir(node) / "agent.sock"


def hubble_socket(node: str) -> Path:
    return node_run_dir(node) / "hubble.sock"


def node_state_file(node: str) -> Path:
    return node_run_dir(node) / "state.json"


def node_config_file(node: str) -> Path:
    return node_run_dir(node) / "node.json"


def labs_dir() -> Path:
    return RUN_ROOT / "labs"


def lab_state_file(lab: str) -> Path:
    return labs_dir() / f"{lab}.json"


def bpf_pin_dir(node: str) -> Path:
    return BPFFS_ROOT / "tendril" / node


def bpf_object_dir() -> Path:
    """Built objects live in <checkout>/build/bpf (the package is installed editable from the checkout)."""
    env = os.environ.get("TENDRIL_BPF_DIR")
    if env:
        return Path(env)
    return Path(__file__).resolve().parents[3] / "build" / "bpf"
