"""The Observer gRPC service, driven by a client generated from our protos, over a real ring."""

from __future__ import annotations

import asyncio
import ipaddress
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
from google.protobuf import field_mask_pb2, timestamp_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tendril.hubble import record as rec
from tendril.hubble.api import flow_pb2, observer_pb2, observer_pb2_grpc
from tendril.hubble.container import FlowRing
from tendril.hubble.observer.service import ObserverContext, start_observer

BASE_NS = 1_715_679_000_000_000_000  # 2024-05-14T09:30:00Z


def _ip(s: str) -> bytes:
    a = ipaddress.ip_address(s)
    return a.packed if a.version == 6 else a.packed + bytes(12)


class Server:
    """An Observer on a Unix socket, its event loop in a thread, and a sync client stub."""

    def __init__(self, capacity: int = 1023) -> None:
        self.tables = rec.Tables()
        self.ring = FlowRing(capacity)
        self.lost: list[tuple[str, int]] = []
        self.dir = tempfile.TemporaryDirectory()
        self.sock = str(Path(self.dir.name) / "hubble.sock")
        self.loop = asyncio.new_event_loop()
        ready = threading.Event()

        def run() -> None:
            asyncio.set_event_loop(self.loop)
            ctx = ObserverContext(
                "test-node",
                self.ring,
                self.tables,
                namespaces=lambda: ["default", "demo"],
                on_lost=lambda src, n: self.lost.append((src, n)),
            )
            self.server = self.loop.run_until_complete(start_observer(ctx, self.sock, None))
            ready.set()
            self.loop.run_forever()

        self.thread = threading.Thread(target=run, daemon=True)
        self.thread.start()
        ready.wait(10)
        self.channel = grpc.insecure_channel(f"unix://{self.sock}")
        self.stub = observer_pb2_grpc.ObserverStub(self.channel)

    def append(self, rows: np.ndarray) -> None:
        done = threading.Event()

        def do() -> None:
            self.ring.append(rows)
            done.set()

        self.loop.call_soon_threadsafe(do)
        done.wait(5)

    def close(self) -> None:
        self.channel.close()
        asyncio.run_coroutine_threadsafe(self.server.stop(0), self.loop).result(5)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
        self.dir.cleanup()


def make_rows(tables: rec.Tables, n: int, start: int = 0) -> np.ndarray:
    """n flows, one per 10 ms: client pods (alternating namespaces) -> server:80, every 5th dropped."""
    rows = rec.empty(n)
    server = tables.endpoints.intern(
        rec.EndpointMeta(id=9, identity=300, namespace="demo", pod_name="server", labels=("k8s:app=server",))
    )
    clients = [
        tables.endpoints.intern(
            rec.EndpointMeta(
                id=1,
                identity=301,
                namespace="default",
                pod_name="xwing",
                labels=("k8s:app=xwing", "k8s:org=alliance"),
            )
        ),
        tables.endpoints.intern(
            rec.EndpointMeta(
                id=2,
                identity=302,
                namespace="demo",
                pod_name="tiefighter",
                labels=("k8s:app=tiefighter", "k8s:org=empire"),
            )
        ),
    ]
    i = np.arange(start, start + n)
    rows["time_ns"] = BASE_NS + i * 10_000_000
    rows["uuid"] = np.frombuffer(np.random.bytes(16 * n), dtype="V16")
    rows["node"] = tables.strings.intern("test-node")
    dropped = i % 5 == 4
    rows["verdict"] = np.where(dropped, rec.DROPPED, rec.FORWARDED)
    rows["event_type"] = np.where(dropped, 1, 4)
    rows["sub_type"] = np.where(dropped, 132, 0)
    rows["drop_reason"] = np.where(dropped, 132, 0)
    rows["trace_point"] = np.where(dropped, 0, 101)
    rows["flow_type"] = rec.L3_L4
    rows["ip_version"] = 4
    rows["l4_proto"] = 6
    rows["tcp_flags"] = 0x02
    rows["src_port"] = 40000 + (i % 1000)
    rows["dst_port"] = 80
    rows["is_reply"] = np.where(dropped, -1, 0)
    rows["traffic_direction"] = rec.INGRESS
    which = i % 2
    rows["src_ep"] = np.where(which == 0, clients[0], clients[1])
    rows["dst_ep"] = server
    rows["src_identity"] = np.where(which == 0, 301, 302)
    rows["dst_identity"] = 300
    rows["src_ip"] = np.where(which == 0, np.void(_ip("10.244.1.2")), np.void(_ip("10.244.1.3")))
    rows["dst_ip"] = np.void(_ip("10.244.1.9"))
    return rows


@pytest.fixture()
def srv() -> Iterator[Server]:
    s = Server()
    try:
        s.append(make_rows(s.tables, 500))
        yield s
    finally:
        s.close()


def _flows(stub, req: observer_pb2.GetFlowsRequest, limit: int | None = None) -> list:  # noqa: ANN001
    out = []
    for resp in stub.GetFlows(req, timeout=10):
        out.append(resp)
        if limit and len(out) >= limit:
            break
    return out


def _ts(ns: int) -> timestamp_pb2.Timestamp:
    t = timestamp_pb2.Timestamp()
    t.FromNanoseconds(ns)
    return t


def test_health_and_status(srv: Server) -> None:
    h = health_pb2_grpc.HealthStub(srv.channel)
    resp = h.Check(health_pb2.HealthCheckRequest(service="hubble.server.Observer"), timeout=5)
    assert resp.status == health_pb2.HealthCheckResponse.SERVING
    st = srv.stub.ServerStatus(observer_pb2.ServerStatusRequest(), timeout=5)
    assert (st.num_flows, st.max_flows, st.seen_flows) == (500, 1023, 500)
    assert st.uptime_ns > 0 and st.version
    nodes = srv.stub.GetNodes(observer_pb2.GetNodesRequest(), timeout=5).nodes
    assert [n.name for n in nodes] == ["test-node"] and nodes[0].num_flows == 500
    ns = srv.stub.GetNamespaces(observer_pb2.GetNamespacesRequest(), timeout=5).namespaces
    assert [n.namespace for n in ns] == ["default", "demo"]


def test_last_n_default_and_order(srv: Server) -> None:
    got = _flows(srv.stub, observer_pb2.GetFlowsRequest(number=20))
    assert len(got) == 20
    times = [r.flow.time.ToNanoseconds() for r in got]
    assert times == sorted(times) and times[-1] == BASE_NS + 499 * 10_000_000
    assert all(r.node_name == "test-node" and r.flow.node_name == "test-node" for r in got)
    assert all(r.flow.uuid for r in got)


def test_first_and_all(srv: Server) -> None:
    got = _flows(srv.stub, observer_pb2.GetFlowsRequest(number=3, first=True))
    assert [r.flow.time.ToNanoseconds() for r in got] == [BASE_NS, BASE_NS + 10_000_000, BASE_NS + 20_000_000]
    assert len(_flows(srv.stub, observer_pb2.GetFlowsRequest(number=2**64 - 1))) == 500


def test_since_until(srv: Server) -> None:
    req = observer_pb2.GetFlowsRequest(
        since=_ts(BASE_NS + 100 * 10_000_000), until=_ts(BASE_NS + 109 * 10_000_000)
    )
    got = _flows(srv.stub, req)
    assert [r.flow.time.ToNanoseconds() for r in got] == [BASE_NS + k * 10_000_000 for k in range(100, 110)]


def test_whitelist_blacklist_and_field_mask(srv: Server) -> None:
    wl = [
        flow_pb2.FlowFilter(source_pod=["default/xwing"]),
        flow_pb2.FlowFilter(destination_pod=["default/xwing"]),
    ]
    bl = [flow_pb2.FlowFilter(verdict=[flow_pb2.FORWARDED])]
    mask = field_mask_pb2.FieldMask(paths=["time", "verdict", "source.pod_name"])
    got = _flows(
        srv.stub, observer_pb2.GetFlowsRequest(number=1000, whitelist=wl, blacklist=bl, field_mask=mask)
    )
    # xwing sends the even-numbered flows; every 5th flow is dropped -> i % 10 == 4
    assert len(got) == 50
    for r in got:
        assert r.flow.verdict == flow_pb2.DROPPED and r.flow.source.pod_name == "xwing"
        assert not r.flow.source.namespace and not r.flow.HasField("IP")  # masked away
    labels = [flow_pb2.FlowFilter(source_label=["k8s:org=empire"], destination_port=["80"])]
    got = _flows(srv.stub, observer_pb2.GetFlowsRequest(number=1000, whitelist=labels))
    assert len(got) == 250 and all(r.flow.source.pod_name == "tiefighter" for r in got)


@pytest.mark.parametrize(
    ("flt", "field"),
    [
        (flow_pb2.FlowFilter(source_ip=["10.0.0.300"]), "source_ip"),
        (flow_pb2.FlowFilter(destination_port=["http"]), "destination_port"),
        (flow_pb2.FlowFilter(http_status_code=["6xx"]), "http_status_code"),
        (flow_pb2.FlowFilter(verdict=[99]), "verdict"),
    ],
)
def test_invalid_filters_are_invalid_argument_and_server_keeps_serving(srv: Server, flt, field: str) -> None:  # noqa: ANN001
    with pytest.raises(grpc.RpcError) as err:
        _flows(srv.stub, observer_pb2.GetFlowsRequest(number=5, whitelist=[flt]))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert field in err.value.details()
    assert len(_flows(srv.stub, observer_pb2.GetFlowsRequest(number=5))) == 5


def test_follow_streams_new_flows_within_a_second(srv: Server) -> None:
    stream = srv.stub.GetFlows(observer_pb2.GetFlowsRequest(follow=True), timeout=10)
    time.sleep(0.3)
    t0 = time.monotonic()
    srv.append(make_rows(srv.tables, 3, start=500))
    got = [next(stream) for _ in range(3)]
    assert time.monotonic() - t0 < 1.0
    assert [r.flow.time.ToNanoseconds() for r in got] == [BASE_NS + k * 10_000_000 for k in (500, 501, 502)]
    stream.cancel()


def test_overtaken_follower_gets_lost_events(srv: Server) -> None:
    stream = srv.stub.GetFlows(observer_pb2.GetFlowsRequest(follow=True), timeout=10)
    time.sleep(0.3)
    srv.append(make_rows(srv.tables, 5000, start=1000))  # far more than the ring holds at once
    first = next(stream)
    assert first.HasField("lost_events")
    assert first.lost_events.source == flow_pb2.HUBBLE_RING_BUFFER
    assert first.lost_events.num_events_lost == 5000 - 1023
    assert next(stream).HasField("flow")
    stream.cancel()
    assert srv.lost == [("hubble_ring_buffer", 5000 - 1023)]


def test_bad_field_mask_is_invalid_argument(srv: Server) -> None:
    mask = field_mask_pb2.FieldMask(paths=["time", "no_such_field"])
    with pytest.raises(grpc.RpcError) as err:
        _flows(srv.stub, observer_pb2.GetFlowsRequest(number=5, field_mask=mask))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "no_such_field" in err.value.details()
