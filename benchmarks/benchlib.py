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


# ---- tcx programs: detach for a no-BPF baseline, re-attach as the agent had them ----


class VethPrograms:
    """The pinned tcx links of one lab node, detached for a baseline run and attached again after.

    `globs` select links by their pin name under /sys/fs/bpf/tendril/<node>/links/: "lxc*" (the
    default) is the pods' host-side veths (tnd_from_container on ingress, tnd_to_container on
    egress); "netdev-*" is the NodePort program on the node's underlay device and "overlay-*" the
    VXLAN device's. The cgroup socket-LB links are never touched (they run per connect(), not per
    packet). detach_all() keeps a file descriptor of each link's program (by program id), so
    reattach_all() can attach the same loaded program again and pin it at the same path, as the
    agent had it: `tendril lab up` again would not, it leaves a healthy agent alone. close()
    re-attaches whatever is still detached.
    """

    def __init__(self, node: str, globs: tuple[str, ...] = ("lxc*",)) -> None:
        from tendril.common import paths

        self.node = node
        self.node_netns = f"tnd-{node}"
        self.links_dir = paths.bpf_pin_dir(node) / "links"
        self.globs = globs
        self.detached: list[tuple[Path, int, str, int]] = []  # (pin, ifindex, direction, prog fd)

    def names(self) -> list[str]:
        """Pin names of the links the globs select (attached ones only)."""
        return sorted({p.name for g in self.globs for p in self.links_dir.glob(g)})

    def detach_all(self) -> list[str]:
        """Detach (and unpin) every selected link; returns their pin names."""
        from tendril.bpf import Link

        for name in self.names():
            pin = self.links_dir / name
            link = Link.open_pinned(pin)
            fd = _prog_get_fd_by_id(link.prog_id)  # keeps the program alive for re-attaching
            if fd < 0:
                link.close()
                raise OSError(-fd, f"bpf_prog_get_fd_by_id for {pin}")
            self.detached.append((pin, link.ifindex, link.direction or "ingress", fd))
            link.detach()  # unpins too
        if not self.detached:
            raise RuntimeError(f"no pinned links matching {self.globs} in {self.links_dir}")
        return [pin.name for pin, *_ in self.detached]

    def reattach_all(self) -> None:
        """Attach the same programs again, pinned where the agent keeps them.

        tcx attach takes an ifindex of the caller's netns, so it runs on a thread inside the node netns.
        """
        from tendril.bpf import attach_tc
        from tendril.datapath.netns import call_in_netns

        while self.detached:
            pin, ifindex, direction, fd = self.detached.pop()

            def attach(
                fd: int = fd, ifindex: int = ifindex, direction: str = direction, pin: Path = pin
            ) -> None:
                attach_tc(fd, ifindex, direction, pin_path=pin).close()  # type: ignore[arg-type]

            try:
                call_in_netns(self.node_netns, attach)
            finally:
                os.close(fd)

    def close(self) -> None:
        """Re-attach what is still detached; if that fails, release the program fds and re-raise."""
        try:
            self.reattach_all()
        finally:
            while self.detached:
                os.close(self.detached.pop()[3])


def _prog_get_fd_by_id(prog_id: int) -> int:
    import ctypes

    from tendril.bpf import libbpf as lb

    fn = lb._lib.bpf_prog_get_fd_by_id
    fn.restype = ctypes.c_int
    fn.argtypes = [ctypes.c_uint32]
    return fn(prog_id)


class DatapathCounters:
    """A node's pinned tnd_metrics and tnd_lost: packets the programs counted, events lost."""

    def __init__(self, node: str) -> None:
        from tendril.bpf import TypedMap, abi
        from tendril.bpf.maps import Map
        from tendril.common import paths

        pin = paths.bpf_pin_dir(node)
        self.metrics = TypedMap(
            Map.open_pinned(pin / abi.MAP_METRICS), abi.METRICS_KEY_DTYPE, abi.METRICS_VALUE_DTYPE
        )
        self.lost = TypedMap(Map.open_pinned(pin / abi.MAP_LOST), abi.LOST_KEY_DTYPE, abi.LOST_VALUE_DTYPE)

    def packets(self) -> float:
        """Packets counted by every reason and direction (each program that sees a packet counts it)."""
        _, values = self.metrics.to_arrays()
        return float(values["packets"].sum())

    def events_lost(self) -> float:
        return float(self.lost.lookup(0).sum())

    def close(self) -> None:
        self.metrics.map.close()
        self.lost.map.close()


# ---- iperf3 inside pod network namespaces ----

IPERF3_PORT = 5201


def iperf3_client(client_netns: str, server_ip: str, seconds: int, port: int = IPERF3_PORT) -> dict:
    """One `iperf3 -c -t seconds -O 1 -J` in a netns: receiver Gbit/s, retransmits, CPU %, MSS."""
    from tendril.datapath.netns import netns_path

    argv = ["nsenter", f"--net={netns_path(client_netns)}", "--", "iperf3", "-c", server_ip]
    argv += ["-p", str(port), "-t", str(seconds), "-O", "1", "-J"]
    r = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 30)
    data = json.loads(r.stdout) if r.stdout.strip().startswith("{") else {"error": r.stderr.strip()}
    if "error" in data:
        raise RuntimeError(f"iperf3 client failed: {data['error']}")
    end = data["end"]
    cpu = end.get("cpu_utilization_percent", {})
    return {
        "gbps": end["sum_received"]["bits_per_second"] / 1e9,
        "retrans": end["sum_sent"].get("retransmits", 0),
        "cpu_client": cpu.get("host_total", float("nan")),
        "cpu_server": cpu.get("remote_total", float("nan")),
        "mss": data.get("start", {}).get("tcp_mss_default", 0),
    }


class Iperf3Server:
    """`iperf3 -s` in a netns; start() returns once a 1 s client run from `client_netns` worked."""

    def __init__(self, server_netns: str, port: int = IPERF3_PORT) -> None:
        self.netns = server_netns
        self.port = port
        self.proc: subprocess.Popen | None = None

    def start(self, client_netns: str, server_ip: str) -> dict:
        from tendril.datapath.netns import netns_path

        self.proc = subprocess.Popen(
            ["nsenter", f"--net={netns_path(self.netns)}", "--", "iperf3", "-s", "-p", str(self.port)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for attempt in range(50):  # warm-up run; also waits for the server to listen
            try:
                return iperf3_client(client_netns, server_ip, 1, self.port)
            except RuntimeError:
                if attempt == 49 or self.proc.poll() is not None:
                    raise
                time.sleep(0.2)
        raise AssertionError("unreachable")

    def stop(self) -> None:
        if self.proc is None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=5)
        self.proc = None
