"""Stored rows -> flow.Flow (tendril.hubble.convert), against hand-built rows and the hubble CLI fixtures."""

from __future__ import annotations

import ipaddress
import json
import os
import uuid as _uuid
from pathlib import Path

import numpy as np
import pytest
from google.protobuf import json_format

from tendril.hubble import record as rec
from tendril.hubble.api import flow_pb2, observer_pb2
from tendril.hubble.convert import (
    EMITTER_NAME,
    FieldMaskError,
    apply_field_mask,
    compile_field_mask,
    icmp_type_code_text,
    l34_summary,
    row_to_proto,
    rows_to_protos,
)
from tendril.hubble.filters import FilterError
from tendril.hubble.record import EndpointMeta, Tables

FIXTURES = Path(
    os.environ.get("HUBBLE_CLI_FIXTURES", Path(__file__).resolve().parents[2] / "shared/fixtures/hubble-cli")
)
needs_fixtures = pytest.mark.skipif(not FIXTURES.is_dir(), reason="hubble CLI fixtures not available")

# The CLI's default field mask (-o compact / dict / table), hubble-api.md section 3.
DEFAULT_MASK = [
    "time", "verdict", "ethernet", "IP", "l4", "source.identity", "source.namespace", "source.pod_name",
    "destination.identity", "destination.namespace", "destination.pod_name", "Type", "node_name", "l7",
    "event_type", "source_service", "destination_service", "is_reply", "Summary", "ip_trace_id",
]  # fmt: skip

XWING = EndpointMeta(
    id=1123,
    identity=15783,
    namespace="default",
    pod_name="xwing",
    labels=("k8s:app.kubernetes.io/name=xwing", "k8s:class=xwing"),
    workloads=(("xwing", "Pod"),),
    cluster_name="kind-kind",
)
DEATHSTAR = EndpointMeta(
    id=3077,
    identity=23416,
    namespace="default",
    pod_name="deathstar-8464cdd4d9-5bq2k",
    labels=("k8s:class=deathstar",),
)


def v16(ip: str) -> np.void:
    return np.void(ipaddress.ip_address(ip).packed.ljust(16, b"\0"))


def to_json(msg: object) -> dict:
    return json.loads(json_format.MessageToJson(msg, preserving_proto_field_name=True))  # type: ignore[arg-type]


@pytest.fixture
def tables() -> Tables:
    return Tables()


def tcp_syn_row(tables: Tables) -> np.ndarray:
    row = rec.empty(1)
    row["time_ns"] = 1_715_679_000_123_456_789
    row["uuid"] = np.void(_uuid.UUID("6d1f2c9a-0b1e-4f3b-9c1d-000000000001").bytes)
    row["node"] = tables.strings.intern("kind-worker2")
    row["verdict"] = rec.FORWARDED
    row["flow_type"] = rec.L3_L4
    row["event_type"] = 4
    row["trace_point"] = 101
    row["ip_version"] = 4
    row["src_ip"], row["dst_ip"] = v16("10.244.1.15"), v16("10.244.2.31")
    row["l4_proto"] = 6
    row["tcp_flags"] = 0x02
    row["src_port"], row["dst_port"] = 43210, 80
    row["is_reply"] = 0
    row["traffic_direction"] = rec.INGRESS
    row["src_ep"] = tables.endpoints.intern(XWING)
    row["src_identity"] = XWING.identity
    row["dst_ep"] = tables.endpoints.intern(DEATHSTAR)
    row["dst_identity"] = DEATHSTAR.identity
    row["ifindex"] = 14
    row["ifname"] = tables.strings.intern("lxc8a6c1f0f9d3e")
    return row


def test_tcp_trace_row(tables: Tables) -> None:
    f = row_to_proto(tcp_syn_row(tables)[0], tables)
    assert to_json(f) == {
        "time": "2024-05-14T09:30:00.123456789Z",
        "uuid": "6d1f2c9a-0b1e-4f3b-9c1d-000000000001",
        "emitter": {"name": EMITTER_NAME, "version": f.emitter.version},
        "verdict": "FORWARDED",
        "IP": {"source": "10.244.1.15", "destination": "10.244.2.31", "ipVersion": "IPv4"},
        "l4": {"TCP": {"source_port": 43210, "destination_port": 80, "flags": {"SYN": True}}},
        "source": {
            "ID": 1123,
            "identity": 15783,
            "cluster_name": "kind-kind",
            "namespace": "default",
            "labels": ["k8s:app.kubernetes.io/name=xwing", "k8s:class=xwing"],
            "pod_name": "xwing",
            "workloads": [{"name": "xwing", "kind": "Pod"}],
        },
        "destination": {
            "ID": 3077,
            "identity": 23416,
            "namespace": "default",
            "labels": ["k8s:class=deathstar"],
            "pod_name": "deathstar-8464cdd4d9-5bq2k",
        },
        "Type": "L3_L4",
        "node_name": "kind-worker2",
        "event_type": {"type": 4},
        "traffic_direction": "INGRESS",
        "trace_observation_point": "TO_ENDPOINT",
        "trace_reason": "NEW",
        "is_reply": False,
        "interface": {"index": 14, "name": "lxc8a6c1f0f9d3e"},
        "Summary": "TCP Flags: SYN",
    }
    assert f.emitter.version  # tendril.__version__ or 0.1.0
    assert f.HasField("is_reply") and not f.is_reply.value


def test_drop_row_has_reasons_and_no_is_reply(tables: Tables) -> None:
    row = tcp_syn_row(tables)
    row["verdict"] = rec.DROPPED
    row["event_type"], row["sub_type"], row["drop_reason"] = 1, 133, 133
    row["trace_point"] = 0
    row["is_reply"] = rec.REPLY_UNKNOWN
    f = row_to_proto(row[0], tables)
    assert f.verdict == flow_pb2.DROPPED
    assert f.drop_reason == 133 and f.drop_reason_desc == flow_pb2.POLICY_DENIED
    assert (f.event_type.type, f.event_type.sub_type) == (1, 133)
    assert not f.HasField("is_reply") and not f.reply
    assert (
        f.trace_observation_point == flow_pb2.UNKNOWN_POINT
        and f.trace_reason == flow_pb2.TRACE_REASON_UNKNOWN
    )
    # a drop code outside flow.DropReason stays a number, as Go's enum conversion keeps it
    row["sub_type"], row["drop_reason"] = 99, 99
    assert row_to_proto(row[0], tables).drop_reason_desc == 99


def test_reply_row_and_trace_points(tables: Tables) -> None:
    row = tcp_syn_row(tables)
    row["is_reply"], row["ct_state"] = 1, 2
    row["event_type"], row["sub_type"], row["trace_point"] = 4, 5, 5
    f = row_to_proto(row[0], tables)
    assert f.is_reply.value and f.reply
    assert f.trace_observation_point == flow_pb2.FROM_ENDPOINT and f.trace_reason == flow_pb2.REPLY
    row["trace_point"], row["sub_type"] = 0, 0  # monitor point 0 alone still means TO_ENDPOINT
    assert row_to_proto(row[0], tables).trace_observation_point == flow_pb2.TO_ENDPOINT


def test_far_side_unknown_keeps_only_identity(tables: Tables) -> None:
    row = tcp_syn_row(tables)
    row["dst_ep"], row["dst_identity"] = 0, 2  # world, known only by its identity
    f = row_to_proto(row[0], tables)
    assert to_json(f.destination) == {"identity": 2}
    row["dst_identity"] = 0
    f = row_to_proto(row[0], tables)
    assert not f.HasField("destination") and f.HasField("source")


def test_endpoint_identity_prefers_the_datapaths(tables: Tables) -> None:
    row = tcp_syn_row(tables)
    row["src_identity"] = 0  # not reported: the endpoint metadata's identity
    assert row_to_proto(row[0], tables).source.identity == XWING.identity
    row["src_identity"] = 777
    assert row_to_proto(row[0], tables).source.identity == 777


def test_udp_icmp_sctp_ipv6_rows(tables: Tables) -> None:
    row = tcp_syn_row(tables)
    row["l4_proto"] = 17
    f = row_to_proto(row[0], tables)
    assert to_json(f.l4) == {"UDP": {"source_port": 43210, "destination_port": 80}} and f.Summary == "UDP"
    row["l4_proto"] = 132
    f = row_to_proto(row[0], tables)
    assert f.l4.WhichOneof("protocol") == "SCTP" and f.Summary == "SCTP"
    row["l4_proto"], row["icmp_type"], row["icmp_code"] = 1, 3, 3
    f = row_to_proto(row[0], tables)
    assert (
        to_json(f.l4) == {"ICMPv4": {"type": 3, "code": 3}}
        and f.Summary == "ICMPv4 DestinationUnreachable(Port)"
    )
    row["ip_version"], row["l4_proto"], row["icmp_type"], row["icmp_code"] = 6, 58, 135, 0
    row["src_ip"], row["dst_ip"] = v16("fe80::a8c1:abff:fe12:3456"), v16("ff02::1:ff00:15")
    f = row_to_proto(row[0], tables)
    assert to_json(f.IP) == {
        "source": "fe80::a8c1:abff:fe12:3456",
        "destination": "ff02::1:ff00:15",
        "ipVersion": "IPv6",
    }
    assert to_json(f.l4) == {"ICMPv6": {"type": 135}} and f.Summary == "ICMPv6 NeighborSolicitation"
    row["l4_proto"] = 47  # GRE: no Layer4 Tendril can describe
    f = row_to_proto(row[0], tables)
    assert not f.HasField("l4") and f.Summary == "IPv6"


def test_no_interface_no_time_no_uuid(tables: Tables) -> None:
    row = tcp_syn_row(tables)
    row["ifindex"], row["time_ns"], row["uuid"] = 0, 0, np.void(bytes(16))
    f = row_to_proto(row[0], tables)
    assert not f.HasField("interface") and not f.HasField("time") and f.uuid == ""


def test_services(tables: Tables) -> None:
    row = tcp_syn_row(tables)
    row["dst_service"] = tables.strings.intern("kube-system/kube-dns")
    f = row_to_proto(row[0], tables)
    assert to_json(f.destination_service) == {"name": "kube-dns", "namespace": "kube-system"}
    assert not f.HasField("source_service")


@pytest.mark.parametrize(
    ("args", "text"),
    [
        ((6, 4, 0x02, 0, 0), "TCP Flags: SYN"),
        ((6, 4, 0x12, 0, 0), "TCP Flags: SYN, ACK"),
        ((6, 4, 0x11, 0, 0), "TCP Flags: ACK, FIN"),
        ((6, 4, 0x18, 0, 0), "TCP Flags: ACK, PSH"),
        ((6, 4, 0xFF, 0, 0), "TCP Flags: SYN, ACK, RST, FIN, PSH, URG, ECE, CWR"),
        ((6, 4, 0x00, 0, 0), "TCP Flags: "),
        ((17, 6, 0, 0, 0), "UDP"),
        ((1, 4, 0, 8, 0), "ICMPv4 EchoRequest"),
        ((1, 4, 0, 0, 0), "ICMPv4 EchoReply"),
        ((1, 4, 0, 11, 0), "ICMPv4 TimeExceeded(TTLExceeded)"),
        ((1, 4, 0, 8, 1), "ICMPv4 EchoRequest(Code: 1)"),
        ((1, 4, 0, 3, 42), "ICMPv4 DestinationUnreachable(Code: 42)"),
        ((1, 4, 0, 42, 7), "ICMPv4 42(7)"),
        ((58, 6, 0, 128, 0), "ICMPv6 EchoRequest"),
        ((58, 6, 0, 129, 0), "ICMPv6 EchoReply"),
        ((58, 6, 0, 1, 4), "ICMPv6 DestinationUnreachable(PortUnreachable)"),
        ((58, 6, 0, 136, 0), "ICMPv6 NeighborAdvertisement"),
        ((58, 6, 0, 143, 0), "ICMPv6 143(0)"),
        ((132, 4, 0, 0, 0), "SCTP"),
        ((0, 4, 0, 0, 0), "IPv4"),
        ((0, 0, 0, 0, 0), ""),
    ],
)
def test_summary_text(args: tuple[int, int, int, int, int], text: str) -> None:
    assert l34_summary(*args) == text


def test_icmp_type_code_text_redirect() -> None:
    assert icmp_type_code_text(1, 5, 2) == "Redirect(TOS+Net)"


def test_rows_to_protos_matches_row_to_proto(tables: Tables) -> None:
    rows = np.concatenate([tcp_syn_row(tables), tcp_syn_row(tables)])
    rows[1]["src_ep"], rows[1]["dst_ep"] = rows[0]["dst_ep"], rows[0]["src_ep"]
    many = rows_to_protos(rows, tables)
    assert many == [row_to_proto(r, tables) for r in rows]
    assert many[1].source.pod_name == DEATHSTAR.pod_name


# ---- field masks ------------------------------------------------------------------------------------------


def test_default_cli_field_mask(tables: Tables) -> None:
    f = row_to_proto(tcp_syn_row(tables)[0], tables)
    m = apply_field_mask(f, DEFAULT_MASK)
    assert to_json(m) == {
        "time": "2024-05-14T09:30:00.123456789Z",
        "verdict": "FORWARDED",
        "IP": {"source": "10.244.1.15", "destination": "10.244.2.31", "ipVersion": "IPv4"},
        "l4": {"TCP": {"source_port": 43210, "destination_port": 80, "flags": {"SYN": True}}},
        "source": {"identity": 15783, "namespace": "default", "pod_name": "xwing"},
        "destination": {"identity": 23416, "namespace": "default", "pod_name": "deathstar-8464cdd4d9-5bq2k"},
        "Type": "L3_L4",
        "node_name": "kind-worker2",
        "event_type": {"type": 4},
        "is_reply": False,
        "Summary": "TCP Flags: SYN",
    }
    assert f.uuid and f.HasField("interface")  # the input is not modified


def test_field_mask_keeps_parents_of_nested_paths_like_hubble(tables: Tables) -> None:
    row = tcp_syn_row(tables)
    row["dst_ep"], row["dst_identity"] = 0, 0
    f = row_to_proto(row[0], tables)
    m = apply_field_mask(f, DEFAULT_MASK)
    assert m.HasField("destination") and to_json(m.destination) == {}  # Hubble allocates it
    assert not m.HasField("source_service") and not m.HasField("ethernet")  # leaf fields only when set


def test_field_mask_oneof_and_overlapping_paths(tables: Tables) -> None:
    f = row_to_proto(tcp_syn_row(tables)[0], tables)
    m = apply_field_mask(f, ["l4.UDP.source_port", "l4.TCP.destination_port"])
    assert to_json(m) == {"l4": {"TCP": {"destination_port": 80}}}
    m = apply_field_mask(f, ["source.pod_name", "source"])  # the whole field wins over a sub-path
    assert m.source == f.source
    m = apply_field_mask(f, ["source.labels", "source.workloads", "is_reply"])
    assert list(m.source.labels) == list(XWING.labels) and len(m.source.workloads) == 1
    assert m.HasField("is_reply")
    assert apply_field_mask(f, []) == f


@pytest.mark.parametrize("path", ["nope", "source.nope", "source.labels.x", "IP.source.x", "time.bogus", ""])
def test_invalid_field_mask_path(path: str) -> None:
    with pytest.raises(FieldMaskError) as e:
        compile_field_mask(("time", path))
    assert isinstance(e.value, FilterError) and "field_mask" in str(e.value)


def test_field_mask_matches_protobuf_merge_for_leaf_paths(tables: Tables) -> None:
    from google.protobuf import field_mask_pb2

    f = row_to_proto(tcp_syn_row(tables)[0], tables)
    leaves = [p for p in DEFAULT_MASK if "." not in p]
    ref = flow_pb2.Flow()
    field_mask_pb2.FieldMask(paths=leaves).MergeMessage(f, ref)
    assert apply_field_mask(f, leaves) == ref


# ---- round trip of the hubble CLI fixture flows --------------------------------------------------------

# flows.jsonl lines Tendril's datapath could have produced: pod/host/node -> pod L3/L4 traces and drops
ROUND_TRIP_LINES = [1, 2, 3, 4, 5, 9, 15, 16, 17, 18, 19, 22, 23, 33, 35, 44]

COMPARED = [
    "time", "uuid", "verdict", "drop_reason", "drop_reason_desc", "IP", "l4", "source", "destination", "Type",
    "node_name", "event_type", "source_service", "destination_service", "traffic_direction",
    "trace_observation_point", "trace_reason", "is_reply", "interface", "Summary",
]  # fmt: skip


def fixture_flows() -> dict[int, flow_pb2.Flow]:
    out = {}
    for i, line in enumerate((FIXTURES / "flows.jsonl").read_text().splitlines(), 1):
        resp = observer_pb2.GetFlowsResponse()
        json_format.Parse(line, resp)
        if resp.HasField("flow"):
            out[i] = resp.flow
    return out


def row_from_flow(f: flow_pb2.Flow, tables: Tables) -> np.ndarray:
    """What Tendril's parser stores for the event behind a Hubble flow (the inverse of convert)."""
    row = rec.empty(1)
    row["time_ns"] = f.time.ToNanoseconds()
    row["uuid"] = np.void(_uuid.UUID(f.uuid).bytes)
    row["node"] = tables.strings.intern(f.node_name)
    row["verdict"] = f.verdict
    row["flow_type"] = f.Type
    row["event_type"], row["sub_type"] = f.event_type.type, f.event_type.sub_type
    row["drop_reason"] = f.drop_reason
    row["trace_point"] = f.trace_observation_point
    if f.HasField("IP"):
        row["ip_version"] = 4 if f.IP.ipVersion == flow_pb2.IPv4 else 6
        row["src_ip"], row["dst_ip"] = v16(f.IP.source), v16(f.IP.destination)
    kind = f.l4.WhichOneof("protocol")
    if kind in ("TCP", "UDP", "SCTP"):
        l4 = getattr(f.l4, kind)
        row["l4_proto"] = {"TCP": 6, "UDP": 17, "SCTP": 132}[kind]
        row["src_port"], row["dst_port"] = l4.source_port, l4.destination_port
        if kind == "TCP":
            bits = {"FIN": 1, "SYN": 2, "RST": 4, "PSH": 8, "ACK": 16, "URG": 32, "ECE": 64, "CWR": 128}
            row["tcp_flags"] = sum(b for name, b in bits.items() if getattr(l4.flags, name))
    elif kind in ("ICMPv4", "ICMPv6"):
        l4 = getattr(f.l4, kind)
        row["l4_proto"] = 1 if kind == "ICMPv4" else 58
        row["icmp_type"], row["icmp_code"] = l4.type, l4.code
    for side, ep_col, id_col in (
        ("source", "src_ep", "src_identity"),
        ("destination", "dst_ep", "dst_identity"),
    ):
        if f.HasField(side):
            ep = getattr(f, side)
            meta = EndpointMeta(
                id=ep.ID,
                identity=ep.identity,
                namespace=ep.namespace,
                pod_name=ep.pod_name,
                labels=tuple(ep.labels),
                workloads=tuple((w.name, w.kind) for w in ep.workloads),
                cluster_name=ep.cluster_name,
            )
            row[ep_col] = tables.endpoints.intern(meta)
            row[id_col] = ep.identity
    for side, col in (("source_service", "src_service"), ("destination_service", "dst_service")):
        if f.HasField(side):
            svc = getattr(f, side)
            row[col] = tables.strings.intern(f"{svc.namespace}/{svc.name}")
    row["traffic_direction"] = f.traffic_direction
    row["is_reply"] = int(f.is_reply.value) if f.HasField("is_reply") else rec.REPLY_UNKNOWN
    row["ct_state"] = max(f.trace_reason - 1, 0)
    if f.HasField("interface"):
        row["ifindex"] = f.interface.index
        row["ifname"] = tables.strings.intern(f.interface.name)
    return row


@needs_fixtures
@pytest.mark.parametrize("line", ROUND_TRIP_LINES)
def test_fixture_flow_round_trip(tables: Tables, line: int) -> None:
    want = fixture_flows()[line]
    got = row_to_proto(row_from_flow(want, tables)[0], tables)
    assert to_json(apply_field_mask(got, COMPARED)) == to_json(apply_field_mask(want, COMPARED))


@needs_fixtures
def test_round_trip_lines_are_the_l3_l4_pod_flows() -> None:
    flows = fixture_flows()
    for line in ROUND_TRIP_LINES:
        f = flows[line]
        assert f.Type == flow_pb2.L3_L4 and f.event_type.type in (1, 4) and f.HasField("IP")
