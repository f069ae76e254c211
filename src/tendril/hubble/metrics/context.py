"""Hubble's context options: the source/destination labels every metric of a plugin can carry.

`sourceContext=pod|ip` adds a label `source` whose value is the first non-empty of the chain;
`labelsContext=source_namespace,source_pod,...` adds one label per listed name. Values are worked
out once per distinct endpoint (or IP) in a batch, then fanned out to rows through np.unique's
inverse, so a batch of 100k flows between 20 pods formats 20 names, not 100k.

Semantics follow cilium pkg/hubble/metrics/api/context.go, with two additions noted inline:
`workload` (namespace/workload-name, listed in Cilium's metrics docs) and a reserved-identity
fallback from the numeric identity when an endpoint record carries no `reserved:` label.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from tendril.hubble.metrics import names
from tendril.hubble.metrics.batch import Batch
from tendril.hubble.metrics.spec import PluginSpec
from tendril.hubble.record import EndpointMeta

CONTEXT_IDENTIFIERS = (
    "identity",
    "namespace",
    "pod",
    "pod-short",
    "pod-name",
    "dns",
    "ip",
    "reserved-identity",
    "workload",
    "workload-name",
    "app",
)

# Fixed order of labelsContext labels: label names and values must line up whatever order the user wrote.
CONTEXT_LABELS = (
    "source_ip",
    "source_pod",
    "source_namespace",
    "source_workload",
    "source_workload_kind",
    "source_app",
    "destination_ip",
    "destination_pod",
    "destination_namespace",
    "destination_workload",
    "destination_workload_kind",
    "destination_app",
    "traffic_direction",
)
# labelsContext label suffix -> the endpoint identifier giving its value
_LABEL_IDENT = {
    "ip": "ip",
    "pod": "pod-name",
    "namespace": "namespace",
    "workload": "workload-name",
    "workload_kind": "workload-kind",
    "app": "app",
}

# option key (lower-case) -> (side, direction it overrides or None)
CHAIN_OPTIONS: dict[str, tuple[str, str | None]] = {
    "sourcecontext": ("source", None),
    "sourceegresscontext": ("source", "egress"),
    "sourceingresscontext": ("source", "ingress"),
    "destinationcontext": ("destination", None),
    "destinationegresscontext": ("destination", "egress"),
    "destinationingresscontext": ("destination", "ingress"),
}
CONTEXT_OPTION_KEYS = frozenset(CHAIN_OPTIONS) | {"labelscontext"}

_SIDE_FIELDS = {
    "source": ("src_ep", "src_identity", "src_ip"),
    "destination": ("dst_ep", "dst_identity", "dst_ip"),
}
_SHORT_POD = re.compile(r"^(.+?)(-[a-z0-9]+){1,2}$")
_APP_LABELS = ("k8s:app.kubernetes.io/name=", "k8s:k8s-app=", "k8s:app=")
_KUBE_APISERVER = "reserved:kube-apiserver"

Chain = tuple[str, ...]


@dataclass(frozen=True, slots=True)
class ContextOptions:
    """Parsed context options of one plugin (chains per side and direction, plus labelsContext)."""

    source: Chain = ()
    source_egress: Chain = ()
    source_ingress: Chain = ()
    destination: Chain = ()
    destination_egress: Chain = ()
    destination_ingress: Chain = ()
    labels: tuple[str, ...] = ()  # in CONTEXT_LABELS order

    @classmethod
    def parse(cls, plugin: PluginSpec) -> ContextOptions:
        """Read the context options out of a plugin spec; ValueError names the plugin and the option."""
        chains: dict[str, Chain] = {}
        labels: tuple[str, ...] = ()
        for key, value in plugin.options.items():
            low = key.lower()
            if low in CHAIN_OPTIONS:
                chains[_field_name(*CHAIN_OPTIONS[low])] = _parse_chain(plugin.name, key, value)
            elif low == "labelscontext":
                labels = _parse_labels(plugin.name, key, value)
        return cls(labels=labels, **chains)

    # ---- label names ---------------------------------------------------------------------------
    def has_side(self, side: str) -> bool:
        return bool(self._chains(side)[0] or self._chains(side)[1] or self._chains(side)[2])

    def label_names(self) -> list[str]:
        """labelsContext labels, then `source`, then `destination` (Hubble's order)."""
        out = list(self.labels)
        out += [side for side in ("source", "destination") if self.has_side(side)]
        return out

    # ---- per-batch values ----------------------------------------------------------------------
    def columns(self, batch: Batch) -> list[np.ndarray]:
        """One pool-code column per label in label_names() order."""
        cols = [_label_column(batch, label) for label in self.labels]
        for side in ("source", "destination"):
            if self.has_side(side):
                cols.append(self._side_column(batch, side))
        return cols

    def _chains(self, side: str) -> tuple[Chain, Chain, Chain]:
        if side == "source":
            return self.source, self.source_egress, self.source_ingress
        return self.destination, self.destination_egress, self.destination_ingress

    def _side_column(self, batch: Batch, side: str) -> np.ndarray:
        both, egress, ingress = self._chains(side)
        codes = _chain_column(batch, side, both)
        if egress or ingress:
            direction = batch.rows["traffic_direction"]
            codes = codes.copy()
            for chain, value in ((egress, 2), (ingress, 1)):
                if chain:
                    sel = direction == value
                    codes[sel] = _chain_column(batch, side, chain)[sel]
        return codes

    # ---- cardinality control -------------------------------------------------------------------
    def pod_matchers(self, namespace: str, pod: str) -> list[dict[str, str]]:
        """Partial label sets identifying series bound to one pod (Hubble's DeleteMetricsAssociatedWithPod).

        Only the `pod` context and labelsContext with both *_namespace and *_pod name a pod
        unambiguously; other contexts (namespace, workload, app...) outlive any single pod.
        """
        value = f"{namespace}/{pod}" if namespace else pod
        out: list[dict[str, str]] = []
        for side in ("source", "destination"):
            if any("pod" in chain for chain in self._chains(side)):
                out.append({side: value})
            if f"{side}_namespace" in self.labels and f"{side}_pod" in self.labels:
                out.append({f"{side}_namespace": namespace, f"{side}_pod": pod})
        return out


def _field_name(side: str, direction: str | None) -> str:
    return side if direction is None else f"{side}_{direction}"


def _parse_chain(plugin: str, key: str, value: str) -> Chain:
    idents = tuple(v.strip().lower() for v in value.split("|"))
    for ident in idents:
        if ident not in CONTEXT_IDENTIFIERS:
            raise ValueError(
                f"hubble metrics plugin {plugin!r}: option {key}={value!r}: unknown context {ident!r}; "
                f"use one of {'|'.join(CONTEXT_IDENTIFIERS)} (a|b = first non-empty)"
            )
    return idents


def _parse_labels(plugin: str, key: str, value: str) -> tuple[str, ...]:
    wanted = {v.strip() for v in value.split(",")}
    for label in wanted:
        if label not in CONTEXT_LABELS:
            raise ValueError(
                f"hubble metrics plugin {plugin!r}: option {key}={value!r}: invalid labelsContext value "
                f"{label!r}; use a comma-separated list of {', '.join(CONTEXT_LABELS)}"
            )
    return tuple(label for label in CONTEXT_LABELS if label in wanted)


# ---- value columns -----------------------------------------------------------------------------
def _label_column(batch: Batch, label: str) -> np.ndarray:
    if label == "traffic_direction":
        return batch.field("traffic_direction", _direction_label)
    side, _, suffix = label.partition("_")
    return _ident_column(batch, side, _LABEL_IDENT[suffix])


def _direction_label(direction: int) -> str:
    return {1: "ingress", 2: "egress"}.get(direction, "unknown")


def _chain_column(batch: Batch, side: str, chain: Chain) -> np.ndarray:
    def build() -> np.ndarray:
        if not chain:
            return batch.const("")
        codes = _ident_column(batch, side, chain[0])
        for ident in chain[1:]:
            empty = codes == 0
            if not empty.any():
                break
            codes = np.where(empty, _ident_column(batch, side, ident), codes)
        return codes

    return batch.cached(("chain", side, chain), build)


def _ident_column(batch: Batch, side: str, ident: str) -> np.ndarray:
    ep_field, identity_field, ip_field = _SIDE_FIELDS[side]
    rows = batch.rows
    if ident == "dns":
        return batch.const("")  # the flow record keeps no DNS names yet (needs the DNS proxy / FQDN cache)
    if ident == "ip":
        return batch.cached(("ip", side), lambda: _ip_column(batch, ip_field))
    fn = _ENDPOINT_VALUES[ident]

    def value(ep: int, identity: int) -> str:
        meta = batch.tables.endpoint(ep)
        return fn(meta, identity or meta.identity)

    return batch.mapped(("ep", side, ident), [rows[ep_field], rows[identity_field]], value)


def _ip_column(batch: Batch, ip_field: str) -> np.ndarray:
    raw = np.ascontiguousarray(batch.rows[ip_field]).view("<u8").reshape(-1, 2)
    return batch.mapped(("ipvals", ip_field), [batch.rows["ip_version"], raw[:, 0], raw[:, 1]], _format_ip)


def _format_ip(version: int, lo: int, hi: int) -> str:
    data = lo.to_bytes(8, "little") + hi.to_bytes(8, "little")
    if version == 4:
        return str(ipaddress.IPv4Address(data[:4]))
    if version == 6:
        return str(ipaddress.IPv6Address(data))
    return ""


# ---- endpoint-derived identifiers ----------------------------------------------------------------
def _pod(meta: EndpointMeta, _identity: int) -> str:
    if not meta.pod_name and not meta.namespace:
        return ""
    return f"{meta.namespace}/{meta.pod_name}" if meta.namespace else meta.pod_name


def _pod_short(meta: EndpointMeta, _identity: int) -> str:
    short = _SHORT_POD.sub(r"\1", meta.pod_name)
    return f"{meta.namespace}/{short}" if meta.namespace else short


def _workload(meta: EndpointMeta, _identity: int) -> str:
    if not meta.workloads:
        return ""
    name = meta.workloads[0][0]
    return f"{meta.namespace}/{name}" if meta.namespace else name


def reserved_label(meta: EndpointMeta, identity: int) -> str:
    """reserved:kube-apiserver if present, else the first reserved: label, else one from the identity."""
    if _KUBE_APISERVER in meta.labels:
        return _KUBE_APISERVER
    for label in meta.labels:
        if label.startswith("reserved:"):
            return label
    name = names.RESERVED_IDENTITIES.get(identity)
    return f"reserved:{name}" if name else ""


def _identity(meta: EndpointMeta, identity: int) -> str:
    return ",".join(meta.labels) if meta.labels else reserved_label(meta, identity)


def app_label(labels: tuple[str, ...]) -> str:
    for label in labels:
        for prefix in _APP_LABELS:
            if label.startswith(prefix) and len(label) > len(prefix):
                return label[len(prefix) :]
    return ""


_ENDPOINT_VALUES: dict[str, Callable[[EndpointMeta, int], str]] = {
    "identity": _identity,
    "namespace": lambda m, _i: m.namespace,
    "pod": _pod,
    "pod-short": _pod_short,
    "pod-name": lambda m, _i: m.pod_name,
    "reserved-identity": reserved_label,
    "workload": _workload,
    "workload-name": lambda m, _i: m.workloads[0][0] if m.workloads else "",
    "workload-kind": lambda m, _i: m.workloads[0][1] if m.workloads else "",
    "app": lambda m, _i: app_label(m.labels),
}
