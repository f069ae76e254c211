"""Security-relevant labels: the parts of a pod that decide its identity.

A label is `source:key=value` (Cilium's notation): `k8s:app=web`, `reserved:world` (empty value, no
`=`), `cidr:10.0.0.0/8`. Only labels that say *who* a pod is go into its identity; labels that change
with every rollout (`pod-template-hash`, ...) are dropped so all replicas share one identity, and
`io.kubernetes.*` pod labels are dropped so a pod cannot claim another namespace.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

K8S = "k8s"
RESERVED = "reserved"
CIDR = "cidr"
ANY = "any"
UNSPEC = "unspec"
#: sources a label (or a selector key) may name; `any` only makes sense in selectors.
SOURCES = frozenset({K8S, RESERVED, CIDR, ANY, UNSPEC})

POD_NAMESPACE_LABEL = "io.kubernetes.pod.namespace"
NAMESPACE_LABELS_PREFIX = "io.cilium.k8s.namespace.labels."
POLICY_CLUSTER_LABEL = "io.cilium.k8s.policy.cluster"
SERVICEACCOUNT_LABEL = "io.cilium.k8s.policy.serviceaccount"
NAMESPACE_NAME_LABEL = "kubernetes.io/metadata.name"

# Cilium's default label filter (pkg/labelsfilter): pod label keys that never become identity
# labels. Anchored at the start of the key, like Cilium's prefixes; `app.kubernetes.io/*` stays.
_EXCLUDED_POD_LABELS = re.compile(
    r"^(io\.kubernetes|kubernetes\.io|statefulset\.kubernetes\.io/pod-name|apps\.kubernetes\.io/pod-index"
    r"|batch\.kubernetes\.io/job-completion-index|batch\.kubernetes\.io/controller-uid|.*beta\.kubernetes\.io"
    r"|k8s\.io|pod-template-generation|pod-template-hash|controller-revision-hash|annotation|etcd_node)"
)


@dataclass(frozen=True, slots=True, order=True)
class Label:
    """One label. `str(label)` is the canonical text used in identity label sets."""

    source: str
    key: str
    value: str = ""

    @classmethod
    def parse(cls, text: str, default_source: str = UNSPEC) -> Label:
        """Parse `source:key=value`; the source is whatever precedes the first `:` of the key part.

        The first `:` splits, not the last, so IPv6 CIDR labels (`cidr:2001:db8::/32`) keep their key.
        """
        key, sep, value = text.partition("=")
        source, colon, rest = key.partition(":")
        if not colon:
            source, rest = default_source, key
        if not rest:
            raise ValueError(f"invalid label {text!r}: empty key")
        return cls(source, rest, value if sep else "")

    def __str__(self) -> str:
        return f"{self.source}:{self.key}={self.value}" if self.value else f"{self.source}:{self.key}"


def is_identity_pod_label(key: str) -> bool:
    """Whether a pod label key takes part in the pod's identity (see the module docstring)."""
    return not _EXCLUDED_POD_LABELS.match(key)


def identity_labels(
    namespace: str,
    pod_labels: Mapping[str, str],
    namespace_labels: Mapping[str, str] | None = None,
    serviceaccount: str = "default",
    cluster: str = "default",
) -> frozenset[str]:
    """The label set of a pod's identity, exactly as Cilium builds it for Kubernetes pods.

    `kubernetes.io/metadata.name=<namespace>` is added to the namespace labels when missing because
    Kubernetes sets it on every namespace and policies select namespaces by it.
    """
    if not namespace:
        raise ValueError("identity_labels: namespace is required")
    out = {str(Label(K8S, key, value)) for key, value in pod_labels.items() if is_identity_pod_label(key)}
    ns_labels = {NAMESPACE_NAME_LABEL: namespace, **(namespace_labels or {})}
    out.update(str(Label(K8S, NAMESPACE_LABELS_PREFIX + k, v)) for k, v in ns_labels.items())
    out.add(str(Label(K8S, POD_NAMESPACE_LABEL, namespace)))
    out.add(str(Label(K8S, POLICY_CLUSTER_LABEL, cluster)))
    out.add(str(Label(K8S, SERVICEACCOUNT_LABEL, serviceaccount)))
    return frozenset(out)
