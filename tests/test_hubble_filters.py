"""Hubble FlowFilter semantics over hand-built FLOW_DTYPE rows (tendril.hubble.filters)."""

from __future__ import annotations

import ipaddress
import uuid as _uuid
from dataclasses import dataclass

import numpy as np
import pytest

from tendril.hubble import record as rec
from tendril.hubble.api import flow_pb2
from tendril.hubble.filters import HANDLED_FIELDS, FilterError, compile_filters
from tendril.hubble.filters import label_selector as ls
from tendril.hubble.record import EndpointMeta, Interner, Tables

FF = flow_pb2.FlowFilter

XWING = EndpointMeta(
    id=1123,
    identity=15783,
    namespace="default",
    pod_name="xwing",
    labels=(
        "k8s:app.kubernetes.io/name=xwing",
        "k8s:class=xwing",
        "k8s:org=alliance",
        "k8s:io.kubernetes.pod.namespace=default",
    ),
    workloads=(("xwing", "Pod"),),
    cluster_name="kind-kind",
)
DEATHSTAR = EndpointMeta(
    id=3077,
    identity=23416,
    namespace="default",
    pod_name="deathstar-8464cdd4d9-5bq2k",
    labels=("k8s:class=deathstar", "k8s:org=empire", "k8s:io.kubernetes.pod.namespace=default", "k8s:tier=3"),
    workloads=(("deathstar", "Deployment"),),
    cluster_name="kind-kind",
)
TIEFIGHTER = EndpointMeta(
    id=2001,
    identity=23417,
    namespace="default",
    pod_name="tiefighter",
    labels=(
        "k8s:class=tiefighter",
        "k8s:org=empire",
        "k8s:io.kubernetes.pod.namespace=default",
        "k8s:tier=1",
    ),
    workloads=(("tiefighter", "Pod"),),
    cluster_name="kind-kind",
)
COREDNS = EndpointMeta(
    id=411,
    identity=102,
    namespace="kube-system",
    pod_name="coredns-5d78c9869d-7rk2p",
    labels=("k8s:k8s-app=kube-dns", "k8s:io.kubernetes.pod.namespace=kube-system"),
    workloads=(("coredns", "Deployment"),),
    cluster_name="kind-kind",
)
HOST = EndpointMeta(identity=1, labels=("reserved:host",))

UUID0 = "6d1f2c9a-0b1e-4f3b-9c1d-000000000000"


def v16(ip: str) -> np.void:
    return np.void(ipaddress.ip_address(ip).packed.ljust(16, b"\0"))


def make_rows(tables: Tables, *specs: dict) -> np.ndarray:
    """Rows from dicts of FLOW_DTYPE columns plus conveniences: src/dst (IP text), src_meta/dst_meta
    (EndpointMeta, interned; identity copied unless given), node/ifname/src_service/dst_service (text)."""
    rows = rec.empty(len(specs))
    for i, spec in enumerate(specs):
        spec = dict(spec)
        row = rows[i : i + 1]
        row["verdict"] = rec.FORWARDED
        row["flow_type"] = rec.L3_L4
        row["event_type"] = 4
        row["uuid"] = np.void(_uuid.UUID(UUID0[:-4] + f"{i:04d}").bytes)
        if "src" in spec:
            src, dst = spec.pop("src"), spec.pop("dst")
            row["ip_version"] = ipaddress.ip_address(src).version
            row["src_ip"], row["dst_ip"] = v16(src), v16(dst)
        for side, ep_col, id_col in (
            ("src_meta", "src_ep", "src_identity"),
            ("dst_meta", "dst_ep", "dst_identity"),
        ):
            meta = spec.pop(side, None)
            if meta is not None:
                row[ep_col] = tables.endpoints.intern(meta)
                row[id_col] = meta.identity
        for col in ("node", "ifname", "src_service", "dst_service"):
            if col in spec:
                row[col] = tables.strings.intern(spec.pop(col))
        for col, value in spec.items():
            row[col] = value
    return rows


TCP_SYN, TCP_ACK, TCP_FIN, TCP_RST, TCP_PSH = 0x02, 0x10, 0x01, 0x04, 0x08


@pytest.fixture
def tables() -> Tables:
    return Tables()


@pytest.fixture
def rows(tables: Tables) -> np.ndarray:
    # fmt: off
    return make_rows(
        tables,
        # 0: xwing -> deathstar TCP SYN, to-endpoint on kind-worker2
        dict(
            src="10.244.1.15", dst="10.244.2.31", src_meta=XWING, dst_meta=DEATHSTAR, l4_proto=6,
            src_port=43210, dst_port=80, tcp_flags=TCP_SYN, is_reply=0, traffic_direction=rec.INGRESS,
            trace_point=101, node="kind-worker2", ifindex=14, ifname="lxc8a6c1f0f9d3e",
        ),
        # 1: deathstar -> xwing SYN/ACK reply, to-endpoint on kind-worker
        dict(
            src="10.244.2.31", dst="10.244.1.15", src_meta=DEATHSTAR, dst_meta=XWING, l4_proto=6,
            src_port=80, dst_port=43210, tcp_flags=TCP_SYN | TCP_ACK, is_reply=1,
            traffic_direction=rec.INGRESS, trace_point=101, node="kind-worker", ifindex=7, ifname="lxc11",
        ),
        # 2: xwing -> coredns UDP/53, from-endpoint, to the kube-dns service
        dict(
            src="10.244.1.15", dst="10.244.0.5", src_meta=XWING, dst_meta=COREDNS, l4_proto=17,
            src_port=38461, dst_port=53, is_reply=0, traffic_direction=rec.EGRESS, sub_type=5, trace_point=5,
            node="kind-worker", dst_service="kube-system/kube-dns",
        ),
        # 3: tiefighter -> deathstar, policy-denied drop
        dict(
            src="10.244.1.22", dst="10.244.2.31", src_meta=TIEFIGHTER, dst_meta=DEATHSTAR, l4_proto=6,
            src_port=51234, dst_port=80, tcp_flags=TCP_SYN, verdict=rec.DROPPED, event_type=1, sub_type=133,
            drop_reason=133, traffic_direction=rec.INGRESS, node="kind-worker2", ifindex=14,
            ifname="lxc8a6c1f0f9d3e",
        ),
        # 4: xwing -> deathstar ICMPv4 echo request
        dict(
            src="10.244.1.15", dst="10.244.2.31", src_meta=XWING, dst_meta=DEATHSTAR, l4_proto=1, icmp_type=8,
            is_reply=0, traffic_direction=rec.INGRESS, trace_point=101, node="kind-worker2",
        ),
        # 5: xwing -> deathstar over IPv6, ICMPv6 echo request
        dict(
            src="fd00:10:244:1::15", dst="fd00:10:244:2::31", src_meta=XWING, dst_meta=DEATHSTAR, l4_proto=58,
            icmp_type=128, is_reply=0, traffic_direction=rec.INGRESS, trace_point=101, node="kind-worker2",
        ),
        # 6: host -> coredns TCP SYN, on the control plane (node name with a cluster prefix)
        dict(
            src="10.244.0.1", dst="10.244.0.5", src_meta=HOST, dst_meta=COREDNS, l4_proto=6, src_port=35002,
            dst_port=8181, tcp_flags=TCP_SYN, is_reply=0, traffic_direction=rec.INGRESS, trace_point=101,
            node="kind-kind/kind-control-plane",
        ),
        # 7: xwing -> world 1.1.1.1:443, far side known only by identity, to-stack
        dict(
            src="10.244.1.15", dst="1.1.1.1", src_meta=XWING, dst_identity=2, l4_proto=6, src_port=40100,
            dst_port=443, tcp_flags=TCP_SYN | TCP_PSH, is_reply=0, traffic_direction=rec.EGRESS, sub_type=3,
            trace_point=3, node="kind-worker",
        ),
        # 8: no IP header at all (e.g. ARP seen by a trace point), no endpoints
        dict(event_type=4, node="kind-worker"),
        # 9: SCTP between the two pods, error verdict drop with unknown direction
        dict(
            src="10.244.1.15", dst="10.244.2.31", src_meta=XWING, dst_meta=DEATHSTAR, l4_proto=132,
            src_port=36412, dst_port=38412, verdict=rec.ERROR, event_type=1, sub_type=155, drop_reason=155,
            node="kind-worker2",
        ),
    )
    # fmt: on


def hits(tables: Tables, rows: np.ndarray, whitelist=(), blacklist=()) -> list[int]:  # noqa: ANN001
    pred = compile_filters(list(whitelist), list(blacklist), tables)
    mask = pred(rows)
    assert mask.dtype == bool and mask.shape == (len(rows),)
    return [int(i) for i in np.flatnonzero(mask)]


def error_of(tables: Tables, *flt: flow_pb2.FlowFilter) -> FilterError:
    with pytest.raises(FilterError) as e:
        compile_filters(list(flt), [], tables)
    return e.value


# ---- every field is handled ---------------------------------------------------------------------


def test_every_flowfilter_field_is_handled_not_ignored() -> None:
    assert {f.name for f in flow_pb2.FlowFilter.DESCRIPTOR.fields} == set(HANDLED_FIELDS)


# ---- combination semantics -----------------------------------------------------------------------


def test_no_filters_match_everything(tables: Tables, rows: np.ndarray) -> None:
    assert hits(tables, rows) == list(range(10))
    assert compile_filters([], [], tables).matches_everything


def test_or_within_a_field_and_across_fields(tables: Tables, rows: np.ndarray) -> None:
    assert hits(tables, rows, [FF(destination_port=["53", "443"])]) == [2, 7]
    # AND across fields of one FlowFilter
    assert hits(tables, rows, [FF(source_pod=["default/xwing"], protocol=["tcp"])]) == [0, 7]
    assert hits(
        tables, rows, [FF(source_pod=["default/xwing"], protocol=["tcp"], destination_port=["80"])]
    ) == [0]


def test_or_across_flowfilters_and_blacklist(tables: Tables, rows: np.ndarray) -> None:
    either = [FF(source_pod=["xwing"]), FF(destination_pod=["xwing"])]
    assert hits(tables, rows, either) == [0, 1, 2, 4, 5, 7, 9]
    not_tcp = [FF(protocol=["tcp"])]
    assert hits(tables, rows, either, not_tcp) == [2, 4, 5, 9]
    # blacklist alone: everything except what it matches
    assert hits(tables, rows, [], [FF(verdict=[flow_pb2.FORWARDED])]) == [3, 9]
    # the CLI's `--pod deathstar --not --verdict FORWARDED`
    pod = [FF(source_pod=["deathstar"]), FF(destination_pod=["deathstar"])]
    assert hits(tables, rows, pod, [FF(verdict=[flow_pb2.FORWARDED])]) == [3, 9]


def test_empty_flowfilter_matches_everything(tables: Tables, rows: np.ndarray) -> None:
    assert hits(tables, rows, [FF()]) == list(range(10))
    assert hits(tables, rows, [FF(verdict=[flow_pb2.DROPPED]), FF()]) == list(range(10))
    assert hits(tables, rows, [], [FF()]) == []  # as Hubble: an empty denylist entry hides all


def test_filter_compiled_before_new_endpoints_and_strings_appear(tables: Tables, rows: np.ndarray) -> None:
    pred = compile_filters(
        [FF(source_pod=["default/late"], interface=[flow_pb2.NetworkInterface(name="lxc9")])], [], tables
    )
    assert not pred(rows).any()
    late = EndpointMeta(id=9, identity=9999, namespace="default", pod_name="late-pod")
    more = make_rows(tables, dict(src="10.0.0.9", dst="10.0.0.1", src_meta=late, ifindex=9, ifname="lxc9"))
    assert pred(more).tolist() == [True]


# ---- ip / ip_version -------------------------------------------------------------------------------


def test_ip_exact_and_cidr(tables: Tables, rows: np.ndarray) -> None:
    assert hits(tables, rows, [FF(source_ip=["10.244.1.15"])]) == [0, 2, 4, 7, 9]
    assert hits(tables, rows, [FF(destination_ip=["1.1.1.1", "10.244.0.5"])]) == [2, 6, 7]
    assert hits(tables, rows, [FF(source_ip=["10.244.0.0/16"], destination_ip=["10.244.2.0/24"])]) == [
        0,
        3,
        4,
        9,
    ]
    assert hits(tables, rows, [FF(destination_ip=["0.0.0.0/0"])]) == [
        0,
        1,
        2,
        3,
        4,
        6,
        7,
        9,
    ]  # not v6, not IP-less
    assert hits(tables, rows, [FF(source_ip=["10.244.1.15/32"])]) == [0, 2, 4, 7, 9]
    assert hits(tables, rows, [FF(source_ip=["10.244.1.99/24"])]) == [0, 2, 3, 4, 7, 9]  # host bits ignored


def test_ipv6_exact_and_cidr(tables: Tables, rows: np.ndarray) -> None:
    assert hits(tables, rows, [FF(source_ip=["fd00:10:244:1::15"])]) == [5]
    assert hits(tables, rows, [FF(source_ip=["FD00:10:244:1:0:0:0:15"])]) == [
        5
    ]  # same address, other spelling
    assert hits(tables, rows, [FF(destination_ip=["fd00:10:244::/48"])]) == [5]
    assert hits(tables, rows, [FF(destination_ip=["::/0"])]) == [5]
    assert hits(tables, rows, [FF(source_ip=["fd00:10:244:2::/64"])]) == []


def test_ip_version(tables: Tables, rows: np.ndarray) -> None:
    assert hits(tables, rows, [FF(ip_version=[flow_pb2.IPv6])]) == [5]
    assert hits(tables, rows, [FF(ip_version=[flow_pb2.IP_NOT_USED])]) == [8]
    assert hits(tables, rows, [FF(ip_version=[flow_pb2.IPv4])]) == [0, 1, 2, 3, 4, 6, 7, 9]


@pytest.mark.parametrize(
    "value",
    [
        "10.0.0.300",
        "10.0.0.0/33",
        "10.0.0.0/255.0.0.0",
        "fe80::1%eth0",
        "nope",
        "",
        "10.0.0.1/",
        "/8",
        " 1.2.3.4",
    ],
)
def test_invalid_ip(tables: Tables, value: str) -> None:
    e = error_of(tables, FF(source_ip=[value]))
    assert e.field == "source_ip"
    assert str(e).startswith("invalid source_ip filter: ")


def test_invalid_ip_message(tables: Tables) -> None:
    e = error_of(tables, FF(destination_ip=["1.1.1.1", "10.0.0.300"]))
    assert str(e) == 'invalid destination_ip filter: "10.0.0.300" is not an IP address or CIDR'


def test_source_ip_xlated_is_validated_and_matches_no_flow(tables: Tables, rows: np.ndarray) -> None:
    assert hits(tables, rows, [FF(source_ip_xlated=["10.244.1.15", "0.0.0.0/0"])]) == []
    assert error_of(tables, FF(source_ip_xlated=["1.2.3"])).field == "source_ip_xlated"


# ---- pods, labels, identities, workloads, clusters, services -------------------------------------------


def test_pod_namespace_and_prefix(tables: Tables, rows: np.ndarray) -> None:
    assert hits(tables, rows, [FF(source_pod=["default/xwing"])]) == [0, 2, 4, 5, 7, 9]
    assert hits(tables, rows, [FF(source_pod=["xwing"])]) == [0, 2, 4, 5, 7, 9]  # no slash: namespace default
    assert hits(tables, rows, [FF(destination_pod=["deathstar"])]) == [0, 3, 4, 5, 9]  # name prefix
    assert hits(tables, rows, [FF(destination_pod=["kube-system/"])]) == [2, 6]  # any pod of the namespace
    assert hits(tables, rows, [FF(destination_pod=["coredns"])]) == []  # coredns is not in default
    assert hits(tables, rows, [FF(destination_pod=["kube-system/coredns-5d78"])]) == [2, 6]
    assert hits(tables, rows, [FF(source_pod=["default/"])]) == [0, 1, 2, 3, 4, 5, 7, 9]
    assert hits(tables, rows, [FF(destination_pod=["default/xwing", "kube-system/"])]) == [1, 2, 6]


@pytest.mark.parametrize("value", ["", "/"])
def test_empty_pod_is_an_error(tables: Tables, value: str) -> None:
    e = error_of(tables, FF(destination_pod=["xwing", value]))
    assert e.field == "destination_pod" and "destination_pod" in str(e)


def test_labels(tables: Tables, rows: np.ndarray) -> None:
    def src(*sel: str) -> list[int]:
        return hits(tables, rows, [FF(source_label=list(sel))])

    assert src("k8s:org=empire") == [1, 3]
    assert src("org=empire") == [1, 3]  # no source prefix: any source
    assert src("any:org=empire") == [1, 3]
    assert src("reserved:org=empire") == []  # wrong source
    assert src("k8s:org==empire") == [1, 3]
    assert src("org in (empire, alliance)") == [0, 1, 2, 3, 4, 5, 7, 9]
    # no org label at all counts as "not in"; so does a side without metadata (row 8), as in Hubble
    assert src("k8s:org notin (alliance)") == [1, 3, 6, 8]
    assert src("org!=alliance") == [1, 3, 6, 8]
    assert src("class") == [0, 1, 2, 3, 4, 5, 7, 9]  # exists
    assert src("!class") == [6, 8]  # does not exist (the host, and the side without metadata)
    assert src("reserved:host") == [6]
    assert src("k8s:org=empire,k8s:class=tiefighter") == [3]  # requirements AND
    assert src("k8s:class=tiefighter", "k8s:class=xwing") == [0, 2, 3, 4, 5, 7, 9]  # selectors OR
    assert src("tier>2") == [1]
    assert src("tier<2") == [3]
    assert src("k8s:app.kubernetes.io/name=xwing") == [0, 2, 4, 5, 7, 9]
    assert src("app.kubernetes.io/name=xwing") == [0, 2, 4, 5, 7, 9]
    assert src("k8s:io.kubernetes.pod.namespace=kube-system") == []
    assert src("") == list(range(10))  # the empty selector selects everything, like Hubble's
    assert hits(tables, rows, [FF(destination_label=["k8s:k8s-app=kube-dns"])]) == [2, 6]


def test_reserved_world_label_needs_metadata(tables: Tables, rows: np.ndarray) -> None:
    # row 7's far side has only an identity; labels come from endpoint metadata
    assert hits(tables, rows, [FF(destination_label=["reserved:world"])]) == []
    world = EndpointMeta(identity=2, labels=("reserved:world",))
    more = make_rows(tables, dict(src="10.244.1.15", dst="8.8.8.8", src_meta=XWING, dst_meta=world))
    assert hits(tables, more, [FF(destination_label=["reserved:world"])]) == [0]
    assert hits(tables, more, [FF(destination_label=["world"])]) == [0]


@pytest.mark.parametrize(
    "selector",
    [
        "k8s:app=",
        "app in (a",
        "app in a",
        "=x",
        "app=a b",
        "!app=x",
        "a,",
        "app notin (a,,b",
        "k8s:app=-x",
        "app>x",
        "a=b=c",
    ],
)
def test_invalid_label_selector(tables: Tables, selector: str) -> None:
    if selector == "k8s:app=":  # a valid selector (empty value) as a control
        compile_filters([FF(source_label=[selector])], [], tables)
        return
    e = error_of(tables, FF(source_label=["k8s:app=ok", selector]))
    assert e.field == "source_label" and "label selector" in str(e)


def test_label_selector_translation() -> None:
    assert ls.translate("k8s:app in (a, b),!k8s:debug,org=x") == "k8s.app in (a, b),!k8s.debug,any.org=x"
    sel = ls.parse_cilium_selector("k8s:app=echo")
    assert sel.matches(ls.LabelArray(["k8s:app=echo"]))
    assert not sel.matches(ls.LabelArray(["container:app=echo"]))
    assert ls.parse_label("$host") == ls.Label("reserved", "host", "")
    assert ls.parse_label("a=b:c") == ls.Label("unspec", "a", "b:c")


def test_identity_uses_row_then_metadata(tables: Tables, rows: np.ndarray) -> None:
    assert hits(tables, rows, [FF(source_identity=[1])]) == [6]
    assert hits(tables, rows, [FF(destination_identity=[2, 102])]) == [2, 6, 7]
    meta_only = make_rows(tables, dict(src="10.0.0.1", dst="10.0.0.2", src_meta=XWING))
    meta_only["src_identity"] = 0  # datapath did not report it: the endpoint's identity is used
    assert hits(tables, meta_only, [FF(source_identity=[XWING.identity])]) == [0]
    stale = make_rows(tables, dict(src="10.0.0.1", dst="10.0.0.2", src_meta=XWING))
    stale["src_identity"] = 77  # datapath identity wins over the metadata's, as in Hubble
    assert hits(tables, stale, [FF(source_identity=[XWING.identity])]) == []
    assert hits(tables, stale, [FF(source_identity=[77])]) == [0]


def test_workload_and_cluster_name(tables: Tables, rows: np.ndarray) -> None:
    wl = flow_pb2.Workload
    assert hits(tables, rows, [FF(destination_workload=[wl(name="coredns")])]) == [2, 6]
    assert hits(tables, rows, [FF(source_workload=[wl(kind="Deployment")])]) == [1]
    assert hits(tables, rows, [FF(source_workload=[wl(name="xwing", kind="Deployment")])]) == []
    either = [wl(name="xwing", kind="Pod"), wl(name="tiefighter")]
    assert hits(tables, rows, [FF(source_workload=either)]) == [0, 2, 3, 4, 5, 7, 9]
    assert hits(tables, rows, [FF(source_cluster_name=["kind-kind"])]) == [0, 1, 2, 3, 4, 5, 7, 9]
    assert hits(tables, rows, [FF(destination_cluster_name=["other"])]) == []
    assert error_of(tables, FF(source_cluster_name=[""])).field == "source_cluster_name"


def test_service(tables: Tables, rows: np.ndarray) -> None:
    assert hits(tables, rows, [FF(destination_service=["kube-system/kube-dns"])]) == [2]
    assert hits(tables, rows, [FF(destination_service=["kube-system/"])]) == [2]
    assert hits(tables, rows, [FF(destination_service=["kube-dns"])]) == []  # default namespace
    assert hits(tables, rows, [FF(source_service=["kube-system/"])]) == []  # no flow has a source service
    assert error_of(tables, FF(source_service=[""])).field == "source_service"


# ---- verdicts, events, drops, directions ----------------------------------------------------------------


def test_verdict(tables: Tables, rows: np.ndarray) -> None:
    assert hits(tables, rows, [FF(verdict=[flow_pb2.DROPPED])]) == [3]
    assert hits(tables, rows, [FF(verdict=[flow_pb2.DROPPED, flow_pb2.ERROR])]) == [3, 9]


@pytest.mark.parametrize("value", [8, 99, -1])
def test_unknown_verdict_value(tables: Tables, value: int) -> None:
    e = error_of(tables, FF(verdict=[flow_pb2.DROPPED, value]))
    assert e.field == "verdict" and f"unknown value {value}" in str(e)


def test_event_type_and_sub_type(tables: Tables, rows: np.ndarray) -> None:
    et = flow_pb2.EventTypeFilter
    assert hits(tables, rows, [FF(event_type=[et(type=1)])]) == [3, 9]
    assert hits(tables, rows, [FF(event_type=[et(type=1, match_sub_type=True, sub_type=133)])]) == [3]
    assert hits(tables, rows, [FF(event_type=[et(type=4, match_sub_type=True, sub_type=0)])]) == [
        0,
        1,
        4,
        5,
        6,
        8,
    ]
    assert hits(
        tables, rows, [FF(event_type=[et(type=4, match_sub_type=True, sub_type=5), et(type=129)])]
    ) == [2]
    assert hits(tables, rows, [FF(event_type=[et(type=4, sub_type=5)])]) == [
        0,
        1,
        2,
        4,
        5,
        6,
        7,
        8,
    ]  # no match_sub
    assert hits(tables, rows, [FF(event_type=[et(match_sub_type=True, sub_type=3)])]) == [7]  # type 0 = any


def test_drop_reason_desc_only_for_dropped(tables: Tables, rows: np.ndarray) -> None:
    assert hits(tables, rows, [FF(drop_reason_desc=[flow_pb2.POLICY_DENIED])]) == [3]
    assert (
        hits(tables, rows, [FF(drop_reason_desc=[flow_pb2.CT_MAP_INSERTION_FAILED])]) == []
    )  # verdict ERROR
    assert error_of(tables, FF(drop_reason_desc=[99])).field == "drop_reason_desc"


def test_traffic_direction(tables: Tables, rows: np.ndarray) -> None:
    assert hits(tables, rows, [FF(traffic_direction=[flow_pb2.EGRESS])]) == [2, 7]
    assert hits(tables, rows, [FF(traffic_direction=[flow_pb2.TRAFFIC_DIRECTION_UNKNOWN])]) == [8, 9]
    assert error_of(tables, FF(traffic_direction=[5])).field == "traffic_direction"


def test_reply(tables: Tables, rows: np.ndarray) -> None:
    assert hits(tables, rows, [FF(reply=[True])]) == [1]
    # unknown is_reply never matches, except for DROPPED flows which count as "not a reply"
    assert hits(tables, rows, [FF(reply=[False])]) == [0, 2, 3, 4, 5, 6, 7]
    assert hits(tables, rows, [FF(reply=[True, False])]) == [0, 1, 2, 3, 4, 5, 6, 7]


# ---- L4 -------------------------------------------------------------------------------------------------


def test_protocol(tables: Tables, rows: np.ndarray) -> None:
    assert hits(tables, rows, [FF(protocol=["tcp"])]) == [0, 1, 3, 6, 7]
    assert hits(tables, rows, [FF(protocol=["TCP"])]) == [0, 1, 3, 6, 7]  # case-insensitive
    assert hits(tables, rows, [FF(protocol=["udp", "sctp"])]) == [2, 9]
    assert hits(tables, rows, [FF(protocol=["icmp"])]) == [4, 5]
    assert hits(tables, rows, [FF(protocol=["ICMPv4"])]) == [4]
    assert hits(tables, rows, [FF(protocol=["icmpv6"])]) == [5]
    assert hits(tables, rows, [FF(protocol=["http"])]) == []  # no L7 records
    assert hits(tables, rows, [FF(protocol=["dns", "kafka", "udp"])]) == [2]


@pytest.mark.parametrize("value", ["bogus", "", "ip", "tcp6"])
def test_unknown_protocol(tables: Tables, value: str) -> None:
    e = error_of(tables, FF(protocol=["tcp", value]))
    assert e.field == "protocol" and "unknown protocol" in str(e)


def test_ports(tables: Tables, rows: np.ndarray) -> None:
    assert hits(tables, rows, [FF(destination_port=["80"])]) == [0, 3]
    assert hits(tables, rows, [FF(source_port=["80"])]) == [1]
    assert hits(tables, rows, [FF(destination_port=["38412"])]) == [9]  # SCTP carries ports
    assert hits(tables, rows, [FF(destination_port=["0"])]) == []  # ICMP / IP-less rows have no port
    assert hits(tables, rows, [FF(source_port=["43210"], destination_port=["80", "443"])]) == [0]


@pytest.mark.parametrize("value", ["http", "65536", "-1", "", " 80", "8o", "+80", "1e3", "٨٠"])
def test_invalid_port(tables: Tables, value: str) -> None:
    e = error_of(tables, FF(destination_port=[value]))
    assert e.field == "destination_port" and "invalid port" in str(e)


def test_tcp_flags(tables: Tables, rows: np.ndarray) -> None:
    flags = flow_pb2.TCPFlags
    assert hits(tables, rows, [FF(tcp_flags=[flags(SYN=True)])]) == [0, 1, 3, 6, 7]
    assert hits(tables, rows, [FF(tcp_flags=[flags(SYN=True, ACK=True)])]) == [1]
    assert hits(tables, rows, [FF(tcp_flags=[flags(ACK=True), flags(PSH=True)])]) == [1, 7]
    assert hits(tables, rows, [FF(tcp_flags=[flags(FIN=True)])]) == []
    assert hits(tables, rows, [FF(tcp_flags=[flags(NS=True)])]) == []
    assert hits(tables, rows, [FF(tcp_flags=[flags()])]) == [0, 1, 3, 6, 7]  # any TCP flow


# ---- node, interface, uuid, misc --------------------------------------------------------------------------


def test_node_name_patterns(tables: Tables, rows: np.ndarray) -> None:
    def nodes(*p: str) -> list[int]:
        return hits(tables, rows, [FF(node_name=list(p))])

    assert nodes("kind-worker") == [1, 2, 7, 8]
    assert nodes("kind-worker*") == [0, 1, 2, 3, 4, 5, 7, 8, 9]
    assert nodes("KIND-WORKER2") == [0, 3, 4, 5, 9]  # patterns are lower-cased
    assert nodes("default/kind-worker") == [1, 2, 7, 8]  # names without a cluster are in "default"
    assert nodes("kind-kind/*") == [6]
    assert nodes("/kind-control-plane") == [6]
    assert nodes("kind-control-plane") == [6]  # no cluster part: any cluster
    assert nodes("*-plane", "kind-worker2") == [0, 3, 4, 5, 6, 9]


@pytest.mark.parametrize("value", ["", "a/b/c", "node_1$", "kind..", "kind-worker..", "with space"])
def test_invalid_node_name_pattern(tables: Tables, value: str) -> None:
    assert error_of(tables, FF(node_name=[value])).field == "node_name"


def test_interface(tables: Tables, rows: np.ndarray) -> None:
    ni = flow_pb2.NetworkInterface
    assert hits(tables, rows, [FF(interface=[ni(index=14)])]) == [0, 3]
    assert hits(tables, rows, [FF(interface=[ni(name="lxc11")])]) == [1]
    assert hits(tables, rows, [FF(interface=[ni(index=14, name="lxc11")])]) == []
    assert hits(tables, rows, [FF(interface=[ni(name="nope"), ni(index=7)])]) == [1]
    assert hits(tables, rows, [FF(interface=[ni()])]) == [0, 1, 3]  # any interface, but one is needed


def test_uuid(tables: Tables, rows: np.ndarray) -> None:
    u3 = UUID0[:-4] + "0003"
    assert hits(tables, rows, [FF(uuid=[u3])]) == [3]
    assert hits(tables, rows, [FF(uuid=[u3.upper(), "not-a-uuid"])]) == []  # Hubble compares strings
    zero = make_rows(tables, dict(event_type=4))
    zero["uuid"] = np.void(bytes(16))
    assert hits(tables, zero, [FF(uuid=[""])]) == [0]


def test_fields_without_tendril_data_match_nothing_positive(tables: Tables, rows: np.ndarray) -> None:
    assert hits(tables, rows, [FF(source_fqdn=["*.example.com"])]) == []
    assert hits(tables, rows, [FF(destination_fqdn=["one.one.one.one."])]) == []
    assert hits(tables, rows, [FF(dns_query=[".*"])]) == []
    assert hits(tables, rows, [FF(http_status_code=["200", "5+"])]) == []
    assert hits(tables, rows, [FF(http_method=["GET"])]) == []
    assert hits(tables, rows, [FF(http_path=["/"])]) == []
    assert hits(tables, rows, [FF(http_url=[".*"])]) == []
    assert hits(tables, rows, [FF(http_header=[flow_pb2.HTTPHeader(key="x")])]) == []
    assert hits(tables, rows, [FF(ip_trace_id=[77])]) == []
    assert hits(tables, rows, [FF(trace_id=["abc"])]) == []
    assert hits(tables, rows, [FF(trace_id=[""])]) == list(range(10))  # no trace context == ""
    assert hits(tables, rows, [FF(encrypted=[True])]) == []
    assert hits(tables, rows, [FF(encrypted=[False])]) == list(range(10))
    assert hits(tables, rows, [FF(node_labels=["kubernetes.io/os=linux"])]) == []
    assert hits(tables, rows, [FF(node_labels=["!kubernetes.io/os"])]) == list(range(10))
    # so "not HTTP" keeps everything
    assert hits(tables, rows, [], [FF(http_status_code=["5+"])]) == list(range(10))


def test_cel_expressions_are_rejected_not_ignored(tables: Tables) -> None:
    ff = FF(experimental=FF.Experimental(cel_expression=["_flow.verdict == Verdict.DROPPED"]))
    e = error_of(tables, ff)
    assert e.field == "experimental.cel_expression" and "not supported" in str(e)
    compile_filters([FF(experimental=FF.Experimental())], [], tables)  # an empty Experimental is harmless


@pytest.mark.parametrize(
    ("flt", "field"),
    [
        (FF(http_status_code=["6xx"]), "http_status_code"),
        (FF(http_status_code=["600"]), "http_status_code"),
        (FF(http_status_code=["5++"]), "http_status_code"),
        (FF(http_status_code=["+"]), "http_status_code"),
        (FF(http_status_code=["404+"]), "http_status_code"),
        (FF(http_status_code=["1000"]), "http_status_code"),
        (FF(http_status_code=[""]), "http_status_code"),
        (FF(http_status_code=["099"]), "http_status_code"),
        (FF(http_path=["/api/(unclosed"]), "http_path"),
        (FF(http_url=["*"]), "http_url"),
        (FF(dns_query=["[a-"]), "dns_query"),
        (FF(source_fqdn=[""]), "source_fqdn"),
        (FF(destination_fqdn=["bad host.com"]), "destination_fqdn"),
        (FF(destination_fqdn=["example.com.."]), "destination_fqdn"),
        (FF(node_labels=["k8s:a in"]), "node_labels"),
        (FF(destination_label=["app in (a"]), "destination_label"),
        (FF(http_method=["GET"], event_type=[flow_pb2.EventTypeFilter(type=4)]), "http_method"),
    ],
)
def test_invalid_inputs_name_the_field(tables: Tables, flt: flow_pb2.FlowFilter, field: str) -> None:
    e = error_of(tables, flt)
    assert e.field == field
    assert str(e).startswith(f"invalid {field} filter: ")


def test_invalid_filter_in_blacklist_is_an_error_too(tables: Tables) -> None:
    with pytest.raises(FilterError, match="source_port"):
        compile_filters([], [FF(source_port=["x"])], tables)


def test_valid_http_status_patterns(tables: Tables) -> None:
    compile_filters([FF(http_status_code=["404", "5+", "40+", "1+", "59+"])], [], tables)
    l7 = flow_pb2.EventTypeFilter(type=129)
    compile_filters(
        [FF(http_status_code=["200"], event_type=[l7, flow_pb2.EventTypeFilter(type=4)])], [], tables
    )


# ---- L7 records plug in through tables.l7 ----------------------------------------------------------------


@dataclass(frozen=True)
class Header:
    key: str
    value: str


@dataclass(frozen=True)
class HTTP:
    code: int = 0
    method: str = ""
    url: str = ""
    headers: tuple[Header, ...] = ()


@dataclass(frozen=True)
class DNS:
    query: str = ""


@dataclass(frozen=True)
class Layer7:
    http: HTTP | None = None
    dns: DNS | None = None
    kafka: object | None = None


def test_l7_filters_work_once_records_exist(tables: Tables) -> None:
    tables.l7 = Interner(None)  # type: ignore[attr-defined]  # what the L7 issue will add
    recs = [
        Layer7(http=HTTP(method="POST", url="http://deathstar.default.svc.cluster.local/v1/request-landing")),
        Layer7(http=HTTP(code=200, method="POST", url="http://deathstar/v1/request-landing")),
        Layer7(http=HTTP(code=503, method="GET", url="http://shop/api/a%2Fb/search?q=1&x=1")),
        Layer7(http=HTTP(code=404, url="/page/42", headers=(Header("x-request-id", "abc:def"),))),
        Layer7(dns=DNS(query="api.github.com.")),
    ]
    specs = [dict(event_type=129, flow_type=rec.L7, l7=tables.l7.intern(r)) for r in recs]  # type: ignore[attr-defined]
    rows = make_rows(tables, *specs, dict(event_type=4))

    def l7(**kw) -> list[int]:  # noqa: ANN003
        return hits(tables, rows, [FF(**kw)])

    assert l7(protocol=["http"]) == [0, 1, 2, 3]
    assert l7(protocol=["DNS"]) == [4]
    assert l7(http_status_code=["200"]) == [1]
    assert l7(http_status_code=["5+"]) == [2]
    assert l7(http_status_code=["40+", "20+"]) == [1, 3]
    assert l7(http_status_code=["1+"]) == []  # requests have no code
    assert l7(http_method=["post"]) == [0, 1]
    assert l7(http_path=["^/v1/"]) == [0, 1]
    assert l7(http_path=[r"/page/\d+$"]) == [3]
    assert l7(http_path=["a/b"]) == [2]  # the path is unescaped before matching
    assert l7(http_url=["shop.*&x=1"]) == [2]
    assert l7(http_header=[flow_pb2.HTTPHeader(key="x-request-id", value="abc:def")]) == [3]
    assert l7(http_header=[flow_pb2.HTTPHeader(value="abc")]) == []
    assert l7(dns_query=[r"github\.com"]) == [4]
    assert l7(http_method=["GET"], event_type=[flow_pb2.EventTypeFilter(type=129)]) == [2]


# ---- vectorised ----------------------------------------------------------------------------------------


def test_one_million_rows_evaluate_per_distinct_value(
    tables: Tables, monkeypatch: pytest.MonkeyPatch
) -> None:
    n = 1_000_000
    base = make_rows(
        tables,
        dict(
            src="10.244.1.15", dst="10.244.2.31", src_meta=XWING, dst_meta=DEATHSTAR, l4_proto=6, dst_port=80
        ),
        dict(
            src="10.244.1.22",
            dst="10.244.2.31",
            src_meta=TIEFIGHTER,
            dst_meta=DEATHSTAR,
            l4_proto=6,
            dst_port=80,
        ),
        dict(src="10.244.1.15", dst="10.244.0.5", src_meta=XWING, dst_meta=COREDNS, l4_proto=17, dst_port=53),
        dict(src="10.244.0.1", dst="10.244.0.5", src_meta=HOST, dst_meta=COREDNS, l4_proto=6, dst_port=8181),
    )
    big = base[np.arange(n) % len(base)]
    big["dst_port"][::1000] = 8080  # some variety in a plain column
    parsed = 0
    real = ls.LabelArray.__init__

    def counting(self: ls.LabelArray, labels: object) -> None:
        nonlocal parsed
        parsed += 1
        real(self, labels)  # type: ignore[arg-type]

    monkeypatch.setattr(ls.LabelArray, "__init__", counting)
    wl = [FF(source_label=["k8s:org=empire"], destination_ip=["10.244.2.0/24"], destination_port=["80"])]
    bl = [FF(source_pod=["default/tiefighter"], destination_port=["8080"])]
    mask = compile_filters(wl, bl, tables)(big)
    expected = (np.arange(n) % 4 == 1) & (big["dst_port"] == 80)
    assert np.array_equal(mask, expected)
    assert parsed <= len(tables.endpoints)  # label selectors ran per endpoint, not per row
