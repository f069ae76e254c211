"""A labelled Prometheus metric that remembers its series, so a deleted pod's series can be dropped.

prometheus_client has no DeletePartialMatch (client_golang's tool for Hubble's one-minute pod
cleanup), so series are tracked here — only for plugins whose context options can name a pod.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from prometheus_client import Counter, Histogram, disable_created_metrics
from prometheus_client.registry import CollectorRegistry

# Hubble (client_golang) exposes no `<name>_created` series; keep the exposition identical.
disable_created_metrics()


class Vec:
    """A Counter or Histogram plus its children by label tuple (the series it has; removable by match)."""

    def __init__(self, metric: Counter | Histogram, labelnames: list[str], track: bool) -> None:
        self.metric = metric
        self.labelnames = labelnames
        self.track = track
        self.children: dict[tuple[str, ...], Any] = {}  # label tuple -> child; skips labels()' checks

    @classmethod
    def counter(
        cls, name: str, doc: str, labelnames: list[str], registry: CollectorRegistry, track: bool
    ) -> Vec:
        return cls(Counter(name, doc, labelnames, registry=registry), labelnames, track)

    @classmethod
    def histogram(
        cls, name: str, doc: str, labelnames: list[str], registry: CollectorRegistry, track: bool
    ) -> Vec:
        return cls(Histogram(name, doc, labelnames, registry=registry), labelnames, track)

    def add(self, groups: Iterable[tuple[tuple[str, ...], int]]) -> None:
        """inc(count) once per distinct label tuple (Batch.groups output)."""
        children = self.children
        for labels, count in groups:
            child = children.get(labels)
            if child is None:
                child = children[labels] = self.metric.labels(*labels)
            child.inc(count)

    def observe(self, labels: tuple[str, ...], value: float) -> None:
        """One histogram observation (L7 latencies: one per response, few compared with packets)."""
        child = self.children.get(labels)
        if child is None:
            child = self.children[labels] = self.metric.labels(*labels)
        child.observe(value)

    def remove_matching(self, match: dict[str, str]) -> int:
        """Remove every tracked series whose labels include all of `match`; returns how many."""
        if not self.track or any(k not in self.labelnames for k in match):
            return 0
        want = [(self.labelnames.index(k), v) for k, v in match.items()]
        doomed = [s for s in self.children if all(s[i] == v for i, v in want)]
        for labels in doomed:
            self.metric.remove(*labels)
            del self.children[labels]
        return len(doomed)
