"""Agent metrics for Prometheus (:9962): Cilium's `cilium_*` metrics under the `tendril_` prefix.

Why a custom Collector reading callables at scrape time: the numbers already live somewhere
authoritative (the per-CPU metrics map, the endpoint table, the BPF maps), so the agent keeps no
second copy to update and a scrape can never show stale values. Each section is read on its own;
one failing source (say, a map being replaced) drops only its own families from that scrape.

Names and labels follow cilium Documentation/observability/metrics.rst:
  tendril_drop_count_total / tendril_drop_bytes_total{reason,direction}  reason = Cilium drop text
  tendril_forward_count_total / tendril_forward_bytes_total{direction}   (metrics-map reason 0)
  tendril_endpoint, tendril_endpoint_state{state}
  tendril_bpf_map_pressure{map_name} (used/capacity), tendril_bpf_map_capacity{map_group}
plus whatever `extra()` returns (e.g. tendril_datapath_conntrack_gc_runs_total).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector, CollectorRegistry

from tendril.monitor import api

log = logging.getLogger(__name__)

PREFIX = "tendril_"

# (reason, direction, packets, bytes): reason is the metrics-map code (0 = forwarded) or a drop text;
# direction is Cilium's METRIC_INGRESS 1 / METRIC_EGRESS 2 / 3 service, or its name.
DatapathTotals = Callable[[], Sequence[tuple[int | str, int | str, int, int]]]
MapUsage = Callable[[], Sequence[tuple[str, int, int]]]  # (map name, entries used, capacity)
ExtraValue = float | int | Sequence[tuple[Mapping[str, str], float]]

DIRECTIONS = {1: "INGRESS", 2: "EGRESS", 3: "SERVICE"}
FORWARD_REASONS = ("", "success", "forwarded")
# Cilium's endpoint states (pkg/endpoint), all exported so a state emptying shows as 0, not absent.
ENDPOINT_STATES = (
    "waiting-for-identity",
    "not-ready",
    "waiting-to-regenerate",
    "regenerating",
    "restoring",
    "ready",
    "disconnecting",
    "disconnected",
    "invalid",
)
DEFAULT_MAP_CAPACITY = 65536  # Cilium groups every map of this size under map_group="default"

_NAME = re.compile(r"^[a-zA-Z_:][a-zA-Z0-9_:]*$")
_EXTRA_HELP = {
    "tendril_datapath_conntrack_gc_runs_total": "Number of times the conntrack garbage collector ran",
    "tendril_datapath_conntrack_gc_entries": "Alive and deleted conntrack entries at the end of a GC run",
    "tendril_hubble_flows_seen": "Flows parsed into the Hubble flow store since the agent started",
}


class AgentMetrics(Collector):
    """Collector over live agent state; register it in the registry served on :9962."""

    def __init__(
        self,
        datapath_totals: DatapathTotals,
        endpoints: Callable[[], Sequence[Mapping[str, Any]]],
        map_usage: MapUsage,
        extra: Callable[[], Mapping[str, ExtraValue]] | None = None,
        registry: CollectorRegistry | None = None,
    ) -> None:
        self.datapath_totals = datapath_totals
        self.endpoints = endpoints
        self.map_usage = map_usage
        self.extra = extra
        if registry is not None:
            registry.register(self)

    def describe(self) -> Iterable[Metric]:
        """Nothing up front: describing would call the sources at registration time."""
        return []

    def collect(self) -> Iterator[Metric]:
        for section in (self._datapath, self._endpoints, self._maps, self._extra):
            try:
                families = list(section())
            except Exception:  # a broken source must not take the whole scrape down
                log.exception(
                    "agent metrics: %s failed; its metrics are left out of this scrape", section.__name__
                )
                continue
            yield from families

    # ---- sections ------------------------------------------------------------------------------
    def _datapath(self) -> Iterator[Metric]:
        drops: dict[tuple[str, str], list[int]] = {}
        forwards: dict[str, list[int]] = {}
        for reason, direction, packets, nbytes in self.datapath_totals():
            dir_name = direction_name(direction)
            if is_forward(reason):
                acc = forwards.setdefault(dir_name, [0, 0])
            else:
                acc = drops.setdefault((drop_reason(reason), dir_name), [0, 0])
            acc[0] += int(packets)
            acc[1] += int(nbytes)
        drop_count = CounterMetricFamily(
            f"{PREFIX}drop_count_total",
            "Total dropped packets, tagged by drop reason and ingress/egress direction",
            labels=["reason", "direction"],
        )
        drop_bytes = CounterMetricFamily(
            f"{PREFIX}drop_bytes_total",
            "Total dropped bytes, tagged by drop reason and ingress/egress direction",
            labels=["reason", "direction"],
        )
        for (reason, dir_name), (packets, nbytes) in sorted(drops.items()):
            drop_count.add_metric([reason, dir_name], packets)
            drop_bytes.add_metric([reason, dir_name], nbytes)
        fwd_count = CounterMetricFamily(
            f"{PREFIX}forward_count_total",
            "Total forwarded packets, tagged by ingress/egress direction",
            labels=["direction"],
        )
        fwd_bytes = CounterMetricFamily(
            f"{PREFIX}forward_bytes_total",
            "Total forwarded bytes, tagged by ingress/egress direction",
            labels=["direction"],
        )
        for dir_name, (packets, nbytes) in sorted(forwards.items()):
            fwd_count.add_metric([dir_name], packets)
            fwd_bytes.add_metric([dir_name], nbytes)
        return iter((drop_count, drop_bytes, fwd_count, fwd_bytes))

    def _endpoints(self) -> Iterator[Metric]:
        eps = list(self.endpoints())
        total = GaugeMetricFamily(
            f"{PREFIX}endpoint", "Number of endpoints managed by this agent", value=len(eps)
        )
        counts = dict.fromkeys(ENDPOINT_STATES, 0)
        for ep in eps:
            state = str(ep.get("state") or "invalid")
            counts[state] = counts.get(state, 0) + 1
        states = GaugeMetricFamily(
            f"{PREFIX}endpoint_state",
            "Count of all endpoints, tagged by different endpoint states",
            labels=["state"],
        )
        for state, n in counts.items():
            states.add_metric([state], n)
        return iter((total, states))

    def _maps(self) -> Iterator[Metric]:
        pressure = GaugeMetricFamily(
            f"{PREFIX}bpf_map_pressure",
            "Fill percentage of map, tagged by map name (used entries / capacity)",
            labels=["map_name"],
        )
        capacity = GaugeMetricFamily(
            f"{PREFIX}bpf_map_capacity",
            f"Capacity of map, tagged by map group. All maps with a capacity of {DEFAULT_MAP_CAPACITY} are "
            "grouped under 'default'",
            labels=["map_group"],
        )
        groups: dict[str, int] = {}
        for name, used, cap in self.map_usage():
            if cap > 0:
                pressure.add_metric([name], used / cap)
                groups["default" if cap == DEFAULT_MAP_CAPACITY else name] = int(cap)
        for group, cap in sorted(groups.items()):
            capacity.add_metric([group], cap)
        return iter((pressure, capacity))

    def _extra(self) -> Iterator[Metric]:
        if self.extra is None:
            return iter(())
        out: list[Metric] = []
        for raw_name, value in self.extra().items():
            name = raw_name if raw_name.startswith(PREFIX) else PREFIX + raw_name
            if not _NAME.match(name):
                log.warning("agent metrics: skipping extra metric with invalid name %r", raw_name)
                continue
            out.append(extra_family(name, value))
        return iter(out)


def extra_family(name: str, value: ExtraValue) -> Metric:
    """A number, or [(labels, number), ...]; counters are the names ending in _total, the rest gauges."""
    kind = CounterMetricFamily if name.endswith("_total") else GaugeMetricFamily
    doc = _EXTRA_HELP.get(name, name.removeprefix(PREFIX).replace("_", " "))
    if isinstance(value, int | float):
        return kind(name, doc, value=value)
    samples = list(value)
    labels = sorted({k for lbls, _ in samples for k in lbls})
    family = kind(name, doc, labels=labels)
    for lbls, v in samples:
        family.add_metric([str(lbls.get(k, "")) for k in labels], v)
    return family


def direction_name(direction: int | str) -> str:
    if isinstance(direction, str):
        return direction.upper() or "UNKNOWN"
    return DIRECTIONS.get(int(direction), "UNKNOWN")


def is_forward(reason: int | str) -> bool:
    """Metrics-map reason 0 counts forwarded packets (cilium-dbg prints it as "Success")."""
    if isinstance(reason, str):
        return reason.strip().lower() in FORWARD_REASONS
    return int(reason) == 0


def drop_reason(reason: int | str) -> str:
    """Cilium's drop reason text ("Policy denied", "Invalid source ip", ...)."""
    return reason if isinstance(reason, str) else api.drop_reason_text(int(reason))
