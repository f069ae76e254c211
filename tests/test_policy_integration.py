"""Identity-based policy on real traffic between lab pods, the lab's world and the node.

One lab for the module: namespace alpha (team=alpha) with a server and two clients, namespace
beta (team=beta) with a client, the lab's world namespace answering 203.0.113.0/24. Each test
applies policies, probes with real packets (TCP, UDP, ICMP; IPv4 and IPv6), and removes them.
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

PODS = """
apiVersion: v1
kind: Namespace
metadata: {name: alpha, labels: {team: alpha}}
---
apiVersion: v1
kind: Namespace
metadata: {name: beta, labels: {team: beta}}
---
apiVersion: v1
kind: Pod
metadata: {name: server, namespace: alpha, labels: {app: server}}
spec:
  containers:
    - name: http
      command: [tendril, workload, http-echo, --port, "8080"]
      ports: [{containerPort: 8080, name: http}]
    - name: alt
      command: [tendril, workload, http-echo, --port, "8200"]
      ports: [{containerPort: 8200, name: alt}]
    - name: udp
      command: [tendril, workload, udp-echo, --port, "9000"]
      ports: [{containerPort: 9000, protocol: UDP}]
---
apiVersion: v1
kind: Pod
metadata: {name: client, namespace: alpha, labels: {app: client}}
spec: {containers: [{name: c}]}
---
apiVersion: v1
kind: Pod
metadata: {name: other, namespace: alpha, labels: {app: other}}
spec: {containers: [{name: c}]}
---
apiVersion: v1
kind: Pod
metadata: {name: client, namespace: beta, labels: {app: client}}
spec: {containers: [{name: c}]}
"""

# Runs inside a pod: tries every target once and prints a JSON list of booleans.
PROBE = r"""
import json, socket, sys
out = []
for proto, ip, port in json.loads(sys.argv[1]):
    fam = socket.AF_INET6 if ":" in ip else socket.AF_INET
    try:
        if proto == "tcp":
            s = socket.create_connection((ip, port), timeout=1.0); s.close()
        elif proto == "udp":
            s = socket.socket(fam, socket.SOCK_DGRAM); s.settimeout(1.0)
            s.sendto(b"probe", (ip, port)); s.recvfrom(64)
        else:
            icmp = socket.IPPROTO_ICMP if fam == socket.AF_INET else 58
            s = socket.socket(fam, socket.SOCK_DGRAM, icmp)
            s.settimeout(1.0)
            echo = 8 if fam == socket.AF_INET else 128
            s.sendto(bytes([echo, 0, 0, 0, 0, 0, 0, 1]), (ip, 0)); s.recvfrom(64)
        out.append(True)
    except OSError:
        out.append(False)
print(json.dumps(out))
"""


class Net:
    def __init__(self, lab: Lab, pods: dict[str, dict]) -> None:
        self.lab = lab
        self.pods = pods

    def ip(self, who: str, family: int = 4) -> str:
        if who == "world":
            return "203.0.113.10"
        ips = [i["ip"] for i in self.pods[who]["status"]["podIPs"]]
        return ips[0] if family == 4 else ips[1]

    def netns(self, who: str) -> str:
        if who == "host":
            return f"tnd-{self.lab.node}"
        if who == "world":
            return f"tnd-{self.lab.name}-world"
        ns, pod = who.split("/")
        return self.lab.pod_netns(ns, pod)

    def probe(self, who: str, targets: list[tuple[str, str, int]]) -> list[bool]:
        r = subprocess.run(
            nsenter_argv(self.netns(who), [sys.executable, "-c", PROBE, json.dumps(targets)]),
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        )
        return json.loads(r.stdout)

    def can(self, who: str, proto: str, dst: str, port: int = 0, family: int = 4) -> bool:
        return self.probe(who, [(proto, self.ip(dst, family), port)])[0]


def apply_policy(lab: Lab, text: str) -> str:
    return tendril("apply", "-f", "-", "--lab", lab.name, input=text).stdout


def clear_policies(lab: Lab) -> None:
    tendril("policy", "delete", "--all", "--lab", lab.name)


@pytest.fixture(scope="module")
def net(lab: Lab) -> Iterator[Net]:
    lab.apply(PODS)
    pods = {f"alpha/{k}": v for k, v in lab.wait_running("alpha", ["server", "client", "other"]).items()}
    pods.update({f"beta/{k}": v for k, v in lab.wait_running("beta", ["client"]).items()})
    world = subprocess.Popen(
        nsenter_argv(
            f"tnd-{lab.name}-world",
            [sys.executable, "-m", "tendril.cli.main", "workload", "http-echo", "--port", "80"],
        ),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    n = Net(lab, pods)
    try:
        deadline = time.monotonic() + 20
        while not all(
            n.probe(
                "alpha/client",
                [
                    ("tcp", n.ip("alpha/server"), 8080),
                    ("tcp", n.ip("alpha/server"), 8200),
                    ("udp", n.ip("alpha/server"), 9000),
                    ("tcp", "203.0.113.10", 80),
                ],
            )
        ):
            assert time.monotonic() < deadline, "servers did not come up"
            time.sleep(0.3)
        yield n
    finally:
        world.terminate()
        world.wait(10)


@pytest.fixture(autouse=True)
def no_policies(lab: Lab, net: Net) -> Iterator[None]:
    yield
    clear_policies(lab)
    tendril("config", "PolicyAuditMode=Disabled", "--lab", lab.name)


def cnp(name: str, ns: str, spec: str) -> str:
    head = (
        f"apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {{name: {name}, namespace: {ns}}}\n"
    )
    return head + f"spec:\n{spec}"


def test_no_policy_everything_reaches_everything(net: Net) -> None:
    for who in ("alpha/client", "alpha/other", "beta/client"):
        assert net.probe(
            who,
            [
                ("tcp", net.ip("alpha/server"), 8080),
                ("udp", net.ip("alpha/server"), 9000),
                ("icmp", net.ip("alpha/server"), 0),
                ("tcp", net.ip("alpha/server", 6), 8080),
            ],
        ) == [True, True, True, True]


def test_ingress_default_deny_once_selected_and_l3_l4_allow(lab: Lab, net: Net) -> None:
    apply_policy(
        lab,
        cnp(
            "server-in",
            "alpha",
            """  endpointSelector: {matchLabels: {app: server}}
  ingress:
    - fromEndpoints: [{matchLabels: {app: client}}]
      toPorts: [{ports: [{port: "8080", protocol: TCP}]}]
""",
        ),
    )
    srv4, srv6 = net.ip("alpha/server"), net.ip("alpha/server", 6)
    assert net.probe(
        "alpha/client",
        [
            ("tcp", srv4, 8080),
            ("tcp", srv6, 8080),
            ("tcp", srv4, 8200),
            ("udp", srv4, 9000),
            ("icmp", srv4, 0),
        ],
    ) == [True, True, False, False, False]
    # same labels in another namespace do not match: a namespaced policy selects its own namespace
    assert net.probe("beta/client", [("tcp", srv4, 8080)]) == [False]
    assert net.probe("alpha/other", [("tcp", srv4, 8080), ("tcp", srv6, 8080)]) == [False, False]
    # egress of the server is not selected: it may still call out
    assert net.can("alpha/server", "tcp", "world", 80)
    eps = json.loads(tendril("endpoint", "list", "-o", "json", "--lab", lab.name).stdout)
    server = next(e for e in eps if e["pod"] == "server")
    assert server["policy_ingress"] and not server["policy_egress"]
    text = tendril("bpf", "policy", "get", str(server["id"]), "--lab", lab.name).stdout
    assert "8080/TCP" in text and "k8s:app=client" in text and "Ingress" in text


def test_drops_carry_reason_identities_and_show_in_monitor(lab: Lab, net: Net) -> None:
    apply_policy(
        lab, cnp("server-in", "alpha", "  endpointSelector: {matchLabels: {app: server}}\n  ingress: [{}]\n")
    )
    mon = subprocess.Popen(
        [sys.executable, "-m", "tendril.cli.main", "monitor", "--type", "drop", "--lab", lab.name],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert mon.stdout is not None
        mon.stdout.readline(), mon.stdout.readline()
        assert not net.can("alpha/other", "tcp", "alpha/server", 8080)
        line = mon.stdout.readline()
    finally:
        mon.terminate()
        mon.wait(10)
    assert line.startswith("xx drop (Policy denied)") and f"-> {net.ip('alpha/server')}:8080 tcp SYN" in line
    out = tendril(
        "observe", "--type", "drop", "--from-pod", "alpha/other", "-o", "json", "--lab", lab.name
    ).stdout
    flows = [json.loads(x)["flow"] for x in out.splitlines()]
    assert flows
    f = flows[-1]
    assert f["verdict"] == "DROPPED" and f["drop_reason_desc"] == "POLICY_DENIED"
    ids = json.loads(tendril("identity", "list", "-o", "json", "--lab", lab.name).stdout)
    by_app = {next((lbl for lbl in i["labels"] if lbl.startswith("k8s:app=")), ""): i["id"] for i in ids}
    assert f["source"]["identity"] == by_app["k8s:app=other"]
    assert f["destination"]["identity"] == by_app["k8s:app=server"]
    assert f["traffic_direction"] == "INGRESS"
    compact = tendril(
        "observe", "--type", "policy-verdict", "--from-pod", "alpha/other", "--lab", lab.name
    ).stdout
    assert "policy-verdict:none INGRESS DENIED" in compact


def test_egress_policy_and_world_entity(lab: Lab, net: Net) -> None:
    apply_policy(
        lab,
        cnp(
            "client-out",
            "alpha",
            """  endpointSelector: {matchLabels: {app: client}}
  egress:
    - toEndpoints: [{matchLabels: {app: server}}]
      toPorts: [{ports: [{port: "8080"}]}]
    - toEntities: [world]
      toPorts: [{ports: [{port: "80", protocol: TCP}]}]
""",
        ),
    )
    srv = net.ip("alpha/server")
    assert net.probe(
        "alpha/client",
        [
            ("tcp", srv, 8080),
            ("tcp", net.ip("alpha/server", 6), 8080),
            ("tcp", srv, 8200),
            ("udp", srv, 9000),
            ("tcp", "203.0.113.10", 80),
            ("icmp", "203.0.113.10", 0),
        ],
    ) == [True, True, False, False, True, False]
    assert net.can("alpha/other", "tcp", "alpha/server", 8200)  # not selected


def test_cidr_with_except(lab: Lab, net: Net) -> None:
    apply_policy(
        lab,
        cnp(
            "to-cidr",
            "alpha",
            """  endpointSelector: {matchLabels: {app: client}}
  egress:
    - toCIDRSet: [{cidr: 203.0.113.0/24, except: [203.0.113.128/25]}]
""",
        ),
    )
    assert net.probe(
        "alpha/client",
        [("tcp", "203.0.113.10", 80), ("tcp", "203.0.113.200", 80), ("tcp", net.ip("alpha/server"), 8080)],
    ) == [True, False, False]


def test_host_entity_and_deny_beats_allow(lab: Lab, net: Net) -> None:
    apply_policy(
        lab,
        cnp(
            "server-in",
            "alpha",
            """  endpointSelector: {matchLabels: {app: server}}
  ingress:
    - fromEntities: [cluster]
  ingressDeny:
    - fromEndpoints: [{matchLabels: {app: other}}]
""",
        ),
    )
    assert net.can("alpha/client", "tcp", "alpha/server", 8080)
    assert net.can("beta/client", "tcp", "alpha/server", 8080)
    assert not net.can("alpha/other", "tcp", "alpha/server", 8080)  # deny wins over the cluster allow
    assert net.can("host", "tcp", "alpha/server", 8080)
    out = tendril(
        "observe", "--type", "drop", "--from-pod", "alpha/other", "-o", "json", "--lab", lab.name
    ).stdout
    assert json.loads(out.splitlines()[-1])["flow"]["drop_reason_desc"] == "POLICY_DENY"
    apply_policy(
        lab,
        cnp(
            "server-in",
            "alpha",
            """  endpointSelector: {matchLabels: {app: server}}
  ingressDeny:
    - fromEntities: [host]
  ingress:
    - fromEntities: [all]
""",
        ),
    )
    assert not net.can("host", "tcp", "alpha/server", 8080)
    assert net.can("alpha/other", "tcp", "alpha/server", 8080)


def test_port_range_named_port_and_icmp(lab: Lab, net: Net) -> None:
    apply_policy(
        lab,
        cnp(
            "server-in",
            "alpha",
            """  endpointSelector: {matchLabels: {app: server}}
  ingress:
    - toPorts: [{ports: [{port: "8000", endPort: 8100, protocol: TCP}]}]
    - fromEndpoints: [{matchLabels: {app: other}}]
      toPorts: [{ports: [{port: "alt"}]}]
    - fromEndpoints: [{matchLabels: {app: client}}]
      icmps: [{fields: [{type: 8, family: IPv4}, {type: 128, family: IPv6}]}]
""",
        ),
    )
    srv4, srv6 = net.ip("alpha/server"), net.ip("alpha/server", 6)
    assert net.probe(
        "alpha/client",
        [("tcp", srv4, 8080), ("tcp", srv4, 8200), ("icmp", srv4, 0), ("icmp", srv6, 0), ("udp", srv4, 9000)],
    ) == [True, False, True, True, False]
    assert net.probe("alpha/other", [("tcp", srv4, 8080), ("tcp", srv4, 8200), ("icmp", srv4, 0)]) == [
        True,
        True,
        False,
    ]


def test_established_connection_follows_policy_changes(lab: Lab, net: Net) -> None:
    """Cilium re-checks policy on every original-direction packet: removing the allow stops an open
    connection, and restoring it lets the same connection continue."""
    script = r"""
import socket, sys, time
s = socket.create_connection((sys.argv[1], 8080), timeout=1.5)
def ask():
    try:
        s.sendall(b"GET / HTTP/1.1\r\nHost: s\r\n\r\n"); return b"200" in s.recv(4096)
    except OSError:
        return False
print("before", ask(), flush=True)
sys.stdin.readline()
print("denied", ask(), flush=True)
sys.stdin.readline()
s.settimeout(15)  # the data queued while denied arrives with TCP's retransmission backoff
print("again", ask(), flush=True)
"""
    allow = cnp(
        "server-in",
        "alpha",
        """  endpointSelector: {matchLabels: {app: server}}
  ingress: [{fromEndpoints: [{matchLabels: {app: client}}]}]
""",
    )
    apply_policy(lab, allow)
    p = subprocess.Popen(
        nsenter_argv(net.netns("alpha/client"), [sys.executable, "-c", script, net.ip("alpha/server")]),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert p.stdin is not None and p.stdout is not None
    assert p.stdout.readline().split() == ["before", "True"]
    apply_policy(lab, allow.replace("app: client", "app: nobody"))
    p.stdin.write("\n")
    p.stdin.flush()
    assert p.stdout.readline().split() == ["denied", "False"]
    apply_policy(lab, allow)
    p.stdin.write("\n")
    p.stdin.flush()
    assert p.stdout.readline().split() == ["again", "True"]
    p.wait(10)


KNP = (
    "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\n"
    "metadata: {{name: {name}, namespace: {ns}}}\nspec:\n{spec}"
)


def test_k8s_recipe_deny_all_and_allow_same_namespace(lab: Lab, net: Net) -> None:
    apply_policy(
        lab, KNP.format(name="deny-all", ns="alpha", spec="  podSelector: {}\n  policyTypes: [Ingress]\n")
    )
    assert net.probe("alpha/client", [("tcp", net.ip("alpha/server"), 8080)]) == [False]
    assert net.probe("beta/client", [("tcp", net.ip("alpha/server"), 8080)]) == [False]
    apply_policy(
        lab,
        KNP.format(
            name="same-ns", ns="alpha", spec="  podSelector: {}\n  ingress: [{from: [{podSelector: {}}]}]\n"
        ),
    )
    assert net.probe("alpha/client", [("tcp", net.ip("alpha/server"), 8080)]) == [True]
    assert net.probe("beta/client", [("tcp", net.ip("alpha/server"), 8080)]) == [False]


def test_k8s_recipe_other_namespace_by_label_and_one_port(lab: Lab, net: Net) -> None:
    apply_policy(
        lab,
        KNP.format(
            name="from-beta",
            ns="alpha",
            spec="""  podSelector: {matchLabels: {app: server}}
  ingress:
    - from: [{namespaceSelector: {matchLabels: {team: beta}}, podSelector: {matchLabels: {app: client}}}]
      ports: [{port: 8080, protocol: TCP}]
""",
        ),
    )
    srv = net.ip("alpha/server")
    assert net.probe("beta/client", [("tcp", srv, 8080), ("tcp", srv, 8200)]) == [True, False]
    assert net.probe("alpha/client", [("tcp", srv, 8080)]) == [False]


def test_k8s_recipe_deny_egress_except_dns(lab: Lab, net: Net) -> None:
    apply_policy(
        lab,
        KNP.format(
            name="egress-dns-only",
            ns="alpha",
            spec="""  podSelector: {matchLabels: {app: client}}
  policyTypes: [Egress]
  egress:
    - ports: [{port: 53, protocol: UDP}, {port: 53, protocol: TCP}]
""",
        ),
    )
    assert net.probe(
        "alpha/client", [("tcp", net.ip("alpha/server"), 8080), ("tcp", "203.0.113.10", 80)]
    ) == [False, False]
    # the DNS port is open (nothing answers on 53 in the world, but the policy lets it out)
    net.probe("alpha/client", [("udp", "203.0.113.10", 53)])
    out = tendril(
        "observe", "--from-pod", "alpha/client", "--to-port", "53", "-o", "json", "--lab", lab.name
    ).stdout
    verdicts = [json.loads(x)["flow"]["verdict"] for x in out.splitlines()]
    assert verdicts and "DROPPED" not in verdicts


def test_audit_mode_reports_and_lets_through(lab: Lab, net: Net) -> None:
    apply_policy(
        lab, cnp("server-in", "alpha", "  endpointSelector: {matchLabels: {app: server}}\n  ingress: [{}]\n")
    )
    assert not net.can("alpha/client", "tcp", "alpha/server", 8080)
    tendril("config", "PolicyAuditMode=Enabled", "--lab", lab.name)
    assert net.can("alpha/client", "tcp", "alpha/server", 8080)
    out = tendril("observe", "--type", "policy-verdict", "--verdict", "AUDIT", "--lab", lab.name).stdout
    assert "policy-verdict:none INGRESS AUDITED" in out
    eps = tendril("endpoint", "list", "--lab", lab.name).stdout
    assert "Disabled (Audit)" in eps


BAD = [
    ("kind: CiliumNetworkPolicy\nmetadata: [", "malformed YAML"),
    (cnp("x", "alpha", "  endpointSelector: {matchLabels: {app: server}}\n  ingres: []\n"), '"spec.ingres"'),
    (
        cnp("x", "alpha", "  endpointSelector: {matchExpressions: [{key: app, operator: Maybe}]}\n"),
        "operator",
    ),
    (cnp("x", "alpha", "  endpointSelector: {}\n  egress: [{toCIDR: [10.0.0.300/8]}]\n"), "toCIDR"),
    (cnp("x", "alpha", "  endpointSelector: {}\n  ingress: [{toPorts: [{ports: [{port: '0'}]}]}]\n"), "port"),
    (
        cnp("x", "alpha", "  endpointSelector: {}\n  ingress: [{toPorts: [{ports: [{port: '65536'}]}]}]\n"),
        "port",
    ),
]


@pytest.mark.parametrize(("text", "needle"), BAD)
def test_bad_policy_names_the_problem_and_changes_nothing(lab: Lab, net: Net, text: str, needle: str) -> None:
    good = cnp("server-in", "alpha", "  endpointSelector: {matchLabels: {app: server}}\n  ingress: [{}]\n")
    apply_policy(lab, good)
    before = tendril("policy", "get", "-o", "json", "--lab", lab.name).stdout
    # the bad document comes second: the good first one must not be applied either
    bundle = (
        cnp("first", "alpha", "  endpointSelector: {matchLabels: {app: client}}\n  egress: [{}]\n")
        + "\n---\n"
        + text
    )
    r = tendril("policy", "import", "-", "--lab", lab.name, input=bundle, check=False)
    assert r.returncode == 1
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0] and "<stdin>" in lines[0], r.stderr
    assert tendril("policy", "get", "-o", "json", "--lab", lab.name).stdout == before
    assert not net.can("alpha/client", "tcp", "alpha/server", 8080)  # the earlier policy still enforced
    assert net.can("alpha/client", "tcp", "world", 80)  # and the bad file's first policy is not


def test_world_entity_ingress_and_l7_rules_reported(lab: Lab, net: Net) -> None:
    srv = net.ip("alpha/server")
    apply_policy(
        lab, cnp("server-in", "alpha", "  endpointSelector: {matchLabels: {app: server}}\n  ingress: [{}]\n")
    )
    assert net.probe("world", [("tcp", srv, 8080)]) == [False]
    out = apply_policy(
        lab,
        cnp(
            "server-in",
            "alpha",
            """  endpointSelector: {matchLabels: {app: server}}
  ingress:
    - fromEntities: [world]
      toPorts:
        - ports: [{port: "8080", protocol: TCP}]
          rules: {http: [{method: GET, path: "/"}]}
""",
        ),
    )
    assert "L7 rule not yet enforced" not in out  # HTTP rules are enforced by the L7 proxy
    assert net.probe("world", [("tcp", srv, 8080)]) == [True]  # the L3/L4 part is enforced
    assert net.probe("alpha/client", [("tcp", srv, 8080)]) == [False]


def test_udp_and_ipv6_rules(lab: Lab, net: Net) -> None:
    apply_policy(
        lab,
        cnp(
            "udp-only",
            "alpha",
            """  endpointSelector: {matchLabels: {app: server}}
  ingress:
    - fromEndpoints: [{matchLabels: {app: client}}]
      toPorts: [{ports: [{port: "9000", protocol: UDP}]}]
""",
        ),
    )
    srv4, srv6 = net.ip("alpha/server"), net.ip("alpha/server", 6)
    assert net.probe(
        "alpha/client", [("udp", srv4, 9000), ("udp", srv6, 9000), ("tcp", srv4, 8080), ("tcp", srv6, 8080)]
    ) == [True, True, False, False]
    assert net.probe("alpha/other", [("udp", srv4, 9000), ("udp", srv6, 9000)]) == [False, False]
