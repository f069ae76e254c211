"""ClusterIP / NodePort allocation: explicit and automatic, idempotent, atomic, persistent."""

from __future__ import annotations

import ipaddress
import json
from typing import Any

import pytest

from tendril.loadbalancer import Allocation, ServiceAllocationError, ServiceAllocator, parse_service
from tendril.loadbalancer.model import Service


def svc(name: str = "web", ns: str = "default", **spec: Any) -> Service:
    spec.setdefault("ports", [{"port": 80}])
    doc = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": name, "namespace": ns}, "spec": spec}
    return parse_service(doc, "svc.yaml")


def test_automatic_dual_stack_in_cidrs() -> None:
    a = ServiceAllocator()
    got = a.allocate(svc())
    assert ipaddress.ip_address(got.ipv4) in ipaddress.ip_network("10.96.0.0/16")
    assert ipaddress.ip_address(got.ipv6) in ipaddress.ip_network("fd00:10:96::/112")
    assert got.cluster_ips == (got.ipv4, got.ipv6)  # primary (IPv4) first
    assert got.node_ports == {}
    assert a.owner_of_ip(got.ipv4) == "default/web"


def test_idempotent_and_deterministic() -> None:
    a, b = ServiceAllocator(), ServiceAllocator()
    first = a.allocate(svc())
    assert a.allocate(svc()) == first
    assert b.allocate(svc()) == first  # same key, same pick: the lab is reproducible
    other = a.allocate(svc("api"))
    assert set(other.cluster_ips).isdisjoint(first.cluster_ips)


def test_first_address_reserved() -> None:
    a = ServiceAllocator(cidrs=("10.96.0.0/29", "fd00:10:96::/125"))
    picks = [a.allocate(svc(f"s{i}")) for i in range(5)]  # .2 .. .6: all but .0, .1, .7
    assert sorted(p.ipv4 for p in picks) == [f"10.96.0.{i}" for i in range(2, 7)]
    assert all(p.ipv6 not in ("fd00:10:96::", "fd00:10:96::1") for p in picks)
    with pytest.raises(ServiceAllocationError, match="is full"):
        a.allocate(svc("s5"))
    b = ServiceAllocator()
    with pytest.raises(ServiceAllocationError, match=r"10\.96\.0\.1 is reserved"):
        b.allocate(svc(clusterIP="10.96.0.1"))
    # ... except for the kubernetes API Service, as in Kubernetes
    assert b.allocate(svc("kubernetes", clusterIP="10.96.0.1")).ipv4 == "10.96.0.1"


def test_explicit_cluster_ip() -> None:
    a = ServiceAllocator()
    got = a.allocate(svc(clusterIP="10.96.5.5"))
    assert got.ipv4 == "10.96.5.5" and got.ipv6 is not None
    with pytest.raises(ServiceAllocationError) as e:
        a.allocate(svc("api", ns="prod", clusterIP="10.96.5.5"), source="api.yaml")
    assert str(e.value) == (
        "api.yaml: Service 'api': invalid value for \"spec.clusterIP\": duplicate service IP 10.96.5.5 "
        "(already allocated to Service 'default/web')"
    )
    with pytest.raises(
        ServiceAllocationError, match=r"10\.0\.0\.5 is not in the service CIDR 10\.96\.0\.0/16"
    ):
        a.allocate(svc("api", clusterIP="10.0.0.5"))
    with pytest.raises(ServiceAllocationError, match=r'"spec.clusterIPs\[1\]".*not in the service CIDR'):
        a.allocate(svc("api", clusterIPs=["10.96.6.6", "fd00::1"]))
    assert a.get("default/api") is None  # nothing half-allocated


def test_cluster_ip_is_immutable() -> None:
    a = ServiceAllocator()
    a.allocate(svc(clusterIP="10.96.5.5"))
    with pytest.raises(ServiceAllocationError, match="field is immutable: the Service has 10.96.5.5"):
        a.allocate(svc(clusterIP="10.96.5.6"))
    with pytest.raises(ServiceAllocationError, match="to make it headless"):
        a.allocate(svc(clusterIP="None"))
    with pytest.raises(ServiceAllocationError, match="primary family is IPv4"):
        a.allocate(svc(ipFamilies=["IPv6"], ipFamilyPolicy="SingleStack"))


def test_family_policy_changes_add_and_drop_the_secondary() -> None:
    a = ServiceAllocator()
    single = a.allocate(svc(ipFamilyPolicy="SingleStack"))
    assert single.ipv6 is None
    dual = a.allocate(svc())
    assert dual.ipv4 == single.ipv4 and dual.ipv6 is not None
    again = a.allocate(svc(ipFamilyPolicy="SingleStack"))
    assert again.cluster_ips == (single.ipv4,)
    assert a.owner_of_ip(dual.ipv6) is None  # released


def test_single_stack_cidrs() -> None:
    a = ServiceAllocator(cidrs=("10.96.0.0/16",))
    assert a.allocate(svc()).ipv6 is None  # PreferDualStack degrades
    with pytest.raises(ServiceAllocationError, match="no IPv6 service CIDR"):
        a.allocate(svc("b", ipFamilyPolicy="RequireDualStack"))


def test_headless_gets_no_ip() -> None:
    a = ServiceAllocator()
    assert a.allocate(svc(clusterIP="None")) == Allocation()


def test_node_ports() -> None:
    a = ServiceAllocator()
    ports = [
        {"name": "http", "port": 80},
        {"name": "dns", "port": 53, "protocol": "UDP"},
        {"name": "dnst", "port": 53},
        {"name": "fixed", "port": 443, "nodePort": 30443},
    ]
    got = a.allocate(svc(type="NodePort", ports=ports))
    assert got.node_ports["443/TCP"] == 30443
    assert got.node_ports["53/UDP"] == got.node_ports["53/TCP"]  # TCP and UDP of a port share one
    assert all(30000 <= p <= 32767 for p in got.node_ports.values())
    assert len(set(got.node_ports.values())) == 3
    assert a.allocate(svc(type="NodePort", ports=ports)) == got  # idempotent
    with pytest.raises(ServiceAllocationError) as e:
        a.allocate(svc("other", type="NodePort", ports=[{"port": 80, "nodePort": 30443}]))
    assert '"spec.ports[0].nodePort": duplicate nodePort 30443' in str(e.value)
    assert "'default/web'" in str(e.value)
    assert a.get("default/other") is None
    # ClusterIP again: node ports released, the VIP kept
    plain = a.allocate(svc(ports=ports[:3]))
    assert plain.node_ports == {} and plain.cluster_ips == got.cluster_ips
    assert a.owner_of_node_port(30443) is None
    assert a.allocate(svc("other", type="NodePort", ports=[{"port": 80, "nodePort": 30443}])).node_ports == {
        "80/TCP": 30443
    }


def test_node_port_range_is_configurable() -> None:
    a = ServiceAllocator(node_port_range=(31000, 31001))
    with pytest.raises(ServiceAllocationError, match="not in the NodePort range 31000-31001"):
        a.allocate(svc(type="NodePort", ports=[{"port": 80, "nodePort": 30000}]))
    a.allocate(svc("a", type="NodePort"))
    a.allocate(svc("b", type="NodePort"))
    with pytest.raises(ServiceAllocationError, match="no free nodePort"):
        a.allocate(svc("c", type="NodePort"))


def test_release() -> None:
    a = ServiceAllocator()
    got = a.allocate(svc(type="NodePort", clusterIP="10.96.7.7", ports=[{"port": 80, "nodePort": 30007}]))
    assert a.release("default/web") == got
    assert a.release("default/web") is None
    assert a.owner_of_ip("10.96.7.7") is None and a.owner_of_node_port(30007) is None
    again = a.allocate(
        svc("api", type="NodePort", clusterIP="10.96.7.7", ports=[{"port": 80, "nodePort": 30007}])
    )
    assert again.ipv4 == "10.96.7.7"


def test_allocate_all_is_atomic() -> None:
    a = ServiceAllocator()
    a.allocate(svc("taken", clusterIP="10.96.9.9"))
    with pytest.raises(ServiceAllocationError, match="duplicate service IP"):
        a.allocate_all([svc("one"), svc("two", clusterIP="10.96.9.9")], source="f.yaml")
    assert a.get("default/one") is None
    assert sorted(a.allocations()) == ["default/taken"]


def test_to_dict_from_dict() -> None:
    a = ServiceAllocator()
    a.allocate(svc(type="NodePort"))
    a.allocate(svc("api", ns="prod", clusterIP="10.96.3.3"))
    b = ServiceAllocator.from_dict(json.loads(json.dumps(a.to_dict())))
    assert b.allocations() == a.allocations()
    assert b.owner_of_ip("10.96.3.3") == "prod/api"
    with pytest.raises(ServiceAllocationError, match="duplicate service IP"):
        b.allocate(svc("x", clusterIP="10.96.3.3"))
    assert b.allocate(svc(type="NodePort")) == a.get("default/web")
