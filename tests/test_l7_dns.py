"""DNS L7 policy through the node's DNS proxy, with real queries from lab pods to kube-dns.

One lab for the module: namespace dns with a `client` pod whose egress policy allows kube-dns on
UDP and TCP 53 with `rules.dns` (matchName / matchPattern), and `other` without policy. Queries
go to 10.96.0.10 (socket LB to kube-system/coredns); allowed names are answered by the cluster
DNS, others get REFUSED from the proxy; every query and answer is a DNS L7 flow.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest

from conftest import Lab, tendril
from tendril.datapath.netns import nsenter_argv
from tendril.policy.l7 import compile_dns_match

DNS_METRICS = "dns:query;labelsContext=source_namespace,source_pod"

LAB_UP_ARGS = ["--relay-port", "0", "--tofqdns-min-ttl", "2", "--hubble-metrics", DNS_METRICS]

PODS = """
apiVersion: v1
kind: Namespace
metadata: {name: dns}
---
apiVersion: v1
kind: Pod
metadata: {name: client, namespace: dns, labels: {app: client}}
spec: {containers: [{name: c}]}
---
apiVersion: v1
kind: Pod
metadata: {name: other, namespace: dns, labels: {app: other}}
spec: {containers: [{name: c}]}
---
apiVersion: v1
kind: Pod
metadata: {name: web, namespace: dns, labels: {app: web}}
spec: {containers: [{name: c}]}
"""

FQDN_POLICY = """apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: web-fqdn, namespace: dns}
spec:
  endpointSelector: {matchLabels: {app: web}}
  egress:
    - toEndpoints:
        - matchLabels: {k8s-app: kube-dns, io.kubernetes.pod.namespace: kube-system}
      toPorts:
        - ports: [{port: "53", protocol: UDP}, {port: "53", protocol: TCP}]
          rules: {dns: [{matchPattern: "*"}]}
    - toFQDNs: [{matchName: world.lab.test}, {matchPattern: "*.world.lab.test"}]
      toPorts: [{ports: [{port: "8080", protocol: TCP}]}]
"""

HOSTS = {
    "hosts": [
        {"name": "world.lab.test", "ips": ["203.0.113.10"], "ttl": 60},
        {"name": "short.world.lab.test", "ips": ["203.0.113.11"], "ttl": 1},
        {"name": "elsewhere.lab.test", "ips": ["203.0.113.12"], "ttl": 60},
    ]
}

# Runs in a pod: optionally resolve a name (UDP, dnslib) and connect right away; prints a JSON list
# of connect results for each target "ip" (True: connected).
CONNECT = r"""
import json, socket, sys
from dnslib import DNSRecord
name, targets = sys.argv[1], sys.argv[2:]
ips = []
if name != "-":
    r = DNSRecord.parse(DNSRecord.question(name, "A").send("10.96.0.10", 53, timeout=3))
    ips = [str(x.rdata) for x in r.rr if x.rtype == 1]
out = []
for ip in targets:
    try:
        socket.create_connection((ip, 8080), timeout=1.5).close()
        out.append(True)
    except OSError:
        out.append(False)
print(json.dumps({"ips": ips, "connected": out}))
"""

POLICY = """apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: client-dns, namespace: dns}
spec:
  endpointSelector: {matchLabels: {app: client}}
  egress:
    - toEndpoints:
        - matchLabels: {k8s-app: kube-dns, io.kubernetes.pod.namespace: kube-system}
      toPorts:
        - ports: [{port: "53", protocol: UDP}, {port: "53", protocol: TCP}]
          rules:
            dns:
              - matchName: kube-dns.kube-system.svc.cluster.local
              - matchPattern: "*.dns.svc.cluster.local"
"""

# Runs in a pod: one query (dnslib) to kube-dns; prints {"rcode": .., "ips": [..]} or {"error": ..}.
QUERY = r"""
import json, sys
from dnslib import DNSRecord, RCODE
name, tcp, server = sys.argv[1], sys.argv[2] == "tcp", sys.argv[3]
try:
    raw = DNSRecord.question(name, "A").send(server, 53, tcp=tcp, timeout=3, ipv6=":" in server)
    r = DNSRecord.parse(raw)
    ips = [str(x.rdata) for x in r.rr if x.rtype == 1]
    print(json.dumps({"rcode": RCODE.get(r.header.rcode), "ips": ips}))
except Exception as e:
    print(json.dumps({"error": repr(e)}))
"""


KUBE_DNS6 = "fd00:10:96::a"


def query(lab: Lab, pod: str, name: str, tcp: bool = False, server: str = "10.96.0.10") -> dict:
    """In the pod's netns *and* cgroup (`tendril exec`): the socket LB translates the service
    address (10.96.0.10, or fd00:10:96::a over IPv6)."""
    r = tendril(
        "exec",
        "-n",
        "dns",
        "--lab",
        lab.name,
        pod,
        "--",
        sys.executable,
        "-c",
        QUERY,
        name,
        "tcp" if tcp else "udp",
        server,
    )
    return json.loads(r.stdout)


def observe(lab: Lab, *args: str) -> list[dict]:
    out = tendril("hubble", "observe", "--lab", lab.name, "-o", "json", "--last", "1000", *args).stdout
    return [json.loads(line)["flow"] for line in out.splitlines() if line.strip()]


@pytest.fixture(scope="module")
def policy(lab: Lab) -> Lab:
    lab.apply(PODS)
    lab.wait_running("dns", ["client", "other", "web"])
    lab.wait_running("kube-system", ["coredns"])
    deadline = time.monotonic() + 20
    while "rcode" not in query(lab, "other", "kube-dns.kube-system.svc.cluster.local"):
        assert time.monotonic() < deadline, "cluster DNS does not answer"
        time.sleep(0.3)
    out = tendril("apply", "-f", "-", "--lab", lab.name, input=POLICY).stdout
    assert "not yet enforced" not in out
    return lab


@pytest.mark.parametrize(
    ("pattern", "name", "want"),
    [
        ("*.example.com", "a.example.com", True),
        ("*.example.com", "A.Example.COM.", True),
        ("*.example.com", "example.com", False),
        ("*.example.com", "a.b.example.com", False),
        ("ex*.com", "example.com", True),
        ("ex*.com", "ex.com", True),
        ("ex*.com", "ex.ample.com", False),
        ("*", "anything.at.all", True),
        ("*", ".", True),
    ],
)
def test_match_pattern_semantics(pattern: str, name: str, want: bool) -> None:
    assert compile_dns_match(None, pattern, "p").matches(name) is want


def test_match_name_is_exact_and_case_insensitive() -> None:
    m = compile_dns_match("Example.COM", None, "p")
    assert m.matches("example.com.") and m.matches("EXAMPLE.com")
    assert not m.matches("a.example.com") and not m.matches("example.co")


def test_allowed_and_refused_by_name_and_pattern(policy: Lab) -> None:
    ok = query(policy, "client", "kube-dns.kube-system.svc.cluster.local")
    assert ok == {"rcode": "NOERROR", "ips": ["10.96.0.10"]}
    # allowed by the pattern, forwarded, and the cluster DNS has no such name
    assert query(policy, "client", "nothing.dns.svc.cluster.local")["rcode"] == "NXDOMAIN"
    # not allowed: the proxy answers REFUSED
    assert query(policy, "client", "kubernetes.default.svc.cluster.local")["rcode"] == "REFUSED"
    assert query(policy, "client", "a.b.dns.svc.cluster.local")["rcode"] == "REFUSED"
    # over TCP too
    assert query(policy, "client", "kube-dns.kube-system.svc.cluster.local", tcp=True)["rcode"] == "NOERROR"
    assert query(policy, "client", "kubernetes.default.svc.cluster.local", tcp=True)["rcode"] == "REFUSED"
    # over IPv6 (the pods' second nameserver): the same answers, fast (a resolver that gets
    # REFUSED on IPv4 asks the next nameserver)
    for tcp in (False, True):
        v6 = query(policy, "client", "kube-dns.kube-system.svc.cluster.local", tcp=tcp, server=KUBE_DNS6)
        assert v6 == {"rcode": "NOERROR", "ips": ["10.96.0.10"]}
        assert (
            query(policy, "client", "a.b.dns.svc.cluster.local", tcp=tcp, server=KUBE_DNS6)["rcode"]
            == "REFUSED"
        )
    # a pod without the policy is not proxied
    with policy.agent() as c:
        before = c.get("/v1/proxy")["dns"]["queries"]
    assert query(policy, "other", "kubernetes.default.svc.cluster.local")["rcode"] == "NXDOMAIN"
    with policy.agent() as c:
        assert c.get("/v1/proxy")["dns"]["queries"] == before


def test_dns_flows_in_observer_and_cli(policy: Lab) -> None:
    query(policy, "client", "kube-dns.kube-system.svc.cluster.local")
    query(policy, "client", "kubernetes.default.svc.cluster.local")
    time.sleep(0.3)
    flows = [f for f in observe(policy, "--type", "l7", "--protocol", "dns") if "dns" in f["l7"]]
    reqs = [f for f in flows if f["l7"]["type"] == "REQUEST"]
    resps = [f for f in flows if f["l7"]["type"] == "RESPONSE"]
    assert reqs[-2]["l7"]["dns"]["query"] == "kube-dns.kube-system.svc.cluster.local."
    assert reqs[-2]["l7"]["dns"]["qtypes"] == ["A"]
    assert [f["verdict"] for f in reqs[-2:]] == ["FORWARDED", "DROPPED"]
    ok, refused = resps[-2:]
    assert ok["l7"]["dns"]["ips"] == ["10.96.0.10"] and ok["l7"]["dns"]["ttl"] > 0
    assert ok["l7"]["dns"]["observation_source"] == "proxy" and ok["l7"]["dns"]["rrtypes"] == ["A"]
    assert ok["is_reply"] is True and ok["destination"]["pod_name"] == "client"
    assert ok["source"]["pod_name"] == "coredns" and ok["l4"]["UDP"]["source_port"] == 53
    assert ok["traffic_direction"] == "EGRESS"
    assert refused["l7"]["dns"]["rcode"] == 5 and refused["verdict"] == "DROPPED"
    text = tendril("hubble", "observe", "--lab", policy.name, "--last", "1000", "--protocol", "dns").stdout
    lines = text.splitlines()
    assert any(
        "dns-request proxy FORWARDED (DNS Query kube-dns.kube-system.svc.cluster.local. A)" in line
        for line in lines
    ), text
    assert any(
        'dns-response proxy FORWARDED (DNS Answer "10.96.0.10" TTL: ' in line
        and "(Proxy kube-dns.kube-system.svc.cluster.local. A))" in line
        for line in lines
    ), text
    assert any(
        "dns-response proxy DROPPED (DNS Answer RCode: REFUSED TTL: 0 (Proxy kubernetes.default" in line
        for line in lines
    ), text
    traces = observe(policy, "--type", "trace:to-proxy", "--from-pod", "dns/client")
    assert traces and traces[-1]["proxy_port"] == 15053


def test_invalid_pattern_is_rejected_and_nothing_applied(policy: Lab) -> None:
    before = tendril("policy", "get", "-o", "json", "--lab", policy.name).stdout
    bad = POLICY.replace('"*.dns.svc.cluster.local"', '"*.dns..svc[0]"')
    r = tendril("apply", "-f", "-", "--lab", policy.name, input=bad, check=False)
    assert r.returncode != 0
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    assert "spec.egress[0].toPorts[0].rules.dns[1].matchPattern" in lines[0], lines
    assert tendril("policy", "get", "-o", "json", "--lab", policy.name).stdout == before


def test_node_metrics_text(policy: Lab) -> None:
    text = subprocess.run(
        nsenter_argv(
            f"tnd-{policy.node}",
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
    assert 'tendril_proxy_redirects{protocol="dns"}' in text


def connect(lab: Lab, name: str, *ips: str) -> dict:
    r = tendril(
        "exec", "-n", "dns", "--lab", lab.name, "web", "--", sys.executable, "-c", CONNECT, name, *ips
    )
    return json.loads(r.stdout)


@pytest.fixture(scope="module")
def world(policy: Lab) -> Iterator[Lab]:
    """The world answers 8080 on every 203.0.113.0/24 address; the cluster DNS knows world names."""
    from tendril.common import paths

    hosts = paths.node_run_dir(policy.node) / "dns-hosts.json"
    hosts.write_text(json.dumps(HOSTS))
    server = subprocess.Popen(
        nsenter_argv(
            f"tnd-{policy.name}-world", [sys.executable, "-m", "http.server", "8080", "--bind", "0.0.0.0"]
        ),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 10
        while connect(policy, "-", "203.0.113.10")["connected"] != [True]:  # no policy on web yet
            assert time.monotonic() < deadline, "world server does not answer"
            time.sleep(0.3)
        tendril("apply", "-f", "-", "--lab", policy.name, input=FQDN_POLICY)
        yield policy
    finally:
        server.terminate()
        server.wait(5)
        hosts.unlink(missing_ok=True)


def fqdn_cache(lab: Lab) -> list[dict]:
    return json.loads(tendril("fqdn", "cache", "list", "--lab", lab.name, "-o", "json").stdout)


def test_tofqdns_allows_only_resolved_ips_after_resolution(world: Lab) -> None:
    # before any lookup: the world IP is not selected
    assert connect(world, "-", "203.0.113.10")["connected"] == [False]
    # resolve, then connect at once: the IP was in the policy map before the answer came back
    got = connect(world, "world.lab.test", "203.0.113.10", "203.0.113.12", "203.0.113.11")
    assert got == {"ips": ["203.0.113.10"], "connected": [True, False, False]}
    # a name the policy does not select resolves (DNS allows *) but allows nothing
    got = connect(world, "elsewhere.lab.test", "203.0.113.12")
    assert got == {"ips": ["203.0.113.12"], "connected": [False]}
    rows = [e for e in fqdn_cache(world) if e["fqdn"] == "world.lab.test."]
    assert rows and rows[0]["ips"] == ["203.0.113.10"] and rows[0]["source"] == "proxy"
    assert rows[0]["ttl"] == 60
    table = tendril("fqdn", "cache", "list", "--lab", world.name).stdout
    assert table.splitlines()[0].split() == ["Endpoint", "Source", "FQDN", "TTL", "ExpirationTime", "IPs"]
    assert "world.lab.test." in table and "203.0.113.10" in table


def test_tofqdns_ttl_expiry_removes_access(world: Lab) -> None:
    # TTL 1, raised to the lab's --tofqdns-min-ttl 2
    got = connect(world, "short.world.lab.test", "203.0.113.11")
    assert got == {"ips": ["203.0.113.11"], "connected": [True]}
    rows = [e for e in fqdn_cache(world) if e["fqdn"] == "short.world.lab.test."]
    assert rows and rows[0]["ttl"] == 2
    time.sleep(4)  # expired + the sweep (every second)
    assert not [e for e in fqdn_cache(world) if e["fqdn"] == "short.world.lab.test."]
    assert connect(world, "-", "203.0.113.11")["connected"] == [False]
    # the longer-lived name is still allowed
    assert connect(world, "-", "203.0.113.10")["connected"] == [True]


def _metrics(lab: Lab, port: int) -> list[str]:
    code = f"import urllib.request;print(urllib.request.urlopen('http://127.0.0.1:{port}/metrics').read().decode())"
    out = subprocess.run(
        nsenter_argv(f"tnd-{lab.node}", [sys.executable, "-c", code]),
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return out.splitlines()


def _value(lines: list[str], name: str, *labels: str) -> float:
    hits = [line for line in lines if line.startswith(name + "{") and all(lab in line for lab in labels)]
    assert len(hits) == 1, (name, labels, [line for line in lines if line.startswith(name)])
    return float(hits[0].rsplit(" ", 1)[1])


def test_dns_metrics(policy: Lab) -> None:
    name = "kube-dns.kube-system.svc.cluster.local."
    ctx = ('source_namespace="dns"', 'source_pod="client"', f'query="{name}"')
    lines = _metrics(policy, 9965)
    before = {
        "q": _value(lines, "hubble_dns_queries_total", *ctx, 'rcode=""', 'qtypes="A"', 'ips_returned=""')
        if any(line.startswith("hubble_dns_queries_total{") and name in line for line in lines)
        else 0.0
    }
    for _ in range(3):
        query(policy, "client", name)
    query(policy, "client", "kubernetes.default.svc.cluster.local")
    time.sleep(0.5)
    lines = _metrics(policy, 9965)
    q = _value(lines, "hubble_dns_queries_total", *ctx, 'rcode=""', 'qtypes="A"', 'ips_returned=""')
    assert q - before["q"] == 3
    # responses: the context is the flow's own (as Hubble's dns handler): the source is the server
    server = ('source_namespace="kube-system"', 'source_pod="coredns"', f'query="{name}"')
    ok = _value(
        lines, "hubble_dns_responses_total", *server, 'rcode="No Error"', 'qtypes="A"', 'ips_returned="1"'
    )
    assert ok >= 3
    refused = _value(
        lines,
        "hubble_dns_responses_total",
        'source_pod="coredns"',
        'query="kubernetes.default.svc.cluster.local."',
        'rcode="Query Refused"',
        'ips_returned="0"',
    )
    assert refused >= 1
    assert _value(lines, "hubble_dns_response_types_total", *server, 'type="A"', 'qtypes="A"') >= 3
