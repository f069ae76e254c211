"""Build the GetFlowsRequest `hubble observe` sends, and its `--print-raw-filters` YAML.

The selector rules (default of 20 flows, ``--all`` as uint64 max, ``--until`` dropped when
following, no default count for ``--input-file``) and the default field mask decide what the
server returns, so they are hubble's, check for check and in the same order.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from google.protobuf import json_format

from tendril.hubble.api import flow_pb2, jsonpb, observer_pb2
from tendril.hubble.cli import gojson, gotime
from tendril.hubble.cli.errors import CLIError
from tendril.hubble.cli.goquote import go_quote

DEFAULT_FLOW_COUNT = 20
MAX_UINT64 = (1 << 64) - 1

# hubble/pkg/defaults.FieldMask: what the text formats print.
DEFAULT_FIELD_MASK = [
    "time",
    "verdict",
    "ethernet",
    "IP",
    "l4",
    "source.identity",
    "source.namespace",
    "source.pod_name",
    "destination.identity",
    "destination.namespace",
    "destination.pod_name",
    "Type",
    "node_name",
    "l7",
    "event_type",
    "source_service",
    "destination_service",
    "is_reply",
    "Summary",
    "ip_trace_id",
]


@dataclass
class Selectors:
    """The --all/--last/--first/--follow/--since/--until flags."""

    all: bool = False
    last: int = 0
    first: int = 0
    follow: bool = False
    since: str = ""
    until: str = ""


@dataclass
class RequestInputs:
    selectors: Selectors
    allowlist: list[flow_pb2.FlowFilter]
    denylist: list[flow_pb2.FlowFilter]
    raw_allowlist: list[str] = field(default_factory=list)
    raw_denylist: list[str] = field(default_factory=list)
    field_mask: list[str] = field(default_factory=list)
    input_file: str = ""


def parse_raw_filters(values: list[str]) -> list[flow_pb2.FlowFilter]:
    """--allowlist/--denylist: each value may hold several concatenated FlowFilter JSON objects."""
    out: list[flow_pb2.FlowFilter] = []
    for value in values:
        try:
            docs = gojson.split_values(value)
        except gojson.GoJSONError as e:
            raise CLIError(f"failed to decode '{value}': {e}") from None
        for doc in docs:
            ff = flow_pb2.FlowFilter()
            try:
                json_format.Parse(doc, ff)
            except json_format.ParseError as e:
                raise CLIError(f"failed to decode '{value}': proto: {e}") from None
            out.append(ff)
    return out


def validate_field_mask(paths: list[str]) -> None:
    """fieldmaskpb.New(&flowpb.Flow{}, paths...): every path must name fields of flow.Flow."""
    root = flow_pb2.Flow.DESCRIPTOR
    for path in paths:
        md = root
        parts = path.split(".")
        for i, part in enumerate(parts):
            fd = md.fields_by_name.get(part) if md is not None else None
            last = i == len(parts) - 1
            ok = fd is not None and (
                last
                or (
                    fd.message_type is not None
                    and not _is_repeated(fd)
                    and not fd.message_type.GetOptions().map_entry
                )
            )
            if not ok:
                raise CLIError(
                    f"failed to construct field mask: proto: invalid path {go_quote(path)} for message "
                    f"{go_quote(root.full_name)}"
                )
            md = fd.message_type


def _is_repeated(fd: object) -> bool:
    label = getattr(fd, "label", None)
    return label == 3  # FieldDescriptor.LABEL_REPEATED


def _timestamp(text: str, what: str) -> tuple[int, int]:
    try:
        seconds, nanos = gotime.parse_time(text)
    except ValueError as e:
        raise CLIError(f"failed to parse the {what} time: {e}") from None
    if not gotime.timestamp_valid(seconds, nanos):
        raise CLIError(f"failed to convert `{what}` timestamp to proto: invalid timestamp")
    return seconds, nanos


def build_request(inputs: RequestInputs) -> observer_pb2.GetFlowsRequest:
    """hubble's getFlowsRequest: validates the selectors and assembles the request."""
    sel = inputs.selectors
    first = sel.first > 0
    last = sel.last > 0
    if first and last:
        raise CLIError("cannot set both --first and --last")
    if first and sel.all:
        raise CLIError("cannot set both --first and --all")
    if first and sel.follow:
        raise CLIError("cannot set both --first and --follow")
    if last and sel.all:
        raise CLIError("cannot set both --last and --all")

    since = _timestamp(sel.since, "since") if sel.since else None
    until = _timestamp(sel.until, "until") if sel.until and not sel.follow else None

    number = sel.last
    if since is None and until is None and not first:
        if sel.all:
            number = MAX_UINT64
        elif sel.last == 0 and not sel.follow and not inputs.input_file:
            number = DEFAULT_FLOW_COUNT

    try:
        allow = list(inputs.allowlist) + parse_raw_filters(inputs.raw_allowlist)
    except CLIError as e:
        raise CLIError(f"invalid --allowlist flag: {e}") from None
    try:
        deny = list(inputs.denylist) + parse_raw_filters(inputs.raw_denylist)
    except CLIError as e:
        raise CLIError(f"invalid --denylist flag: {e}") from None

    req = observer_pb2.GetFlowsRequest(
        number=sel.first if first else number,
        follow=sel.follow,
        first=first,
        whitelist=allow,
        blacklist=deny,
    )
    if since is not None:
        req.since.seconds, req.since.nanos = since
    if until is not None:
        req.until.seconds, req.until.nanos = until
    if inputs.field_mask:
        validate_field_mask(inputs.field_mask)
        req.field_mask.paths.extend(inputs.field_mask)
    return req


def _yaml_single_quoted(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def raw_filters_yaml(req: observer_pb2.GetFlowsRequest) -> str:
    """`--print-raw-filters`: the YAML document hubble prints (one compact JSON filter per item)."""
    sections = [("allowlist", req.whitelist), ("denylist", req.blacklist)]
    lines: list[str] = []
    for key, filters in sections:
        if not filters:
            continue
        lines.append(f"{key}:")
        lines.extend(f"    - {_yaml_single_quoted(jsonpb.dumps(ff))}" for ff in filters)
    if not lines:
        return "{}\n"
    return "\n".join(lines) + "\n"
