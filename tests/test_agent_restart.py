"""kill -9 the agent: traffic keeps flowing on the pinned datapath, and a new agent catches up."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

from conftest import Lab, tendril
from tendril.common import paths
from tendril.datapath.netns import nsenter_argv

PODS = """
apiVersion: v1
kind: Pod
metadata: {name: server, labels: {app: server}}
spec:
  containers: [{name: http, command: [tendril, workload, http-echo, --port, "8080"]}]
---
apiVersion: v1
kind: Pod
metadata: {name: client, labels: {app: client}}
spec:
  containers: [{name: idle}]
"""

# One TCP connection, one request every 50 ms for DURATION seconds; any failure ends it with exit 1.
KEEPALIVE_CLIENT = """
import socket, sys, time
s = socket.create_connection(("{ip}", 8080), timeout=5)
print("connected", s.getsockname(), flush=True)
ok, end = 0, time.monotonic() + {duration}
while time.monotonic() < end:
    s.sendall(b"GET /ping HTTP/1.1\\r\\nHost: server\\r\\n\\r\\n")
    buf = b""
    while b"\\r\\n\\r\\n" not in buf:
        chunk = s.recv(4096)
        if not chunk:
            print("connection closed after", ok, flush=True); sys.exit(1)
        buf += chunk
    head, _, body = buf.partition(b"\\r\\n\\r\\n")
    lines = head.split(b"\\r\\n")
    length = int([h.split(b":")[1] for h in lines if h.lower().startswith(b"content-length")][0])
    while len(body) < length:
        body += s.recv(4096)
    assert head.startswith(b"HTTP/1.1 200"), head
    ok += 1
    time.sleep(0.05)
print("ok", ok, flush=True)
"""


def _agent_pid(lab: Lab) -> tuple[int, int]:
    rec = json.loads(paths.lab_state_file(lab.name).read_text())
    node = rec["nodes"][0]
    return node["agent_pid"], node["agent_start_time"]


def test_kill_9_agent_keeps_connection_and_catches_up_on_events(lab: Lab) -> None:
    lab.apply(PODS)
    pods = lab.wait_running("default", ["server", "client"])
    server_ip = pods["server"]["status"]["podIP"]
    client_ns = lab.pod_netns("default", "client")
    time.sleep(1.0)  # server bind
    client = subprocess.Popen(
        nsenter_argv(client_ns, [sys.executable, "-c", KEEPALIVE_CLIENT.format(ip=server_ip, duration=8)]),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        assert client.stdout is not None
        assert client.stdout.readline().startswith("connected")
        before_ids = _prog_ids(lab)
        pid, _ = _agent_pid(lab)
        time.sleep(1.0)
        os.kill(pid, signal.SIGKILL)
        killed_at = time.time_ns()
        time.sleep(0.5)
        # traffic while no agent runs: new UDP flows whose events must wait in the pinned ring buffer
        subprocess.run(
            nsenter_argv(
                client_ns,
                [
                    sys.executable,
                    "-c",
                    f"""
import socket
for port in range(43990, 44000):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("", port))
    s.sendto(b"x", ("{server_ip}", 9))
""",
                ],
            ),
            check=True,
            timeout=30,
        )
        time.sleep(1.0)
        restarted_at = time.time_ns()
        tendril("lab", "up", "--name", lab.name, "--underlay", lab.underlay, timeout=60)
        new_pid, _ = _agent_pid(lab)
        assert new_pid != pid
        out, _ = client.communicate(timeout=30)
    finally:
        if client.poll() is None:
            client.kill()
    assert client.returncode == 0, out
    assert int(out.split()[-1]) > 50, out  # the connection carried requests before, during and after
    flows = [f for f in lab.flows() if f["l4_proto"] == 17 and 43990 <= f["source_port"] < 44000]
    ports = {f["source_port"] for f in flows}
    assert ports == set(range(43990, 44000)), flows
    assert all(killed_at < f["time_ns"] < restarted_at for f in flows)
    assert all(f["source"]["pod_name"] == "client" for f in flows)
    # the new agent switched the pinned links to its freshly loaded programs
    after_ids = _prog_ids(lab)
    assert set(after_ids) == set(before_ids) and all(after_ids[k] != before_ids[k] for k in after_ids)
    with lab.agent() as a:
        assert a.get("/v1/status")["events_lost"] == 0


def _prog_ids(lab: Lab) -> dict[str, int]:
    from tendril.bpf import Link

    ids = {}
    for pin in sorted((paths.bpf_pin_dir(lab.node) / "links").iterdir()):
        link = Link.open_pinned(pin)
        ids[pin.name] = link.prog_id
        link.close()
    return ids
