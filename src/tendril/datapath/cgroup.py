"""Per-pod cgroup v2 directories.

Each pod gets ``<cgroup2 root>/tendril/<node>/<podkey>``.  The cgroup is how
socket-level BPF programs (connect4/sendmsg4, ...) find a pod's processes,
and how the lab kills every process of a pod without tracking pids.

On hybrid hosts (this project's machines) cgroup v2 is mounted at
/sys/fs/cgroup/unified; on pure v2 hosts at /sys/fs/cgroup.  Detection reads
/proc/self/mounts rather than assuming either.
"""

from __future__ import annotations

import contextlib
import errno
import os
import signal
import time
from pathlib import Path

TENDRIL_DIR = "tendril"
_CANDIDATES = ("/sys/fs/cgroup/unified", "/sys/fs/cgroup")


class CgroupError(RuntimeError):
    """cgroup v2 is unavailable or an operation on it failed."""


def cgroup2_root() -> Path:
    """Mount point of the cgroup v2 hierarchy (first cgroup2 mount found)."""
    mounts: list[str] = []
    with open("/proc/self/mounts") as f:
        for line in f:
            parts = line.split()
            if len(parts) >= 3 and parts[2] == "cgroup2":
                mounts.append(parts[1])
    for cand in _CANDIDATES:
        if cand in mounts:
            return Path(cand)
    if mounts:
        return Path(mounts[0])
    raise CgroupError(
        "no cgroup2 filesystem mounted; mount one with `mount -t cgroup2 none /sys/fs/cgroup/unified`"
    )


def _safe_component(part: str) -> str:
    if not part or "/" in part or part in (".", ".."):
        raise CgroupError(f"invalid cgroup path component {part!r}")
    return part


def pod_cgroup_path(node: str, podkey: str, root: Path | None = None) -> Path:
    """``<root>/tendril/<node>/<podkey>`` (not created)."""
    base = root if root is not None else cgroup2_root()
    return base / TENDRIL_DIR / _safe_component(node) / _safe_component(podkey)


def node_cgroup_path(node: str, root: Path | None = None) -> Path:
    """``<root>/tendril/<node>`` (not created)."""
    base = root if root is not None else cgroup2_root()
    return base / TENDRIL_DIR / _safe_component(node)


def create(path: Path) -> Path:
    """mkdir -p for a cgroup directory; idempotent."""
    path.mkdir(parents=True, exist_ok=True)
    return path


def create_pod_cgroup(node: str, podkey: str) -> Path:
    """Create (idempotently) and return the pod's cgroup directory."""
    return create(pod_cgroup_path(node, podkey))


def add_pid(path: Path, pid: int) -> None:
    """Move ``pid`` into the cgroup (writing ``cgroup.procs``)."""
    try:
        (path / "cgroup.procs").write_text(f"{pid}\n")
    except OSError as exc:
        raise CgroupError(f"cannot move pid {pid} into {path}: {exc}") from exc


def pids(path: Path) -> list[int]:
    """Pids directly in the cgroup and in all its descendants; [] if it does not exist."""
    out: list[int] = []
    if not path.is_dir():
        return out
    for dirpath, _dirs, _files in os.walk(path):
        try:
            text = Path(dirpath, "cgroup.procs").read_text()
        except (FileNotFoundError, ProcessLookupError):
            continue
        out.extend(int(x) for x in text.split())
    return out


def kill_all(path: Path, timeout: float = 5.0) -> None:
    """Kill every process in the cgroup subtree and wait until it is empty.

    ``cgroup.kill`` (kernel >= 5.14) kills atomically, racing no forks; the
    per-pid SIGKILL loop is the fallback.  Waiting matters: rmdir fails
    with EBUSY while dying processes are still listed.
    """
    if not path.is_dir():
        return
    kill_file = path / "cgroup.kill"
    if kill_file.exists():
        with contextlib.suppress(OSError):
            kill_file.write_text("1")
    deadline = time.monotonic() + timeout
    while True:
        remaining = pids(path)
        if not remaining:
            return
        for pid in remaining:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        _reap(remaining)
        if time.monotonic() > deadline:
            raise CgroupError(f"processes {remaining} in {path} did not die within {timeout}s")
        time.sleep(0.02)


def _reap(candidates: list[int]) -> None:
    """Reap any of ``candidates`` that are our own children (else they stay zombies in the cgroup)."""
    for pid in candidates:
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)


def remove(path: Path, stop_at: Path | None = None, kill: bool = True) -> None:
    """Remove the cgroup (killing its processes first) and then its empty parents.

    Parents are removed up to, but not including, ``stop_at`` (default: the
    cgroup2 root), and only while they are empty, so sibling pods survive.
    Idempotent: a missing directory is not an error.
    """
    stop = stop_at if stop_at is not None else cgroup2_root()
    if path.is_dir():
        if kill:
            kill_all(path)
        # Children first (deepest paths first).
        for dirpath, _dirs, _files in sorted(os.walk(path), key=lambda t: -len(t[0])):
            _rmdir(Path(dirpath))
    parent = path.parent
    while parent != stop and stop in parent.parents:
        try:
            parent.rmdir()
        except OSError as exc:
            if exc.errno in (errno.ENOTEMPTY, errno.EBUSY, errno.EEXIST):
                break
            if exc.errno != errno.ENOENT:
                raise
        parent = parent.parent


def _rmdir(path: Path) -> None:
    for _ in range(50):
        try:
            path.rmdir()
            return
        except FileNotFoundError:
            return
        except OSError as exc:
            if exc.errno != errno.EBUSY:
                raise
            time.sleep(0.02)
    raise CgroupError(f"cgroup {path} stayed busy; processes left: {pids(path)}")
