"""dns, http, httpV2, kafka: L7 metrics. http and httpV2 count the L7 proxy's HTTP flows.

Label sets follow Hubble's handlers (pkg/hubble/metrics/http): context labels first, then the
plugin's own. httpV2 counts responses only: hubble_http_requests_total{method,protocol,status,
reporter} and hubble_http_request_duration_seconds{method,reporter} (latency_ns / 1e9), with the
context taken from the response flow with source and destination inverted (so `source` is the
client, as Hubble does). reporter is "client" for egress flows (the client's policy redirected),
"server" for ingress, else "unknown". The deprecated http plugin counts requests on request flows
and responses (+ duration) on response flows. dns counts the DNS proxy's flows as Hubble's dns
handler does: queries on request flows {rcode "", qtypes, ips_returned ""}, responses on reply
flows {rcode as Hubble names it ("No Error", "Query Refused"...), qtypes, ips_returned = number of
IPs}, and one response_types count per answer record type {type, qtypes}; the context is the flow's
own (not inverted); `query` adds the query name, `ignoreAAAA` skips AAAA questions. kafka stays
empty until a Kafka parser exists.
"""

from __future__ import annotations

from collections import Counter

import numpy as np

from tendril.hubble import record
from tendril.hubble.api.flow import flow_pb2
from tendril.hubble.metrics.batch import Batch
from tendril.hubble.metrics.plugins.base import Plugin

_SWAP = (
    ("src_ep", "dst_ep"),
    ("src_identity", "dst_identity"),
    ("src_ip", "dst_ip"),
    ("src_port", "dst_port"),
    ("src_service", "dst_service"),
)
_REPORTER = {record.EGRESS: "client", record.INGRESS: "server"}


def _http_rows(batch: Batch, kind: int) -> tuple[np.ndarray, list[flow_pb2.Layer7]]:
    """The batch's rows whose L7 record is HTTP of this type (REQUEST/RESPONSE), with the records."""
    rows = batch.rows
    idx = np.flatnonzero((rows["l7"] != 0) & (rows["flow_type"] == record.L7))
    if idx.size == 0:
        return rows[:0], []
    keep, recs = [], []
    for i, l7_id in zip(idx.tolist(), rows["l7"][idx].tolist(), strict=True):
        rec = batch.tables.l7.value(l7_id)
        if isinstance(rec, flow_pb2.Layer7) and rec.type == kind and rec.HasField("http"):
            keep.append(i)
            recs.append(rec)
    return rows[keep], recs


def _l7_rows(batch: Batch, part: str) -> tuple[np.ndarray, list[flow_pb2.Layer7]]:
    """The batch's L7 rows whose record has `part` ("dns"), with the records."""
    rows = batch.rows
    idx = np.flatnonzero((rows["l7"] != 0) & (rows["flow_type"] == record.L7))
    if idx.size == 0:
        return rows[:0], []
    keep, recs = [], []
    for i, l7_id in zip(idx.tolist(), rows["l7"][idx].tolist(), strict=True):
        rec = batch.tables.l7.value(l7_id)
        if isinstance(rec, flow_pb2.Layer7) and rec.HasField(part):
            keep.append(i)
            recs.append(rec)
    return rows[keep], recs


#: Hubble's names of DNS response codes (pkg/hubble/metrics/dns)
DNS_RCODE_NAMES = {
    0: "No Error",
    1: "Format Error",
    2: "Server Failure",
    3: "Non-Existent Domain",
    4: "Not Implemented",
    5: "Query Refused",
}


def _inverted(rows: np.ndarray) -> np.ndarray:
    out = rows.copy()
    for a, b in _SWAP:
        out[a], out[b] = rows[b], rows[a]
    return out


def _context_labels(plugin: Plugin, rows: np.ndarray, tables: record.Tables) -> list[tuple[str, ...]]:
    sub = Batch(rows, tables)
    cols = plugin.ctx_columns(sub)
    values = sub.pool.values
    return [tuple(values[c[i]] for c in cols) for i in range(len(rows))]


class DnsPlugin(Plugin):
    """hubble_dns_queries_total, _responses_total{rcode,qtypes,ips_returned[,query]}, _response_types_total"""

    name = "dns"
    plugin_options = ("query", "ignoreAAAA")

    def setup(self) -> None:
        query = ["query"] if self.spec.has("query") else []
        ctx = self.ctx_names()
        both = [*ctx, "rcode", "qtypes", "ips_returned", *query]
        self.queries = self.counter("hubble_dns_queries_total", "Number of DNS queries observed", both)
        self.responses = self.counter("hubble_dns_responses_total", "Number of DNS responses observed", both)
        self.types = self.counter(
            "hubble_dns_response_types_total",
            "Number of DNS response types",
            [*ctx, "type", "qtypes", *query],
        )

    def process(self, batch: Batch) -> None:
        rows, recs = _l7_rows(batch, "dns")
        if not recs:
            return
        ignore_aaaa = self.spec.has("ignoreAAAA")
        with_query = self.spec.has("query")
        ctx = _context_labels(self, rows, batch.tables)
        queries: Counter[tuple[str, ...]] = Counter()
        responses: Counter[tuple[str, ...]] = Counter()
        types: Counter[tuple[str, ...]] = Counter()
        for labels, reply, rec in zip(ctx, rows["is_reply"].tolist(), recs, strict=True):
            d = rec.dns
            if ignore_aaaa and "AAAA" in d.qtypes:
                continue
            qtypes = ",".join(d.qtypes)
            q = (d.query,) if with_query else ()
            if reply == 1:
                rcode = DNS_RCODE_NAMES.get(d.rcode, str(d.rcode))
                responses[(*labels, rcode, qtypes, str(len(d.ips)), *q)] += 1
                for t in d.rrtypes:
                    types[(*labels, t, qtypes, *q)] += 1
            elif reply == 0:
                queries[(*labels, "", qtypes, "", *q)] += 1
        self.queries.add(queries.items())
        self.responses.add(responses.items())
        self.types.add(types.items())


class HttpV2Plugin(Plugin):
    """hubble_http_requests_total{method,protocol,status,reporter}, _duration_seconds{method,reporter}."""

    name = "httpV2"
    plugin_options = ("exemplars",)

    def check_exemplars(self) -> None:
        value = self.spec.get("exemplars") or "false"
        if value.lower() not in ("true", "false"):
            raise ValueError(
                f"hubble metrics plugin {self.name!r}: option exemplars={value!r}: use true or false"
            )

    def setup(self) -> None:
        self.check_exemplars()
        ctx = self.ctx_names()
        self.requests = self.counter(
            "hubble_http_requests_total",
            "Count of HTTP requests",
            [*ctx, "method", "protocol", "status", "reporter"],
        )
        self.duration = self.histogram(
            "hubble_http_request_duration_seconds",
            "Quantiles of HTTP request duration in seconds",
            [*ctx, "method", "reporter"],
        )

    def process(self, batch: Batch) -> None:
        rows, recs = _http_rows(batch, flow_pb2.RESPONSE)
        if not recs:
            return
        ctx = _context_labels(self, _inverted(rows), batch.tables)
        counts: Counter[tuple[str, ...]] = Counter()
        for labels, direction, rec in zip(ctx, rows["traffic_direction"].tolist(), recs, strict=True):
            reporter = _REPORTER.get(direction, "unknown")
            h = rec.http
            counts[(*labels, h.method, h.protocol, str(h.code), reporter)] += 1
            self.duration.observe((*labels, h.method, reporter), rec.latency_ns / 1e9)
        self.requests.add(counts.items())


class HttpPlugin(HttpV2Plugin):
    """The deprecated `http` plugin: requests{method,protocol,reporter} and responses{..., status}."""

    name = "http"

    def setup(self) -> None:
        self.check_exemplars()
        ctx = self.ctx_names()
        self.requests = self.counter(
            "hubble_http_requests_total", "Count of HTTP requests", [*ctx, "method", "protocol", "reporter"]
        )
        self.responses = self.counter(
            "hubble_http_responses_total",
            "Count of HTTP responses",
            [*ctx, "method", "protocol", "status", "reporter"],
        )
        self.duration = self.histogram(
            "hubble_http_request_duration_seconds",
            "Quantiles of HTTP request duration in seconds",
            [*ctx, "method", "reporter"],
        )

    def process(self, batch: Batch) -> None:
        rows, recs = _http_rows(batch, flow_pb2.REQUEST)
        if recs:
            ctx = _context_labels(self, rows, batch.tables)
            counts: Counter[tuple[str, ...]] = Counter()
            for labels, direction, rec in zip(ctx, rows["traffic_direction"].tolist(), recs, strict=True):
                counts[
                    (*labels, rec.http.method, rec.http.protocol, _REPORTER.get(direction, "unknown"))
                ] += 1
            self.requests.add(counts.items())
        rows, recs = _http_rows(batch, flow_pb2.RESPONSE)
        if recs:
            ctx = _context_labels(self, _inverted(rows), batch.tables)
            counts = Counter()
            for labels, direction, rec in zip(ctx, rows["traffic_direction"].tolist(), recs, strict=True):
                reporter = _REPORTER.get(direction, "unknown")
                h = rec.http
                counts[(*labels, h.method, h.protocol, str(h.code), reporter)] += 1
                self.duration.observe((*labels, h.method, reporter), rec.latency_ns / 1e9)
            self.responses.add(counts.items())


class KafkaPlugin(Plugin):
    """hubble_kafka_requests_total{topic,api_key,error_code,reporter}, _request_duration_seconds."""

    name = "kafka"

    def setup(self) -> None:
        ctx = self.ctx_names()
        self.requests = self.counter(
            "hubble_kafka_requests_total",
            "Count of Kafka requests",
            [*ctx, "topic", "api_key", "error_code", "reporter"],
        )
        self.duration = self.histogram(
            "hubble_kafka_request_duration_seconds",
            "Quantiles of HTTP request duration in seconds",
            [*ctx, "topic", "api_key", "reporter"],
        )
