"""What every Hubble metrics plugin shares: option checking, context labels, pod-series cleanup."""

from __future__ import annotations

from typing import ClassVar

import numpy as np
from prometheus_client.registry import CollectorRegistry

from tendril.hubble.metrics.batch import Batch
from tendril.hubble.metrics.context import CONTEXT_OPTION_KEYS, ContextOptions
from tendril.hubble.metrics.spec import PluginSpec
from tendril.hubble.metrics.vec import Vec


class Plugin:
    """One `--hubble-metrics` entry. Subclasses declare `name`, their own option keys, and count."""

    name: ClassVar[str]
    plugin_options: ClassVar[tuple[str, ...]] = ()  # besides the context options

    def __init__(self, spec: PluginSpec, registry: CollectorRegistry) -> None:
        self._check_options(spec)
        self.spec = spec
        self.context = ContextOptions.parse(spec)
        self.registry = registry
        self.vecs: list[Vec] = []
        self._track = bool(self.context.pod_matchers("ns", "pod"))
        self.setup()

    def _check_options(self, spec: PluginSpec) -> None:
        allowed = {o.lower() for o in self.plugin_options} | CONTEXT_OPTION_KEYS
        for key in spec.options:
            if key.lower() not in allowed:
                own = ", ".join(self.plugin_options) or "none"
                raise ValueError(
                    f"hubble metrics plugin {self.name!r}: unknown option {key!r} "
                    f"(its own options: {own}; context options: sourceContext, destinationContext, "
                    "sourceEgressContext, sourceIngressContext, destinationEgressContext, "
                    "destinationIngressContext, labelsContext)"
                )

    # ---- for subclasses ------------------------------------------------------------------------
    def setup(self) -> None:
        """Create the plugin's metrics (with self.counter / self.histogram)."""

    def process(self, batch: Batch) -> None:
        """Count one batch."""

    def counter(self, name: str, doc: str, labels: list[str]) -> Vec:
        vec = Vec.counter(name, doc, labels, self.registry, self._track)
        self.vecs.append(vec)
        return vec

    def histogram(self, name: str, doc: str, labels: list[str]) -> Vec:
        vec = Vec.histogram(name, doc, labels, self.registry, self._track)
        self.vecs.append(vec)
        return vec

    def ctx_names(self) -> list[str]:
        return self.context.label_names()

    def ctx_columns(self, batch: Batch) -> list[np.ndarray]:
        return self.context.columns(batch)

    # ---- cardinality control -------------------------------------------------------------------
    def delete_pod(self, namespace: str, pod: str) -> int:
        removed = 0
        for match in self.context.pod_matchers(namespace, pod):
            for vec in self.vecs:
                removed += vec.remove_matching(match)
        return removed
