"""Unit tests of the hubble-compatible CLI pieces the golden fixtures do not reach.

Go formats (time layouts, durations, tabwriter), `hubble status` / `hubble list` rendering,
`--input-file` selection, server resolution and auth rules, and a full observe/status round trip
against an in-process gRPC Observer on a Unix socket (stream errors, exit codes, wire request).
"""

from __future__ import annotations

import io
import json
import os
from concurrent import futures
from pathlib import Path

import grpc
import pytest
from google.protobuf import json_format
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from tendril.hubble.api import flow_pb2, observer_pb2, observer_pb2_grpc, relay_pb2
from tendril.hubble.cli import gotime
from tendril.hubble.cli.commands import run_list_command, run_status_command
from tendril.hubble.cli.conn import connect, resolve_server
from tendril.hubble.cli.errors import CLIError
from tendril.hubble.cli.filters_builder import FlowFilterBuilder
from tendril.hubble.cli.flagdefs import observe_flagset
from tendril.hubble.cli.input_file import replay
from tendril.hubble.cli.listing import format_namespaces, format_nodes
from tendril.hubble.cli.logger import Logger
from tendril.hubble.cli.observe import run_observe
from tendril.hubble.cli.runio import RunIO
from tendril.hubble.cli.settings import Settings
from tendril.hubble.cli.status import format_server_status
from tendril.hubble.cli.tabwriter import TabWriter

FIXTURES = Path(
    os.environ.get("HUBBLE_CLI_FIXTURES", Path(__file__).resolve().parents[2] / "shared/fixtures/hubble-cli")
)


def _rio(stdin: str = "", env: dict[str, str] | None = None) -> RunIO:
    return RunIO(stdin=io.StringIO(stdin), stdout=io.BytesIO(), stderr=io.BytesIO(), env=env or {})


def _outputs(rio: RunIO) -> tuple[str, str]:
    return rio.stdout.getvalue().decode(), rio.stderr.getvalue().decode()  # type: ignore[attr-defined]


# -- Go formats --------------------------------------------------------------------------------------


def test_time_layouts() -> None:
    s, ns = 1715679000, 120_000_000  # 2024-05-14T09:30:00.12Z (a Tuesday)
    assert gotime.format_time(s, ns, gotime.STAMP_MILLI) == "May 14 09:30:00.120"
    assert gotime.format_time(s, ns, gotime.RFC3339) == "2024-05-14T09:30:00Z"
    assert gotime.format_time(s, ns, gotime.RFC3339_MILLI) == "2024-05-14T09:30:00.12Z"
    assert gotime.format_time(s, 0, gotime.RFC3339_NANO) == "2024-05-14T09:30:00Z"
    assert gotime.format_time(s, ns, gotime.RFC1123Z) == "Tue, 14 May 2024 09:30:00 +0000"
    assert gotime.format_time(s, ns, gotime.YEAR_MONTH_DAY_HOUR) == "2024-05-14T09Z"
    assert gotime.format_time(s - 13 * 86400, 0, gotime.STAMP_MILLI) == "May  1 09:30:00.000"
    assert gotime.layout_for_name("rfc3339nano") == gotime.RFC3339_NANO
    assert gotime.layout_for_name("bogus") == gotime.STAMP_MILLI


def test_time_parsing() -> None:
    assert gotime.parse_time("2024-01-01T01:30:00.5+02:00") == (1704065400, 500_000_000)
    assert gotime.parse_time("Mon, 01 Jan 2024 00:00:00 +0100") == (1704063600, 0)
    assert gotime.parse_time("90s", now_ns=100 * gotime.SECOND) == (10, 0)
    for bad in ("yesterday", "2024-13-01", "2024-02-30"):
        with pytest.raises(ValueError, match=f"failed to convert {bad} to time"):
            gotime.parse_time(bad)


def test_durations() -> None:
    assert gotime.parse_duration("1h2m3.5s") == 3723 * gotime.SECOND + 500 * gotime.MILLISECOND
    assert [gotime.duration_string(d) for d in (0, 999, 1500, 1_500_000, 100 * gotime.SECOND)] == [
        "0s",
        "999ns",
        "1.5\u00b5s",
        "1.5ms",
        "1m40s",
    ]
    with pytest.raises(ValueError, match='time: invalid duration "abc"'):
        gotime.parse_duration("abc")


def test_tabwriter_aligns_per_column_and_pads_empty_cells() -> None:
    tw = TabWriter(minwidth=2, padding=3)
    tw.write("A\tBB\tlast\nCCCC\t\t\n")
    assert tw.flush() == "A      BB   last\nCCCC        \n"


# -- hubble status / list rendering ------------------------------------------------------------------


def _status() -> observer_pb2.ServerStatusResponse:
    res = observer_pb2.ServerStatusResponse(
        num_flows=2031, max_flows=4095, seen_flows=2_000_000, uptime_ns=100 * gotime.SECOND, version="v1.19.4"
    )
    res.num_connected_nodes.value = 3
    res.num_unavailable_nodes.value = 2
    res.unavailable_nodes.append("node-z")
    return res


def test_status_compact() -> None:
    assert format_server_status(_status(), "compact") == (
        "Current/Max Flows: 2,031/4,095 (49.60%)\n"
        "Flows/s: 20000.00\n"
        "Connected Nodes: 3/5\n"
        "Unavailable Nodes: 2\n"
        "  - node-z\n"
        "  - and 1 more...\n"
    )
    bare = observer_pb2.ServerStatusResponse(num_flows=1, max_flows=0)
    assert format_server_status(bare, "compact") == "Current/Max Flows: 1/0\nFlows/s: N/A\n"


def test_status_dict_and_json() -> None:
    text = format_server_status(_status(), "dict")
    assert "          NUM FLOWS: 2,031\n" in text and "             UPTIME: 1m40s\n" in text
    assert json.loads(format_server_status(_status(), "json"))["num_flows"] == "2031"


def _nodes() -> list[observer_pb2.Node]:
    b = observer_pb2.Node(
        name="node-b",
        state=relay_pb2.NODE_CONNECTED,
        uptime_ns=3723 * gotime.SECOND + 400 * gotime.MILLISECOND,
        seen_flows=7446,
        num_flows=100,
        max_flows=4095,
        version="v1.19.4",
        address="10.0.0.2:4244",
    )
    b.tls.enabled = True
    return [b, observer_pb2.Node(name="node-a", state=relay_pb2.NODE_UNAVAILABLE)]


def test_list_nodes_table_and_json() -> None:
    assert format_nodes(_nodes(), "table") == (
        "NAME     STATUS        AGE      FLOWS/S   CURRENT/MAX-FLOWS\n"
        "node-a   Unavailable   N/A      N/A       N/A\n"
        "node-b   Connected     1h2m3s   2.00      100/4095 (  2.44%)\n"
    )
    wide = format_nodes(_nodes(), "wide").splitlines()
    assert wide[0].split() == [
        "NAME",
        "STATUS",
        "AGE",
        "FLOWS/S",
        "CURRENT/MAX-FLOWS",
        "VERSION",
        "ADDRESS",
        "TLS",
    ]
    assert wide[2].endswith("v1.19.4   10.0.0.2:4244   Enabled")
    text = format_nodes(_nodes(), "json")
    assert text.startswith('[\n  {\n    "name": "node-a",\n    "state": "NODE_UNAVAILABLE"\n  },\n')
    assert json.loads(text)[1]["tls"] == {"enabled": True}
    assert format_nodes([], "json") == "null\n"
    with pytest.raises(CLIError, match="unknown output format: xml"):
        format_nodes([], "xml")


def test_list_namespaces() -> None:
    nss = [
        observer_pb2.Namespace(namespace="default", cluster="kind"),
        observer_pb2.Namespace(namespace="shop"),
    ]
    assert format_namespaces(nss, "table") == "NAMESPACE\ndefault\nshop\n"
    assert format_namespaces(nss, "wide") == "NAMESPACE   CLUSTER\ndefault     kind\nshop\n"


# -- --input-file ------------------------------------------------------------------------------------


def _saved_lines() -> list[str]:
    return (FIXTURES / "flows.jsonl").read_text().splitlines(keepends=True)


@pytest.mark.skipif(not FIXTURES.is_dir(), reason="hubble CLI fixtures not available")
def test_input_file_first_last_since() -> None:
    log = Logger(stream=io.StringIO())
    uuids = [
        r.flow.uuid for r in replay(_saved_lines(), observer_pb2.GetFlowsRequest(number=2, first=True), log)
    ]
    assert uuids == ["6d1f2c9a-0b1e-4f3b-9c1d-000000000001", "6d1f2c9a-0b1e-4f3b-9c1d-000000000002"]
    last = list(replay(_saved_lines(), observer_pb2.GetFlowsRequest(number=2), log))
    assert [r.WhichOneof("response_types") for r in last] == ["node_status", "flow"]
    req = observer_pb2.GetFlowsRequest()
    req.since.FromJsonString("2024-05-14T09:30:05Z")
    assert len(list(replay(_saved_lines(), req, log))) == 1


def test_input_file_bad_line_warns_and_continues() -> None:
    stream = io.StringIO()
    out = list(
        replay(["{nope\n", '{"node_name":"x"}\n'], observer_pb2.GetFlowsRequest(), Logger(stream=stream))
    )
    assert len(out) == 1 and out[0].node_name == "x"
    assert 'msg="Failed to unmarshal json to flow"' in stream.getvalue()


@pytest.mark.skipif(not FIXTURES.is_dir(), reason="hubble CLI fixtures not available")
def test_input_file_from_stdin() -> None:
    rio = _rio(stdin=(FIXTURES / "flows.jsonl").read_text())
    assert run_observe(["--input-file", "-", "--first", "1", "--color", "never"], rio) == 0
    out, _ = _outputs(rio)
    assert out == (FIXTURES / "out" / "compact.txt").read_text().splitlines(keepends=True)[0]


def test_missing_input_file() -> None:
    rio = _rio()
    assert run_observe(["--input-file", "/nonexistent/flows.json"], rio) == 1
    assert _outputs(rio)[1] == "open /nonexistent/flows.json: no such file or directory\n"


# -- flags and connection rules ----------------------------------------------------------------------


def test_pflag_forms() -> None:
    b = FlowFilterBuilder()
    fs = observe_flagset(b)
    assert fs.parse(["flows", "-fA", "--last=3", "-ojson", "-l=app", "extra"]) == ["flows", "extra"]
    assert (fs["follow"], fs["last"], fs["output"]) == (True, 3, "json")
    with pytest.raises(CLIError, match="unknown flag: --bogus"):
        observe_flagset(FlowFilterBuilder()).parse(["--bogus"])
    with pytest.raises(CLIError, match="flag needs an argument: --last"):
        observe_flagset(FlowFilterBuilder()).parse(["--last"])
    with pytest.raises(
        CLIError, match='invalid argument "x" for "--last" flag: strconv.ParseUint: parsing "x"'
    ):
        observe_flagset(FlowFilterBuilder()).parse(["--last", "x"])


def test_server_resolution(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("TENDRIL_RUN_DIR", str(tmp_path))  # no lab, no agent
    fs = observe_flagset(FlowFilterBuilder())
    fs.parse(["--lab", "no-such-lab"])
    assert resolve_server(Settings(fs, {"HUBBLE_SERVER": "tls://relay:443"})) == "tls://relay:443"
    (tmp_path / "config.yaml").write_text("server: from-config:4245\n")
    assert resolve_server(Settings(fs, {})) == "from-config:4245"
    fs.parse(["--server", "flag:1"])
    assert resolve_server(Settings(fs, {"HUBBLE_SERVER": "env:1"})) == "flag:1"


def test_basic_auth_needs_tls() -> None:
    fs = observe_flagset(FlowFilterBuilder())
    fs.parse(["--server", "localhost:4245", "--basic-auth-username", "u"])
    with pytest.raises(CLIError, match="the credentials require transport level security"):
        connect(Settings(fs, {}))


# -- against an in-process Observer ------------------------------------------------------------------


class _Observer(observer_pb2_grpc.ObserverServicer):
    def __init__(self, responses: list[observer_pb2.GetFlowsResponse]) -> None:
        self.responses = responses
        self.requests: list[observer_pb2.GetFlowsRequest] = []
        self.fail: tuple[grpc.StatusCode, str] | None = None

    def GetFlows(self, request, context):  # noqa: ANN001, ANN201, N802
        self.requests.append(request)
        yield from self.responses
        if self.fail:
            context.abort(*self.fail)

    def ServerStatus(self, request, context):  # noqa: ANN001, ANN201, N802
        return _status()

    def GetNodes(self, request, context):  # noqa: ANN001, ANN201, N802
        return observer_pb2.GetNodesResponse(nodes=_nodes())


@pytest.fixture
def observer_server(tmp_path: Path):  # noqa: ANN201
    responses = []
    if FIXTURES.is_dir():
        for line in (FIXTURES / "flows.jsonl").read_text().splitlines():
            res = observer_pb2.GetFlowsResponse()
            json_format.Parse(line, res)
            responses.append(res)
    servicer = _Observer(responses)
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    observer_pb2_grpc.add_ObserverServicer_to_server(servicer, server)
    hs = health.HealthServicer()
    hs.set("hubble.server.Observer", health_pb2.HealthCheckResponse.SERVING)
    health_pb2_grpc.add_HealthServicer_to_server(hs, server)
    sock = tmp_path / "hubble.sock"
    server.add_insecure_port(f"unix://{sock}")
    server.start()
    yield f"unix://{sock}", servicer
    server.stop(None)


@pytest.mark.skipif(not FIXTURES.is_dir(), reason="hubble CLI fixtures not available")
def test_observe_over_grpc_matches_golden(observer_server) -> None:  # noqa: ANN001
    target, servicer = observer_server
    rio = _rio()
    assert run_observe(["--server", target, "--color", "never"], rio) == 0
    out, err = _outputs(rio)
    assert out == (FIXTURES / "out" / "compact.txt").read_text()
    assert err == (FIXTURES / "out" / "compact.stderr").read_text()
    assert servicer.requests[0].number == 20 and "Summary" in servicer.requests[0].field_mask.paths


def test_observe_stream_errors(observer_server) -> None:  # noqa: ANN001
    target, servicer = observer_server
    servicer.responses = []
    servicer.fail = (grpc.StatusCode.INVALID_ARGUMENT, "invalid source_ip filter: bad")
    rio = _rio()
    assert run_observe(["--server", target], rio) == 1
    assert _outputs(rio) == ("", "rpc error: code = InvalidArgument desc = invalid source_ip filter: bad\n")
    servicer.fail = (grpc.StatusCode.UNKNOWN, "custom message")
    rio = _rio()
    assert run_observe(["--server", target], rio) == 1
    assert _outputs(rio)[1] == "custom message\n"
    servicer.fail = (grpc.StatusCode.CANCELLED, "bye")
    assert run_observe(["--server", target], _rio()) == 0


def test_status_and_list_over_grpc(observer_server) -> None:  # noqa: ANN001
    target, _ = observer_server
    rio = _rio()
    assert run_status_command(["--server", target], rio) == 0
    out, _ = _outputs(rio)
    assert out.startswith(f"Healthcheck (via {target}): Ok\nCurrent/Max Flows: 2,031/4,095 (49.60%)\n")
    rio = _rio()
    assert run_status_command(["--server", target, "-o", "xml"], rio) == 1
    assert _outputs(rio)[1] == "invalid output format: xml\n"
    rio = _rio()
    assert run_list_command("nodes", ["--server", target], rio) == 0
    assert _outputs(rio)[0] == format_nodes(_nodes(), "table")


def test_status_unreachable() -> None:
    rio = _rio()
    assert run_status_command(["--server", "unix:///nonexistent.sock"], rio) == 1
    assert _outputs(rio)[1].startswith("failed getting status: rpc error: code = Unavailable desc = ")


def test_verdict_names_without_policy_verdict() -> None:
    from tendril.hubble.cli.printer import Printer, PrinterOptions

    p = Printer(PrinterOptions(color="never"), io.BytesIO(), io.BytesIO())
    f = flow_pb2.Flow(verdict=flow_pb2.AUDIT)
    assert p.verdict(f) == "AUDIT"
    f.event_type.type = 5
    assert p.verdict(f) == "AUDITED"


@pytest.mark.skipif(not FIXTURES.is_dir(), reason="hubble CLI fixtures not available")
@pytest.mark.parametrize(
    ("args", "uuids"),
    [
        (["--verdict", "DROPPED"], [5, 7, 33, 34]),
        (["--from-pod", "default/tiefighter", "--not", "--type", "policy-verdict"], [5, 33]),
        (["--http-status", "5+"], [29]),
        (["-l", "k8s:app=frontend", "--to-port", "9090"], [30]),
        (["--fqdn", "*.github.com"], [8, 20]),
        (["--node-name", "kind-worker2", "--first", "2"], [1, 4]),
        (["--ip", "10.244.3.0/24", "--protocol", "http"], [28, 29]),
    ],
)
def test_input_file_applies_filters(args: list[str], uuids: list[int]) -> None:
    rio = _rio()
    assert run_observe(["--input-file", str(FIXTURES / "flows.jsonl"), "-o", "jsonpb", *args], rio) == 0
    out, _ = _outputs(rio)
    got = [int(json.loads(line)["flow"]["uuid"].rsplit("-", 1)[1]) for line in out.splitlines()]
    assert got == uuids


def test_input_file_rejects_bad_filter_values() -> None:
    rio = _rio()
    assert run_observe(["--input-file", "-", "--from-ip", "bogus"], rio) == 1
    assert _outputs(rio) == ("", 'invalid source_ip filter: "bogus" is not an IP address or CIDR\n')


def test_unknown_node_is_one_clear_line() -> None:
    rio = _rio()
    assert run_observe(["--node", "no-such-node-0"], rio) == 1
    out, err = _outputs(rio)
    assert out == ""
    assert err.startswith("no Hubble socket for node 'no-such-node-0' at ") and err.count("\n") == 1
