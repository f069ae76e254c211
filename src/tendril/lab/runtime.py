"""Start and stop workload processes inside lab pods (a minimal container runtime).

A workload is an ordinary process that (1) joins the pod's cgroup, so
cgroup-attached BPF (socket LB) applies and the pod can be killed as a
unit, and (2) runs in the pod's netns.  The cgroup is joined by a
``/bin/sh`` that then execs nsenter -- so not even nsenter runs outside
it; ``nsenter --net`` (not ``ip netns exec``) keeps
/sys and therefore /sys/fs/bpf visible.  nsenter without ``--fork`` execs the
workload in place, so the pid we return is the workload's pid.

Pids are identified together with their start time (field 22 of
/proc/<pid>/stat) so a recycled pid is never signalled by mistake.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

from tendril.datapath import netns as _netns


class RuntimeErrorLab(RuntimeError):
    """A workload could not be started."""


def spawn(
    pod_netns: str,
    cgroup_path: str | os.PathLike[str],
    argv: Sequence[str],
    env: Mapping[str, str] | None = None,
    log_path: str | os.PathLike[str] | None = None,
    cwd: str | None = None,
) -> int:
    """Start ``argv`` in the pod; return its pid.  The process outlives the caller.

    ``start_new_session`` detaches it from our session and process group so a
    Ctrl-C or the agent's exit does not take it down.  ``env`` replaces the
    environment (PATH defaults to the system one).  stdout and stderr are
    appended to ``log_path`` (or discarded).
    """
    if not argv:
        raise RuntimeErrorLab("empty argv")
    if not _netns.exists(pod_netns):
        raise RuntimeErrorLab(f"pod netns {pod_netns!r} does not exist")
    procs_file = os.path.join(os.fspath(cgroup_path), "cgroup.procs")
    if not os.path.exists(procs_file):
        raise RuntimeErrorLab(
            f"cgroup {cgroup_path} does not exist (create it with cgroup.create_pod_cgroup)"
        )
    # The cgroup is joined by a shell that then execs nsenter (same pid), not by a preexec_fn:
    # Python code between fork and exec is unsafe in a process with gRPC threads (the agent), and
    # without a preexec_fn the child is started with vfork and never runs our code at all.
    joined = ["/bin/sh", "-c", 'echo 0 > "$1" && shift && exec "$@"', "sh", procs_file]
    full_env = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"}
    if env:
        full_env.update(env)
    if log_path is not None:
        Path(log_path).parent.mkdir(parents=True, exist_ok=True)
        out = open(log_path, "ab")  # noqa: SIM115 - handed to the child, closed below
    else:
        out = open(os.devnull, "wb")  # noqa: SIM115
    try:
        proc = subprocess.Popen(
            [*joined, *_netns.nsenter_argv(pod_netns, argv)],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=full_env,
            cwd=cwd,
            start_new_session=True,
            close_fds=True,
        )
    except subprocess.SubprocessError as exc:
        raise RuntimeErrorLab(f"cannot start {argv[0]!r} in {pod_netns}: {exc}") from exc
    finally:
        out.close()
    _wait_in_cgroup(proc, procs_file)
    # Callers track (pid, start_time), not the Popen; if the Popen is dropped
    # while the child runs, subprocess reaps it later, and _reap() below
    # covers the case where we wait for it ourselves.
    return proc.pid


def _wait_in_cgroup(proc: subprocess.Popen, procs_file: str, timeout: float = 5.0) -> None:
    """Return once the new process has joined its cgroup (the shell does it right after the fork),
    so callers can rely on it being there, e.g. to kill the pod as a unit."""
    deadline = time.monotonic() + timeout
    pid = str(proc.pid)
    while time.monotonic() < deadline:
        with open(procs_file) as f:
            if pid in f.read().split():
                return
        if proc.poll() is not None:
            return  # it already ran (or failed): nothing left to wait for
        time.sleep(0.002)
    raise RuntimeErrorLab(f"pid {pid} did not join {procs_file} within {timeout:.0f}s")


def process_start_time(pid: int) -> int | None:
    """Start time of ``pid`` in clock ticks since boot, or None if it does not exist."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
    except (FileNotFoundError, ProcessLookupError):
        return None
    # comm (field 2) may contain spaces and ')': split after the last ')'.
    rest = data[data.rindex(b")") + 2 :].split()
    return int(rest[19])  # field 22 overall; rest[0] is field 3


def _state(pid: int) -> str | None:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
    except (FileNotFoundError, ProcessLookupError):
        return None
    return data[data.rindex(b")") + 2 :].split()[0].decode()


def _reap(pid: int) -> None:
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)


def process_alive(pid: int, start_time: int | None = None) -> bool:
    """True if ``pid`` exists, is not a zombie, and (if given) started at ``start_time``."""
    _reap(pid)
    st = _state(pid)
    if st is None or st in ("Z", "X"):
        return False
    return start_time is None or process_start_time(pid) == start_time


def stop(pid: int, start_time: int | None, timeout: float = 5.0) -> bool:
    """SIGTERM, wait up to ``timeout``, then SIGKILL; only if the start time still matches.

    Returns True if the process is gone afterwards (or was already gone).
    ``start_time=None`` skips the pid-reuse check: use only for pids just spawned.
    """
    if not process_alive(pid, start_time):
        return True
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return True
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not process_alive(pid, start_time):
            return True
        time.sleep(0.02)
    if process_alive(pid, start_time):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            return True
    for _ in range(100):
        if not process_alive(pid, start_time):
            return True
        time.sleep(0.02)
    return False
