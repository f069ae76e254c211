"""Hubble metrics: Hubble's plugins (`--hubble-metrics` syntax) counted from stored flow rows.

`HubbleMetrics(spec).process(rows, tables)` per parsed batch; `serve_metrics(registry, host, port)`
to expose it. Metric names, label names and label values follow cilium pkg/hubble/metrics so that
Hubble dashboards and alerts work unchanged; each plugin module documents its semantics.
"""

from tendril.hubble.metrics.hubble import HubbleMetrics
from tendril.hubble.metrics.server import MetricsServer, parse_listen_address, serve_metrics
from tendril.hubble.metrics.spec import PluginSpec, parse_spec

__all__ = [
    "HubbleMetrics",
    "MetricsServer",
    "PluginSpec",
    "parse_listen_address",
    "parse_spec",
    "serve_metrics",
]
