"""`tendril hubble ui`: filter validation, the service map and the flow window on hand-built flows
(fast), the JSON API in process, then the real thing: a lab with a frontend/backend pair, an
intruder denied by a CiliumNetworkPolicy and a second namespace, the UI server as `tendril hubble ui
--lab`, and headless Chromium (Debian's, driven by Playwright) looking at the page.

Screenshots go to $TENDRIL_TEST_ARTIFACTS/ui/ (default /tmp/tendril-test-artifacts/ui/).
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from conftest import TENDRIL, Lab, wait_for
from tendril.hubble.api import flow_pb2
from tendril.ui.model import FlowWindow, app_name, flow_row, map_node, service_map
from tendril.ui.query import FlowQuery, QueryError

ARTIFACTS = Path(os.environ.get("TENDRIL_TEST_ARTIFACTS", "/tmp/tendril-test-artifacts")) / "ui"

# --- hand-built flows ---------------------------------------------------------------------------

_uuid = iter(range(1, 1_000_000))


def ep(namespace: str = "", pod: str = "", identity: int = 300, app: str | None = None, **labels: str):
    lbls = [f"k8s:{k.replace('_', '-')}={v}" for k, v in labels.items()]
    if app is not None:
        lbls.append(f"k8s:app={app}")
    if namespace:
        lbls.append(f"k8s:io.kubernetes.pod.namespace={namespace}")
    return flow_pb2.Endpoint(identity=identity, namespace=namespace, pod_name=pod, labels=lbls)


def reserved(name: str, identity: int) -> flow_pb2.Endpoint:
    return flow_pb2.Endpoint(identity=identity, labels=[f"reserved:{name}"])


def mkflow(
    src: flow_pb2.Endpoint,
    dst: flow_pb2.Endpoint,
    sip: str,
    dip: str,
    sport: int = 40000,
    dport: int = 8080,
    proto: str = "TCP",
    verdict: int = flow_pb2.FORWARDED,
    reply: bool | None = False,
    t: float = 1.0,
    event_type: int = 4,
    uuid: str | None = None,
) -> flow_pb2.Flow:
    f = flow_pb2.Flow(verdict=verdict, source=src, destination=dst, node_name="n1")
    f.uuid = uuid or f"00000000-0000-0000-0000-{next(_uuid):012d}"
    f.time.FromNanoseconds(int(t * 1e9))
    f.IP.source, f.IP.destination = sip, dip
    f.IP.ipVersion = flow_pb2.IPv4
    if proto in ("TCP", "UDP"):
        l4 = getattr(f.l4, proto)
        l4.source_port, l4.destination_port = sport, dport
        l4.SetInParent()
    else:
        f.l4.ICMPv4.type = 8
    f.event_type.type = event_type
    if verdict == flow_pb2.DROPPED:
        f.event_type.type, f.event_type.sub_type = 1, 133
        f.drop_reason_desc = flow_pb2.POLICY_DENIED
    if reply is not None:
        f.is_reply.value = reply
    f.Summary = proto
    return f


FE = ep("shop", "frontend-7d9f", app="frontend")
BE = ep("shop", "backend-1", app="backend")
BE2 = ep("shop", "backend-2", app="backend")
EVIL = ep("shop", "intruder", app="intruder")
OPS = ep("ops", "scraper", k8s_app="scraper")
FE_IP, BE_IP, BE2_IP, EVIL_IP, OPS_IP = "10.244.1.2", "10.244.1.3", "10.244.1.4", "10.244.1.5", "10.244.2.9"


def shop_flows() -> list[flow_pb2.Flow]:
    """frontend -> backend allowed (both replicas, with replies); intruder -> backend denied (the SYN is
    forwarded where it leaves the intruder and dropped by policy at the backend); frontend -> world."""
    out = []
    for i, (be, ip) in enumerate([(BE, BE_IP), (BE2, BE2_IP)]):
        t = 10.0 + i
        out += [
            mkflow(FE, be, FE_IP, ip, sport=40000 + i, t=t),
            mkflow(be, FE, ip, FE_IP, sport=8080, dport=40000 + i, reply=True, t=t + 0.001),
        ]
    out += [
        mkflow(EVIL, BE, EVIL_IP, BE_IP, sport=50000, t=20.0),  # from-endpoint trace
        mkflow(EVIL, BE, EVIL_IP, BE_IP, sport=50000, t=20.001, verdict=flow_pb2.DROPPED, reply=None),
        mkflow(EVIL, BE, EVIL_IP, BE_IP, sport=50000, t=21.0, verdict=flow_pb2.DROPPED, reply=None),
        mkflow(FE, reserved("world", 2), FE_IP, "203.0.113.10", sport=40100, dport=443, t=22.0),
        mkflow(reserved("host", 1), BE, "10.244.1.1", BE_IP, sport=33000, dport=8080, t=23.0),
    ]
    return out


# --- filters ----------------------------------------------------------------------------------


def test_query_parses_and_normalises() -> None:
    q = FlowQuery.parse(
        [
            ("namespace", "shop"),
            ("namespace", "ops"),
            ("verdict", "dropped"),
            ("pod", "shop/back"),
            ("pod", "front"),
            ("protocol", "TCP,udp"),
            ("port", "8080"),
            ("limit", "5"),
            ("port", ""),  # an empty form field is no filter
        ]
    )
    assert q.namespaces == ("shop", "ops")
    assert q.verdicts == (flow_pb2.DROPPED,)
    assert q.pods == (("shop", "back"), ("", "front"))
    assert q.protocols == ("tcp", "udp")
    assert q.ports == (8080,)
    assert q.limit == 5
    assert q.to_dict()["verdict"] == ["DROPPED"] and q.to_dict()["pod"] == ["shop/back", "front"]
    assert FlowQuery.parse({}) == FlowQuery()


@pytest.mark.parametrize(
    ("name", "value", "expect"),
    [
        ("verdict", "NOPE", 'invalid verdict filter: unknown verdict "NOPE" (known: FORWARDED, DROPPED'),
        ("port", "99999", 'invalid port filter: invalid port "99999"'),
        ("port", "http", 'invalid port filter: invalid port "http"'),
        ("port", "-1", "invalid port filter"),
        ("protocol", "bogus", 'invalid protocol filter: unknown protocol "bogus" (known: icmp'),
        ("namespace", "Bad_NS", 'invalid namespace filter: "Bad_NS" is not a namespace name'),
        ("namespace", "-lead", "invalid namespace filter"),
        ("namespace", "x" * 64, "invalid namespace filter"),
        ("pod", "/", "invalid pod filter"),
        ("pod", "Bad_NS/x", "invalid pod filter"),
        ("pod", "shop/web server", "invalid pod filter"),
        ("limit", "0", "invalid limit filter"),
        ("limit", "ten", "invalid limit filter"),
        ("colour", "red", 'invalid colour filter: unknown filter "colour"'),
    ],
)
def test_invalid_filters_name_the_filter(name: str, value: str, expect: str) -> None:
    with pytest.raises(QueryError) as e:
        FlowQuery.parse([(name, value)])
    assert str(e.value).startswith(expect), str(e.value)
    assert e.value.filter == name


def test_query_matching() -> None:
    flows = shop_flows()
    ops_flow = mkflow(OPS, BE, OPS_IP, BE_IP, sport=41000, t=30)
    flows.append(ops_flow)

    def sel(**params: str | list[str]) -> list[flow_pb2.Flow]:
        pairs = [(k, v) for k, vs in params.items() for v in ([vs] if isinstance(vs, str) else vs)]
        q = FlowQuery.parse(pairs)
        return [f for f in flows if q.matches(f)]

    assert sel(namespace="ops") == [ops_flow]  # source side
    assert len(sel(namespace=["ops", "shop"])) == len(flows)  # either side, several namespaces
    assert (
        all(f.verdict == flow_pb2.DROPPED for f in sel(verdict="DROPPED"))
        and len(sel(verdict="DROPPED")) == 2
    )
    assert {f.source.pod_name for f in sel(pod="intr")} == {"intruder"}
    assert sel(pod="ops/scr") == [ops_flow]
    assert sel(pod="scr", namespace="shop") == []  # a bare prefix is looked for in the selected namespaces
    assert len(sel(port="443")) == 1 and len(sel(port="40000")) == 2  # either side's port
    assert sel(protocol="udp") == [] and len(sel(protocol="tcp")) == len(flows)


# --- service map ------------------------------------------------------------------------------


def test_map_nodes_group_workloads_by_namespace_and_app() -> None:
    assert map_node(BE, BE_IP) == map_node(BE2, BE2_IP)  # two replicas, one node
    assert map_node(BE, BE_IP).id == "shop/backend"
    assert map_node(OPS, OPS_IP).id == "ops/scraper"  # k8s-app
    named = ep("ops", "db-0", **{"app.kubernetes.io/name": "postgres"})
    named.labels[:] = ["k8s:app.kubernetes.io/name=postgres"]
    assert app_name(named) == "postgres"
    deploy = ep("ops", "web-5f6c9-abcde")
    deploy.workloads.add(name="web", kind="Deployment")
    assert map_node(deploy, "10.244.1.9").id == "ops/web"  # no app label: the workload
    assert map_node(ep("ops", "lonely"), "10.244.1.10").id == "ops/lonely"  # nor a workload: the pod
    assert map_node(reserved("world", 2), "203.0.113.1").kind == "world"
    assert map_node(reserved("host", 1), "10.244.1.1").id == "host"
    assert map_node(reserved("remote-node", 6), "198.18.0.12").id == "remote-node"
    assert (
        map_node(flow_pb2.Endpoint(identity=16777217, labels=["cidr:203.0.113.0/24"]), "203.0.113.5").id
        == "world"
    )
    assert map_node(flow_pb2.Endpoint(), "8.8.8.8").id == "world"  # nothing known, outside the cluster


def test_service_map_edges_verdicts_and_orientation() -> None:
    m = service_map(shop_flows())
    nodes = {n["id"]: n for n in m["nodes"]}
    assert set(nodes) == {"shop/frontend", "shop/backend", "shop/intruder", "world", "host"}
    assert nodes["shop/backend"]["pods"] == ["backend-1", "backend-2"]
    assert nodes["shop/backend"]["namespace"] == "shop" and nodes["world"]["kind"] == "world"
    edges = {e["id"]: e for e in m["edges"]}
    assert set(edges) == {
        "shop/frontend>shop/backend:TCP/8080",  # replies are turned around: no backend -> frontend edge
        "shop/intruder>shop/backend:TCP/8080",
        "shop/frontend>world:TCP/443",
        "host>shop/backend:TCP/8080",
    }
    ok = edges["shop/frontend>shop/backend:TCP/8080"]
    assert ok["state"] == "forwarded" and ok["flows"] == {"forwarded": 4, "dropped": 0, "other": 0}
    assert ok["connections"] == {"forwarded": 2, "dropped": 0} and ok["port"] == 8080
    denied = edges["shop/intruder>shop/backend:TCP/8080"]
    # the SYN's forwarded trace at the intruder does not make it amber: the connection was dropped
    assert (
        denied["state"] == "dropped" and denied["flows"]["dropped"] == 2 and denied["flows"]["forwarded"] == 1
    )
    assert denied["connections"] == {"forwarded": 0, "dropped": 1}
    assert denied["last_seen"] == "1970-01-01T00:00:21.000Z"


def test_service_map_mixed_edge_and_skipped_flows() -> None:
    flows = [
        mkflow(FE, BE, FE_IP, BE_IP, sport=1111, t=1),
        mkflow(FE, BE, FE_IP, BE_IP, sport=2222, t=2, verdict=flow_pb2.DROPPED, reply=None),
        mkflow(FE, BE, FE_IP, BE_IP, proto="ICMP", t=3),
        # a socket-LB translation is not a packet; world <-> world says nothing
        mkflow(FE, BE, FE_IP, "10.96.0.20", t=4, event_type=7),
        mkflow(reserved("world", 2), reserved("world", 2), "fe80::1", "ff02::16", t=5),
    ]
    solicit = mkflow(FE, reserved("host", 1), "fe80::2", "fe80::1", proto="ICMP", t=6)
    solicit.l4.ICMPv6.type = 135  # neighbour solicitation for the node's router address
    flows.append(solicit)
    edges = {e["id"]: e for e in service_map(flows)["edges"]}
    assert set(edges) == {"shop/frontend>shop/backend:TCP/8080", "shop/frontend>shop/backend:ICMPv4"}
    assert edges["shop/frontend>shop/backend:TCP/8080"]["state"] == "mixed"
    assert edges["shop/frontend>shop/backend:ICMPv4"]["label"] == "ICMPv4"


def test_service_map_edges_name_their_l7_protocols() -> None:
    """HTTP seen on a TCP edge (proxy or proxy-free visibility) is written after its port."""
    plain = mkflow(FE, BE, FE_IP, BE_IP, sport=1111, t=1)
    http = mkflow(FE, BE, FE_IP, BE_IP, sport=1111, t=2)
    http.l7.type = flow_pb2.REQUEST
    http.l7.http.method = "GET"
    edges = {e["id"]: e for e in service_map([plain, http])["edges"]}
    edge = edges["shop/frontend>shop/backend:TCP/8080"]  # the id stays the L4 one
    assert edge["l7"] == ["HTTP"] and edge["label"] == "TCP/8080 · HTTP"
    assert service_map([plain])["edges"][0]["label"] == "TCP/8080"


def test_flow_row() -> None:
    f = shop_flows()[5]  # the policy drop
    row = flow_row(7, f)
    assert row["id"] == 7 and row["verdict"] == "DROPPED" and row["drop_reason"] == "POLICY_DENIED"
    assert row["type"] == "Policy denied" and row["protocol"] == "TCP" and row["is_reply"] is None
    assert row["source"]["label"] == "shop/intruder" and row["source"]["port"] == 50000
    assert row["destination"]["node"] == "shop/backend" and row["time"] == "1970-01-01T00:00:20.001Z"


# --- flow window --------------------------------------------------------------------------------


def test_window_is_bounded_per_namespace_and_deduplicated() -> None:
    w = FlowWindow(per_namespace=3)
    quiet = mkflow(OPS, OPS, OPS_IP, OPS_IP, t=0.5)
    assert w.add(quiet) is not None
    for i in range(10):
        w.add(mkflow(FE, BE, FE_IP, BE_IP, sport=1000 + i, t=1 + i))
    assert w.add(quiet) is None  # same UUID: once
    assert [e.flow.l4.TCP.source_port for e in w.select(["shop"])] == [1007, 1008, 1009]
    assert w.select(["ops"])[0].flow is quiet  # a busy namespace does not push a quiet one out
    assert len(w) == 4 and w.namespaces() == ["ops", "shop"]
    both = w.select(["shop", "ops"])
    assert both[0].flow is quiet and len(both) == 4  # merged, in time order
    # a backfill brings older flows: kept in order, never in place of newer ones
    assert w.add(mkflow(FE, BE, FE_IP, BE_IP, sport=999, t=0.1)) is None
    late = w.add(mkflow(FE, BE, FE_IP, BE_IP, sport=998, t=8.5))
    assert late is not None
    assert [e.flow.l4.TCP.source_port for e in w.select(["shop"])] == [998, 1008, 1009]
    assert w.get(late.id) is late and w.get(1) is not None


# --- the API in process ---------------------------------------------------------------------------


class InProcess:
    """The app called through httpx's ASGI transport (no sockets), one request at a time."""

    def __init__(self, app: object) -> None:
        self.app = app

    def get(self, path: str, params: object = None) -> httpx.Response:
        async def go() -> httpx.Response:
            transport = httpx.ASGITransport(app=self.app)  # type: ignore[arg-type]
            async with httpx.AsyncClient(transport=transport, base_url="http://ui") as c:
                return await c.get(path, params=params)  # type: ignore[arg-type]

        return asyncio.run(go())


@pytest.fixture
def api() -> InProcess:
    from tendril.ui.server import UIState, build_app

    window = FlowWindow()
    for f in shop_flows():
        window.add(f)
    window.add(mkflow(OPS, BE, OPS_IP, BE_IP, sport=41000, t=30))
    return InProcess(build_app(UIState(window)))


def test_api_flows_map_and_errors(api: InProcess) -> None:
    r = api.get("/api/flows", params={"namespace": "shop", "verdict": "DROPPED"})
    assert r.status_code == 200
    body = r.json()
    assert [f["verdict"] for f in body["flows"]] == ["DROPPED", "DROPPED"] and body["matched"] == 2
    assert body["flows"][0]["time_ns"] > body["flows"][1]["time_ns"]  # newest first
    assert len(api.get("/api/flows", params={"limit": "3"}).json()["flows"]) == 3
    detail = api.get(f"/api/flows/{body['flows'][0]['id']}").json()
    assert detail["flow"]["verdict"] == "DROPPED" and detail["flow"]["drop_reason_desc"] == "POLICY_DENIED"
    assert api.get("/api/flows/999999").status_code == 404

    m = api.get("/api/servicemap", params=[("namespace", "ops")]).json()
    assert {n["id"] for n in m["nodes"]} == {"ops/scraper", "shop/backend"}
    m2 = api.get("/api/servicemap", params=[("namespace", "ops"), ("namespace", "shop")]).json()
    assert {"ops/scraper", "shop/frontend", "shop/intruder"} <= {n["id"] for n in m2["nodes"]}

    for params, name in [
        ({"verdict": "NOPE"}, "verdict"),
        ({"port": "99999"}, "port"),
        ({"protocol": "bogus"}, "protocol"),
        ({"namespace": "Bad_NS"}, "namespace"),
    ]:
        for path in ("/api/flows", "/api/servicemap", "/api/stream"):
            r = api.get(path, params=params)
            assert r.status_code == 400, (path, params)
            assert r.json()["error"].startswith(f"invalid {name} filter: ") and r.json()["filter"] == name

    assert api.get("/api/namespaces").json()["namespaces"] == [
        {"name": "ops", "cluster": "", "seen": True},
        {"name": "shop", "cluster": "", "seen": True},
    ]
    assert api.get("/api/status").json()["window"]["flows"] == len(shop_flows()) + 1
    assert api.get("/api/nope").status_code == 404 and "error" in api.get("/api/nope").json()
    page = api.get("/")
    assert page.status_code == 200 and 'id="map"' in page.text
    assert "renderMap" in api.get("/static/app.js").text


def test_relay_down_is_reported_not_fatal() -> None:
    from tendril.ui.relay import RelaySource
    from tendril.ui.server import UIState, build_app

    async def go() -> tuple[dict, dict, httpx.Response, RelaySource]:
        window = FlowWindow()
        source = RelaySource(f"127.0.0.1:{_free_port()}", window)  # nothing listens there
        await source.start()
        try:
            transport = httpx.ASGITransport(app=build_app(UIState(window, source)))
            async with httpx.AsyncClient(transport=transport, base_url="http://ui") as c:
                status = (await c.get("/api/status")).json()
                namespaces = (await c.get("/api/namespaces")).json()
                flows = await c.get("/api/flows", params={"namespace": "shop"})
                await asyncio.sleep(0.2)
        finally:
            await source.stop()
        return status, namespaces, flows, source

    status, namespaces, flows, source = asyncio.run(go())
    assert status["relay"]["reachable"] is False
    assert status["relay"]["error"].startswith("rpc error: code = Unavailable")
    assert namespaces["namespaces"] == [] and namespaces["relay_error"].startswith("rpc error")
    assert flows.status_code == 200 and flows.json()["flows"] == []
    assert not source.streaming and source.error.startswith("rpc error: code = Unavailable")


# --- a real lab, the real server, real Chromium -----------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


LAB_UP_ARGS = ["--relay-port", str(_free_port())]

PODS = """
apiVersion: v1
kind: Namespace
metadata: {name: shop}
---
apiVersion: v1
kind: Namespace
metadata: {name: ops}
---
apiVersion: v1
kind: Pod
metadata: {name: frontend, namespace: shop, labels: {app: frontend}}
spec: {containers: [{name: c}]}
---
apiVersion: v1
kind: Pod
metadata: {name: backend, namespace: shop, labels: {app: backend}}
spec:
  containers:
    - name: http
      command: [tendril, workload, http-echo, --port, "8080"]
    - name: udp
      command: [tendril, workload, udp-echo, --port, "9000"]
---
apiVersion: v1
kind: Pod
metadata: {name: intruder, namespace: shop, labels: {app: intruder}}
spec: {containers: [{name: c}]}
---
apiVersion: v1
kind: Pod
metadata: {name: scraper, namespace: ops, labels: {app: scraper}}
spec: {containers: [{name: c}]}
---
apiVersion: v1
kind: Pod
metadata: {name: metrics, namespace: ops, labels: {app: metrics}}
spec:
  containers:
    - name: http
      command: [tendril, workload, http-echo, --port, "9090"]
---
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: backend-from-frontend, namespace: shop}
spec:
  endpointSelector: {matchLabels: {app: backend}}
  ingress:
    - fromEndpoints: [{matchLabels: {app: frontend}}]
"""

CHROMIUM = os.environ.get("TENDRIL_CHROMIUM", "/usr/bin/chromium")


class UI:
    def __init__(self, lab: Lab, pods: dict[str, dict], url: str) -> None:
        self.lab = lab
        self.pods = pods
        self.url = url
        self.http = httpx.Client(base_url=url, timeout=20)

    def ip(self, pod: str) -> str:
        return self.pods[pod]["status"]["podIPs"][0]["ip"]

    def probe(self, pod: str, targets: list[tuple[str, str, int]]) -> list[bool]:
        from tendril.datapath.netns import nsenter_argv
        from test_policy_integration import PROBE

        ns = self.pods[pod]["metadata"]["namespace"]
        r = subprocess.run(
            nsenter_argv(self.lab.pod_netns(ns, pod), [sys.executable, "-c", PROBE, json.dumps(targets)]),
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        )
        return json.loads(r.stdout)

    def edges(self, *namespaces: str) -> dict[str, dict]:
        r = self.http.get("/api/servicemap", params=[("namespace", ns) for ns in namespaces])
        r.raise_for_status()
        return {e["id"]: e for e in r.json()["edges"]}


ALLOWED = "shop/frontend>shop/backend:TCP/8080"
DENIED = "shop/intruder>shop/backend:TCP/8080"
OPS_EDGE = "ops/scraper>ops/metrics:TCP/9090"


@pytest.fixture(scope="module")
def ui(lab: Lab) -> Iterator[UI]:
    lab.apply(PODS)
    pods = lab.wait_running("shop", ["frontend", "backend", "intruder"], timeout=30)
    pods.update(lab.wait_running("ops", ["scraper", "metrics"], timeout=30))
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    port = _free_port()
    log = open(ARTIFACTS / "ui-server.log", "wb")  # noqa: SIM115 - closed at teardown
    proc = subprocess.Popen(
        [TENDRIL, "hubble", "ui", "--lab", lab.name, "--port", str(port), "--push-interval", "0.3"],
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    u = UI(lab, pods, f"http://127.0.0.1:{port}")
    try:
        # traffic before the UI has seen anything: it must come from the relay's history
        be = u.ip("backend")
        assert u.probe("frontend", [("tcp", be, 8080), ("tcp", be, 8080)]) == [True, True]
        assert u.probe("intruder", [("tcp", be, 8080)]) == [False]
        assert u.probe("scraper", [("tcp", u.ip("metrics"), 9090)]) == [True]

        def up() -> bool:
            assert proc.poll() is None, (ARTIFACTS / "ui-server.log").read_text()
            try:
                return u.http.get("/api/status").status_code == 200
            except httpx.TransportError:
                return False

        wait_for("the UI server", up, timeout=20)
        wait_for("the allowed and the denied edge", lambda: {ALLOWED, DENIED} <= set(u.edges("shop")))
        yield u
    finally:
        u.http.close()
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
        log.close()


@pytest.fixture(scope="module")
def browser(ui: UI) -> Iterator[object]:
    playwright_api = pytest.importorskip("playwright.sync_api", reason="playwright is in the dev extras")
    if not shutil.which(CHROMIUM):
        pytest.skip(f"{CHROMIUM} not found (Debian package chromium, installed by scripts/setup.sh)")
    with playwright_api.sync_playwright() as p:
        # root has no user namespace sandbox for Chromium; the page is our own, on loopback
        b = p.chromium.launch(executable_path=shutil.which(CHROMIUM), args=["--no-sandbox"])
        try:
            yield b
        finally:
            b.close()


@pytest.fixture
def page(browser, ui: UI, request: pytest.FixtureRequest) -> Iterator[object]:  # noqa: ANN001
    pg = browser.new_page(viewport={"width": 1400, "height": 1000})
    errors: list[str] = []
    pg.on("pageerror", lambda e: errors.append(str(e)))
    pg.set_default_timeout(15_000)
    try:
        yield pg
    finally:
        pg.screenshot(path=str(ARTIFACTS / f"{request.node.name}-final.png"), full_page=True)
        pg.close()
    assert not errors, errors


def _open(page, ui: UI, query: str = "") -> None:  # noqa: ANN001
    page.goto(f"{ui.url}/{query}")
    page.wait_for_selector("body[data-state]")


def test_api_against_the_lab(ui: UI) -> None:
    edges = ui.edges("shop")
    assert edges[ALLOWED]["state"] == "forwarded" and edges[ALLOWED]["connections"]["forwarded"] >= 2
    assert edges[DENIED]["state"] == "dropped" and edges[DENIED]["flows"]["dropped"] >= 1
    assert OPS_EDGE not in edges
    assert OPS_EDGE in wait_for("ops flows", lambda: (e := ui.edges("shop", "ops")) and OPS_EDGE in e and e)

    drops = ui.http.get("/api/flows", params={"namespace": "shop", "verdict": "DROPPED"}).json()["flows"]
    assert drops and {f["verdict"] for f in drops} == {"DROPPED"}
    assert any(f["drop_reason"] == "POLICY_DENIED" and f["source"]["pod"] == "intruder" for f in drops)

    status = ui.http.get("/api/status").json()
    assert status["relay"]["reachable"] and status["relay"]["connected_nodes"] == 1
    assert status["relay"]["nodes"][0]["name"] == ui.lab.node
    names = [n["name"] for n in ui.http.get("/api/namespaces").json()["namespaces"]]
    assert {"shop", "ops"} <= set(names)

    r = ui.http.get("/api/flows", params={"namespace": "shop", "port": "99999"})
    assert r.status_code == 400 and r.json()["error"].startswith("invalid port filter: ")
    r = ui.http.get("/api/servicemap", params={"verdict": "MAYBE"})
    assert r.status_code == 400 and "invalid verdict filter" in r.json()["error"]


def test_map_shows_workloads_allowed_and_dropped_edges(page, ui: UI) -> None:  # noqa: ANN001
    _open(page, ui, "?namespace=shop")
    for name in ("frontend", "backend", "intruder"):
        node = page.wait_for_selector(f'#map g.node[data-id="shop/{name}"]')
        assert node.query_selector("text.name").text_content() == name
    assert page.locator('#map g.node[data-namespace="ops"]').count() == 0
    allowed = page.locator(f'#map g.edge[data-id="{ALLOWED}"]')
    denied = page.locator(f'#map g.edge[data-id="{DENIED}"]')
    assert allowed.get_attribute("data-state") == "forwarded"
    assert denied.get_attribute("data-state") == "dropped"
    assert denied.locator("text").text_content() == "TCP/8080"
    stroke = denied.locator("path").evaluate("p => getComputedStyle(p).stroke")
    assert stroke == "rgb(214, 38, 58)", stroke  # red
    assert allowed.locator("path").evaluate("p => getComputedStyle(p).stroke") == "rgb(46, 158, 68)"  # green
    page.locator("#map").screenshot(path=str(ARTIFACTS / "map-shop.png"))


def test_map_and_table_update_live(page, ui: UI) -> None:  # noqa: ANN001
    _open(page, ui, "?namespace=shop")
    page.wait_for_selector(f'#map g.edge[data-id="{ALLOWED}"]')
    udp = "shop/frontend>shop/backend:UDP/9000"
    assert page.locator(f'#map g.edge[data-id="{udp}"]').count() == 0
    assert ui.probe("frontend", [("udp", ui.ip("backend"), 9000)]) == [True]
    edge = page.wait_for_selector(f'#map g.edge[data-id="{udp}"][data-state="forwarded"]', timeout=15_000)
    assert edge.text_content().strip().endswith("UDP/9000")
    page.wait_for_selector('#flows tbody tr td.summary:text-is("UDP")')
    page.screenshot(path=str(ARTIFACTS / "live-update.png"), full_page=True)


def test_flow_table_filters_and_details(page, ui: UI) -> None:  # noqa: ANN001
    _open(page, ui, "?namespace=shop")
    page.wait_for_selector('#flows tbody tr[data-verdict="FORWARDED"]')
    page.select_option("#f-verdict", "DROPPED")
    page.wait_for_function(
        """() => { const rows = [...document.querySelectorAll('#flows tbody tr')];
                   return rows.length > 0 && rows.every(r => r.dataset.verdict === 'DROPPED'); }"""
    )
    assert "verdict=DROPPED" in page.url
    # the map follows the filters: only the denied connection is left
    page.wait_for_function(
        f"""() => {{ const e = [...document.querySelectorAll('#map g.edge')].map(g => g.dataset.id);
                    return e.length > 0 && e.every(id => id === '{DENIED}'); }}"""
    )
    page.locator("#flows tbody tr").first.click()
    page.wait_for_selector("#details pre.json")
    details = page.inner_text("#details")
    assert "DROPPED" in details and "POLICY_DENIED" in details and "shop/intruder" in details
    page.screenshot(path=str(ARTIFACTS / "drops-and-details.png"), full_page=True)

    page.fill("#f-pod", "shop/front")  # narrows to the frontend: it had no drops
    page.press("#f-pod", "Enter")
    page.wait_for_function("() => document.querySelector('#flow-count').textContent.startsWith('0 shown')")
    page.click("#f-clear")
    page.wait_for_selector('#flows tbody tr[data-verdict="FORWARDED"]')


def test_two_namespaces_at_once(page, ui: UI) -> None:  # noqa: ANN001
    _open(page, ui, "?namespace=shop")
    page.wait_for_selector('#map g.node[data-id="shop/backend"]')
    page.check('#ns-picker input[value="ops"]')
    page.wait_for_selector('#map g.node[data-id="ops/scraper"]')
    page.wait_for_selector(f'#map g.edge[data-id="{OPS_EDGE}"]')
    assert page.locator('#map g.node[data-id="shop/frontend"]').count() == 1
    assert page.locator(f'#map g.edge[data-id="{DENIED}"]').count() == 1
    assert "namespace=shop" in page.url and "namespace=ops" in page.url
    page.locator("#map").screenshot(path=str(ARTIFACTS / "map-shop-and-ops.png"))


def test_invalid_filter_message_on_the_page(page, ui: UI) -> None:  # noqa: ANN001
    _open(page, ui, "?namespace=shop")
    page.wait_for_selector('#map g.node[data-id="shop/backend"]')
    page.fill("#f-port", "99999")
    page.press("#f-port", "Enter")
    error = page.wait_for_selector("#error:not([hidden])")
    assert error.inner_text().startswith('invalid port filter: invalid port "99999"')
    page.screenshot(path=str(ARTIFACTS / "invalid-filter.png"), full_page=True)
    page.fill("#f-port", "8080")
    page.press("#f-port", "Enter")
    page.wait_for_selector("#error[hidden]", state="attached")

    _open(page, ui, "?namespace=Bad_NS&protocol=tcp")
    assert page.inner_text("#error").startswith('invalid namespace filter: "Bad_NS" is not a namespace name')
    _open(page, ui, "?verdict=NOPE")
    assert page.inner_text("#error").startswith('invalid verdict filter: unknown verdict "NOPE"')
