"""A private etcd process for a multi-node lab: start, health-check, stop by (pid, start time).

The lab runs its own etcd on free loopback ports (never 2379/2380, which a host's system etcd
may own) with a data directory it controls; restarting with the same directory and ports keeps
the data, which is how "etcd restarted, nothing lost" is tested.  Processes are identified by
pid *and* start time, so a recycled pid is never signalled.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import httpx

from tendril.kvstore.base import KvStoreError

SYSTEM_PORTS = (2379, 2380)
LOG_TAIL_LINES = 15

# etcds started by this process, kept so they are reaped (and not reported as leaked by
# subprocess) when stop_etcd ends them.  A later process stops them by (pid, start time) alone.
_children: dict[int, subprocess.Popen[bytes]] = {}


@dataclass
class EtcdProcess:
    """What the lab records about its etcd (``to_dict`` goes into the lab state file)."""

    pid: int
    start_time: int
    client_url: str  # http://127.0.0.1:PORT
    peer_url: str
    data_dir: Path
    log_file: Path

    @property
    def store_url(self) -> str:
        """The URL agents give to ``open_store`` (``etcd://127.0.0.1:PORT``)."""
        return "etcd://" + self.client_url.split("://", 1)[1]

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["data_dir"], d["log_file"] = str(self.data_dir), str(self.log_file)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> EtcdProcess:
        return cls(
            pid=int(d["pid"]),
            start_time=int(d["start_time"]),
            client_url=str(d["client_url"]),
            peer_url=str(d["peer_url"]),
            data_dir=Path(d["data_dir"]),
            log_file=Path(d["log_file"]),
        )


def etcd_binary() -> str:
    path = shutil.which("etcd")
    if path is None:
        raise KvStoreError(
            "etcd is not installed: install the Debian package etcd-server (apt-get install etcd-server)"
        )
    return path


def free_port(exclude: tuple[int, ...] = ()) -> int:
    """A currently free loopback TCP port (the kernel's choice), never etcd's well-known ones."""
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port not in SYSTEM_PORTS and port not in exclude:
            return port


def start_etcd(
    name: str,
    data_dir: Path,
    client_port: int | None = None,
    peer_port: int | None = None,
    wait: float = 15.0,
    log_file: Path | None = None,
    listen_hosts: Iterable[str] = (),
) -> EtcdProcess:
    """Start etcd in the background and wait until ``GET /health`` says true (and the member
    list names ``name``, so it is this process answering).

    The log goes to ``log_file`` (default: ``<data_dir>.log`` next to the data directory, as etcd
    warns about unknown files inside it).  On failure the process is stopped and the error
    carries the tail of its log.
    """
    binary = etcd_binary()
    data_dir = Path(data_dir)
    data_dir.mkdir(parents=True, exist_ok=True)
    os.chmod(data_dir, 0o700)  # etcd warns on anything wider; the data is the cluster state
    client_port = client_port or free_port()
    peer_port = peer_port or free_port(exclude=(client_port,))
    for port in (client_port, peer_port):  # otherwise /health could be answered by someone else
        _check_port_free(name, port)
    client_url = f"http://127.0.0.1:{client_port}"
    peer_url = f"http://127.0.0.1:{peer_port}"
    log_file = Path(log_file) if log_file else data_dir.with_name(data_dir.name + ".log")
    # Extra client addresses (e.g. a lab bridge's) for clients in other network namespaces.
    client_urls = ",".join([client_url, *(f"http://{h}:{client_port}" for h in listen_hosts)])
    argv = [
        binary,
        "--name", name,
        "--data-dir", str(data_dir),
        "--listen-client-urls", client_urls,
        "--advertise-client-urls", client_urls,
        "--listen-peer-urls", peer_url,
        "--initial-advertise-peer-urls", peer_url,
        "--initial-cluster", f"{name}={peer_url}",
        "--logger", "zap",
        "--log-level", "warn",
    ]  # fmt: skip
    # Settings from the environment (ETCD_*) would silently change this instance.
    env = {k: v for k, v in os.environ.items() if not k.startswith("ETCD_")}
    log_file.parent.mkdir(parents=True, exist_ok=True)
    with open(log_file, "ab") as out:
        try:
            popen = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,  # a Ctrl-C in the starting shell must not stop it
                close_fds=True,
            )
        except OSError as exc:
            raise KvStoreError(f"cannot start etcd {binary}: {exc.strerror}") from exc
    _children[popen.pid] = popen
    start = _process_start_time(popen.pid)
    proc = EtcdProcess(popen.pid, start or 0, client_url, peer_url, data_dir, log_file)
    deadline = time.monotonic() + wait
    with httpx.Client(timeout=1.0) as http:
        while True:
            if popen.poll() is not None:
                _children.pop(popen.pid, None)
                raise KvStoreError(
                    f"etcd {name} on {client_url} exited with status {popen.returncode} while starting"
                    f"{_log_tail(log_file)}"
                )
            if _healthy(http, client_url, name) and popen.poll() is None:
                return proc
            if time.monotonic() >= deadline:
                stop_etcd(proc)
                raise KvStoreError(
                    f"etcd {name} on {client_url} was not healthy after {wait:.0f} s{_log_tail(log_file)}"
                )
            time.sleep(0.1)


def _check_port_free(name: str, port: int) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as etcd does: TIME_WAIT is fine
        try:
            s.bind(("127.0.0.1", port))
        except OSError as exc:
            raise KvStoreError(f"cannot start etcd {name}: 127.0.0.1:{port}: {exc.strerror}") from None


def _healthy(http: httpx.Client, client_url: str, name: str) -> bool:
    """etcd answers /health with true, and it is the member we started (by name)."""
    try:
        if http.get(f"{client_url}/health").json().get("health") != "true":
            return False
        members = http.post(f"{client_url}/v3/cluster/member/list", json={}).json().get("members", [])
    except (httpx.HTTPError, ValueError, AttributeError):
        return False
    return any(m.get("name") == name for m in members)


def _as_process(proc: EtcdProcess | dict[str, Any]) -> EtcdProcess:
    return proc if isinstance(proc, EtcdProcess) else EtcdProcess.from_dict(proc)


def etcd_alive(proc: EtcdProcess | dict[str, Any]) -> bool:
    """True if the recorded etcd process still runs (same pid and start time)."""
    from tendril.lab.runtime import process_alive

    p = _as_process(proc)
    return process_alive(p.pid, p.start_time)


def stop_etcd(proc: EtcdProcess | dict[str, Any], timeout: float = 5.0) -> None:
    """SIGTERM, then SIGKILL after ``timeout``; only if the pid still has the recorded start time."""
    from tendril.lab.runtime import stop

    p = _as_process(proc)
    if not stop(p.pid, p.start_time, timeout):
        raise KvStoreError(f"etcd pid {p.pid} ({p.client_url}) did not exit after SIGKILL")
    popen = _children.get(p.pid)
    if popen is not None and popen.poll() is not None:  # ours, and gone: forget it
        del _children[p.pid]


def _process_start_time(pid: int) -> int | None:
    from tendril.lab.runtime import process_start_time

    return process_start_time(pid)


def _log_tail(log_file: Path) -> str:
    try:
        lines = log_file.read_text(errors="replace").splitlines()[-LOG_TAIL_LINES:]
    except OSError:
        return ""
    return ("; last lines of " + str(log_file) + ":\n" + "\n".join(lines)) if lines else ""
