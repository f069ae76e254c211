"""The cilium-dbg style views and live monitor, on a real lab with real traffic."""

from __future__ import annotations

import json
import subprocess
import time

import pytest

from conftest import TENDRIL, Lab, free_underlay, tendril
from tendril.common import paths
from tendril.datapath import cgroup, netns

PODS = """
apiVersion: v1
kind: Pod
metadata: {name: echo, labels: {app: echo, tier: backend}}
spec:
  containers: [{name: udp, command: [tendril, workload, udp-echo, --port, "9000"]}]
---
apiVersion: v1
kind: Pod
metadata: {name: probe, labels: {app: probe}}
spec:
  containers: [{name: idle}]
"""


@pytest.fixture(scope="module")
def pods(lab: Lab) -> dict[str, dict]:
    lab.apply(PODS)
    pods = lab.wait_running("default", ["echo", "probe"])
    time.sleep(0.5)
    return pods


def _udp(lab: Lab, dst: str, sport: int, n: int) -> None:
    lab.in_pod(
        "default",
        "probe",
        f"""
import socket
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(("", {sport})); s.settimeout(2)
for _ in range({n}):
    s.sendto(b"ping", ("{dst}", 9000)); s.recvfrom(64)
""",
    )


def _count(lab: Lab, sport: int, expect: int | None = None, timeout: float = 5.0) -> int:
    """Flows of one UDP port; with `expect`, waits (bounded) for the agent to drain that many."""
    deadline = time.monotonic() + timeout
    while True:
        n = sum(
            1
            for f in lab.flows()
            if f["l4_proto"] == 17 and sport in (f["source_port"], f["destination_port"])
        )
        if expect is None or n >= expect or time.monotonic() > deadline:
            return n
        time.sleep(0.1)


def test_endpoint_list_layout(lab: Lab, pods: dict) -> None:
    out = tendril("endpoint", "list", "--lab", lab.name).stdout.splitlines()
    assert out[0].split() == [
        "ENDPOINT",
        "POLICY",
        "(ingress)",
        "POLICY",
        "(egress)",
        "IDENTITY",
        "LABELS",
        "(source:key[=value])",
        "IPv6",
        "IPv4",
        "STATUS",
    ]
    assert out[1].split() == ["ENFORCEMENT", "ENFORCEMENT"]
    echo_ip = pods["echo"]["status"]["podIP"]
    row = next(line for line in out if echo_ip in line)
    assert row.split()[1:3] == ["Disabled", "Disabled"] and row.split()[-1] == "ready"
    assert "k8s:app=echo" in row
    text = "\n".join(out)
    assert "k8s:tier=backend" in text and "k8s:io.kubernetes.pod.namespace=default" in text


def test_ct_list_shows_both_directions(lab: Lab, pods: dict) -> None:
    echo = pods["echo"]["status"]["podIP"]
    _udp(lab, echo, 45100, 3)
    lines = [
        ln
        for ln in tendril("bpf", "ct", "list", "global", "--lab", lab.name).stdout.splitlines()
        if f":45100 -> {echo}:9000" in ln
    ]
    assert len(lines) == 2
    assert {ln.split()[:2][1] for ln in lines} == {"OUT", "IN"}
    assert all("TxPackets=3" in ln and "RxPackets=3" in ln and "SeenReply" in ln for ln in lines)


def test_monitor_streams_trace_and_drop_events(lab: Lab, pods: dict) -> None:
    echo = pods["echo"]["status"]["podIP"]
    mon = subprocess.Popen(
        [TENDRIL, "monitor", "--type", "trace", "--lab", lab.name], stdout=subprocess.PIPE, text=True
    )
    try:
        assert mon.stdout is not None
        assert mon.stdout.readline().startswith("Listening for events on ")
        assert mon.stdout.readline().strip() == "Press Ctrl-C to quit"
        _udp(lab, echo, 45200, 1)
        seen = []
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and len(seen) < 2:
            line = mon.stdout.readline()
            if ":45200 -> " in line or "-> " in line and ":45200 udp" in line:
                seen.append(line)
        assert any(
            line.startswith("<- endpoint ") and "state new" in line and f":45200 -> {echo}:9000 udp" in line
            for line in seen
        ), seen
        assert any(line.startswith("-> endpoint ") for line in seen), seen
    finally:
        mon.terminate()
        mon.wait(timeout=10)


def test_monitor_aggregation_switch(lab: Lab, pods: dict) -> None:
    echo = pods["echo"]["status"]["podIP"]
    n = 10
    try:
        tendril("config", "MonitorAggregationLevel=none", "--lab", lab.name)  # no aggregation: every packet
        _udp(lab, echo, 45300, n)
        # each datagram and each echo is seen leaving one pod and entering the other
        assert _count(lab, 45300, expect=4 * n) == 4 * n
        tendril("config", "MonitorAggregationLevel=maximum", "--lab", lab.name)  # drops only
        _udp(lab, echo, 45301, n)
        time.sleep(0.3)
        assert _count(lab, 45301) == 0
    finally:
        tendril("config", "MonitorAggregationLevel=medium", "--lab", lab.name)
    _udp(lab, echo, 45302, n)
    assert _count(lab, 45302, expect=4) == 4  # new + first reply, at each of the two endpoints
    time.sleep(0.3)
    assert _count(lab, 45302) == 4
    bad = tendril("config", "Bogus=1", "--lab", lab.name, check=False)
    assert bad.returncode == 1 and "unknown option 'Bogus'" in bad.stderr


def test_status_and_exec(lab: Lab, pods: dict) -> None:
    full = json.loads(tendril("status", "-o", "json", "--lab", lab.name).stdout)
    st = full["nodes"][0]
    assert full["ok"] and st["ok"] and st["endpoints"] >= 2 and st["events_lost"] == 0
    assert full["kvstore"] == {"endpoint": "embedded", "ok": True}
    r = tendril("exec", "--lab", lab.name, "probe", "--", "cat", "/proc/self/cgroup")
    assert "tendril" in r.stdout and "probe" in r.stdout


def test_lab_down_removes_everything() -> None:
    """A second, throw-away lab: after `lab down` no netns, link, cgroup, pin or file of it is left."""
    import random

    name = "td" + "".join(random.choices("0123456789abcdef", k=4))
    node = f"{name}-node1"
    try:
        tendril("lab", "up", "--name", name, "--underlay", free_underlay(), timeout=120)
        tendril("apply", "-f", "-", "--lab", name, input=PODS)
        assert netns.list_netns(f"tnd-{name}-")
        assert paths.bpf_pin_dir(node).exists()
    finally:
        tendril("lab", "down", "--name", name, timeout=120)
    assert netns.list_netns(f"tnd-{name}-") == []
    links = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True).stdout
    assert f"{name}-br" not in links and f"{name}-n1" not in links
    assert not paths.bpf_pin_dir(node).exists()
    assert not paths.node_run_dir(node).exists() and not paths.lab_state_file(name).exists()
    assert not (cgroup.cgroup2_root() / "tendril" / node).exists()
