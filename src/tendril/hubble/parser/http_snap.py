"""Proxy-free HTTP visibility: datapath snaps (struct tnd_payload) -> HTTP request/response pairs.

The datapath copies the first bytes of every TCP segment that starts like an HTTP/1.x message on
an endpoint that opted in (bpf/include/visibility.h). Here each snap is parsed once: a request
line ("GET /path HTTP/1.1") opens an exchange on its connection, a status line ("HTTP/1.1 200 OK")
closes the oldest open one, in order, as HTTP/1.1 pipelining requires, and the time between the two
kernel timestamps is the latency. The same exchange seen at both ends (two endpoints that opted in)
is two exchanges, one per endpoint, as Hubble reports one per proxy.

What the snap cannot show is documented, not guessed: only what fits in the snap (longer URLs are
cut at the snap's end, headers are read only from that prefix, a second pipelined message in the
same segment is seen only when the first one, body included, ends inside the snap), plain text only
(TLS never matches).
Retransmitted segments are recognised by their sequence number and counted once.
"""

from __future__ import annotations

import ipaddress
from collections import OrderedDict, deque
from collections.abc import Iterator
from typing import NamedTuple

import numpy as np

from tendril.bpf import abi

METHODS = frozenset({"GET", "POST", "PUT", "HEAD", "DELETE", "PATCH", "OPTIONS", "CONNECT", "TRACE"})
MAX_CONNECTIONS = 16384  # connections with state kept; the least recently used go first
RETRANSMIT_WINDOW = 1 << 24  # bytes back from the last message start that count as a retransmit
MAX_PENDING = 64  # open requests per connection (more: the oldest are dropped as unanswered)


class Request(NamedTuple):
    method: str
    url: str
    protocol: str
    host: str


class Response(NamedTuple):
    protocol: str
    code: int


def parse_start(data: bytes) -> Request | Response | None:
    """The message's start line (and Host header if it fits), or None when it is not HTTP/1.x."""
    line, sep, rest = data.partition(b"\r\n")
    try:
        text = line.decode("ascii")
    except UnicodeDecodeError:
        return None
    parts = text.split(" ", 2)
    if text.startswith("HTTP/1.") and len(parts) >= 2:
        if len(parts[1]) != 3 or not parts[1].isdigit():
            return None
        return Response(protocol=parts[0], code=int(parts[1]))
    if len(parts) == 3 and parts[0] in METHODS and parts[2].startswith("HTTP/1."):
        return Request(method=parts[0], url=parts[1], protocol=parts[2], host=_host(rest))
    if len(parts) == 2 and parts[0] in METHODS and not sep:
        # The request line did not fit in the snap: the URL is cut, the protocol assumed.
        return Request(method=parts[0], url=parts[1], protocol="HTTP/1.1", host="")
    return None


def _header(headers: bytes, wanted: bytes) -> str | None:
    for raw in headers.split(b"\r\n"):
        name, colon, value = raw.partition(b":")
        if colon and name.strip().lower() == wanted:
            return value.strip().decode("ascii", "replace")
    return None


def _host(headers: bytes) -> str:
    return _header(headers, b"host") or ""


def parse_messages(data: bytes) -> list[Request | Response]:
    """Every message whose start line the snap holds: a pipelined client's small requests (or a
    server's small answers) often share one segment. The next message is only looked for after a
    complete header block and a body whose length is known (Content-Length, or none for a request
    without one; 1xx/204/304 answers): chunked or unknown bodies end the search."""
    out: list[Request | Response] = []
    while data:
        msg = parse_start(data)
        if msg is None or (out and type(msg) is not type(out[0])):
            break
        out.append(msg)
        end = data.find(b"\r\n\r\n")
        if end < 0:
            break
        head, rest = data[:end], data[end + 4 :]
        length_text = _header(head, b"content-length")
        if length_text is not None:
            if not length_text.isdigit():
                break
            length = int(length_text)
        elif _header(head, b"transfer-encoding") is not None:
            break
        elif isinstance(msg, Response) and not (100 <= msg.code < 200 or msg.code in (204, 304)):
            break  # the body runs until the connection closes
        else:
            length = 0
        if length > len(rest):
            break
        data = rest[length:]
    return out


class Side(NamedTuple):
    ip: ipaddress.IPv4Address | ipaddress.IPv6Address
    port: int


class Exchange(NamedTuple):
    """One side of an HTTP exchange as one endpoint saw it."""

    ep_id: int
    client: Side
    server: Side
    peer_identity: int  # the other side's identity, as the datapath looked it up
    egress: bool  # the endpoint is the client (its requests leave it)
    request: Request
    request_ns: int  # kernel monotonic ns
    response: Response | None = None
    response_ns: int = 0

    @property
    def latency_ns(self) -> int:
        return max(0, self.response_ns - self.request_ns)


ConnKey = tuple[int, bytes, int, bytes, int]  # (ep_id, client addr, client port, server addr, port)


class HttpPairing:
    """Pairs requests with responses per connection and endpoint; bounded in memory."""

    def __init__(self, max_connections: int = MAX_CONNECTIONS) -> None:
        self.max_connections = max_connections
        self._open: OrderedDict[ConnKey, deque[Exchange]] = OrderedDict()
        self._last_seq: dict[tuple[ConnKey, bool], int] = {}
        self._addrs: dict[bytes, ipaddress.IPv4Address | ipaddress.IPv6Address] = {}
        self.unparsed = 0  # snaps that were not an HTTP start line after all
        self.unmatched = 0  # responses with no open request (visibility enabled mid-exchange)
        self.retransmits = 0

    def _side(self, raw: bytes, version: int, port: int) -> Side:
        ip = self._addrs.get(raw)
        if ip is None:
            if len(self._addrs) > 4096:
                self._addrs.clear()
            ip = self._addrs[raw] = (
                ipaddress.IPv4Address(raw[:4]) if version == 4 else ipaddress.IPv6Address(raw)
            )
        return Side(ip, port)

    def feed(self, records: np.ndarray) -> Iterator[Exchange]:
        """Requests (response None) and completed exchanges, in record order."""
        # Columns as Python values once per batch: per-record numpy indexing costs microseconds.
        snap = abi.SNAP_LEN
        data = np.ascontiguousarray(records["data"]).tobytes()
        saddr = np.ascontiguousarray(records["saddr"]).tobytes()
        daddr = np.ascontiguousarray(records["daddr"]).tobytes()
        columns = zip(
            records["cap_len"].tolist(),
            records["ip_version"].tolist(),
            records["sport"].tolist(),
            records["dport"].tolist(),
            records["flags"].tolist(),
            records["ep_id"].tolist(),
            records["seq"].tolist(),
            records["ts_ns"].tolist(),
            records["remote_id"].tolist(),
            strict=True,
        )
        ingress_bit = int(abi.EventFlags.INGRESS)
        for i, (cap, version, sport, dport, flags, ep_id, seq, ts, remote) in enumerate(columns):
            messages = parse_messages(data[i * snap : i * snap + cap])
            if not messages:
                self.unparsed += 1
                continue
            src, dst = saddr[i * 16 : i * 16 + 16], daddr[i * 16 : i * 16 + 16]
            is_request = isinstance(messages[0], Request)
            # A request goes client -> server; a response server -> client.
            key = (ep_id, src, sport, dst, dport) if is_request else (ep_id, dst, dport, src, sport)
            if self._retransmit(key, is_request, seq):
                continue
            for msg in messages:
                if isinstance(msg, Request):
                    ex = Exchange(
                        ep_id=ep_id,
                        client=self._side(src, version, sport),
                        server=self._side(dst, version, dport),
                        peer_identity=remote,
                        egress=not flags & ingress_bit,
                        request=msg,
                        request_ns=ts,
                    )
                    self._push(key, ex)
                    yield ex
                    continue
                pending = self._open.get(key)
                if not pending:
                    self.unmatched += 1
                    continue
                ex = pending.popleft()
                if not pending:
                    del self._open[key]
                yield ex._replace(response=msg, response_ns=ts)

    def _retransmit(self, key: ConnKey, is_request: bool, seq: int) -> bool:
        """A segment whose sequence number is the last message start of its direction or a little
        before it (within RETRANSMIT_WINDOW, mod 2^32) carries data already seen. Further back it
        is a new connection on the same ports (a fresh random initial sequence number)."""
        k = (key, is_request)
        last = self._last_seq.get(k)
        if last is not None and (last - seq) & 0xFFFFFFFF < RETRANSMIT_WINDOW:
            self.retransmits += 1
            return True
        self._last_seq[k] = seq
        return False

    def _push(self, key: ConnKey, ex: Exchange) -> None:
        pending = self._open.get(key)
        if pending is None:
            pending = self._open[key] = deque(maxlen=MAX_PENDING)
            while len(self._open) > self.max_connections:
                old, _ = self._open.popitem(last=False)
                self._last_seq.pop((old, True), None)
                self._last_seq.pop((old, False), None)
        else:
            self._open.move_to_end(key)
        pending.append(ex)
        if len(self._last_seq) > 4 * self.max_connections:  # connections that only ever answered
            self._last_seq.clear()

    @property
    def open_requests(self) -> int:
        return sum(len(q) for q in self._open.values())
