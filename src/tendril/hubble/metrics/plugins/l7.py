"""dns, http, httpV2, kafka: L7 metrics, registered now and counting once L7 flows exist.

The flow record's `l7` column is 0 for every flow until the proxy issue adds L7 records, so these
plugins accept Hubble's options and expose their metric families (empty) without counting; a
dashboard wired to them keeps working when L7 lands. Label sets follow Hubble's handlers:
context labels first, then the plugin's own.
"""

from __future__ import annotations

from tendril.hubble.metrics.plugins.base import Plugin


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
