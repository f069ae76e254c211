"""L7 HTTP policy through the node's transparent proxy, with real traffic between lab pods.

One lab for the module: namespace shop with a server (http-echo on 8080 and 8200) and two clients
(`client` has L7 rules, `other` not). Tests apply CiliumNetworkPolicies with `rules.http`, send
HTTP from inside the pods (keep-alive, pipelining, garbage) and check the answers, the proxy's
counters, the L7 flows (Observer via `tendril hubble observe`) and the httpV2 metrics.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time

import pytest

from conftest import Lab, tendril
from tendril.datapath.netns import nsenter_argv

LAB_UP_ARGS = [
    "--relay-port",
    "0",
    "--hubble-metrics",
    "httpV2:labelsContext=source_pod,destination_pod flow",
]

PODS = """
apiVersion: v1
kind: Namespace
metadata: {name: shop}
---
apiVersion: v1
kind: Pod
metadata: {name: server, namespace: shop, labels: {app: server}}
spec:
  containers:
    - name: http
      command: [tendril, workload, http-echo, --port, "8080"]
    - name: alt
      command: [tendril, workload, http-echo, --port, "8200"]
---
apiVersion: v1
kind: Pod
metadata: {name: client, namespace: shop, labels: {app: client}}
spec: {containers: [{name: c}]}
---
apiVersion: v1
kind: Pod
metadata: {name: other, namespace: shop, labels: {app: other}}
spec: {containers: [{name: c}]}
"""

# Runs in a pod: one keep-alive connection, requests in order; prints [[status, body], ...].
KEEPALIVE = r"""
import http.client, json, sys
host, port, reqs = sys.argv[1], int(sys.argv[2]), json.loads(sys.argv[3])
c = http.client.HTTPConnection(host, port, timeout=5)
out = []
for method, path, headers in reqs:
    c.request(method, path, headers=headers)
    r = c.getresponse()
    out.append([r.status, r.read().decode("latin-1")])
print(json.dumps(out))
"""

# Runs in a pod: raw bytes on one connection, then everything read until EOF (or 3 s of silence).
RAW = r"""
import socket, sys
host, port, data = sys.argv[1], int(sys.argv[2]), sys.argv[3].encode("latin-1").decode("unicode_escape")
s = socket.create_connection((host, port), timeout=3)
s.sendall(data.encode("latin-1"))
buf = b""
try:
    while True:
        chunk = s.recv(65536)
        if not chunk:
            break
        buf += chunk
except socket.timeout:
    pass
sys.stdout.write(buf.decode("latin-1"))
"""


def cnp(name: str, body: str) -> str:
    head = f"apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {{name: {name}, namespace: shop}}"
    return f"{head}\nspec:\n{body}"


INGRESS_L7 = cnp(
    "server-l7",
    """  endpointSelector: {matchLabels: {app: server}}
  ingress:
    - fromEndpoints: [{matchLabels: {app: client}}]
      toPorts:
        - ports: [{port: "8080", protocol: TCP}]
          rules:
            http:
              - {method: GET, path: "/public.*"}
              - {method: POST, path: "/submit"}
              - {method: GET, path: "/private", headers: ["X-Token: 42"]}
              - {method: GET, path: "/flag", headerMatches: [{name: X-Flag, value: "on"}]}
              - {method: PUT, path: "/present", headers: ["X-Present"]}
    - fromEndpoints: [{matchLabels: {app: client}}]
      toPorts:
        - ports: [{port: "8200", protocol: TCP}]
    - fromEntities: [world]
      toPorts:
        - ports: [{port: "8080", protocol: TCP}]
          rules: {http: [{method: GET, path: "/world"}]}
""",
)


class Pods:
    def __init__(self, lab: Lab, pods: dict[str, dict]) -> None:
        self.lab = lab
        self.pods = pods

    def ip(self, pod: str, family: int = 4) -> str:
        ips = [i["ip"] for i in self.pods[pod]["status"]["podIPs"]]
        return ips[0] if family == 4 else ips[1]

    def run(self, pod: str, code: str, *args: str, check: bool = True) -> str:
        """Python code in a pod of shop, or in the lab's "world" or the node ("host")."""
        netns = {"world": f"tnd-{self.lab.name}-world", "host": f"tnd-{self.lab.node}"}.get(pod)
        r = subprocess.run(
            nsenter_argv(netns or self.lab.pod_netns("shop", pod), [sys.executable, "-c", code, *args]),
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        if check and r.returncode != 0:
            raise AssertionError(f"in {pod}: {r.stderr}")
        return r.stdout

    def requests(self, pod: str, reqs: list, port: int = 8080, family: int = 4) -> list[list]:
        ip = self.ip("server", family)
        return json.loads(self.run(pod, KEEPALIVE, ip, str(port), json.dumps(reqs)))

    def raw(self, pod: str, data: str, port: int = 8080) -> str:
        return self.run(pod, RAW, self.ip("server"), str(port), data)


@pytest.fixture(scope="module")
def pods(lab: Lab) -> Pods:
    lab.apply(PODS)
    p = Pods(lab, lab.wait_running("shop", ["server", "client", "other"]))
    deadline = time.monotonic() + 20
    while True:  # the servers take a moment to listen
        try:
            p.requests("other", [["GET", "/", {}]])
            p.requests("other", [["GET", "/", {}]], port=8200)
            break
        except (AssertionError, json.JSONDecodeError):
            if time.monotonic() > deadline:
                raise
            time.sleep(0.3)
    return p


@pytest.fixture(scope="module")
def l7_policy(lab: Lab, pods: Pods) -> Pods:
    out = tendril("apply", "-f", "-", "--lab", lab.name, input=INGRESS_L7).stdout
    assert "not yet enforced" not in out
    return pods


def proxy_stats(lab: Lab) -> dict:
    with lab.agent() as c:
        return c.get("/v1/proxy")


def observe(lab: Lab, *args: str) -> list[dict]:
    out = tendril("hubble", "observe", "--lab", lab.name, "-o", "json", "--last", "1000", *args).stdout
    return [json.loads(line)["flow"] for line in out.splitlines() if line.strip()]


def test_allow_and_deny_by_method_path_and_header(l7_policy: Pods) -> None:
    got = l7_policy.requests(
        "client",
        [
            ["GET", "/public", {}],
            ["GET", "/public/x?y=1", {}],
            ["POST", "/submit", {"Content-Length": "0"}],
            ["DELETE", "/public", {}],  # method not allowed
            ["GET", "/submit", {}],  # path only for POST
            ["GET", "/publi", {}],  # regex anchored
            ["GET", "/private", {}],  # header missing
            ["GET", "/private", {"X-Token": "41"}],  # wrong value
            ["GET", "/private", {"X-Token": "42"}],
            ["GET", "/flag", {"X-Flag": "on"}],
            ["GET", "/flag", {"X-Flag": "off"}],
            ["PUT", "/present", {"X-Present": "anything", "Content-Length": "0"}],
            ["PUT", "/present", {"Content-Length": "0"}],
        ],
    )
    codes = [c for c, _ in got]
    assert codes == [200, 200, 200, 403, 403, 403, 403, 403, 200, 200, 403, 200, 403]
    assert {body for c, body in got if c == 403} == {"Access denied"}


def test_keepalive_mix_and_pipelining(l7_policy: Pods) -> None:
    got = l7_policy.requests("client", [["GET", "/public", {}], ["GET", "/nope", {}]] * 5)
    assert [c for c, _ in got] == [200, 403] * 5
    pipelined = "".join(
        f"GET {p} HTTP/1.1\\r\\nHost: server\\r\\n{'Connection: close' if i == 3 else 'X-N: 1'}\\r\\n\\r\\n"
        for i, p in enumerate(["/public/1", "/denied", "/public/2", "/public/3"])
    )
    out = l7_policy.raw("client", pipelined)
    statuses = re.findall(r"HTTP/1\.1 (\d{3}) ", out)
    assert statuses == ["200", "403", "200", "200"], out


def test_peer_without_l7_rule_is_denied_at_l3_l4_and_never_proxied(lab: Lab, l7_policy: Pods) -> None:
    before = proxy_stats(lab)
    # 8200 has a plain L3/L4 rule: straight to the server, the proxy sees nothing
    assert [c for c, _ in l7_policy.requests("client", [["DELETE", "/anything", {}]], port=8200)] == [200]
    after = proxy_stats(lab)
    assert after["connections"] == before["connections"]
    assert after["requests"] == before["requests"]
    # `other` has no rule at all: dropped by the datapath (connect fails), not a 403
    r = l7_policy.run(
        "other", KEEPALIVE, l7_policy.ip("server"), "8080", '[["GET", "/public", {}]]', check=False
    )
    assert "timed out" in r or r == "" or "Errno" in r


def test_world_goes_through_the_proxy(lab: Lab, l7_policy: Pods) -> None:
    """Sources outside the node are redirected by the underlay's program (tnd_from_netdev). The
    node itself is allowed by allow-localhost (an L3 entry without redirect), as in Cilium."""
    got = l7_policy.requests("world", [["GET", "/world", {}], ["GET", "/public", {}]])
    assert [c for c, _ in got] == [200, 403]
    reqs = [f for f in observe(lab, "--type", "l7", "--http-path", "/world") if f["l7"]["type"] == "REQUEST"]
    assert reqs and reqs[-1]["source"]["identity"] == 2  # reserved:world
    r = l7_policy.run(
        "host", KEEPALIVE, l7_policy.ip("server"), "8080", '[["GET", "/world", {}]]', check=False
    )
    assert "[[200, " in r


def test_l7_flows_in_observer_and_cli(lab: Lab, l7_policy: Pods) -> None:
    l7_policy.requests("client", [["GET", "/public/flows", {}], ["DELETE", "/public/flows", {}]])
    time.sleep(0.3)
    flows = observe(lab, "--type", "l7", "--http-path", "/public/flows")
    reqs = [f for f in flows if f["l7"]["type"] == "REQUEST"]
    resps = [f for f in flows if f["l7"]["type"] == "RESPONSE"]
    assert [f["l7"]["http"]["method"] for f in reqs][-2:] == ["GET", "DELETE"]
    assert [f["verdict"] for f in reqs][-2:] == ["FORWARDED", "DROPPED"]
    assert [f["l7"]["http"]["code"] for f in resps][-2:] == [200, 403]
    ok = resps[-2]
    assert ok["Type"] == "L7" and ok["event_type"]["type"] == 129 and ok["is_reply"] is True
    assert int(ok["l7"]["latency_ns"]) > 0
    assert ok["source"]["pod_name"] == "server" and ok["destination"]["pod_name"] == "client"
    assert ok["traffic_direction"] == "INGRESS"
    assert ok["l7"]["http"]["protocol"] == "HTTP/1.1"
    assert ok["l7"]["http"]["url"] == f"http://{l7_policy.ip('server')}:8080/public/flows"
    req = reqs[-2]
    assert req["source"]["pod_name"] == "client" and req["source"]["identity"] > 255
    assert req["destination"]["identity"] == ok["source"]["identity"]
    # the compact printer, as hubble prints L7 flows
    out = tendril(
        "hubble", "observe", "--lab", lab.name, "--last", "2", "--type", "l7", "--http-path", "/public/flows"
    ).stdout.splitlines()
    assert " -> shop/server:8080 " in out[0] and " http-request DROPPED (HTTP/1.1 DELETE http://" in out[0]
    assert out[1].endswith("/public/flows))") and " <- shop/server:8080 " in out[1]
    assert " http-response DROPPED (HTTP/1.1 403 " in out[1]
    # the datapath's redirect is visible: to-proxy with the proxy port
    traces = observe(lab, "--type", "trace:to-proxy")
    assert traces and traces[-1]["proxy_port"] == 15080
    assert traces[-1]["source"]["pod_name"] == "client"
    assert observe(lab, "--type", "trace:from-proxy")


def test_malformed_request_gets_400_and_a_flow_and_the_proxy_survives_garbage(
    lab: Lab, l7_policy: Pods
) -> None:
    out = l7_policy.raw("client", "GARBAGE \\x00\\x01 nonsense\\r\\n\\r\\n")
    assert out.startswith("HTTP/1.1 400 Bad Request"), out
    l7_policy.raw("client", "\\xff" * 5000)
    l7_policy.raw("client", "GET / HTTP/1.1\\r\\nHost: x\\r\\nContent-Length: 10\\r\\n\\r\\nab")  # truncated
    time.sleep(0.3)
    errors = [f for f in observe(lab, "--type", "l7") if f["verdict"] == "ERROR"]
    assert errors and errors[-1]["l7"]["http"]["code"] == 400
    assert [c for c, _ in l7_policy.requests("client", [["GET", "/public", {}]])] == [200]


def test_ipv6_through_the_proxy(l7_policy: Pods) -> None:
    got = l7_policy.requests("client", [["GET", "/public", {}], ["GET", "/x", {}]], family=6)
    assert [c for c, _ in got] == [200, 403]


def test_httpv2_metrics(lab: Lab, l7_policy: Pods) -> None:
    l7_policy.requests("client", [["GET", "/public/m", {}]] * 3 + [["GET", "/denied/m", {}]] * 2)
    time.sleep(0.5)
    ns = f"tnd-{lab.node}"
    text = subprocess.run(
        nsenter_argv(
            ns,
            [
                sys.executable,
                "-c",
                "import urllib.request;print(urllib.request.urlopen('http://127.0.0.1:9965/metrics').read().decode())",
            ],
        ),
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    lines = [line for line in text.splitlines() if line.startswith("hubble_http_requests_total{")]
    ok = [
        line
        for line in lines
        if 'method="GET"' in line and 'status="200"' in line and 'reporter="server"' in line
    ]
    denied = [line for line in lines if 'status="403"' in line and 'reporter="server"' in line]
    assert ok and float(ok[0].rsplit(" ", 1)[1]) >= 3, lines
    assert denied and float(denied[0].rsplit(" ", 1)[1]) >= 2, lines
    assert 'source_pod="client"' in ok[0] and 'destination_pod="server"' in ok[0]
    assert 'protocol="HTTP/1.1"' in ok[0]
    assert "hubble_http_request_duration_seconds_bucket{" in text
    agent = subprocess.run(
        nsenter_argv(
            ns,
            [
                sys.executable,
                "-c",
                "import urllib.request;print(urllib.request.urlopen('http://127.0.0.1:9962/metrics').read().decode())",
            ],
        ),
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    redirects = [line for line in agent.splitlines() if line.startswith("tendril_proxy_redirects{")]
    assert redirects and float(redirects[0].rsplit(" ", 1)[1]) >= 1, redirects


def test_invalid_regex_is_rejected_and_nothing_applied(lab: Lab, l7_policy: Pods) -> None:
    before = tendril("policy", "get", "-o", "json", "--lab", lab.name).stdout
    bad = INGRESS_L7.replace('path: "/submit"', 'path: "/sub[mit"')
    r = tendril("apply", "-f", "-", "--lab", lab.name, input=bad, check=False)
    assert r.returncode != 0
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    assert "spec.ingress[0].toPorts[0].rules.http[1].path" in lines[0] and "regular expression" in lines[0]
    assert tendril("policy", "get", "-o", "json", "--lab", lab.name).stdout == before


def test_egress_l7_rule(lab: Lab, l7_policy: Pods) -> None:
    egress = cnp(
        "other-egress",
        """  endpointSelector: {matchLabels: {app: other}}
  egress:
    - toEndpoints: [{matchLabels: {app: server}}]
      toPorts:
        - ports: [{port: "8200", protocol: TCP}]
          rules: {http: [{method: GET, path: "/ok"}]}
""",
    )
    tendril("apply", "-f", "-", "--lab", lab.name, input=egress)
    try:
        # the server's ingress policy does not allow `other` on 8200: denied before any proxy
        r = l7_policy.run(
            "other", KEEPALIVE, l7_policy.ip("server"), "8200", '[["GET", "/ok", {}]]', check=False
        )
        assert "200" not in r
        tendril(
            "apply",
            "-f",
            "-",
            "--lab",
            lab.name,
            input=INGRESS_L7.replace(
                'app: client}}]\n      toPorts:\n        - ports: [{port: "8200"',
                'app: other}}]\n      toPorts:\n        - ports: [{port: "8200"',
            ),
        )
        got = l7_policy.requests("other", [["GET", "/ok", {}], ["GET", "/no", {}]], port=8200)
        assert [c for c, _ in got] == [200, 403]
        flows = observe(lab, "--type", "l7", "--from-pod", "shop/other")
        assert flows and flows[-1]["traffic_direction"] == "EGRESS"
    finally:
        tendril("delete", "-f", "-", "--lab", lab.name, input=egress, check=False)
        tendril("apply", "-f", "-", "--lab", lab.name, input=INGRESS_L7)
