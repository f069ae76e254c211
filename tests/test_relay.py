"""Hubble Relay against three real Observer servers with mTLS, found through a real Peer service.

Everything runs in-process over real sockets on 127.0.0.1: the node servers and the relay share
one event loop in a background thread, and the tests talk to the relay with the generated
synchronous client, as the hubble CLI would.
"""

from __future__ import annotations

import asyncio
import queue
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tendril.hubble.api import flow_pb2, observer_pb2, observer_pb2_grpc, relay_pb2
from tendril.hubble.container import FlowRing
from tendril.hubble.observer.service import VERSION, ObserverContext, start_observer
from tendril.hubble.peer import PeerInfo, PeerSource, tls_server_name
from tendril.hubble.record import Tables
from tendril.hubble.relay import Relay, RelayConfig, start_relay
from tendril.hubble.tls import TlsLayout, ensure_certs
from test_observer import BASE_NS, make_rows

CLUSTER = "test"
NAMES = ("n1", "n2", "n3")
ROWS = 50  # per node
CAPACITY = 1023
T = TypeVar("T")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def node_rows(tables: Tables, name: str, k: int, n: int, start: int = 0) -> np.ndarray:
    """test_observer's flows, stamped with this node's name and shifted k ms so nodes interleave."""
    rows = make_rows(tables, n, start)
    rows["node"] = tables.strings.intern(name)
    rows["time_ns"] += k * 1_000_000
    return rows


class Loop:
    """An event loop in a thread: grpc.aio servers live on it, tests drive it synchronously."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = 20) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)


class Node:
    """One agent's Observer on its own TLS port; `stop`/`start` keep the ring, like an agent restart."""

    def __init__(self, loop: Loop, name: str, k: int, layout: TlsLayout, namespaces: list[str]) -> None:
        self.loop, self.name, self.layout = loop, name, layout
        self.port = free_port()
        self.tables = Tables()
        self.ring = FlowRing(CAPACITY)
        self.ctx = ObserverContext(name, self.ring, self.tables, namespaces=lambda: namespaces)
        self.k = k
        self.ring.append(node_rows(self.tables, name, k, ROWS))
        self.server: grpc.aio.Server | None = None
        self.peer_source: PeerSource | None = None

    @property
    def info(self) -> PeerInfo:
        return PeerInfo(self.name, f"127.0.0.1:{self.port}", tls_server_name(self.name, CLUSTER))

    def start(self) -> None:
        tls = self.layout.node_server_tls(self.name)
        self.server = self.loop.run(
            start_observer(self.ctx, None, f"127.0.0.1:{self.port}", peer_source=self.peer_source, tls=tls)
        )

    def stop(self) -> None:
        if self.server is not None:
            self.loop.run(self.server.stop(0))
            self.server = None

    def append(self, n: int, start: int) -> np.ndarray:
        rows = node_rows(self.tables, self.name, self.k, n, start)

        async def do() -> None:
            self.ring.append(rows)

        self.loop.run(do())
        return rows


class Cluster:
    def __init__(self, tmp: Path) -> None:
        self.loop = Loop()
        ips = dict.fromkeys(NAMES, "127.0.0.1")
        self.layout = ensure_certs(tmp / "tls", CLUSTER, NAMES, ips)
        namespaces = {"n1": ["default", "demo"], "n2": ["demo", "kube-system"], "n3": []}
        self.nodes = {
            name: Node(self.loop, name, k, self.layout, namespaces[name]) for k, name in enumerate(NAMES)
        }
        self.peers = PeerSource(n.info for n in self.nodes.values())
        # n1 and n2 both serve the Peer service (the relay fails over between them).
        for name in ("n1", "n2"):
            self.nodes[name].peer_source = self.peers
        for node in self.nodes.values():
            node.start()
        cfg = RelayConfig(
            peer_services=[
                f"unix://{tmp / 'nowhere.sock'}",  # unreachable: the relay moves on
                f"tls://127.0.0.1:{self.nodes['n1'].port}",
                f"tls://127.0.0.1:{self.nodes['n2'].port}",
            ],
            listen_address="127.0.0.1:0",
            tls_dir=self.layout.directory,
            cluster=CLUSTER,
            name="relay-test",
            probe_interval=0.5,
            dial_timeout=2.0,
            resubscribe_max_backoff=1.0,
            sort_buffer_drain=0.3,
        )
        self.relay: Relay = self.loop.run(start_relay(cfg))
        self.channel = grpc.insecure_channel(f"127.0.0.1:{self.relay.port}")
        self.stub = observer_pb2_grpc.ObserverStub(self.channel)

    def close(self) -> None:
        self.channel.close()
        try:
            self.loop.run(self.relay.stop(0))
        finally:
            for node in self.nodes.values():
                node.stop()
            self.loop.close()

    def status(self) -> observer_pb2.ServerStatusResponse:
        return self.stub.ServerStatus(observer_pb2.ServerStatusRequest(), timeout=10)

    def nodes_by_name(self) -> dict[str, observer_pb2.Node]:
        return {n.name: n for n in self.stub.GetNodes(observer_pb2.GetNodesRequest(), timeout=10).nodes}

    def wait_nodes(self, pred: Callable[[dict[str, observer_pb2.Node]], bool], timeout: float = 10) -> dict:
        deadline = time.monotonic() + timeout
        while True:
            nodes = self.nodes_by_name()
            if pred(nodes):
                return nodes
            if time.monotonic() > deadline:
                raise AssertionError(f"relay nodes never matched: {nodes}")
            time.sleep(0.1)

    def wait_all_connected(self) -> None:
        self.wait_nodes(
            lambda ns: set(ns) == set(NAMES) and all(n.state == relay_pb2.NODE_CONNECTED for n in ns.values())
        )


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    c = Cluster(tmp_path_factory.mktemp("relay"))
    try:
        yield c
    finally:
        c.close()


@pytest.fixture()
def relay(cluster: Cluster) -> Iterator[Cluster]:
    """The cluster with every node connected before and after each test."""
    cluster.wait_all_connected()
    yield cluster
    for node in cluster.nodes.values():
        if node.server is None:
            node.start()
    cluster.peers.set_peers(n.info for n in cluster.nodes.values())
    cluster.wait_all_connected()


class Stream:
    """A follow stream read in a thread, so the test can wait for responses with a deadline."""

    def __init__(self, stub: observer_pb2_grpc.ObserverStub, req: observer_pb2.GetFlowsRequest) -> None:
        self.call = stub.GetFlows(req, timeout=60)
        self.q: queue.Queue[Any] = queue.Queue()
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self) -> None:
        try:
            for resp in self.call:
                self.q.put(resp)
        except grpc.RpcError as e:
            self.q.put(e)

    def until(self, pred: Callable[[list[observer_pb2.GetFlowsResponse]], bool], timeout: float = 10) -> list:
        """Read until pred(all responses read by this call) holds; returns the responses read."""
        got: list[observer_pb2.GetFlowsResponse] = []
        deadline = time.monotonic() + timeout
        while not pred(got):
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"stream condition not met; got {got}")
            try:
                item = self.q.get(timeout=left)
            except queue.Empty:
                continue
            if isinstance(item, Exception):
                raise item
            got.append(item)
        return got

    def close(self) -> None:
        self.call.cancel()
        self.thread.join(5)


def flows(resps: list[observer_pb2.GetFlowsResponse]) -> list[observer_pb2.GetFlowsResponse]:
    return [r for r in resps if r.HasField("flow")]


def statuses(resps: list[observer_pb2.GetFlowsResponse]) -> list[relay_pb2.NodeStatusEvent]:
    return [r.node_status for r in resps if r.HasField("node_status")]


def has_status(state: int, name: str) -> Callable[[list], bool]:
    return lambda got: any(s.state_change == state and name in s.node_names for s in statuses(got))


def times(resps: list[observer_pb2.GetFlowsResponse]) -> list[int]:
    return [r.flow.time.ToNanoseconds() for r in resps]


# --- historical ----------------------------------------------------------------------------------


def test_last_n_is_per_node_and_merged_in_time_order(relay: Cluster) -> None:
    got = list(relay.stub.GetFlows(observer_pb2.GetFlowsRequest(number=5), timeout=10))
    first = got[0]
    assert first.node_status.state_change == relay_pb2.NODE_CONNECTED
    assert list(first.node_status.node_names) == list(NAMES)
    assert first.node_name == "relay-test"
    fl = flows(got)
    assert len(fl) == 15 and len(got) == 16
    assert Counter(r.node_name for r in fl) == dict.fromkeys(NAMES, 5)
    assert all(r.flow.node_name == r.node_name for r in fl)
    assert times(fl) == sorted(times(fl))
    expected = sorted(
        BASE_NS + i * 10_000_000 + k * 1_000_000 for k in range(3) for i in range(ROWS - 5, ROWS)
    )
    assert times(fl) == expected


def test_first_n_and_filters_pass_through(relay: Cluster) -> None:
    got = flows(list(relay.stub.GetFlows(observer_pb2.GetFlowsRequest(number=2, first=True), timeout=10)))
    assert times(got) == sorted(BASE_NS + i * 10_000_000 + k * 1_000_000 for k in range(3) for i in range(2))
    dropped = flow_pb2.FlowFilter(verdict=[flow_pb2.DROPPED])
    req = observer_pb2.GetFlowsRequest(number=1000, whitelist=[dropped])
    got = flows(list(relay.stub.GetFlows(req, timeout=10)))
    assert len(got) == 3 * ROWS // 5 and {r.flow.verdict for r in got} == {flow_pb2.DROPPED}
    with pytest.raises(grpc.RpcError) as err:
        list(relay.stub.GetFlows(observer_pb2.GetFlowsRequest(number=1, first=True, follow=True), timeout=10))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    bad = flow_pb2.FlowFilter(source_ip=["10.0.0.300"])
    with pytest.raises(grpc.RpcError) as err:
        list(relay.stub.GetFlows(observer_pb2.GetFlowsRequest(number=1, whitelist=[bad]), timeout=10))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT


# --- unary ---------------------------------------------------------------------------------------


def test_health_status_nodes_namespaces(relay: Cluster) -> None:
    health = health_pb2_grpc.HealthStub(relay.channel)
    ok = health.Check(health_pb2.HealthCheckRequest(service="hubble.server.Observer"), timeout=5)
    assert ok.status == health_pb2.HealthCheckResponse.SERVING
    st = relay.status()
    seen = sum(n.ring.written for n in relay.nodes.values())
    assert (st.num_flows, st.max_flows, st.seen_flows) == (
        sum(len(n.ring) for n in relay.nodes.values()),
        3 * CAPACITY,
        seen,
    )
    assert st.num_connected_nodes.value == 3 and st.num_unavailable_nodes.value == 0
    assert list(st.unavailable_nodes) == [] and st.version == VERSION and st.uptime_ns > 0
    nodes = relay.nodes_by_name()
    for name, node in relay.nodes.items():
        n = nodes[name]
        assert n.state == relay_pb2.NODE_CONNECTED
        assert n.address == f"127.0.0.1:{node.port}"
        assert n.tls.enabled and n.tls.server_name == f"{name}.{CLUSTER}.hubble-grpc.cilium.io"
        assert n.version == VERSION and n.uptime_ns > 0
        assert (n.num_flows, n.max_flows, n.seen_flows) == (len(node.ring), CAPACITY, node.ring.written)
    ns = relay.stub.GetNamespaces(observer_pb2.GetNamespacesRequest(), timeout=10).namespaces
    assert [(n.cluster, n.namespace) for n in ns] == [
        (CLUSTER, "default"),
        (CLUSTER, "demo"),
        (CLUSTER, "kube-system"),
    ]


# --- follow --------------------------------------------------------------------------------------


def test_follow_gets_new_flows_from_several_nodes(relay: Cluster) -> None:
    s = Stream(relay.stub, observer_pb2.GetFlowsRequest(follow=True))
    try:
        s.until(has_status(relay_pb2.NODE_CONNECTED, "n3"))
        time.sleep(0.3)  # let the relay's node streams reach the nodes
        a = relay.nodes["n1"].append(3, start=1000)
        b = relay.nodes["n2"].append(3, start=1000)
        got = flows(s.until(lambda g: len(flows(g)) >= 6))
        assert Counter(r.node_name for r in got) == {"n1": 3, "n2": 3}
        assert times(got) == sorted(int(t) for t in np.concatenate([a["time_ns"], b["time_ns"]]))
    finally:
        s.close()


def test_node_down_and_back(relay: Cluster) -> None:
    s = Stream(relay.stub, observer_pb2.GetFlowsRequest(follow=True))
    try:
        s.until(has_status(relay_pb2.NODE_CONNECTED, "n3"))
        time.sleep(0.3)
        before = relay.nodes["n2"].append(1, start=1500)
        assert times(flows(s.until(lambda g: len(flows(g)) >= 1))) == [int(before["time_ns"][0])]
        relay.nodes["n2"].stop()
        down = s.until(has_status(relay_pb2.NODE_UNAVAILABLE, "n2"))
        event = [e for e in statuses(down) if e.state_change == relay_pb2.NODE_UNAVAILABLE][0]
        assert list(event.node_names) == ["n2"] and event.message.startswith("n2: ")
        # The other nodes keep streaming.
        relay.nodes["n1"].append(2, start=2000)
        relay.nodes["n3"].append(2, start=2000)
        got = flows(s.until(lambda g: len(flows(g)) >= 4))
        assert Counter(r.node_name for r in got) == {"n1": 2, "n3": 2}
        st = relay.status()
        assert st.num_connected_nodes.value == 2 and list(st.unavailable_nodes) == ["n2"]
        nodes = relay.wait_nodes(lambda ns: ns["n2"].state == relay_pb2.NODE_UNAVAILABLE)
        assert nodes["n2"].num_flows == 0 and nodes["n1"].state == relay_pb2.NODE_CONNECTED
        # Flows recorded while the relay could not reach n2 are delivered when it returns: the
        # relay resumes after the last flow it got from n2.
        missed = relay.nodes["n2"].append(2, start=2000)
        relay.nodes["n2"].start()
        back = s.until(lambda g: has_status(relay_pb2.NODE_CONNECTED, "n2")(g) and len(flows(g)) >= 2, 15)
        assert times(flows(back)) == [int(t) for t in missed["time_ns"]]
        assert relay.status().num_connected_nodes.value == 3
        live = relay.nodes["n2"].append(1, start=3000)
        assert times(flows(s.until(lambda g: len(flows(g)) >= 1))) == [int(live["time_ns"][0])]
    finally:
        s.close()


def test_unavailable_node_listed_at_stream_start(relay: Cluster) -> None:
    relay.nodes["n3"].stop()
    relay.wait_nodes(lambda ns: ns["n3"].state == relay_pb2.NODE_UNAVAILABLE)
    got = list(relay.stub.GetFlows(observer_pb2.GetFlowsRequest(number=2), timeout=10))
    assert got[0].node_status.state_change == relay_pb2.NODE_CONNECTED
    assert list(got[0].node_status.node_names) == ["n1", "n2"]
    assert got[1].node_status.state_change == relay_pb2.NODE_UNAVAILABLE
    assert list(got[1].node_status.node_names) == ["n3"]
    assert "n3: " in got[1].node_status.message
    assert Counter(r.node_name for r in flows(got)) == {"n1": 2, "n2": 2}


def test_node_with_certificate_from_another_ca(relay: Cluster, tmp_path: Path) -> None:
    rogue_layout = ensure_certs(tmp_path / "other-ca", CLUSTER, ["n4"], {"n4": "127.0.0.1"})
    rogue = Node(relay.loop, "n4", 3, rogue_layout, ["rogue"])
    rogue.start()
    try:
        relay.peers.set_peers([*(n.info for n in relay.nodes.values()), rogue.info])
        relay.wait_nodes(lambda ns: "n4" in ns)
        time.sleep(1.0)  # a few probe rounds: it must stay unavailable
        nodes = relay.nodes_by_name()
        assert nodes["n4"].state == relay_pb2.NODE_UNAVAILABLE
        got = list(relay.stub.GetFlows(observer_pb2.GetFlowsRequest(number=1), timeout=10))
        unavailable = [s for s in statuses(got) if s.state_change == relay_pb2.NODE_UNAVAILABLE]
        assert [list(s.node_names) for s in unavailable] == [["n4"]]
        assert "CERTIFICATE_VERIFY_FAILED" in unavailable[0].message, unavailable[0].message
        assert Counter(r.node_name for r in flows(got)) == dict.fromkeys(NAMES, 1)
        st = relay.status()
        assert st.num_connected_nodes.value == 3 and list(st.unavailable_nodes) == ["n4"]
        ns = relay.stub.GetNamespaces(observer_pb2.GetNamespacesRequest(), timeout=10).namespaces
        assert "rogue" not in {n.namespace for n in ns}
        # Removed from the peer list: gone from the relay.
        relay.peers.set_peers(n.info for n in relay.nodes.values())
        relay.wait_nodes(lambda ns: "n4" not in ns)
    finally:
        rogue.stop()


def test_peer_service_failover_and_changes(relay: Cluster) -> None:
    """n1 hosts the subscribed Peer service; with n1 gone the relay follows n2's instead."""
    relay.nodes["n1"].stop()
    relay.wait_nodes(lambda ns: ns["n1"].state == relay_pb2.NODE_UNAVAILABLE)
    time.sleep(1.5)  # past the pruning window of the new subscription: nobody was dropped
    assert set(relay.nodes_by_name()) == set(NAMES)
    relay.peers.set_peers([relay.nodes["n1"].info, relay.nodes["n2"].info])
    relay.wait_nodes(lambda ns: set(ns) == {"n1", "n2"})
    relay.nodes["n1"].start()
    relay.peers.set_peers(n.info for n in relay.nodes.values())
    relay.wait_all_connected()


# --- the command line ------------------------------------------------------------------------------


def test_relay_command_with_tls_listener_and_hubble_cli(relay: Cluster) -> None:
    """`tendril hubble relay --tls-server` as a process, queried by `tendril hubble` over TLS."""
    tendril = str(Path(sys.executable).parent / "tendril")
    port = free_port()
    ca = str(relay.layout.ca_cert)
    argv = [tendril, "hubble", "relay", "--listen-address", f"127.0.0.1:{port}", "--cluster", CLUSTER]
    argv += ["--peer-service", f"tls://127.0.0.1:{relay.nodes['n2'].port}"]
    argv += ["--tls-dir", str(relay.layout.directory), "--tls-server"]
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    server = ["--server", f"tls://127.0.0.1:{port}", "--tls-ca-cert-files", ca]

    def hubble(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([tendril, "hubble", *args, *server], capture_output=True, text=True, timeout=20)

    try:
        deadline = time.monotonic() + 20
        while True:
            st = hubble("status")
            if "Connected Nodes: 3/3" in st.stdout:
                break
            assert proc.poll() is None, proc.stdout.read() if proc.stdout else ""
            assert time.monotonic() < deadline, st.stdout + st.stderr
            time.sleep(0.3)
        assert st.stdout.startswith(f"Healthcheck (via 127.0.0.1:{port}): Ok\n")
        assert f"Current/Max Flows: {sum(len(n.ring) for n in relay.nodes.values()):,}/" in st.stdout
        observed = hubble("observe", "--last", "1", "--print-node-name")
        assert observed.returncode == 0, observed.stderr
        assert sorted(line.split(" [")[1].split("]")[0] for line in observed.stdout.splitlines()) == list(
            NAMES
        )
        listed = hubble("list", "nodes")
        assert [line.split()[:2] for line in listed.stdout.splitlines()[1:]] == [
            [n, "Connected"] for n in NAMES
        ]
        plain = subprocess.run(
            [tendril, "hubble", "status", "--server", f"127.0.0.1:{port}"],
            capture_output=True,
            text=True,
            timeout=20,
        )
        assert plain.returncode != 0  # the listener speaks TLS only
    finally:
        proc.terminate()
        try:
            out, _ = proc.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, _ = proc.communicate()
    log = out.decode(errors="replace")
    assert "subscribed to peer service" in log and "3/3 nodes connected" in log, log


def test_follow_forwards_lost_events(relay: Cluster) -> None:
    """A node whose ring laps the relay's reader reports the loss; the relay passes it on."""
    s = Stream(relay.stub, observer_pb2.GetFlowsRequest(follow=True))
    try:
        s.until(has_status(relay_pb2.NODE_CONNECTED, "n3"))
        time.sleep(0.3)
        relay.nodes["n3"].append(3 * CAPACITY, start=10_000)  # far more than the ring holds at once
        got = s.until(lambda g: any(r.HasField("lost_events") for r in g) and len(flows(g)) >= CAPACITY)
        lost = [r for r in got if r.HasField("lost_events")]
        assert lost[0].node_name == "n3"
        assert lost[0].lost_events.source == flow_pb2.HUBBLE_RING_BUFFER
        assert lost[0].lost_events.num_events_lost == 2 * CAPACITY
    finally:
        s.close()


def test_sort_buffer_orders_within_its_window() -> None:
    from tendril.hubble.observer.service import _ts
    from tendril.hubble.relay.merge import SortBuffer

    def resp(ns: int) -> observer_pb2.GetFlowsResponse:
        return observer_pb2.GetFlowsResponse(time=_ts(ns))

    buf = SortBuffer(max_len=3, drain_after=60)
    assert buf.timeout() is None
    out = [r for ns in (5, 1, 4, 2, 3, 9, 8) for r in buf.push(resp(ns))]
    assert [r.time.ToNanoseconds() for r in out] == [1, 2, 3, 4]
    assert 0 < buf.timeout() <= 60
    assert [r.time.ToNanoseconds() for r in buf.drain()] == [5, 8, 9]
    assert buf.timeout() is None and len(buf) == 0
