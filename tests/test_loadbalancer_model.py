"""Service validation: what the API server would reject is rejected, with file, Service and field."""

from __future__ import annotations

from typing import Any

import pytest

from tendril.common.errors import InvalidInputError
from tendril.loadbalancer import (
    ServiceValidationError,
    is_service_document,
    parse_service,
    parse_service_documents,
)
from tendril.loadbalancer.model import DEFAULT_AFFINITY_TIMEOUT


def svc(spec: dict[str, Any], **meta: Any) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web", **meta}, "spec": spec}


def error(doc: dict[str, Any]) -> str:
    with pytest.raises(ServiceValidationError) as e:
        parse_service(doc, "web.yaml")
    return str(e.value)


PORT = {"ports": [{"port": 80}]}


def test_minimal_service_defaults() -> None:
    s = parse_service(svc({"selector": {"app": "web"}, **PORT}), "web.yaml")
    assert (s.key, s.type, s.headless) == ("default/web", "ClusterIP", False)
    assert s.families == (4, 6)  # the lab is dual-stack by default
    assert s.requested_ips == ()
    assert s.spec.ports[0].target == 80 and s.spec.ports[0].protocol == "TCP"
    assert s.affinity_timeout == 0 and s.lb_algorithm is None
    assert isinstance(ServiceValidationError("x"), InvalidInputError)


def test_unknown_field_names_file_object_and_field() -> None:
    assert error(svc({"prots": [{"port": 80}]})) == "web.yaml: Service 'web': unknown field \"spec.prots\""
    assert 'unknown field "spec.ports[0].tragetPort"' in error(
        svc({"ports": [{"port": 80, "tragetPort": 1}]})
    )


@pytest.mark.parametrize(
    ("port", "field"),
    [
        ({"port": 0}, "spec.ports[0].port"),
        ({"port": 65536}, "spec.ports[0].port"),
        ({"port": "80"}, "spec.ports[0].port"),
        ({"port": 80, "targetPort": 70000}, "spec.ports[0].targetPort"),
        ({"port": 80, "targetPort": 0}, "spec.ports[0].targetPort"),
    ],
)
def test_port_out_of_range(port: dict[str, Any], field: str) -> None:
    assert f'invalid value for "{field}"' in error(svc({"ports": [port]}))


def test_target_port_names() -> None:
    s = parse_service(svc({"ports": [{"port": 80, "targetPort": "http-alt"}]}))
    assert s.spec.ports[0].target == "http-alt"
    assert "not a valid port name" in error(svc({"ports": [{"port": 80, "targetPort": "Http_Alt"}]}))
    assert "not a valid port name" in error(
        svc({"ports": [{"port": 80, "targetPort": "averyveryverylongname"}]})
    )
    assert "without quotes" in error(svc({"ports": [{"port": 80, "targetPort": "8080"}]}))


@pytest.mark.parametrize("kind", ["LoadBalancer", "ExternalName"])
def test_unsupported_types(kind: str) -> None:
    msg = error(svc({"type": kind, **PORT}))
    assert f'invalid value for "spec.type": type {kind} is not supported' in msg
    assert "ClusterIP, NodePort" in msg
    assert "unknown type 'Nodeport'" in error(svc({"type": "Nodeport", **PORT}))


def test_sctp_not_supported() -> None:
    assert "SCTP is not supported" in error(svc({"ports": [{"port": 80, "protocol": "SCTP"}]}))
    assert "unknown protocol 'tcp'" in error(svc({"ports": [{"port": 80, "protocol": "tcp"}]}))


def test_node_ports() -> None:
    ok = parse_service(svc({"type": "NodePort", "ports": [{"port": 80, "nodePort": 30080}]}))
    assert ok.spec.ports[0].nodePort == 30080
    assert "not in the NodePort range 30000-32767" in error(
        svc({"type": "NodePort", "ports": [{"port": 80, "nodePort": 80}]})
    )
    assert "not in the NodePort range" in error(
        svc({"type": "NodePort", "ports": [{"port": 80, "nodePort": 32768}]})
    )
    msg = error(svc({"ports": [{"port": 80, "nodePort": 30080}]}))
    assert '"spec.ports[0].nodePort": only NodePort Services have node ports' in msg
    dup = {
        "type": "NodePort",
        "ports": [{"name": "a", "port": 80, "nodePort": 30080}, {"name": "b", "port": 81, "nodePort": 30080}],
    }
    assert 'invalid value for "spec.ports[1].nodePort": duplicate nodePort 30080/TCP' in error(svc(dup))
    # the same nodePort for TCP and UDP of one Service is fine (as in Kubernetes)
    both = {
        "type": "NodePort",
        "ports": [
            {"name": "t", "port": 53, "nodePort": 30053},
            {"name": "u", "port": 53, "protocol": "UDP", "nodePort": 30053},
        ],
    }
    assert len(parse_service(svc(both)).spec.ports) == 2


def test_multi_port_rules() -> None:
    assert 'missing required field "spec.ports[0].name"' in error(
        svc({"ports": [{"port": 80}, {"port": 81}]})
    )
    same_name = {"ports": [{"name": "a", "port": 80}, {"name": "a", "port": 81}]}
    assert 'invalid value for "spec.ports[1].name": duplicate port name "a"' in error(svc(same_name))
    dup = {"ports": [{"name": "a", "port": 80}, {"name": "b", "port": 80}]}
    assert 'invalid value for "spec.ports[1]": duplicate port 80/TCP' in error(svc(dup))
    tcp_udp = {"ports": [{"name": "a", "port": 53}, {"name": "b", "port": 53, "protocol": "UDP"}]}
    assert [p.label for p in parse_service(svc(tcp_udp)).spec.ports] == ["53/TCP", "53/UDP"]
    assert 'missing required field "spec.ports"' in error(svc({"selector": {"a": "b"}}))


def test_cluster_ips_and_families() -> None:
    s = parse_service(svc({"clusterIP": "10.96.0.10", **PORT}))
    assert s.requested_ips == ("10.96.0.10",) and s.families == (4, 6)
    s = parse_service(svc({"clusterIP": "fd00:10:96::a", "ipFamilyPolicy": "SingleStack", **PORT}))
    assert s.families == (6,)
    s = parse_service(svc({"clusterIPs": ["fd00:10:96::a", "10.96.0.10"], **PORT}))
    assert s.requested_ips == ("fd00:10:96::a", "10.96.0.10") and s.families == (6, 4)
    s = parse_service(svc({"ipFamilies": ["IPv6"], "ipFamilyPolicy": "SingleStack", **PORT}))
    assert s.families == (6,)
    s = parse_service(svc({"ipFamilies": ["IPv6"], "ipFamilyPolicy": "RequireDualStack", **PORT}))
    assert s.families == (6, 4)
    assert "is not an IP address" in error(svc({"clusterIP": "10.96.0.300", **PORT}))
    assert '"spec.clusterIPs[0]": must equal spec.clusterIP' in error(
        svc({"clusterIP": "10.96.0.10", "clusterIPs": ["10.96.0.11"], **PORT})
    )
    assert "different IP families" in error(svc({"clusterIPs": ["10.96.0.10", "10.96.0.11"], **PORT}))
    assert '"spec.ipFamilies[0]": IPv6 does not match' in error(
        svc({"clusterIP": "10.96.0.10", "ipFamilies": ["IPv6"], **PORT})
    )
    assert "SingleStack allows one IP family" in error(
        svc({"ipFamilies": ["IPv4", "IPv6"], "ipFamilyPolicy": "SingleStack", **PORT})
    )
    assert "unknown IP family 'ipv4'" in error(svc({"ipFamilies": ["ipv4"], **PORT}))
    assert "unknown ipFamilyPolicy" in error(svc({"ipFamilyPolicy": "DualStack", **PORT}))


def test_headless() -> None:
    s = parse_service(svc({"clusterIP": "None", "selector": {"app": "db"}}))
    assert s.headless and s.requested_ips == ()
    assert parse_service(svc({"clusterIPs": ["None"], **PORT})).headless
    assert "cannot be headless" in error(svc({"type": "NodePort", "clusterIP": "None", **PORT}))


def test_session_affinity() -> None:
    s = parse_service(svc({"sessionAffinity": "ClientIP", **PORT}))
    assert s.affinity_timeout == DEFAULT_AFFINITY_TIMEOUT == 10800
    cfg = {"clientIP": {"timeoutSeconds": 60}}
    s = parse_service(svc({"sessionAffinity": "ClientIP", "sessionAffinityConfig": cfg, **PORT}))
    assert s.affinity_timeout == 60
    for bad in (0, 86401):
        cfg = {"clientIP": {"timeoutSeconds": bad}}
        msg = error(svc({"sessionAffinity": "ClientIP", "sessionAffinityConfig": cfg, **PORT}))
        assert 'invalid value for "spec.sessionAffinityConfig.clientIP.timeoutSeconds"' in msg
    assert "must not be set unless" in error(
        svc({"sessionAffinityConfig": {"clientIP": {"timeoutSeconds": 5}}, **PORT})
    )
    assert "unknown sessionAffinity" in error(svc({"sessionAffinity": "Cookie", **PORT}))


def test_metadata_and_misc() -> None:
    assert "DNS-1035 label" in error({**svc(PORT), "metadata": {"name": "1web"}})
    assert 'missing required field "metadata"' in error({"apiVersion": "v1", "kind": "Service", "spec": PORT})
    assert "Local is not supported" in error(svc({"externalTrafficPolicy": "Local", **PORT}))
    assert "label value" in error(svc({"selector": {"app": "a b"}, **PORT}))
    ann = {"service.cilium.io/lb-algorithm": "maglev"}
    assert parse_service(svc(PORT, annotations=ann)).lb_algorithm == "maglev"
    assert "lb-algorithm must be one of" in error(
        svc(PORT, annotations={"service.cilium.io/lb-algorithm": "rr"})
    )
    assert "expected a mapping" in error([1, 2])  # type: ignore[arg-type]


def test_is_service_document_and_files() -> None:
    assert is_service_document(svc(PORT))
    assert not is_service_document({"apiVersion": "v1", "kind": "Pod"})
    assert not is_service_document({"apiVersion": "cilium.io/v2", "kind": "Service"})
    text = "apiVersion: v1\nkind: Service\nmetadata: {name: a}\nspec: {ports: [{port: 1}]}\n---\n"
    assert [s.name for s in parse_service_documents(text, "f.yaml")] == ["a"]
    with pytest.raises(ServiceValidationError, match="f.yaml: document 2: expected a v1 Service"):
        parse_service_documents(text + "apiVersion: v1\nkind: Pod\n", "f.yaml")
    with pytest.raises(ServiceValidationError, match="malformed YAML"):
        parse_service_documents("a: [", "f.yaml")


def test_document_round_trip() -> None:
    s = parse_service(svc({"type": "NodePort", "ports": [{"port": 80, "targetPort": "http"}]}))
    again = parse_service(s.document())
    assert again == s and again.document() == s.document()
