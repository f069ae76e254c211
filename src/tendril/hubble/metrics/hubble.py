"""HubbleMetrics: the enabled plugins, lost-event counts and the deleted-pod series sweeper.

The agent builds one from `--hubble-metrics`, hands it every parsed batch (`process`) and every
lost-event count (`lost`), tells it when an endpoint goes away (`endpoint_deleted`), and serves
`.registry` on :9965. Series bound to a deleted pod are removed after a delay (Hubble: one
minute, so the last increments are still scraped) — the cardinality control of cilium#23162.
"""

from __future__ import annotations

import heapq
import threading
import time
from collections.abc import Iterable

import numpy as np
from prometheus_client import Counter
from prometheus_client.registry import CollectorRegistry

from tendril.hubble.metrics.batch import Batch
from tendril.hubble.metrics.names import LOST_EVENT_SOURCES
from tendril.hubble.metrics.plugins import PLUGINS, Plugin
from tendril.hubble.metrics.spec import parse_spec
from tendril.hubble.record import EndpointMeta, Tables


class HubbleMetrics:
    """Hubble's metrics for the plugins named in `spec` (Hubble's `--hubble-metrics` syntax).

    Raises ValueError naming the plugin or option when the spec is wrong. An empty spec enables
    nothing and registers nothing (Hubble metrics off).
    """

    def __init__(self, spec: str | Iterable[str], registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        specs = parse_spec(spec)
        for s in specs:
            if s.name not in PLUGINS:
                raise ValueError(
                    f"unknown Hubble metrics plugin {s.name!r}; known plugins: {', '.join(sorted(PLUGINS))}"
                )
        if {"http", "httpV2"} <= {s.name for s in specs}:
            raise ValueError(
                "hubble metrics plugins 'http' and 'httpV2' both define hubble_http_requests_total; "
                "enable one (httpV2 is the current one)"
            )
        self.plugins: list[Plugin] = [PLUGINS[s.name](s, self.registry) for s in specs]
        self._lost: Counter | None = None
        if self.plugins:
            self._lost = Counter(
                "hubble_lost_events_total", "Number of lost events", ["source"], registry=self.registry
            )
            for source in LOST_EVENT_SOURCES:
                self._lost.labels(source)  # export zeros, so "no loss" is visible rather than absent
        self._lock = threading.Lock()
        self._pending: list[tuple[float, int, str, str]] = []  # (due, seq, namespace, pod) heap
        self._seq = 0

    @property
    def enabled(self) -> list[str]:
        return [p.name for p in self.plugins]

    def process(self, rows: np.ndarray, tables: Tables) -> None:
        """Count one parsed batch (FLOW_DTYPE rows) in every enabled plugin; also runs due expiries."""
        self.expire()
        if not self.plugins or len(rows) == 0:
            return
        batch = Batch(rows, tables)
        with self._lock:
            for plugin in self.plugins:
                plugin.process(batch)

    def lost(self, source: str, n: int) -> None:
        """Add n lost events; source: perf_event_ring_buffer, observer_events_queue, hubble_ring_buffer."""
        key = source.lower()
        if key not in LOST_EVENT_SOURCES:
            raise ValueError(f"lost event source {source!r}: use one of {', '.join(LOST_EVENT_SOURCES)}")
        if self._lost is not None and n > 0:
            self._lost.labels(key).inc(n)

    def endpoint_deleted(self, meta: EndpointMeta, delay_s: float = 60.0) -> None:
        """Schedule removal of the series bound to this pod `delay_s` from now (0 = at once)."""
        if not meta.pod_name:
            return
        with self._lock:
            self._seq += 1
            heapq.heappush(
                self._pending, (time.monotonic() + delay_s, self._seq, meta.namespace, meta.pod_name)
            )
        if delay_s <= 0:
            self.expire()

    def expire(self, now: float | None = None) -> int:
        """Remove the series of pods whose delay has passed; returns how many series went."""
        now = time.monotonic() if now is None else now
        removed = 0
        with self._lock:
            while self._pending and self._pending[0][0] <= now:
                _, _, namespace, pod = heapq.heappop(self._pending)
                for plugin in self.plugins:
                    removed += plugin.delete_pod(namespace, pod)
        return removed
