"""Wire compatibility of Tendril's Hubble API (proto/ -> tendril.hubble.api) with upstream hubble.

1. Every message / field / number / type / enum value in the wire reference
   (../shared/reference/hubble-api.md, section 5, parsed at test time) matches our descriptors.
2. The golden GetFlowsRequests sent by the upstream CLI (fixtures/hubble-cli/requests.json) parse,
   re-serialise to the same bytes and have the same JSON form.
3. Every line of fixtures/hubble-cli/flows.jsonl parses strictly into GetFlowsResponse and
   ``tendril.hubble.api.jsonpb.dumps`` prints it back byte for byte, as ``hubble observe -o jsonpb``
   does (out/jsonpb.txt, out/jsonpb.stderr); the FlowFilter JSON printed by
   ``--print-raw-filters`` is reproduced the same way.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml
from google.protobuf import descriptor_pb2, json_format
from google.protobuf.descriptor import Descriptor, EnumDescriptor, FieldDescriptor

from tendril.hubble.api import flow_pb2, observer_pb2, observer_pb2_grpc, peer_pb2, peer_pb2_grpc, relay_pb2
from tendril.hubble.api.jsonpb import dumps

SHARED = Path(__file__).resolve().parents[2] / "shared"
REFERENCE = SHARED / "reference" / "hubble-api.md"
FIXTURES = SHARED / "fixtures" / "hubble-cli"

pytestmark = pytest.mark.skipif(not REFERENCE.is_file(), reason=f"{REFERENCE} not available")

MODULES = {"flow": flow_pb2, "observer": observer_pb2, "relay": relay_pb2, "peer": peer_pb2}

_SCALARS = {
    "double": FieldDescriptor.TYPE_DOUBLE,
    "float": FieldDescriptor.TYPE_FLOAT,
    "int64": FieldDescriptor.TYPE_INT64,
    "uint64": FieldDescriptor.TYPE_UINT64,
    "int32": FieldDescriptor.TYPE_INT32,
    "uint32": FieldDescriptor.TYPE_UINT32,
    "fixed64": FieldDescriptor.TYPE_FIXED64,
    "fixed32": FieldDescriptor.TYPE_FIXED32,
    "sfixed64": FieldDescriptor.TYPE_SFIXED64,
    "sfixed32": FieldDescriptor.TYPE_SFIXED32,
    "sint64": FieldDescriptor.TYPE_SINT64,
    "sint32": FieldDescriptor.TYPE_SINT32,
    "bool": FieldDescriptor.TYPE_BOOL,
    "string": FieldDescriptor.TYPE_STRING,
    "bytes": FieldDescriptor.TYPE_BYTES,
}


# --------------------------------------------------------------------------------------------
# Parsing the reference (section 5)
# --------------------------------------------------------------------------------------------


class RefField:
    def __init__(self, message: str, name: str, number: int, type_: str, note: str, origin: str):
        self.message, self.name, self.number, self.type, self.note, self.origin = (
            message,
            name,
            number,
            type_,
            note,
            origin,
        )

    def __repr__(self) -> str:
        return f"{self.message}.{self.name}={self.number} ({self.type}) [{self.origin}]"


class Reference:
    def __init__(self) -> None:
        self.fields: dict[str, list[RefField]] = {}  # message full name -> fields
        self.complete: set[str] = set()  # messages whose full field list is given
        self.empty: set[str] = set()  # messages documented as having no fields
        self.reserved: dict[str, set[int]] = {}  # message -> reserved numbers
        self.enums: dict[str, dict[str, int]] = {}  # enum full name -> values
        self.deprecated_enum_values: dict[str, set[str]] = {}

    def add(self, f: RefField, complete: bool = True) -> None:
        self.fields.setdefault(f.message, []).append(f)
        if complete:
            self.complete.add(f.message)


# Headings whose table describes a message other than the first name in the heading.
_HEADING_TABLE_MESSAGE = {
    "observer.ServerStatusRequest / ServerStatusResponse": "observer.ServerStatusResponse",
    "observer.GetNodesRequest / GetNodesResponse / Node / TLS": "observer.Node",
    "peer.Peer/Notify": "peer.ChangeNotification",
}

_INLINE_RE = re.compile(
    r"(?:`([A-Za-z][\w.]*)`|\b([A-Z]\w*))\s*:\s*"
    r"((?:\w+=\d+ \([^)]*\)(?:;\s*|\.|\s|$))+)"
)
_ENTRY_RE = re.compile(r"(\w+)=(\d+) \(([^)]*)\)")
_ENUM_BULLET_RE = re.compile(r"^\* `([\w.]+)`: (.+)$")


def _qualify(name: str, package: str) -> str:
    return name if name.split(".", 1)[0] in MODULES else f"{package}.{name}"


def _cells(line: str) -> list[str]:
    return [c.strip() for c in line.strip().strip("|").split("|")]


def parse_reference(text: str) -> Reference:
    ref = Reference()
    section = text.split("## 5. Messages", 1)[1]
    lines = section.splitlines()
    heading = ""
    package = "flow"
    table_msg: str | None = None
    i = 0
    while i < len(lines):
        line = lines[i]
        if line.startswith("### "):
            heading = line[4:].strip()
            m = re.match(r"(flow|observer|relay|peer)\.(\w+)", heading)
            if m:
                package = m.group(1)
            table_msg = None
            if heading in _HEADING_TABLE_MESSAGE:
                table_msg = _HEADING_TABLE_MESSAGE[heading]
            elif m and heading != "Enums":
                table_msg = f"{m.group(1)}.{m.group(2)}"
            i += 1
            continue
        if line.startswith("|"):
            header = [c.lower() for c in _cells(line)]
            rows = []
            i += 2  # header + separator
            while i < len(lines) and lines[i].startswith("|"):
                rows.append(_cells(lines[i]))
                i += 1
            if header[:3] == ["field", "#", "type"]:
                assert table_msg, f"field table without a message under {heading!r}"
                for name, num, typ, note in (r + [""] * (4 - len(r)) for r in rows):
                    if name == "_(reserved)_":
                        nums = {int(n) for n in re.findall(r"\d+", num)}
                        ref.reserved.setdefault(table_msg, set()).update(nums)
                        continue
                    ref.add(RefField(table_msg, name, int(num), typ, note, f"table {heading}"))
            elif header[:2] == ["name", "value"]:
                enum_name = re.search(
                    r"`(flow\.DropReason)`", "\n".join(lines[max(0, i - len(rows) - 6) : i])
                )
                assert enum_name, "DropReason table not found"
                values = ref.enums.setdefault(enum_name.group(1), {})
                dep = ref.deprecated_enum_values.setdefault(enum_name.group(1), set())
                for name, value in rows:
                    values[name] = int(re.match(r"\d+", value).group(0))
                    if "deprecated" in value:
                        dep.add(name)
            continue
        # enum bullets
        if heading == "Enums":
            m = _ENUM_BULLET_RE.match(line)
            if m:
                ref.enums[m.group(1)] = {k: int(v) for k, v in re.findall(r"(\w+)=(\d+)", m.group(2))}
            i += 1
            continue
        # "X has no fields"
        for m in re.finditer(r"\b([A-Z]\w*) has no fields", line):
            ref.empty.add(_qualify(m.group(1), package))
        m = re.search(r"nested `(\w+)\.Experimental` has no live fields; field (\d+) reserved", line)
        if m:
            msg = _qualify(f"{m.group(1)}.Experimental", package)
            ref.empty.add(msg)
            ref.reserved.setdefault(msg, set()).add(int(m.group(2)))
        # inline "Msg: a=1 (type); b=2 (type)" specs (possibly several per line)
        for m in _INLINE_RE.finditer(line):
            raw = m.group(1) or m.group(2)
            msg = _qualify(raw, package)
            if raw.split(".", 1)[0] not in MODULES and heading.startswith("Other sub-messages"):
                msg = f"flow.{raw}"
            for name, num, typ in _ENTRY_RE.findall(m.group(3)):
                ref.add(RefField(msg, name, int(num), typ, "", f"inline under {heading}"))
        i += 1
    return ref


@pytest.fixture(scope="module")
def ref() -> Reference:
    return parse_reference(REFERENCE.read_text(encoding="utf-8"))


def _find_message(full_name: str) -> Descriptor:
    pkg, rest = full_name.split(".", 1)
    desc = None
    for part in rest.split("."):
        desc = (MODULES[pkg].DESCRIPTOR.message_types_by_name if desc is None else desc.nested_types_by_name)[
            part
        ]
    assert desc is not None
    return desc


def _find_enum(full_name: str) -> EnumDescriptor:
    pkg, rest = full_name.split(".", 1)
    parts = rest.split(".")
    if len(parts) == 1:
        return MODULES[pkg].DESCRIPTOR.enum_types_by_name[parts[0]]
    return _find_message(f"{pkg}.{'.'.join(parts[:-1])}").enum_types_by_name[parts[-1]]


def _scopes(message: str) -> list[str]:
    parts = message.split(".")
    return [".".join(parts[:n]) for n in range(len(parts), 0, -1)]


def _check_field(rf: RefField) -> list[str]:
    errors: list[str] = []
    desc = _find_message(rf.message)
    fd = desc.fields_by_name.get(rf.name)
    if fd is None:
        return [f"{rf}: no such field"]
    if fd.number != rf.number:
        errors.append(f"{rf}: our number is {fd.number}")
    typ = rf.type
    repeated = typ.startswith("repeated ")
    if repeated:
        typ = typ[len("repeated ") :]
    is_rep = fd.is_repeated
    if repeated != is_rep:
        errors.append(f"{rf}: repeated={is_rep} in our descriptor")
    if typ in _SCALARS:
        if fd.type != _SCALARS[typ]:
            errors.append(f"{rf}: our type is {fd.type}")
    else:
        if fd.type == FieldDescriptor.TYPE_MESSAGE:
            ours = fd.message_type.full_name
        elif fd.type == FieldDescriptor.TYPE_ENUM:
            ours = fd.enum_type.full_name
        else:
            return errors + [f"{rf}: ours is scalar type {fd.type}"]
        candidates = {typ} | {f"{s}.{typ}" for s in _scopes(rf.message)}
        if ours not in candidates:
            errors.append(f"{rf}: our type is {ours}")
    note = rf.note.lower()
    m = re.search(r"oneof (\w+)", note)
    oneof = fd.containing_oneof.name if fd.containing_oneof else None
    if m and oneof != m.group(1):
        errors.append(f"{rf}: our oneof is {oneof}")
    if not m and oneof is not None:
        errors.append(f"{rf}: ours is in oneof {oneof}")
    if "deprecated" in note and not fd.GetOptions().deprecated:
        errors.append(f"{rf}: not marked deprecated")
    return errors


def test_reference_parsed_fully(ref: Reference) -> None:
    # Guard against the parser silently missing parts of the document.
    assert len(ref.fields["flow.Flow"]) == 45
    assert len(ref.fields["flow.FlowFilter"]) == 41
    assert ref.reserved["flow.Flow"] == {7, 12, 17, 18}
    assert ref.reserved["observer.GetFlowsRequest"] == {2}
    for msg in (
        "flow.TCP",
        "flow.TCPFlags",
        "flow.VRRP",
        "flow.IGMP",
        "flow.LostEvent",
        "flow.HTTPHeader",
        "flow.Workload",
        "flow.EventTypeFilter",
        "flow.FlowFilter.Experimental",
        "relay.NodeStatusEvent",
        "observer.TLS",
        "observer.GetNodesResponse",
        "observer.GetNamespacesResponse",
        "observer.Namespace",
        "peer.TLS",
        "peer.ChangeNotification",
        "observer.ServerStatusResponse",
        "observer.Node",
        "flow.Aggregate",
        "flow.TraceParent",
    ):
        assert msg in ref.fields, msg
    for msg in (
        "observer.ServerStatusRequest",
        "observer.GetNodesRequest",
        "observer.GetNamespacesRequest",
        "peer.NotifyRequest",
        "observer.GetFlowsRequest.Experimental",
    ):
        assert msg in ref.empty, msg
    assert len(ref.enums["flow.DropReason"]) == 76
    assert "flow.Tunnel.Protocol" in ref.enums and "peer.ChangeNotificationType" in ref.enums
    total = sum(len(v) for v in ref.fields.values())
    assert total > 200
    # every inline "name=N (type)" spec of section 5 was picked up
    section = REFERENCE.read_text(encoding="utf-8").split("## 5. Messages", 1)[1]
    inline = sum(1 for v in ref.fields.values() for f in v if f.origin.startswith("inline"))
    assert inline == len(re.findall(r"\w+=\d+ \(", section))


def test_messages_match_reference(ref: Reference) -> None:
    errors: list[str] = []
    for message, fields in ref.fields.items():
        try:
            desc = _find_message(message)
        except KeyError:
            errors.append(f"{message}: message missing")
            continue
        for rf in fields:
            errors.extend(_check_field(rf))
        if message in ref.complete:
            extra = set(desc.fields_by_name) - {f.name for f in fields}
            if extra:
                errors.append(f"{message}: fields not in the reference: {sorted(extra)}")
    assert not errors, "\n".join(errors)


def test_field_declaration_order_follows_reference(ref: Reference) -> None:
    # protojson prints fields in declaration order, so this matters for -o jsonpb output.
    for message, fields in ref.fields.items():
        ours = [f.name for f in _find_message(message).fields]
        assert ours == [f.name for f in fields], message


def test_empty_and_reserved(ref: Reference) -> None:
    for message in ref.empty:
        assert len(_find_message(message).fields) == 0, message
    for message, numbers in ref.reserved.items():
        proto = descriptor_pb2.DescriptorProto()
        _find_message(message).CopyToProto(proto)
        ours = {n for r in proto.reserved_range for n in range(r.start, r.end)}
        assert numbers <= ours, (message, numbers, ours)
        used = {f.number for f in _find_message(message).fields}
        assert not numbers & used, message


def test_enums_match_reference(ref: Reference) -> None:
    assert len(ref.enums) >= 12
    for enum, values in ref.enums.items():
        ed = _find_enum(enum)
        ours = {v.name: v.number for v in ed.values}
        assert ours == values, enum
        # declaration order too (protoc keeps it; the reference lists it)
        assert [v.name for v in ed.values] == list(values), enum
    for enum, names in ref.deprecated_enum_values.items():
        ed = _find_enum(enum)
        assert {v.name for v in ed.values if v.GetOptions().deprecated} == names


def test_packages_and_file_names() -> None:
    # File names are visible through gRPC reflection (`hubble reflect`); keep them as upstream's.
    assert flow_pb2.DESCRIPTOR.name == "flow/flow.proto" and flow_pb2.DESCRIPTOR.package == "flow"
    assert observer_pb2.DESCRIPTOR.name == "observer/observer.proto"
    assert relay_pb2.DESCRIPTOR.name == "relay/relay.proto"
    assert peer_pb2.DESCRIPTOR.name == "peer/peer.proto"
    assert [d.name for d in observer_pb2.DESCRIPTOR.dependencies] == [
        "google/protobuf/any.proto",
        "google/protobuf/field_mask.proto",
        "google/protobuf/timestamp.proto",
        "google/protobuf/wrappers.proto",
        "flow/flow.proto",
        "relay/relay.proto",
    ]


@pytest.mark.parametrize(
    ("service", "method", "req_type", "resp_type", "server_streaming"),
    [
        ("observer.Observer", "GetFlows", "observer.GetFlowsRequest", "observer.GetFlowsResponse", True),
        (
            "observer.Observer",
            "GetAgentEvents",
            "observer.GetAgentEventsRequest",
            "observer.GetAgentEventsResponse",
            True,
        ),
        (
            "observer.Observer",
            "GetDebugEvents",
            "observer.GetDebugEventsRequest",
            "observer.GetDebugEventsResponse",
            True,
        ),
        ("observer.Observer", "GetNodes", "observer.GetNodesRequest", "observer.GetNodesResponse", False),
        (
            "observer.Observer",
            "GetNamespaces",
            "observer.GetNamespacesRequest",
            "observer.GetNamespacesResponse",
            False,
        ),
        (
            "observer.Observer",
            "ServerStatus",
            "observer.ServerStatusRequest",
            "observer.ServerStatusResponse",
            False,
        ),
        ("peer.Peer", "Notify", "peer.NotifyRequest", "peer.ChangeNotification", True),
    ],
)
def test_services(service: str, method: str, req_type: str, resp_type: str, server_streaming: bool) -> None:
    pkg, name = service.split(".")
    sd = MODULES[pkg].DESCRIPTOR.services_by_name[name]
    md = sd.methods_by_name[method]
    assert md.input_type.full_name == req_type
    assert md.output_type.full_name == resp_type
    assert md.server_streaming is server_streaming
    assert md.client_streaming is False
    # the path the CLI calls (section 2 of the reference)
    text = REFERENCE.read_text(encoding="utf-8")
    assert f"/{service}/{method}" in text or method in ("GetAgentEvents", "GetDebugEvents")
    stubs = {"observer": observer_pb2_grpc, "peer": peer_pb2_grpc}[pkg]
    assert hasattr(stubs, f"{name}Stub") and hasattr(stubs, f"{name}Servicer")


def test_observer_service_has_exactly_these_methods() -> None:
    sd = observer_pb2.DESCRIPTOR.services_by_name["Observer"]
    assert [m.name for m in sd.methods] == [
        "GetFlows",
        "GetAgentEvents",
        "GetDebugEvents",
        "GetNodes",
        "GetNamespaces",
        "ServerStatus",
    ]


# --------------------------------------------------------------------------------------------
# 2. Golden GetFlowsRequests
# --------------------------------------------------------------------------------------------


def _request_cases() -> list[tuple[str, dict]]:
    path = FIXTURES / "requests.json"
    if not path.is_file():
        return []
    return [(k, v) for k, v in json.loads(path.read_text(encoding="utf-8")).items() if "request_pb_hex" in v]


def _request_to_fixture_form(req: observer_pb2.GetFlowsRequest) -> dict:
    """MessageToDict with proto names; field_mask as {"paths": [...]} as the fixture writes it."""
    copy = observer_pb2.GetFlowsRequest()
    copy.CopyFrom(req)
    copy.ClearField("field_mask")
    d = json_format.MessageToDict(copy, preserving_proto_field_name=True)
    if req.HasField("field_mask"):
        d["field_mask"] = {"paths": list(req.field_mask.paths)}
    return d


def test_request_fixture_present() -> None:
    cases = _request_cases()
    assert len(cases) >= 15


@pytest.mark.parametrize(("name", "case"), _request_cases(), ids=[c[0] for c in _request_cases()])
def test_golden_request(name: str, case: dict) -> None:
    wire = bytes.fromhex(case["request_pb_hex"])
    req = observer_pb2.GetFlowsRequest()
    req.ParseFromString(wire)
    assert req.SerializeToString(deterministic=True) == wire
    assert _request_to_fixture_form(req) == case["request"]

    # and the other way round: the fixture JSON builds the same bytes
    request = dict(case["request"])
    paths = request.pop("field_mask", {}).get("paths", [])
    built = json_format.ParseDict(request, observer_pb2.GetFlowsRequest(), ignore_unknown_fields=False)
    if "field_mask" in case["request"]:
        built.field_mask.paths.extend(paths)
    assert built.SerializeToString(deterministic=True) == wire


# --------------------------------------------------------------------------------------------
# 3. flows.jsonl and the jsonpb printer
# --------------------------------------------------------------------------------------------


def _flow_lines() -> list[str]:
    path = FIXTURES / "flows.jsonl"
    if not path.is_file():
        return []
    return path.read_text(encoding="utf-8").splitlines()


def test_flows_fixture_present() -> None:
    lines = _flow_lines()
    assert len(lines) == 44


@pytest.mark.parametrize("lineno", range(1, len(_flow_lines()) + 1))
def test_flow_line_roundtrip(lineno: int) -> None:
    line = _flow_lines()[lineno - 1]
    resp = json_format.Parse(line, observer_pb2.GetFlowsResponse(), ignore_unknown_fields=False)
    assert resp.WhichOneof("response_types") is not None
    # Python's own JSON mapping agrees semantically ...
    assert json_format.MessageToDict(resp, preserving_proto_field_name=True) == json.loads(line)
    # ... the binary form round-trips ...
    again = observer_pb2.GetFlowsResponse.FromString(resp.SerializeToString())
    assert again == resp
    # ... and the Go-compatible printer reproduces the line byte for byte (the README guarantees
    # this for the 42 non-node_status lines; the two node_status lines match as well).
    assert dumps(resp) == line


def test_jsonpb_matches_cli_output() -> None:
    """`hubble observe --input-file flows.jsonl -o jsonpb`: stdout and stderr, byte for byte."""
    lines = _flow_lines()
    stdout, stderr = [], []
    for line in lines:
        resp = json_format.Parse(line, observer_pb2.GetFlowsResponse())
        kind = resp.WhichOneof("response_types")
        if kind == "node_status":
            # shown on stderr only for NODE_ERROR / NODE_UNAVAILABLE without --debug
            if resp.node_status.state_change in (relay_pb2.NODE_ERROR, relay_pb2.NODE_UNAVAILABLE):
                stderr.append(dumps(resp) + "\n")
        else:
            stdout.append(dumps(resp) + "\n")
    assert len(stdout) == 42
    assert "".join(stdout) == (FIXTURES / "out" / "jsonpb.txt").read_text(encoding="utf-8")
    assert "".join(stderr) == (FIXTURES / "out" / "jsonpb.stderr").read_text(encoding="utf-8")
    assert (FIXTURES / "out" / "json.txt").read_text(encoding="utf-8") == "".join(stdout)


def _filter_cases() -> list[Path]:
    d = FIXTURES / "filters"
    return sorted(d.glob("*.json")) if d.is_dir() else []


@pytest.mark.parametrize("path", _filter_cases(), ids=[p.stem for p in _filter_cases()])
def test_print_raw_filters_json(path: Path) -> None:
    """FlowFilter JSON as printed by `--print-raw-filters` == jsonpb.dumps of the parsed filter."""
    case = json.loads(path.read_text(encoding="utf-8"))
    printed = yaml.safe_load(case["stdout"]) or {}
    for key in ("allowlist", "denylist"):
        strings = printed.get(key, [])
        assert [json.loads(s) for s in strings] == case[key]
        for s in strings:
            ff = json_format.Parse(s, flow_pb2.FlowFilter(), ignore_unknown_fields=False)
            assert dumps(ff) == s


def test_jsonpb_escaping_and_numbers() -> None:
    f = flow_pb2.Flow(Summary='a&b<c>\x1b[31m\r\n\u2028"\\é', socket_cookie=2**64 - 1, proxy_port=8080)
    f.is_reply.value = False
    f.l4.ICMPv4.SetInParent()
    assert dumps(f) == (
        '{"l4":{"ICMPv4":{}},"is_reply":false,"proxy_port":8080,"socket_cookie":"18446744073709551615",'
        '"Summary":"a\\u0026b\\u003cc\\u003e\\u001b[31m\\r\\n\\u2028\\"\\\\é"}'
    )
    f = flow_pb2.Flow(verdict=99, drop_reason_desc=flow_pb2.POLICY_DENIED)
    assert dumps(f) == '{"verdict":99,"drop_reason_desc":"POLICY_DENIED"}'
    s = observer_pb2.ServerStatusResponse(flows_rate=1e21, num_flows=0)
    s.num_connected_nodes.value = 0
    assert dumps(s) == '{"num_connected_nodes":0,"flows_rate":1e+21}'
    assert dumps(observer_pb2.ServerStatusResponse(flows_rate=2.5e-7)) == '{"flows_rate":2.5e-7}'
    assert dumps(observer_pb2.ServerStatusResponse(flows_rate=12.0)) == '{"flows_rate":12}'
    assert dumps(observer_pb2.GetFlowsResponse()) == "{}"
