"""The CLI layouts: cilium-dbg service list, bpf lb list (+ --revnat, --backends), kubectl get svc."""

from __future__ import annotations

from typing import Any

from tendril.loadbalancer import (
    BACKEND_TERMINATING,
    BackendEntry,
    Frontend,
    L3n4Addr,
    LBEntries,
    LBKey,
    LBState,
    LBValue,
    PodInfo,
    RevNatEntry,
    ServiceManager,
    SvcFlag,
    parse_service,
)
from tendril.loadbalancer.views import (
    flags_text,
    format_bpf_lb_backends,
    format_bpf_lb_list,
    format_bpf_lb_revnat,
    format_get_services,
    format_service_list,
    service_list_json,
)


def fixed_state() -> LBState:
    """Hand-built, so the expected text does not depend on allocation."""
    backends = {
        1: BackendEntry.of(L3n4Addr.of("10.244.1.201", 8080, "TCP")),
        2: BackendEntry.of(L3n4Addr.of("10.244.2.31", 8080, "TCP")),
        3: BackendEntry.of(L3n4Addr.of("10.244.2.40", 8080, "TCP"), BACKEND_TERMINATING),
        4: BackendEntry.of(L3n4Addr.of("fd00:10:244:1::c9", 8080, "TCP")),
    }
    frontends = (
        Frontend(L3n4Addr.of("10.96.184.22", 80, "TCP"), 9, "default/web", "", "ClusterIP",
                 int(SvcFlag.CLUSTERIP), 0, (1, 2), (3,)),
        Frontend(L3n4Addr.of("192.168.30.10", 31940, "TCP"), 10, "default/web", "", "NodePort",
                 int(SvcFlag.NODEPORT | SvcFlag.AFFINITY), 10800, (1,), ()),
        Frontend(L3n4Addr.of("0.0.0.0", 31940, "TCP"), 11, "default/web", "", "NodePort",
                 int(SvcFlag.NODEPORT), 0, (), ()),
        Frontend(L3n4Addr.of("fd00:10:96::b8", 80, "TCP"), 12, "default/web", "", "ClusterIP",
                 int(SvcFlag.CLUSTERIP | SvcFlag.MAGLEV), 0, (4,), ()),
    )  # fmt: skip
    return LBState(frontends, backends)


def test_service_list_layout() -> None:
    assert format_service_list(fixed_state()).splitlines() == [
        "ID   Frontend                  Service Type   Backend",
        "9    10.96.184.22:80/TCP       ClusterIP      1 => 10.244.1.201:8080/TCP (active)",
        "                                              2 => 10.244.2.31:8080/TCP (active)",
        "                                              3 => 10.244.2.40:8080/TCP (terminating)",
        "10   192.168.30.10:31940/TCP   NodePort       1 => 10.244.1.201:8080/TCP (active)",
        "11   0.0.0.0:31940/TCP         NodePort",
        "12   [fd00:10:96::b8]:80/TCP   ClusterIP      1 => [fd00:10:244:1::c9]:8080/TCP (active)",
    ]
    assert format_service_list(LBState()) == "ID   Frontend   Service Type   Backend"


def test_service_list_json() -> None:
    first = service_list_json(fixed_state())[0]
    assert first["id"] == 9 and first["frontend"] == "10.96.184.22:80/TCP" and first["type"] == "ClusterIP"
    assert first["flags"] == ["ClusterIP", "non-routable"]
    assert [b["state"] for b in first["backends"]] == ["active", "active", "terminating"]


def test_bpf_lb_list_layout() -> None:
    text = format_bpf_lb_list(fixed_state().entries())
    assert text.splitlines() == [
        "SERVICE ADDRESS           BACKEND ADDRESS (REVNAT_ID) (SLOT)",
        "0.0.0.0:31940/TCP         0.0.0.0:0 (11) (0) [NodePort, non-routable]",
        "10.96.184.22:80/TCP       0.0.0.0:0 (9) (0) [ClusterIP, non-routable]",
        "                          10.244.1.201:8080/TCP (9) (1)",
        "                          10.244.2.31:8080/TCP (9) (2)",
        "192.168.30.10:31940/TCP   0.0.0.0:0 (10) (0) [NodePort, sessionAffinity]",
        "                          10.244.1.201:8080/TCP (10) (1)",
        "[fd00:10:96::b8]:80/TCP   [::]:0 (12) (0) [ClusterIP, maglev, non-routable]",
        "                          [fd00:10:244:1::c9]:8080/TCP (12) (1)",
    ]


def test_bpf_lb_list_from_map_dumps() -> None:
    """Fed from raw map content: a slot whose backend is missing says so instead of crashing."""
    fe = L3n4Addr.of("10.96.0.10", 53, "UDP")
    entries = LBEntries(
        services={
            LBKey.of(fe, 0): LBValue(count=1, rev_nat_id=3, flags=1),
            LBKey.of(fe, 1): LBValue(77, 0, 3),
        },
        backends={},
        revnat={3: RevNatEntry("10.96.0.10", 53, 4)},
    )
    assert format_bpf_lb_list(entries).splitlines()[1:] == [
        "10.96.0.10:53/UDP   0.0.0.0:0 (3) (0) [ClusterIP, non-routable]",
        "                    backend 77 not found (3) (1)",
    ]


def test_revnat_and_backends_layout() -> None:
    entries = fixed_state().entries()
    assert format_bpf_lb_revnat(entries).splitlines() == [
        "ID   BACKEND ADDRESS (REVNAT_ID) (SLOT)",
        "9    10.96.184.22:80",
        "10   192.168.30.10:31940",
        "11   0.0.0.0:31940",
        "12   [fd00:10:96::b8]:80",
    ]
    assert format_bpf_lb_backends(entries).splitlines() == [
        "ID   BACKEND ADDRESS                STATE",
        "1    10.244.1.201:8080/TCP          active",
        "2    10.244.2.31:8080/TCP           active",
        "3    10.244.2.40:8080/TCP           terminating",
        "4    [fd00:10:244:1::c9]:8080/TCP   active",
    ]


def test_flags_text() -> None:
    assert flags_text(SvcFlag.CLUSTERIP, False) == "ClusterIP, non-routable"
    assert flags_text(SvcFlag.NODEPORT, False) == "NodePort"
    assert flags_text(SvcFlag.NODEPORT, True) == "NodePort, non-routable"
    assert (
        flags_text(SvcFlag.CLUSTERIP | SvcFlag.AFFINITY, False) == "ClusterIP, sessionAffinity, non-routable"
    )


def svc(name: str, **spec: Any):  # noqa: ANN201
    spec.setdefault("ports", [{"port": 80}])
    doc = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name, "namespace": "demo"},
        "spec": spec,
    }
    return parse_service(doc)


def test_get_services_and_end_to_end() -> None:
    m = ServiceManager()
    m.apply(
        [
            svc("web", type="NodePort", clusterIP="10.96.10.10",
                ports=[{"name": "http", "port": 80, "nodePort": 30080},
                       {"name": "dns", "port": 53, "protocol": "UDP", "nodePort": 30053}]),
            svc("db", clusterIP="None"),
            svc("api", clusterIP="10.96.10.11", ipFamilyPolicy="SingleStack"),
        ],
        now=1000.0,
    )  # fmt: skip
    assert format_get_services(m.list(), now=1000.0 + 300).splitlines() == [
        "NAME   TYPE        CLUSTER-IP    EXTERNAL-IP   PORT(S)                     AGE",
        "api    ClusterIP   10.96.10.11   <none>        80/TCP                      5m",
        "db     ClusterIP   None          <none>        80/TCP                      5m",
        "web    NodePort    10.96.10.10   <none>        80:30080/TCP,53:30053/UDP   5m",
    ]
    lines = format_get_services(m.list(), now=1000.0 + 3 * 86400, all_namespaces=True).splitlines()
    assert lines[0].startswith("NAMESPACE   NAME") and lines[3].split()[-1] == "3d"
    assert lines[3].split()[5] == "80:30080/TCP,53:30053/UDP"
    m.sync([PodInfo("demo", "api-1", {"app": "x"}, ipv4="10.244.1.5")], ["192.168.30.10"])
    text = format_service_list(m.state)
    assert "10.96.10.11:80/TCP" in text and "192.168.30.10:30080/TCP" in text and "[::]:30053/UDP" in text
