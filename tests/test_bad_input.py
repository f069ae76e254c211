"""Bad input gets one clear line naming the problem, and changes nothing."""

from __future__ import annotations

import random
import subprocess

from conftest import TENDRIL, Lab, free_underlay, tendril
from tendril.datapath import netns


def _as_nobody(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", TENDRIL, *args],
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_not_root_gets_one_line() -> None:
    for args in (["lab", "up", "--name", "tnobody"], ["agent", "--node", "tnobody-node1"]):
        r = _as_nobody(*args)
        assert r.returncode == 1
        lines = r.stderr.strip().splitlines()
        assert len(lines) == 1 and "needs root" in lines[0], r.stderr
    assert not netns.list_netns("tnd-tnobody")


def test_missing_bpf_object_gets_one_line_and_creates_nothing() -> None:
    name = "tb" + "".join(random.choices("0123456789abcdef", k=4))
    r = tendril("lab", "up", "--name", name, check=False, env={"TENDRIL_BPF_DIR": "/nonexistent"})
    assert r.returncode == 1
    assert r.stderr.strip().splitlines() == [
        "Error: BPF object /nonexistent/lxc.o is missing: run scripts/setup.sh (it builds bpf/)"
    ]
    assert not netns.list_netns(f"tnd-{name}")


def test_invalid_lab_name() -> None:
    r = tendril("lab", "up", "--name", "Bad_Name", check=False)
    assert r.returncode == 1 and len(r.stderr.strip().splitlines()) == 1 and "Bad_Name" in r.stderr


GOOD_AND_BAD = """
apiVersion: v1
kind: Namespace
metadata: {name: badns}
---
apiVersion: v1
kind: Pod
metadata: {name: typo, namespace: badns}
spec:
  containers:
    - name: c
      comand: [sleep, "10"]
"""


def test_manifest_with_unknown_field_names_it_and_creates_nothing(lab: Lab) -> None:
    r = tendril("apply", "-f", "-", "--lab", lab.name, input=GOOD_AND_BAD, check=False)
    assert r.returncode == 1
    assert r.stderr.strip() == "Error: <stdin>: Pod 'typo': unknown field \"spec.containers[0].comand\""
    ns = tendril("get", "namespaces", "--lab", lab.name).stdout
    assert "badns" not in ns


def test_malformed_yaml_and_missing_namespace(lab: Lab) -> None:
    r = tendril("apply", "-f", "-", "--lab", lab.name, input="kind: Pod\nmetadata: [", check=False)
    assert r.returncode == 1 and "malformed YAML" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    pod = (
        "apiVersion: v1\nkind: Pod\nmetadata: {name: x, namespace: nowhere}\n"
        "spec: {containers: [{name: c}]}\n"
    )
    r = tendril("apply", "-f", "-", "--lab", lab.name, input=pod, check=False)
    assert r.returncode == 1 and 'namespaces "nowhere" not found' in r.stderr
    r = tendril("apply", "-f", "/does/not/exist.yaml", "--lab", lab.name, check=False)
    assert r.returncode == 1 and "no such file" in r.stderr


APP = """
apiVersion: v1
kind: Namespace
metadata: {name: idem}
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: web, namespace: idem}
spec:
  replicas: 2
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec:
      containers: [{name: c}]
---
apiVersion: v1
kind: Pod
metadata: {name: solo, namespace: idem}
spec:
  containers: [{name: c}]
"""


def test_apply_twice_is_idempotent_and_delete_removes(lab: Lab) -> None:
    first = lab.apply(APP)
    assert first.splitlines() == ["namespace/idem created", "deployment.apps/web created", "pod/solo created"]
    pods1 = lab.wait_running("idem", [])
    assert len(pods1) == 3
    second = lab.apply(APP)
    assert second.splitlines() == [
        "namespace/idem unchanged",
        "deployment.apps/web unchanged",
        "pod/solo unchanged",
    ]
    pods2 = lab.pods("idem")
    assert {n: p["status"]["podIPs"] for n, p in pods1.items()} == {
        n: p["status"]["podIPs"] for n, p in pods2.items()
    }
    # scaling the deployment changes only the deployment
    third = lab.apply(APP.replace("replicas: 2", "replicas: 1"))
    assert "deployment.apps/web configured" in third and "pod/solo unchanged" in third
    assert len(lab.pods("idem")) == 2
    out = tendril("delete", "-f", "-", "--lab", lab.name, input=APP).stdout
    assert 'namespace "idem" deleted' in out
    assert lab.pods("idem") == {}
    eps = tendril("endpoint", "list", "-o", "json", "--lab", lab.name).stdout
    assert '"idem"' not in eps
    leftover = [n for n in netns.list_netns(f"tnd-{lab.node}-") if n.startswith(f"tnd-{lab.node}-idem")]
    assert leftover == []


def test_bad_agent_options_are_refused_before_anything_is_created() -> None:
    name = "tb" + "".join(random.choices("0123456789abcdef", k=4))
    for args, needle in (
        (["--bpf-lb-maglev-table-size", "100"], "must be a prime"),
        (["--hubble-metrics", "flow bogus"], "unknown Hubble metrics plugin 'bogus'"),
        (["--hubble-buffer-capacity", "1000"], "power of two minus one"),
    ):
        underlay = free_underlay()
        r = tendril("lab", "up", "--name", name, "--underlay", underlay, *args, check=False)
        assert r.returncode == 1 and needle in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
        assert not netns.list_netns(f"tnd-{name}")
