"""`hubble observe`: flags -> GetFlowsRequest -> stream (server or --input-file) -> printer.

The steps and their order are hubble's (flag errors first, then output options, then selector
checks, then the request), so that every invalid combination fails with the same text; a
GetFlows stream ends cleanly on EOF or cancellation and otherwise prints the gRPC error.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Sequence

import grpc
from google.protobuf import text_format

from tendril.hubble.api import observer_pb2, observer_pb2_grpc
from tendril.hubble.cli import flagdefs, gotime
from tendril.hubble.cli.conn import connect, rpc_error_text
from tendril.hubble.cli.errors import CLIError
from tendril.hubble.cli.filters_builder import FlowFilterBuilder
from tendril.hubble.cli.input_file import replay
from tendril.hubble.cli.logger import Logger
from tendril.hubble.cli.offline_filters import build_matcher
from tendril.hubble.cli.pflags import FlagSet, HelpRequested
from tendril.hubble.cli.printer import COMPACT, DICT, JSON_LEGACY, JSONPB, TABLE, Printer, PrinterOptions
from tendril.hubble.cli.request import (
    DEFAULT_FIELD_MASK,
    RequestInputs,
    Selectors,
    build_request,
    raw_filters_yaml,
)
from tendril.hubble.cli.runio import RunIO, silence_stdout, text_stderr
from tendril.hubble.cli.settings import Settings

USAGE = """Observe provides visibility into flow information on the network and application level.
Rich filtering enable observing specific flows related to individual pods, services, TCP
connections, DNS queries, HTTP requests and more.

To match a filter flag, a flow must match at least one of the provided values for that flag; a
flow must match all the provided filter flags. `--not` negates the next filter flag.

Usage:
  {prog} [flags]

"""


def output_options(
    fs: FlagSet, builder: FlowFilterBuilder, settings: Settings, io: RunIO
) -> tuple[PrinterOptions, list[str]]:
    """hubble's handleFlowArgs: printer options and the field mask to request."""
    if builder.blacklisting:
        raise CLIError("trailing --not found in the arguments")
    output = str(fs["output"])
    legacy = "legacy-json-output" in [p.strip() for p in io.env.get("HUBBLE_COMPAT", "").split(",")]
    modes = {"compact": COMPACT, "dict": DICT, "jsonpb": JSONPB, "tab": TABLE, "table": TABLE}
    if output in ("json", "JSON"):
        mode = JSON_LEGACY if legacy else JSONPB
    elif output in modes:
        mode = modes[output]
    else:
        raise CLIError(f"invalid output format: {output}")
    if mode == TABLE and fs["follow"]:
        raise CLIError("table output format is not compatible with follow mode")
    field_mask = list(fs["field-mask"])
    if mode != JSONPB:  # legacy JSON counts as a text format here, as in hubble
        if field_mask:
            raise CLIError(f"{output} output format is not compatible with custom field mask")
        if fs["use-default-field-masks"]:
            field_mask = list(DEFAULT_FIELD_MASK)
    opts = PrinterOptions(
        output=mode,
        time_layout=gotime.layout_for_name(str(fs["time-format"])),
        color=str(fs["color"]),
        ip_translation=bool(fs["ip-translation"]) and not fs["numeric"],
        node_name=bool(fs["print-node-name"]),
        policy_names=bool(fs["print-policy-names"]),
        debug=bool(settings.get("debug")),
        ignore_stderr=bool(fs["silent-errors"]),
    )
    return opts, field_mask


def prepare(
    args: Sequence[str], io: RunIO
) -> tuple[FlagSet, Settings, PrinterOptions, observer_pb2.GetFlowsRequest]:
    """Parse ``args`` and build the request (everything before any I/O); raises CLIError."""
    builder = FlowFilterBuilder()
    fs = flagdefs.observe_flagset(builder)
    positionals = fs.parse(args)
    if positionals and positionals[0] in ("agent-events", "debug-events"):
        raise CLIError(f"`observe {positionals[0]}` is not supported by Tendril")
    settings = Settings(fs, io.env)
    opts, field_mask = output_options(fs, builder, settings, io)
    selectors = Selectors(
        all=bool(fs["all"]),
        last=int(fs["last"]),
        first=int(fs["first"]),
        follow=bool(fs["follow"]),
        since=str(fs["since"]),
        until=str(fs["until"]),
    )
    req = build_request(
        RequestInputs(
            selectors=selectors,
            allowlist=builder.allowlist(),
            denylist=builder.denylist(),
            raw_allowlist=list(settings.get("allowlist")),
            raw_denylist=list(settings.get("denylist")),
            field_mask=field_mask,
            input_file=str(fs["input-file"]),
        )
    )
    return fs, settings, opts, req


def _open_input(path: str, io: RunIO, stack: contextlib.ExitStack) -> Iterable[str]:
    if path == "-":
        return io.stdin
    try:
        return stack.enter_context(open(path, encoding="utf-8", errors="surrogateescape"))
    except OSError as e:
        reason = (e.strerror or str(e))[:1].lower() + (e.strerror or str(e))[1:]
        raise CLIError(f"open {path}: {reason}") from None


def _stream(
    fs: FlagSet,
    settings: Settings,
    req: observer_pb2.GetFlowsRequest,
    printer: Printer,
    log: Logger,
    io: RunIO,
) -> None:
    input_file = str(fs["input-file"])
    if input_file:
        if settings.get("port-forward"):
            raise CLIError("cannot use --input-file and --auto-port-forward together")
        with contextlib.ExitStack() as stack:
            lines = _open_input(input_file, io, stack)
            matcher = build_matcher(req)
            log.debug("Sending GetFlows request", req=text_format.MessageToString(req, as_one_line=True))
            for res in replay(lines, req, log, matcher):
                printer.write_response(res)
        return
    conn = connect(settings)
    log.debug("connected to Hubble API", server=conn.target)
    log.debug("Sending GetFlows request", req=text_format.MessageToString(req, as_one_line=True))
    call = observer_pb2_grpc.ObserverStub(conn.channel).GetFlows(req, metadata=conn.metadata or None)
    try:
        for res in call:
            printer.write_response(res)
    except grpc.RpcError as e:
        code = e.code()
        if code == grpc.StatusCode.CANCELLED:
            return
        raise CLIError(e.details() if code == grpc.StatusCode.UNKNOWN else rpc_error_text(e)) from None
    except KeyboardInterrupt:
        call.cancel()
        raise
    finally:
        conn.close()


def run_observe(args: Sequence[str], io: RunIO | None = None, prog: str = "tendril hubble observe") -> int:
    """Run `observe` with raw command-line ``args``; returns the exit code."""
    io = io or RunIO()
    try:
        fs, settings, opts, req = prepare(args, io)
    except HelpRequested:
        fs = flagdefs.observe_flagset(FlowFilterBuilder())
        io.out(USAGE.format(prog=prog) + fs.usage(flagdefs.OBSERVE_GROUPS))
        return 0
    except CLIError as e:
        io.err(f"{e}\n")
        return 1
    if fs["print-raw-filters"]:
        io.out(raw_filters_yaml(req))
        return 0
    log = Logger(bool(settings.get("debug")), stream=text_stderr(io))
    printer = Printer(opts, io.stdout, io.stderr, stdout_isatty=io.stdout_isatty())
    try:
        _stream(fs, settings, req, printer, log, io)
    except CLIError as e:
        printer.close()
        io.err(f"{e}\n")
        return 1
    except KeyboardInterrupt:
        pass
    except BrokenPipeError:  # `| head`: the reader is gone, stop quietly
        silence_stdout(io)
        return 0
    try:
        printer.close()
    except BrokenPipeError:
        silence_stdout(io)
    return 0
