"""Hubble metrics from hand-built flow rows, read back through the Prometheus text format.

Every assertion parses what a scrape would return (generate_latest + the official text parser),
so names, label sets and values are checked as Prometheus sees them.
"""

from __future__ import annotations

import ipaddress
import time
import urllib.request
from typing import Any

import numpy as np
import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from tendril.hubble import record
from tendril.hubble.metrics import HubbleMetrics, parse_listen_address, parse_spec, serve_metrics
from tendril.hubble.record import EndpointMeta, Tables

TCP, UDP, ICMP, ICMP6 = 6, 17, 1, 58
SYN, ACK, FIN, RST = 0x02, 0x10, 0x01, 0x04
TRACE, DROP, POLICY = 4, 1, 5
TO_ENDPOINT, TO_STACK, FROM_ENDPOINT = 0, 3, 5
POLICY_DENIED, INVALID_SOURCE_IP = 133, 132

CLIENT = EndpointMeta(
    id=101,
    identity=30001,
    namespace="cilium-test",
    pod_name="client-645b68dcf7-s5mdb",
    labels=("k8s:app=client", "k8s:io.kubernetes.pod.namespace=cilium-test"),
    workloads=(("client", "Deployment"),),
)
ECHO = EndpointMeta(
    id=102,
    identity=30002,
    namespace="cilium-test",
    pod_name="echo-same-node-7f896b8c5b-2xkl8",
    labels=("k8s:app.kubernetes.io/name=echo", "k8s:kind=echo"),
    workloads=(("echo-same-node", "Deployment"),),
)
OTHER = EndpointMeta(
    id=103, identity=30003, namespace="other", pod_name="lonely", labels=("k8s:k8s-app=lonely",)
)
WORLD = EndpointMeta(identity=2)  # no labels: the reserved label comes from the identity number


@pytest.fixture
def tables() -> Tables:
    return Tables()


def rows_of(tables: Tables, *flows: dict[str, Any]) -> np.ndarray:
    """FLOW_DTYPE rows from dicts; src/dst may be EndpointMeta (interned) and IPs strings."""
    rows = record.empty(len(flows))
    for i, f in enumerate(flows):
        f = {"verdict": record.FORWARDED, "event_type": TRACE, "ip_version": 4, **f}
        for side in ("src", "dst"):
            meta = f.pop(side, None)
            if meta is not None:
                rows[i][f"{side}_ep"] = tables.endpoints.intern(meta)
                rows[i][f"{side}_identity"] = meta.identity
            ip = f.pop(f"{side}_ip", None)
            if ip is not None:
                rows[i][f"{side}_ip"] = ipaddress.ip_address(ip).packed.ljust(16, b"\0")
        for key, value in f.items():
            rows[i][key] = value
    return rows


def scrape(m: HubbleMetrics) -> dict[str, dict[frozenset[tuple[str, str]], float]]:
    """metric sample name -> {label set -> value}, parsed from the exposition text."""
    out: dict[str, dict[frozenset[tuple[str, str]], float]] = {}
    for family in text_string_to_metric_families(generate_latest(m.registry).decode()):
        out.setdefault(family.name, {})
        for s in family.samples:
            out.setdefault(s.name, {})[frozenset(s.labels.items())] = s.value
    return out


def series(m: HubbleMetrics, name: str) -> dict[frozenset[tuple[str, str]], float]:
    return scrape(m).get(name, {})


def L(**labels: str) -> frozenset[tuple[str, str]]:  # noqa: N802 - reads like a label literal
    return frozenset(labels.items())


# ---- plugins -----------------------------------------------------------------------------------
def test_flow_counts_every_flow_by_protocol_type_subtype_verdict(tables: Tables) -> None:
    m = HubbleMetrics("flow")
    m.process(
        rows_of(
            tables,
            {"l4_proto": TCP, "sub_type": TO_ENDPOINT},
            {"l4_proto": TCP, "sub_type": TO_ENDPOINT},
            {"l4_proto": UDP, "sub_type": FROM_ENDPOINT},
            {"l4_proto": TCP, "event_type": DROP, "verdict": record.DROPPED, "sub_type": POLICY_DENIED},
            {"l4_proto": ICMP, "event_type": POLICY},
            {"l4_proto": 0, "sub_type": TO_STACK},
            {"l4_proto": TCP, "event_type": 7},
        ),
        tables,
    )
    assert series(m, "hubble_flows_processed_total") == {
        L(protocol="TCP", type="Trace", subtype="to-endpoint", verdict="FORWARDED"): 2,
        L(protocol="UDP", type="Trace", subtype="from-endpoint", verdict="FORWARDED"): 1,
        L(protocol="TCP", type="Drop", subtype="", verdict="DROPPED"): 1,
        L(protocol="ICMPv4", type="PolicyVerdict", subtype="", verdict="FORWARDED"): 1,
        L(protocol="Unknown L4", type="Trace", subtype="to-stack", verdict="FORWARDED"): 1,
        L(protocol="Unknown flow", type="Unknown", subtype="7", verdict="FORWARDED"): 1,
    }


def test_drop_counts_dropped_flows_by_reason_enum_and_protocol(tables: Tables) -> None:
    m = HubbleMetrics("drop")
    drop = {"event_type": DROP, "verdict": record.DROPPED}
    m.process(
        rows_of(
            tables,
            {**drop, "l4_proto": TCP, "drop_reason": POLICY_DENIED},
            {**drop, "l4_proto": TCP, "drop_reason": POLICY_DENIED},
            {**drop, "l4_proto": UDP, "drop_reason": INVALID_SOURCE_IP},
            {"l4_proto": TCP},  # forwarded: not a drop
        ),
        tables,
    )
    assert series(m, "hubble_drop_total") == {
        L(reason="POLICY_DENIED", protocol="TCP"): 2,
        L(reason="INVALID_SOURCE_IP", protocol="UDP"): 1,
    }


def test_tcp_counts_syn_synack_fin_rst_of_forwarded_flows(tables: Tables) -> None:
    m = HubbleMetrics("tcp")
    m.process(
        rows_of(
            tables,
            {"l4_proto": TCP, "tcp_flags": SYN, "is_reply": 0},
            {"l4_proto": TCP, "tcp_flags": SYN | ACK, "is_reply": 1},
            {"l4_proto": TCP, "tcp_flags": FIN | ACK},
            {"l4_proto": TCP, "tcp_flags": RST | FIN},
            {"l4_proto": TCP, "tcp_flags": ACK},  # no counted flag
            {"l4_proto": TCP, "tcp_flags": SYN, "verdict": record.DROPPED, "event_type": DROP},
            {"l4_proto": TCP, "tcp_flags": SYN, "ip_version": 6},
            {"l4_proto": TCP, "tcp_flags": SYN, "verdict": record.REDIRECTED},
        ),
        tables,
    )
    assert series(m, "hubble_tcp_flags_total") == {
        L(flag="SYN", family="IPv4"): 2,
        L(flag="SYN-ACK", family="IPv4"): 1,
        L(flag="FIN", family="IPv4"): 2,
        L(flag="RST", family="IPv4"): 1,
        L(flag="SYN", family="IPv6"): 1,
    }


def test_icmp_names_types_like_hubble(tables: Tables) -> None:
    m = HubbleMetrics("icmp")
    m.process(
        rows_of(
            tables,
            {"l4_proto": ICMP, "icmp_type": 8},
            {"l4_proto": ICMP, "icmp_type": 8},
            {"l4_proto": ICMP, "icmp_type": 0, "verdict": record.DROPPED, "event_type": DROP},
            {"l4_proto": ICMP, "icmp_type": 3, "icmp_code": 3},
            {"l4_proto": ICMP, "icmp_type": 11, "icmp_code": 9},
            {"l4_proto": ICMP, "icmp_type": 42},
            {"l4_proto": ICMP6, "icmp_type": 128, "ip_version": 6},
            {"l4_proto": ICMP6, "icmp_type": 1, "icmp_code": 4, "ip_version": 6},
            {"l4_proto": TCP},
        ),
        tables,
    )
    assert series(m, "hubble_icmp_total") == {
        L(family="IPv4", type="EchoRequest"): 2,
        L(family="IPv4", type="EchoReply"): 1,
        L(family="IPv4", type="DestinationUnreachable(Port)"): 1,
        L(family="IPv4", type="TimeExceeded(Code: 9)"): 1,
        L(family="IPv4", type="42(0)"): 1,
        L(family="IPv6", type="EchoRequest"): 1,
        L(family="IPv6", type="DestinationUnreachable(PortUnreachable)"): 1,
    }


def test_port_distribution_counts_destination_ports_of_known_requests(tables: Tables) -> None:
    m = HubbleMetrics("port-distribution")
    m.process(
        rows_of(
            tables,
            {"l4_proto": TCP, "dst_port": 8080, "is_reply": 0},
            {"l4_proto": TCP, "dst_port": 8080, "is_reply": 0},
            {"l4_proto": UDP, "dst_port": 53, "is_reply": 0},
            {"l4_proto": ICMP, "icmp_type": 8, "is_reply": 0},
            {"l4_proto": TCP, "dst_port": 41234, "is_reply": 1},  # reply: ephemeral port
            {"l4_proto": TCP, "dst_port": 9999, "is_reply": -1},  # unknown: maybe a reply
            {"l4_proto": TCP, "dst_port": 7777, "is_reply": 0, "verdict": record.DROPPED},
        ),
        tables,
    )
    assert series(m, "hubble_port_distribution_total") == {
        L(protocol="TCP", port="8080"): 2,
        L(protocol="UDP", port="53"): 1,
        L(protocol="ICMPv4", port="0"): 1,
    }


def world_flows(tables: Tables) -> np.ndarray:
    labelled = EndpointMeta(identity=16777217, labels=("cidr:1.1.1.1/32", "reserved:world"))
    return rows_of(
        tables,
        {"dst": WORLD, "l4_proto": TCP, "dst_port": 80, "tcp_flags": SYN, "is_reply": 0},
        {"dst": WORLD, "l4_proto": TCP, "dst_port": 80, "tcp_flags": ACK, "is_reply": 0},
        {"dst": WORLD, "l4_proto": TCP, "dst_port": 80, "tcp_flags": SYN | ACK, "is_reply": 1},
        {"dst": WORLD, "l4_proto": UDP, "dst_port": 53, "is_reply": 0},
        {"dst": WORLD, "l4_proto": TCP, "dst_port": 443, "tcp_flags": SYN, "verdict": record.DROPPED,
         "event_type": DROP, "drop_reason": POLICY_DENIED},
        {"dst": WORLD, "l4_proto": TCP, "dst_port": 443, "tcp_flags": SYN, "verdict": record.DROPPED,
         "event_type": DROP, "drop_reason": INVALID_SOURCE_IP},
        {"dst": EndpointMeta(identity=9), "l4_proto": ICMP, "icmp_type": 8, "is_reply": 0},
        {"dst": labelled, "l4_proto": TCP, "dst_port": 8443, "tcp_flags": SYN, "is_reply": 0},
        {"dst": ECHO, "l4_proto": TCP, "dst_port": 8080, "tcp_flags": SYN, "is_reply": 0},
        {"dst": WORLD, "l4_proto": 0, "is_reply": 0},  # no L4: not counted
    )  # fmt: skip


def test_flows_to_world_default_counts_requests_and_policy_drops(tables: Tables) -> None:
    m = HubbleMetrics("flows-to-world")
    m.process(world_flows(tables), tables)
    assert series(m, "hubble_flows_to_world_total") == {
        L(protocol="TCP", verdict="FORWARDED"): 3,
        L(protocol="UDP", verdict="FORWARDED"): 1,
        L(protocol="TCP", verdict="DROPPED"): 1,
        L(protocol="ICMPv4", verdict="FORWARDED"): 1,
    }


def test_flows_to_world_options_any_drop_port_syn_only(tables: Tables) -> None:
    m = HubbleMetrics("flows-to-world:any-drop;port")
    m.process(world_flows(tables), tables)
    assert series(m, "hubble_flows_to_world_total") == {
        L(protocol="TCP", verdict="FORWARDED", port="80"): 2,
        L(protocol="TCP", verdict="FORWARDED", port="8443"): 1,
        L(protocol="UDP", verdict="FORWARDED", port="53"): 1,
        L(protocol="TCP", verdict="DROPPED", port="443"): 2,
        L(protocol="ICMPv4", verdict="FORWARDED", port=""): 1,
    }
    syn = HubbleMetrics("flows-to-world:syn-only")
    syn.process(world_flows(tables), tables)
    assert series(syn, "hubble_flows_to_world_total") == {
        L(protocol="TCP", verdict="FORWARDED"): 2,
        L(protocol="TCP", verdict="DROPPED"): 1,
    }


def test_policy_counts_verdict_events_but_not_host_or_health(tables: Tables) -> None:
    m = HubbleMetrics("policy")
    pv = {"event_type": POLICY, "l4_proto": TCP}
    host, health = EndpointMeta(identity=1), EndpointMeta(identity=4)
    m.process(
        rows_of(
            tables,
            {**pv, "src": CLIENT, "dst": ECHO, "traffic_direction": 1, "policy_match": 2},
            {**pv, "src": CLIENT, "dst": ECHO, "traffic_direction": 1, "policy_match": 2},
            {**pv, "src": CLIENT, "dst": WORLD, "traffic_direction": 2, "verdict": record.DROPPED},
            {
                **pv,
                "src": CLIENT,
                "dst": ECHO,
                "traffic_direction": 1,
                "policy_match": 4,
                "verdict": record.AUDIT,
            },
            {**pv, "src": host, "dst": ECHO, "traffic_direction": 1, "policy_match": 1},
            {**pv, "src": health, "dst": ECHO, "traffic_direction": 1, "policy_match": 1},
            {**pv, "src": CLIENT, "dst": health, "traffic_direction": 2, "policy_match": 1},
            {"src": CLIENT, "dst": ECHO, "traffic_direction": 1, "l4_proto": TCP},  # a trace: not a verdict
        ),
        tables,
    )
    assert series(m, "hubble_policy_verdicts_total") == {
        L(direction="ingress", match="l3-l4", action="forwarded"): 2,
        L(direction="egress", match="none", action="dropped"): 1,
        L(direction="ingress", match="all", action="audit"): 1,
    }


def test_l7_plugins_register_their_metrics_and_count_nothing_yet(tables: Tables) -> None:
    m = HubbleMetrics("dns:query;ignoreAAAA httpV2:exemplars=true;sourceContext=workload-name kafka")
    m.process(rows_of(tables, {"l4_proto": UDP, "dst_port": 53, "is_reply": 0}), tables)
    got = scrape(m)
    for family in (
        "hubble_dns_queries",
        "hubble_dns_responses",
        "hubble_dns_response_types",
        "hubble_http_requests",
        "hubble_http_request_duration_seconds",
        "hubble_kafka_requests",
        "hubble_kafka_request_duration_seconds",
    ):
        assert family in got, family
        assert not any(v for name, s in got.items() if name.startswith(family) for v in s.values())
    assert HubbleMetrics("http").enabled == ["http"]


# ---- context options ---------------------------------------------------------------------------
def one_flow_each_way(tables: Tables) -> np.ndarray:
    return rows_of(
        tables,
        {"src": CLIENT, "dst": ECHO, "src_ip": "10.244.1.10", "dst_ip": "10.244.1.20", "l4_proto": TCP,
         "tcp_flags": SYN, "is_reply": 0, "traffic_direction": 2},
        {"src": ECHO, "dst": CLIENT, "src_ip": "10.244.1.20", "dst_ip": "10.244.1.10", "l4_proto": TCP,
         "tcp_flags": SYN | ACK, "is_reply": 1, "traffic_direction": 1},
        {"src": CLIENT, "dst": WORLD, "src_ip": "10.244.1.10", "dst_ip": "1.1.1.1", "l4_proto": TCP,
         "tcp_flags": SYN, "is_reply": 0, "traffic_direction": 2},
    )  # fmt: skip


@pytest.mark.parametrize(
    ("context", "client", "echo", "world"),
    [
        ("namespace", "cilium-test", "cilium-test", ""),
        ("pod", "cilium-test/client-645b68dcf7-s5mdb", "cilium-test/echo-same-node-7f896b8c5b-2xkl8", ""),
        ("pod-name", "client-645b68dcf7-s5mdb", "echo-same-node-7f896b8c5b-2xkl8", ""),
        ("pod-short", "cilium-test/client", "cilium-test/echo-same-node", ""),
        ("workload", "cilium-test/client", "cilium-test/echo-same-node", ""),
        ("workload-name", "client", "echo-same-node", ""),
        ("app", "client", "echo", ""),
        (
            "identity",
            "k8s:app=client,k8s:io.kubernetes.pod.namespace=cilium-test",
            "k8s:app.kubernetes.io/name=echo,k8s:kind=echo",
            "reserved:world",
        ),
        ("reserved-identity", "", "", "reserved:world"),
        ("ip", "10.244.1.10", "10.244.1.20", "1.1.1.1"),
        (
            "pod|ip",
            "cilium-test/client-645b68dcf7-s5mdb",
            "cilium-test/echo-same-node-7f896b8c5b-2xkl8",
            "1.1.1.1",
        ),
        ("dns|reserved-identity|ip", "10.244.1.10", "10.244.1.20", "reserved:world"),
    ],
)
def test_source_and_destination_context(
    tables: Tables, context: str, client: str, echo: str, world: str
) -> None:
    m = HubbleMetrics(f"tcp:sourceContext={context};destinationContext={context}")
    m.process(one_flow_each_way(tables), tables)
    want: dict[frozenset[tuple[str, str]], float] = {}
    for flag, src, dst in (("SYN", client, echo), ("SYN-ACK", echo, client), ("SYN", client, world)):
        key = L(flag=flag, family="IPv4", source=src, destination=dst)
        want[key] = want.get(key, 0) + 1
    assert series(m, "hubble_tcp_flags_total") == want


def test_labels_context_adds_every_listed_label_on_every_metric_of_the_plugin(tables: Tables) -> None:
    labels = (
        "source_ip,source_namespace,source_pod,source_workload,source_workload_kind,source_app,"
        "destination_ip,destination_namespace,destination_pod,destination_workload,destination_app,traffic_direction"
    )
    m = HubbleMetrics(f"flow:labelsContext={labels} drop")
    m.process(one_flow_each_way(tables)[:1], tables)
    assert series(m, "hubble_flows_processed_total") == {
        L(
            protocol="TCP",
            type="Trace",
            subtype="to-endpoint",
            verdict="FORWARDED",
            source_ip="10.244.1.10",
            source_namespace="cilium-test",
            source_pod="client-645b68dcf7-s5mdb",
            source_workload="client",
            source_workload_kind="Deployment",
            source_app="client",
            destination_ip="10.244.1.20",
            destination_namespace="cilium-test",
            destination_pod="echo-same-node-7f896b8c5b-2xkl8",
            destination_workload="echo-same-node",
            destination_app="echo",
            traffic_direction="egress",
        ): 1
    }
    # the other plugin keeps its own (empty) context; counter families are named without _total
    assert "hubble_drop" in scrape(m)


def test_direction_specific_context_overrides_the_plain_one(tables: Tables) -> None:
    m = HubbleMetrics("tcp:sourceContext=namespace;sourceIngressContext=pod-name")
    m.process(one_flow_each_way(tables), tables)
    assert series(m, "hubble_tcp_flags_total") == {
        L(flag="SYN", family="IPv4", source="cilium-test"): 2,  # egress: plain context
        L(flag="SYN-ACK", family="IPv4", source="echo-same-node-7f896b8c5b-2xkl8"): 1,  # ingress override
    }


def test_ipv6_addresses_are_formatted(tables: Tables) -> None:
    m = HubbleMetrics("flow:labelsContext=source_ip,destination_ip")
    m.process(
        rows_of(tables, {"ip_version": 6, "src_ip": "fd00::a", "dst_ip": "2001:db8::1", "l4_proto": UDP}),
        tables,
    )
    (key,) = series(m, "hubble_flows_processed_total")
    assert dict(key)["source_ip"] == "fd00::a" and dict(key)["destination_ip"] == "2001:db8::1"


# ---- cardinality control -----------------------------------------------------------------------
def test_series_of_a_deleted_pod_are_removed_after_the_delay(tables: Tables) -> None:
    m = HubbleMetrics(
        "tcp:sourceContext=pod;destinationContext=pod "
        "flow:labelsContext=source_namespace,source_pod "
        "drop:sourceContext=namespace"
    )
    rows = rows_of(
        tables,
        {"src": CLIENT, "dst": ECHO, "l4_proto": TCP, "tcp_flags": SYN, "is_reply": 0},
        {"src": OTHER, "dst": ECHO, "l4_proto": TCP, "tcp_flags": SYN, "is_reply": 0},
        {"src": CLIENT, "dst": ECHO, "l4_proto": TCP, "verdict": record.DROPPED, "event_type": DROP,
         "drop_reason": POLICY_DENIED},
    )  # fmt: skip
    m.process(rows, tables)
    client = "cilium-test/client-645b68dcf7-s5mdb"

    m.endpoint_deleted(CLIENT, delay_s=60)
    assert m.expire() == 0  # not yet: the last increments must still be scrapable
    assert any(dict(k).get("source") == client for k in series(m, "hubble_tcp_flags_total"))

    assert m.expire(time.monotonic() + 61) > 0
    tcp = series(m, "hubble_tcp_flags_total")
    assert tcp == {
        L(flag="SYN", family="IPv4", source="other/lonely", destination="cilium-test/" + ECHO.pod_name): 1
    }
    flows = series(m, "hubble_flows_processed_total")
    assert {dict(k)["source_pod"] for k in flows} == {"lonely"}
    # namespace context does not name a pod: kept
    assert series(m, "hubble_drop_total") == {
        L(reason="POLICY_DENIED", protocol="TCP", source="cilium-test"): 1
    }

    # a destination-side match, at once (delay 0)
    m.endpoint_deleted(ECHO, delay_s=0)
    assert series(m, "hubble_tcp_flags_total") == {}
    # counting resumes from zero if the pod name shows up again
    m.process(rows[:1], tables)
    assert sum(series(m, "hubble_tcp_flags_total").values()) == 1


# ---- lost events, spec errors, serving ---------------------------------------------------------
def test_lost_events_are_always_registered_with_any_plugin() -> None:
    m = HubbleMetrics("icmp")
    assert series(m, "hubble_lost_events_total") == {
        L(source="perf_event_ring_buffer"): 0,
        L(source="observer_events_queue"): 0,
        L(source="hubble_ring_buffer"): 0,
    }
    m.lost("hubble_ring_buffer", 5)
    m.lost("PERF_EVENT_RING_BUFFER", 2)
    got = series(m, "hubble_lost_events_total")
    assert got[L(source="hubble_ring_buffer")] == 5 and got[L(source="perf_event_ring_buffer")] == 2
    with pytest.raises(ValueError, match="lost event source 'kernel'"):
        m.lost("kernel", 1)
    off = HubbleMetrics("")
    off.lost("hubble_ring_buffer", 1)
    assert scrape(off) == {} and off.enabled == []


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("flow bogus", "unknown Hubble metrics plugin 'bogus'"),
        ("tcp:color=blue", "plugin 'tcp': unknown option 'color'"),
        (
            "tcp:sourceContext=pod|galaxy",
            "plugin 'tcp': option sourceContext='pod|galaxy': unknown context 'galaxy'",
        ),
        ("drop:labelsContext=source_pod,shoe_size", "plugin 'drop'.*invalid labelsContext value 'shoe_size'"),
        ("flow flow", "plugin 'flow' is listed twice"),
        ("http httpV2", "'http' and 'httpV2'"),
        ("httpV2:exemplars=maybe", "plugin 'httpV2': option exemplars='maybe'"),
        ("flows-to-world:any-drop;ANY-DROP", "option 'ANY-DROP' given twice"),
        (":port", "no plugin name"),
        ("icmp:any-drop", "plugin 'icmp': unknown option 'any-drop'"),
    ],
)
def test_invalid_spec_names_the_plugin_and_option(spec: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        HubbleMetrics(spec)


def test_spec_parsing_matches_hubble_syntax() -> None:
    specs = parse_spec("dns:query;ignoreAAAA   http:destinationContext=workload-name flow")
    assert [(s.name, s.options) for s in specs] == [
        ("dns", {"query": "", "ignoreAAAA": ""}),
        ("http", {"destinationContext": "workload-name"}),
        ("flow", {}),
    ]
    assert specs[0].has("ignoreaaaa") and specs[1].get("DESTINATIONCONTEXT") == "workload-name"


def test_many_rows_one_increment_per_series(tables: Tables, monkeypatch: pytest.MonkeyPatch) -> None:
    """A big batch is grouped before it reaches prometheus_client: one inc() per distinct label set."""
    m = HubbleMetrics("flow:sourceContext=pod port-distribution")
    n = 50_000
    base = rows_of(tables, {"src": CLIENT, "l4_proto": TCP, "dst_port": 80, "is_reply": 0},
                   {"src": OTHER, "l4_proto": UDP, "dst_port": 53, "is_reply": 0})  # fmt: skip
    rows = np.tile(base, n // 2)
    calls = 0
    from prometheus_client.values import MutexValue

    real_inc = MutexValue.inc

    def counting_inc(self: MutexValue, amount: float) -> None:
        nonlocal calls
        calls += 1
        real_inc(self, amount)

    monkeypatch.setattr(MutexValue, "inc", counting_inc)
    m.process(rows, tables)
    assert calls == 4  # 2 flow series + 2 port series
    got = series(m, "hubble_port_distribution_total")
    assert got == {L(protocol="TCP", port="80"): n // 2, L(protocol="UDP", port="53"): n // 2}


def test_serve_metrics_exposes_the_registry_over_http(tables: Tables) -> None:
    m = HubbleMetrics("flow")
    m.process(rows_of(tables, {"l4_proto": TCP}), tables)
    server = serve_metrics(m.registry, "127.0.0.1", 0)
    try:
        body = urllib.request.urlopen(f"http://127.0.0.1:{server.port}/metrics", timeout=5).read().decode()
    finally:
        server.close()
    want = (
        'hubble_flows_processed_total{protocol="TCP",subtype="to-endpoint",type="Trace",verdict="FORWARDED"}'
    )
    assert f"{want} 1.0" in body


def test_listen_addresses_in_cilium_syntax() -> None:
    assert parse_listen_address(":9965") == ("", 9965)
    assert parse_listen_address("127.0.0.1:9962") == ("127.0.0.1", 9962)
    assert parse_listen_address("[::1]:9965") == ("::1", 9965)
    with pytest.raises(ValueError, match="use \\[host\\]:port"):
        parse_listen_address("9965")
    server = serve_metrics(HubbleMetrics("flow").registry, "", 0)  # "" = all interfaces
    try:
        body = urllib.request.urlopen(f"http://127.0.0.1:{server.port}/metrics", timeout=5).read().decode()
    finally:
        server.close()
    assert "# TYPE hubble_flows_processed_total counter" in body
