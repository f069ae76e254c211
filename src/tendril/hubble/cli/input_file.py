"""`--input-file`: replay saved `hubble observe -o jsonpb` output instead of asking a server.

Mirrors hubble's IOReaderObserver: one GetFlowsResponse per line, unparseable lines skipped with a
warning, ``--since``/``--until`` compared with the response time, ``--first N`` / ``--last N``
applied while reading (a ring of N for --last), everything else in file order.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, Iterator

from google.protobuf import json_format

from tendril.hubble.api import observer_pb2
from tendril.hubble.cli.errors import CLIError
from tendril.hubble.cli.logger import Logger
from tendril.hubble.cli.request import MAX_UINT64

Response = observer_pb2.GetFlowsResponse
Matcher = Callable[[Response], bool]

_MAX_LAST = 1_000_000


def _ns(ts: object, present: bool) -> int:
    if not present:
        return 0
    return ts.seconds * 1_000_000_000 + ts.nanos  # type: ignore[attr-defined]


class _Decoder:
    """protojson.Unmarshal with hubble's retry: unknown fields are dropped after one warning."""

    def __init__(self, log: Logger) -> None:
        self.log = log
        self.discard_unknown = False

    def __call__(self, line: str) -> Response | None:
        res = Response()
        try:
            json_format.Parse(line, res, ignore_unknown_fields=self.discard_unknown)
            return res
        except json_format.ParseError as first:
            error: Exception = first
            if not self.discard_unknown:
                try:
                    res = Response()
                    json_format.Parse(line, res, ignore_unknown_fields=True)
                except json_format.ParseError as e:
                    error = e
                else:
                    self.discard_unknown = True
                    self.log.warn(
                        "unknown field detected, upgrade the Hubble CLI to get rid of this warning",
                        error=str(first),
                    )
                    return res
        self.log.warn("Failed to unmarshal json to flow", error=str(error), line=line)
        return None


def replay(
    lines: Iterable[str],
    req: observer_pb2.GetFlowsRequest,
    log: Logger,
    matcher: Matcher | None = None,
) -> Iterator[Response]:
    """The responses hubble would print for ``req`` from the saved lines."""
    number = req.number
    first = req.first and number not in (0, MAX_UINT64)
    last = not req.first and number not in (0, MAX_UINT64)
    if last and number > _MAX_LAST:
        raise CLIError(f"--last must be <= 1_000_000, got {number}")
    ring: deque[Response] | None = deque(maxlen=number) if last else None
    since = _ns(req.since, req.HasField("since")) if req.HasField("since") else None
    until = _ns(req.until, req.HasField("until")) if req.HasField("until") else None
    decode = _Decoder(log)
    returned = 0
    for raw in lines:
        line = raw.rstrip("\n").removesuffix("\r")
        res = decode(line)
        if res is None:
            continue
        when = _ns(res.time, res.HasField("time"))
        if since is not None and since > when:
            continue
        if until is not None and until < when:
            continue
        if matcher is not None and not matcher(res):
            continue
        if ring is not None:
            ring.append(res)
        elif first:
            yield res
            returned += 1
            if returned >= number:
                return
        else:
            yield res
    if ring is not None:
        yield from ring
