"""Load-balancer state from Services + pods: frontends, backends, IDs, slots, Maglev, and diffs whose
every intermediate step leaves the (simulated) maps consistent."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pytest

from tendril.common.errors import NotFoundError
from tendril.loadbalancer import (
    BACKEND_ACTIVE,
    BACKEND_TERMINATING,
    DELETE,
    MAP_BACKENDS,
    MAP_MAGLEV,
    MAP_REVNAT,
    MAP_SERVICES,
    UPSERT,
    L3n4Addr,
    LBDiff,
    LBEntries,
    LBKey,
    PodInfo,
    PodPort,
    ServiceCapacityError,
    ServiceManager,
    ServiceValidationError,
    SvcFlag,
    check_target_ports,
    parse_service,
)

NODES = ["192.168.30.10", "fd00:30::10"]


def service(name: str = "web", ns: str = "default", annotations: dict | None = None, **spec: Any):  # noqa: ANN201
    spec.setdefault("selector", {"app": name})
    spec.setdefault("ports", [{"port": 80, "targetPort": 8080}])
    meta: dict[str, Any] = {"name": name, "namespace": ns}
    if annotations:
        meta["annotations"] = annotations
    return parse_service({"apiVersion": "v1", "kind": "Service", "metadata": meta, "spec": spec}, "t.yaml")


def pod(name: str, n: int, app: str = "web", ns: str = "default", **kw: Any) -> PodInfo:
    kw.setdefault("ipv4", f"10.244.1.{n}")
    kw.setdefault("ipv6", f"fd00:10:244:1::{n:x}")
    return PodInfo(ns, name, {"app": app}, **kw)


def manager(*services: Any, **kw: Any) -> ServiceManager:
    m = ServiceManager(**kw)
    m.apply(services, now=1.0)
    return m


# ---- a simulated kernel: apply ops one by one and check what a lookup could see after each ----


def copy_entries(e: LBEntries) -> LBEntries:
    return LBEntries(dict(e.services), dict(e.backends), dict(e.revnat), dict(e.maglev))


def assert_consistent(k: LBEntries) -> None:
    for key, v in k.services.items():
        if key.slot != 0:
            continue
        assert v.rev_nat_id in k.revnat, f"{key}: no rev-NAT entry {v.rev_nat_id}"
        for s in range(1, v.count + 1):
            slot = k.services.get(LBKey.of(key.frontend, s))
            assert slot is not None, f"{key.frontend}: count {v.count} but slot {s} missing"
            be = k.backends.get(slot.backend_id)
            assert be is not None, f"{key.frontend} slot {s}: backend {slot.backend_id} missing"
            assert be.state == BACKEND_ACTIVE, f"{key.frontend} slot {s}: offers a terminating backend"
            assert be.family == key.family
        if v.flags & SvcFlag.MAGLEV and v.count:
            table = k.maglev.get(v.rev_nat_id)
            assert table is not None, f"{key.frontend}: Maglev without a table"
            for bid in np.unique(table):
                assert k.backends[int(bid)].state == BACKEND_ACTIVE


def apply_ops(kernel: LBEntries, diff: LBDiff) -> LBEntries:
    k = copy_entries(kernel)
    maps = {MAP_SERVICES: k.services, MAP_BACKENDS: k.backends, MAP_REVNAT: k.revnat, MAP_MAGLEV: k.maglev}
    for op in diff:
        if op.op == UPSERT:
            maps[op.map][op.key] = op.value
        else:
            assert op.op == DELETE
            del maps[op.map][op.key]  # deleting what is not there is a bug in the diff
        assert_consistent(k)
    return k


def assert_same(k: LBEntries, want: LBEntries) -> None:
    assert k.services == want.services
    assert k.backends == want.backends
    assert k.revnat == want.revnat
    assert k.maglev.keys() == want.maglev.keys()
    for rid, table in want.maglev.items():
        assert np.array_equal(k.maglev[rid], table)


class Cluster:
    """A manager plus the simulated kernel it drives."""

    def __init__(self, m: ServiceManager) -> None:
        self.m = m
        self.kernel = LBEntries()

    def sync(self, pods: list[PodInfo], nodes: list[str] = NODES) -> LBDiff:
        diff = self.m.sync(pods, nodes)
        self.kernel = apply_ops(self.kernel, diff)
        assert_same(self.kernel, self.m.state.entries())
        return diff


# ---- endpoints ----------------------------------------------------------------------------------


def test_selector_namespace_and_readiness() -> None:
    m = manager(service(ipFamilyPolicy="SingleStack"))
    pods = [
        pod("web-1", 5),
        pod("web-2", 6, ready=False),  # not ready: no backend
        pod("web-3", 7, ns="other"),  # same labels, other namespace
        pod("api-1", 8, app="api"),
        PodInfo("default", "web-4", {"app": "web", "tier": "x"}, ipv4="10.244.1.9"),  # extra labels fine
    ]
    m.sync(pods, NODES)
    (fe,) = m.state.frontends
    assert fe.type == "ClusterIP" and fe.address.family == 4
    assert [str(m.state.backends[b].address) for b in fe.active] == [
        "10.244.1.5:8080/TCP",
        "10.244.1.9:8080/TCP",
    ]
    assert fe.flags == SvcFlag.CLUSTERIP


def test_service_without_selector_or_headless_has_no_backends() -> None:
    no_sel = parse_service(
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": "ext"},
            "spec": {"ports": [{"port": 80}]},
        }
    )
    m = manager(no_sel, service("db", clusterIP="None"))
    m.sync([pod("web-1", 5), pod("db-1", 6, app="db")], NODES)
    assert [f.service for f in m.state.frontends] == ["default/ext", "default/ext"]  # headless: none
    assert all(f.active == () for f in m.state.frontends)


def test_named_target_ports() -> None:
    m = manager(
        service(
            ports=[
                {"name": "http", "port": 80, "targetPort": "http"},
                {"name": "dns", "port": 53, "protocol": "UDP", "targetPort": "dns"},
            ],
            ipFamilyPolicy="SingleStack",
        )
    )
    pods = [
        pod("web-1", 5, ports=(PodPort(8080, "http"), PodPort(5353, "dns", "UDP"))),
        pod("web-2", 6, ports=(PodPort(9090, "http"), PodPort(5353, "dns", "TCP"))),  # dns is TCP here
        pod("web-3", 7, ports=(PodPort(8080, "metrics"),)),  # no http: not a backend of port http
    ]
    m.sync(pods, NODES)
    st = m.state
    by_port = {f.address.port: [str(st.backends[b].address) for b in f.active] for f in st.frontends}
    assert by_port[80] == ["10.244.1.5:8080/TCP", "10.244.1.6:9090/TCP"]
    assert by_port[53] == ["10.244.1.5:5353/UDP"]
    assert st.notices == ()
    # no selected pod declares the name: a notice (the Service stays, with no backends for it)
    m.sync([pods[2]], NODES)
    assert len(m.state.notices) == 2
    assert 'unknown targetPort name "http"' in m.state.notices[0]
    assert m.state.notices[0].startswith(
        "Service 'default/web': invalid value for \"spec.ports[0].targetPort\""
    )


def test_check_target_ports_is_lenient_without_pods() -> None:
    s = service(ports=[{"port": 80, "targetPort": "http"}])
    check_target_ports(s, [])  # nothing selected yet: accepted
    check_target_ports(s, [pod("other", 1, app="api")])
    check_target_ports(s, [pod("w", 1, ports=(PodPort(80, "http"),))])
    with pytest.raises(ServiceValidationError) as e:
        check_target_ports(s, [pod("w", 1, ports=(PodPort(80, "web"),))], source="web.yaml")
    assert str(e.value).startswith("web.yaml: Service 'web': invalid value for \"spec.ports[0].targetPort\"")
    assert 'unknown targetPort name "http"' in str(e.value)


def test_families_match() -> None:
    m = manager(service())
    m.sync([pod("a", 5), pod("b", 6, ipv6=None)], NODES)
    v4, v6 = m.state.frontends
    assert v4.address.family == 4 and len(v4.active) == 2
    assert v6.address.family == 6 and len(v6.active) == 1  # pod b has no IPv6
    assert all(m.state.backends[b].family == 6 for b in v6.active)


# ---- NodePort -----------------------------------------------------------------------------------


def test_node_port_frontends() -> None:
    m = manager(service(type="NodePort", ports=[{"port": 80, "targetPort": 8080, "nodePort": 30080}]))
    c = Cluster(m)
    c.sync([pod("web-1", 5)], [*NODES, "192.168.30.10", "0.0.0.0"])  # duplicates and "any" ignored
    fes = {str(f.address): f for f in m.state.frontends}
    alloc = m.get("default", "web").allocation
    assert set(fes) == {
        f"{alloc.ipv4}:80/TCP",
        f"[{alloc.ipv6}]:80/TCP",
        "192.168.30.10:30080/TCP",
        "0.0.0.0:30080/TCP",
        "[fd00:30::10]:30080/TCP",
        "[::]:30080/TCP",
    }
    assert fes[f"{alloc.ipv4}:80/TCP"].type == "ClusterIP"
    assert fes[f"{alloc.ipv4}:80/TCP"].flags == SvcFlag.CLUSTERIP
    for name in ("192.168.30.10:30080/TCP", "0.0.0.0:30080/TCP", "[::]:30080/TCP"):
        assert fes[name].type == "NodePort" and fes[name].flags == SvcFlag.NODEPORT
    zero = fes["0.0.0.0:30080/TCP"]
    assert zero.address.is_zero and zero.address.addr == "0.0.0.0"
    key = LBKey("0.0.0.0", 30080, 6, 4, 0)
    assert c.kernel.services[key].count == 1
    assert c.kernel.revnat[zero.rev_nat_id].port == 30080
    # every frontend of a family has the same backends, all with distinct rev_nat ids
    assert len({f.rev_nat_id for f in fes.values()}) == 6
    assert fes["[::]:30080/TCP"].active == fes[f"[{alloc.ipv6}]:80/TCP"].active
    # node addresses change: frontends follow
    c.sync([pod("web-1", 5)], ["192.168.30.11"])
    assert "192.168.30.10:30080/TCP" not in {str(f.address) for f in m.state.frontends}
    assert "192.168.30.11:30080/TCP" in {str(f.address) for f in m.state.frontends}


def test_single_stack_node_port_only_its_family() -> None:
    m = manager(service(type="NodePort", ipFamilyPolicy="SingleStack"))
    m.sync([pod("web-1", 5)], NODES)
    assert {f.address.family for f in m.state.frontends} == {4}
    assert len(m.state.frontends) == 3  # VIP, node address, any address


def test_affinity_and_maglev_flags() -> None:
    m = manager(
        service(
            "a",
            sessionAffinity="ClientIP",
            sessionAffinityConfig={"clientIP": {"timeoutSeconds": 600}},
            ipFamilyPolicy="SingleStack",
        ),
        service("b", annotations={"service.cilium.io/lb-algorithm": "maglev"}, ipFamilyPolicy="SingleStack"),
        service("c", ipFamilyPolicy="SingleStack"),
        algorithm="random",
    )
    m.sync([pod("a1", 5, app="a"), pod("b1", 6, app="b"), pod("b2", 7, app="b")], NODES)
    a, b, c = (m.state.of_service(f"default/{n}")[0] for n in "abc")
    assert a.flags == SvcFlag.CLUSTERIP | SvcFlag.AFFINITY and a.affinity_timeout_s == 600
    assert a.master().affinity_timeout_s == 600
    assert b.flags == SvcFlag.CLUSTERIP | SvcFlag.MAGLEV and b.affinity_timeout_s == 0
    assert c.flags == SvcFlag.CLUSTERIP
    assert set(m.state.maglev) == {b.rev_nat_id}
    table = m.state.maglev[b.rev_nat_id]
    assert table.dtype == np.uint32 and table.shape == (16381,)
    assert set(np.unique(table).tolist()) == set(b.active)
    # the agent-wide default
    m2 = manager(service("c", ipFamilyPolicy="SingleStack"), algorithm="maglev", maglev_table_size=251)
    m2.sync([pod("c1", 5, app="c")], NODES)
    (fe,) = m2.state.frontends
    assert fe.maglev and m2.state.maglev[fe.rev_nat_id].shape == (251,)
    with pytest.raises(ValueError, match="unknown load-balancing algorithm"):
        ServiceManager(algorithm="rr")
    with pytest.raises(ValueError, match="prime"):
        ServiceManager(maglev_table_size=1000)


# ---- terminating backends, IDs, diffs --------------------------------------------------------------


def test_terminating_backends_leave_slots_but_keep_their_entry() -> None:
    m = manager(
        service(ipFamilyPolicy="SingleStack", annotations={"service.cilium.io/lb-algorithm": "maglev"})
    )
    c = Cluster(m)
    pods = [pod("web-1", 5), pod("web-2", 6), pod("web-3", 7)]
    c.sync(pods)
    (fe,) = m.state.frontends
    ids = dict(zip(["web-1", "web-2", "web-3"], fe.active, strict=True))
    pods[1] = pod("web-2", 6, ready=False, terminating=True)
    diff = c.sync(pods)
    (fe,) = m.state.frontends
    assert fe.active == (ids["web-1"], ids["web-3"]) and fe.terminating == (ids["web-2"],)
    assert m.state.backends[ids["web-2"]].state == BACKEND_TERMINATING
    assert c.kernel.services[LBKey.of(fe.address, 0)].count == 2
    assert ids["web-2"] not in np.unique(m.state.maglev[fe.rev_nat_id])
    # slot 0 shrinks before the slots are rewritten, the backend is marked last
    kinds = [(o.map, o.op, getattr(o.key, "slot", None)) for o in diff]
    assert kinds.index((MAP_SERVICES, UPSERT, 0)) < kinds.index((MAP_SERVICES, UPSERT, 2))
    assert kinds[-1] == (MAP_BACKENDS, UPSERT, None) and diff.ops[-1].key == ids["web-2"]
    assert diff.deletes(MAP_SERVICES) == [LBKey.of(fe.address, 3)]
    assert diff.deletes(MAP_BACKENDS) == []
    # the agent says it is gone: now the backend entry goes
    diff = c.sync([pods[0], pods[2]])
    assert diff.deletes(MAP_BACKENDS) == [ids["web-2"]]
    assert len(diff) == 1
    # ... and a terminating pod back to ready (e.g. cancelled) becomes active again
    c.sync([pods[0], pods[2], pod("web-4", 8, terminating=True)])
    c.sync([pods[0], pods[2], pod("web-4", 8)])
    assert len(m.state.frontends[0].active) == 3


def test_ids_are_stable_and_not_reused_at_once() -> None:
    m = manager(service(ipFamilyPolicy="SingleStack"), service("api", ipFamilyPolicy="SingleStack"))
    c = Cluster(m)
    c.sync([pod("web-1", 5), pod("web-2", 6), pod("api-1", 9, app="api")])
    rid = {f.service: f.rev_nat_id for f in m.state.frontends}
    bid = {str(b.address): i for i, b in m.state.backends.items()}
    c.sync([pod("web-2", 6), pod("web-3", 7), pod("api-1", 9, app="api")])
    assert {f.service: f.rev_nat_id for f in m.state.frontends} == rid
    now = {str(b.address): i for i, b in m.state.backends.items()}
    assert now["10.244.1.6:8080/TCP"] == bid["10.244.1.6:8080/TCP"]
    assert now["10.244.1.9:8080/TCP"] == bid["10.244.1.9:8080/TCP"]
    assert now["10.244.1.7:8080/TCP"] not in bid.values()  # new ID, not web-1's freed one
    # a deleted Service's rev_nat ID is not handed to the next one
    m.delete("default", "api")
    c.sync([pod("web-2", 6)])
    m.apply([service("db", ipFamilyPolicy="SingleStack")])
    c.sync([pod("web-2", 6)])
    assert m.state.of_service("default/db")[0].rev_nat_id not in rid.values()


def test_deterministic_regardless_of_pod_order() -> None:
    pods = [pod(f"web-{i}", i) for i in range(2, 12)]
    a, b = manager(service()), manager(service())
    a.sync(pods, NODES)
    b.sync(list(reversed(pods)), NODES)
    assert a.state.entries().services == b.state.entries().services
    assert a.state.backends == b.state.backends


def test_first_sync_order_and_noop() -> None:
    m = manager(service(type="NodePort", annotations={"service.cilium.io/lb-algorithm": "maglev"}))
    c = Cluster(m)
    diff = c.sync([pod("web-1", 5), pod("web-2", 6)])
    maps = [o.map for o in diff]
    assert set(maps) == {MAP_BACKENDS, MAP_REVNAT, MAP_MAGLEV, MAP_SERVICES}
    last_b = max(i for i, x in enumerate(maps) if x == MAP_BACKENDS)
    first_s = min(i for i, x in enumerate(maps) if x == MAP_SERVICES)
    last_t = max(i for i, x in enumerate(maps) if x == MAP_MAGLEV)
    assert last_b < first_s and last_t < first_s
    assert all(o.op == UPSERT for o in diff)
    # per frontend, the slots come before slot 0
    first = [o.key.slot for o in diff if o.map == MAP_SERVICES][:3]
    assert first == [1, 2, 0]
    assert diff.summary()[MAP_SERVICES] == {UPSERT: 18, DELETE: 0}
    assert not c.sync([pod("web-2", 6), pod("web-1", 5)])  # nothing changed: empty diff


def test_scale_up_down_and_delete_service_order() -> None:
    m = manager(service(type="NodePort", annotations={"service.cilium.io/lb-algorithm": "maglev"}))
    c = Cluster(m)
    pods = [pod(f"web-{i}", i) for i in range(2, 6)]
    c.sync(pods[:1])
    c.sync(pods)  # scale up, checked step by step by the simulated kernel
    c.sync(pods[2:])  # scale down
    c.sync([])  # no backends: tables go, masters stay with count 0
    assert m.state.maglev == {}
    assert all(v.count == 0 for k, v in c.kernel.services.items() if k.slot == 0)
    assert len(c.kernel.services) == 6
    c.sync(pods)
    m.delete("default", "web")
    diff = c.sync(pods)
    assert all(o.op == DELETE for o in diff)
    order = [o.map for o in diff]
    assert order == sorted(order, key=[MAP_SERVICES, MAP_MAGLEV, MAP_REVNAT, MAP_BACKENDS].index)
    svc_ops = [o.key.slot for o in diff if o.map == MAP_SERVICES]
    assert svc_ops[:6] == [0] * 6  # every frontend disappears (slot 0) before its slots go
    assert c.kernel == LBEntries()


def test_shared_backends_between_services() -> None:
    m = manager(
        service("web", selector={"tier": "fe"}, ipFamilyPolicy="SingleStack"),
        service("www", selector={"tier": "fe"}, ipFamilyPolicy="SingleStack"),
    )
    c = Cluster(m)
    p = PodInfo("default", "fe-1", {"tier": "fe"}, ipv4="10.244.1.5")
    c.sync([p])
    web, www = m.state.frontends
    assert web.active == www.active and len(m.state.backends) == 1
    m.delete("default", "web")
    diff = c.sync([p])
    assert diff.deletes(MAP_BACKENDS) == []  # still used by www


# ---- the manager ---------------------------------------------------------------------------------


def test_apply_outcomes_and_delete() -> None:
    m = ServiceManager()
    assert [a for a, _ in m.apply([service()], now=5.0)] == ["created"]
    assert m.revision == 1
    assert [a for a, _ in m.apply([service()], now=9.0)] == ["unchanged"]
    assert m.revision == 1
    out = m.apply([service(ports=[{"port": 81}])], now=9.0)
    assert [a for a, _ in out] == ["configured"] and out[0][1].created == 5.0
    assert [r.key for r in m.list()] == ["default/web"]
    assert m.list("other") == []
    assert m.get(None, "web") is not None
    m.delete(None, "web")
    assert m.allocator.get("default/web") is None
    with pytest.raises(NotFoundError, match='services "web" not found'):
        m.delete("default", "web")


def test_persistence_round_trip(monkeypatch: pytest.MonkeyPatch) -> None:
    m = manager(
        service(type="NodePort", annotations={"service.cilium.io/lb-algorithm": "maglev"}),
        service("api", ns="prod", selector={"app": "api"}),
    )
    pods = [pod("web-1", 5), pod("web-2", 6, terminating=True), pod("api-1", 7, app="api", ns="prod")]
    c = Cluster(m)
    c.sync(pods)
    saved = json.loads(json.dumps(m.to_dict()))
    restored = ServiceManager.from_dict(saved)
    assert [r.key for r in restored.list()] == ["default/web", "prod/api"]
    assert restored.state.entries().services == m.state.entries().services
    import tendril.loadbalancer.maglev as maglev_mod

    built: list[tuple[str, ...]] = []
    real = maglev_mod.build_table
    monkeypatch.setattr(maglev_mod, "build_table", lambda names, *a: built.append(names) or real(names, *a))
    assert not restored.sync(pods, NODES)  # the kernel already holds it: nothing to do ...
    assert built == []  # ... and no Maglev table had to be built to know it
    restored.sync(pods[:1], NODES)  # web-2 (terminating) gone: the tables do not change either
    assert built == []
    diff = restored.sync([*pods, pod("web-3", 8)], NODES)
    assert len(built) == 2 and len(diff.upserts(MAP_MAGLEV)) == 6  # v4 and v6 tables, 3 frontends each
    # another Maglev size after the restart: the tables are reloaded
    resized = ServiceManager.from_dict(saved, maglev_table_size=251)
    diff = resized.sync(pods, NODES)
    assert diff and {o.map for o in diff} == {MAP_MAGLEV}


def test_resync_against_drifted_maps() -> None:
    m = manager(service(ipFamilyPolicy="SingleStack"))
    c = Cluster(m)
    c.sync([pod("web-1", 5)])
    drifted = copy_entries(c.kernel)
    stale = LBKey("10.96.99.99", 80, 6, 4, 0)
    drifted.services[stale] = c.kernel.services[LBKey.of(m.state.frontends[0].address, 0)]
    del drifted.backends[next(iter(drifted.backends))]
    diff = m.resync(drifted)
    assert diff.deletes(MAP_SERVICES) == [stale]
    assert len(diff.upserts(MAP_BACKENDS)) == 1


def test_capacity(monkeypatch: pytest.MonkeyPatch) -> None:
    import tendril.loadbalancer.state as state_mod

    monkeypatch.setattr(state_mod, "SERVICES_MAX", 3)
    m = manager(service(ipFamilyPolicy="SingleStack"))
    with pytest.raises(ServiceCapacityError, match="tnd_lb_services"):
        m.sync([pod("a", 1), pod("b", 2), pod("c", 3)], NODES)
    assert m.state.frontends == ()  # nothing committed


def test_l3n4_text_round_trip() -> None:
    for text in ("10.0.0.1:80/TCP", "[fd00::1]:53/UDP", "0.0.0.0:30080/TCP", "[::]:1/UDP"):
        assert str(L3n4Addr.parse(text)) == text


def test_the_simulated_kernel_catches_unsafe_orders() -> None:
    """The consistency checks above mean something: the same operations in a naive order fail."""
    m = manager(service(ipFamilyPolicy="SingleStack"))
    c = Cluster(m)
    c.sync([pod("web-1", 5), pod("web-2", 6), pod("web-3", 7)])
    diff = m.sync([pod("web-3", 7)], NODES)
    deletes_first = LBDiff(tuple(sorted(diff.ops, key=lambda o: o.op != DELETE)))
    with pytest.raises(AssertionError):
        apply_ops(c.kernel, deletes_first)
