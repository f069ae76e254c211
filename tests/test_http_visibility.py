"""Proxy-free HTTP visibility: L7 flows from datapath snaps, with real traffic between lab pods.

One lab for the module: namespace web with a server (http-echo on 8080) annotated
`tendril.io/http-visibility: "true"`, a client without the annotation and namespace `quiet` whose
pods see nothing until `tendril config HTTPVisibility=quiet`. No L7 policy exists, so the proxy
must see nothing: every http flow here comes from the datapath's snaps.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import Lab, tendril, wait_for
from tendril.datapath.netns import nsenter_argv

LAB_UP_ARGS = ["--relay-port", "0", "--hubble-metrics", "httpV2:labelsContext=source_pod,destination_pod"]

PODS = """
apiVersion: v1
kind: Namespace
metadata: {name: web}
---
apiVersion: v1
kind: Namespace
metadata: {name: quiet}
---
apiVersion: v1
kind: Pod
metadata:
  name: server
  namespace: web
  labels: {app: server}
  annotations: {tendril.io/http-visibility: "true"}
spec: {containers: [{name: http, command: [tendril, workload, http-echo, --port, "8080"]}]}
---
apiVersion: v1
kind: Pod
metadata: {name: client, namespace: web, labels: {app: client}}
spec: {containers: [{name: c}]}
---
apiVersion: v1
kind: Pod
metadata: {name: qserver, namespace: quiet, labels: {app: qserver}}
spec: {containers: [{name: http, command: [tendril, workload, http-echo, --port, "8080"]}]}
"""

SERVER_DOC = PODS.split("---")[2]  # the annotated server pod
assert "name: server" in SERVER_DOC

# Runs in a pod: one keep-alive connection, requests in order; prints the statuses.
KEEPALIVE = r"""
import http.client, json, sys
host, port, reqs = sys.argv[1], int(sys.argv[2]), json.loads(sys.argv[3])
c = http.client.HTTPConnection(host, port, timeout=5)
out = []
for method, path in reqs:
    c.request(method, path, body=b"x" * 3000 if method == "POST" else None)
    r = c.getresponse()
    r.read()
    out.append(r.status)
print(json.dumps(out))
"""


class Pods:
    def __init__(self, lab: Lab, pods: dict[str, dict]) -> None:
        self.lab = lab
        self.pods = pods

    def ip(self, key: str) -> str:
        return self.pods[key]["status"]["podIPs"][0]["ip"]

    def requests(self, server: str, reqs: list, check: bool = True) -> list[int] | None:
        r = subprocess.run(
            nsenter_argv(
                self.lab.pod_netns("web", "client"),
                [sys.executable, "-c", KEEPALIVE, self.ip(server), "8080", json.dumps(reqs)],
            ),
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        if r.returncode != 0:
            if check:
                raise AssertionError(r.stderr)
            return None
        return json.loads(r.stdout)


@pytest.fixture(scope="module")
def pods(lab: Lab) -> Pods:
    lab.apply(PODS)
    running = lab.wait_running("web", ["server", "client"])
    running.update({"qserver": lab.wait_running("quiet", ["qserver"])["qserver"]})
    p = Pods(lab, running)
    wait_for("server listening", lambda: p.requests("server", [["GET", "/"]], check=False), 20)
    wait_for("qserver listening", lambda: p.requests("qserver", [["GET", "/"]], check=False), 20)
    return p


def node_metrics(lab: Lab) -> str:
    code = (
        "import urllib.request;print(urllib.request.urlopen('http://127.0.0.1:9965/metrics').read().decode())"
    )
    return subprocess.run(
        nsenter_argv(f"tnd-{lab.node}", [sys.executable, "-c", code]),
        capture_output=True,
        text=True,
        check=True,
    ).stdout


def observe(lab: Lab, *args: str) -> list[dict]:
    out = tendril("hubble", "observe", "--lab", lab.name, "-o", "json", "--last", "2000", *args).stdout
    return [json.loads(line)["flow"] for line in out.splitlines() if line.strip()]


def http_flows(lab: Lab, path: str) -> list[dict]:
    return observe(lab, "--type", "l7", "--http-path", path)


def test_unproxied_connection_gives_http_flows_with_latency(lab: Lab, pods: Pods) -> None:
    reqs = [["GET", "/vis/a"], ["POST", "/vis/b"], ["GET", "/vis/c?x=1"], ["DELETE", "/vis/d"]]
    assert pods.requests("server", reqs) == [200, 200, 200, 200]
    flows = wait_for("visibility flows", lambda: (f := http_flows(lab, "/vis/.*")) and len(f) >= 8 and f, 10)
    reqf = [f for f in flows if f["l7"]["type"] == "REQUEST"]
    resp = [f for f in flows if f["l7"]["type"] == "RESPONSE"]
    # Seen once, at the server's veth (the client did not opt in), as an ingress exchange.
    assert [f["l7"]["http"]["method"] for f in reqf] == ["GET", "POST", "GET", "DELETE"]
    assert [f["l7"]["http"]["code"] for f in resp] == [200, 200, 200, 200]
    url = f"http://{pods.ip('server')}:8080/vis/c?x=1"
    assert reqf[2]["l7"]["http"]["url"] == url and resp[2]["l7"]["http"]["url"] == url
    for f in reqf:
        assert f["verdict"] == "FORWARDED" and f["traffic_direction"] == "INGRESS"
        assert f["source"]["pod_name"] == "client" and f["destination"]["pod_name"] == "server"
        assert f["Type"] == "L7" and f["is_reply"] is False
        assert f["l7"]["http"]["protocol"] == "HTTP/1.1"
    for f in resp:
        assert f["source"]["pod_name"] == "server" and f["destination"]["pod_name"] == "client"
        assert f["is_reply"] is True and int(f["l7"]["latency_ns"]) > 0
        assert f["source"]["identity"] > 255 and f["destination"]["identity"] > 255
    with lab.agent() as c:
        assert c.get("/v1/proxy")["requests"].get("forwarded", 0) == 0  # the proxy saw none of it


def test_metrics_count_unproxied_requests(lab: Lab, pods: Pods) -> None:
    assert pods.requests("server", [["GET", "/vis/metrics"]] * 3) == [200, 200, 200]

    def served() -> float:
        text = node_metrics(lab)
        total = 0.0
        for line in text.splitlines():
            if line.startswith("hubble_http_requests_total{") and 'destination_pod="server"' in line:
                assert 'reporter="server"' in line and 'status="200"' in line, line
                total += float(line.rsplit(" ", 1)[1])
        return total

    wait_for("httpV2 metrics from visibility flows", lambda: served() >= 3, 10)


def test_namespace_opt_in_by_config_and_pod_opt_out(lab: Lab, pods: Pods) -> None:
    assert pods.requests("qserver", [["GET", "/quiet/before"]]) == [200]
    time.sleep(0.5)
    assert http_flows(lab, "/quiet/.*") == []  # not opted in: nothing
    tendril("config", "HTTPVisibility=quiet", "--lab", lab.name)
    try:
        assert pods.requests("qserver", [["GET", "/quiet/after"]]) == [200]
        flows = wait_for("flows after HTTPVisibility=quiet", lambda: http_flows(lab, "/quiet/after"), 10)
        assert {f["l7"]["type"] for f in flows} == {"REQUEST", "RESPONSE"}
        assert flows[0]["destination"]["pod_name"] == "qserver"
    finally:
        tendril("config", "HTTPVisibility=none", "--lab", lab.name)
    # the pod annotation "false" wins over its namespace
    tendril("config", "HTTPVisibility=web", "--lab", lab.name)
    try:
        patched = SERVER_DOC.replace('"true"', '"false"')
        lab.apply(patched)
        assert pods.requests("server", [["GET", "/vis/opted-out"]]) == [200]
        # the client (namespace web) now reports its side; the server (annotation) does not
        flows = wait_for("client-side flows", lambda: http_flows(lab, "/vis/opted-out"), 10)
        time.sleep(0.5)
        flows = http_flows(lab, "/vis/opted-out")
        assert {f["traffic_direction"] for f in flows} == {"EGRESS"} and len(flows) == 2
    finally:
        tendril("config", "HTTPVisibility=none", "--lab", lab.name)
        lab.apply(SERVER_DOC)


def test_bad_opt_in_values_change_nothing(lab: Lab, pods: Pods) -> None:
    bad = SERVER_DOC.replace('"true"', '"yes"')
    r = tendril("apply", "-f", "-", "--lab", lab.name, input=bad, check=False)
    assert r.returncode != 0
    assert "tendril.io/http-visibility" in r.stderr and "'yes'" in r.stderr
    r = tendril("config", "HTTPVisibility=Not_A_Namespace", "--lab", lab.name, check=False)
    assert r.returncode != 0 and "Not_A_Namespace" in r.stderr
    with lab.agent() as c:
        assert c.get("/v1/config")["HTTPVisibility"] == "none"
    # the server keeps its annotation and its flows
    assert pods.requests("server", [["GET", "/vis/still"]]) == [200]
    wait_for("flows still produced", lambda: len(http_flows(lab, "/vis/still")) == 2, 10)


def test_agent_session_outweighs_a_pod(lab: Lab, pods: Pods) -> None:
    """Every pod is a session (autogroup) of its own; the agent's session gets cpu_nice (-5) so a
    busy node still leaves it the CPU to turn snaps into flows."""
    with lab.agent() as c:
        pid = c.get("/v1/status")["pid"]
        server = next(e for e in c.get("/v1/endpoints") if e["pod"] == "server")
    assert Path(f"/proc/{pid}/autogroup").read_text().split()[-1] == "-5"
    pod_pid = int(Path(server["cgroup"], "cgroup.procs").read_text().split()[0])
    assert Path(f"/proc/{pod_pid}/autogroup").read_text().split()[-1] == "0"


def test_status_shows_proxy_and_visibility(lab: Lab, pods: Pods) -> None:
    out = tendril("status", "--lab", lab.name).stdout
    line = next(x for x in out.splitlines() if x.startswith("Proxy Status:"))
    assert "OK" in line and "0 redirects active (HTTP :15080, DNS :15053)" in line, line
    assert "HTTP visibility without proxy on 1 endpoint(s)" in line, line  # the annotated server
