"""Security identities: who a pod is, as a number the datapath can compare.

Public API (what the agent uses):

- `identity_labels(namespace, pod_labels, namespace_labels=None, serviceaccount="default",
  cluster="default") -> frozenset[str]`: a pod's identity labels, Cilium's way (`k8s:app=web`,
  `k8s:io.kubernetes.pod.namespace=<ns>`, `k8s:io.cilium.k8s.namespace.labels.<k>=<v>`,
  `k8s:io.cilium.k8s.policy.cluster=<c>`, `k8s:io.cilium.k8s.policy.serviceaccount=<sa>`).
- `IdentityAllocator`: `acquire(labels) -> int` / `release(labels) -> bool` (refcounted, lowest free
  number from 256), `cidr_identity(prefix) -> int` / `release_cidr(prefix)` (from 1 << 24, labels
  `cidr:<prefix>` + `reserved:world`), `lookup(id)`, `identities()` (everything policy resolution
  needs), `to_dict()` / `from_dict()`.
- `ReservedIdentity` (HOST=1 ... INGRESS=8) with `.label` (`reserved:host`), `Label` (parse/format
  `source:key=value`), and the ABI ranges `CLUSTER_ID_MIN`, `LOCAL_ID_MIN`, `ENFORCED_MARKER`.
"""

from tendril.identity.allocator import IdentityAllocator, canonical_prefix, cidr_labels
from tendril.identity.labels import Label, identity_labels, is_identity_pod_label
from tendril.identity.reserved import (
    CLUSTER_ID_MAX,
    CLUSTER_ID_MIN,
    ENFORCED_MARKER,
    LOCAL_ID_MAX,
    LOCAL_ID_MIN,
    RESERVED_NAMES,
    ReservedIdentity,
    reserved_identities,
)

__all__ = [
    "CLUSTER_ID_MAX",
    "CLUSTER_ID_MIN",
    "ENFORCED_MARKER",
    "LOCAL_ID_MAX",
    "LOCAL_ID_MIN",
    "RESERVED_NAMES",
    "IdentityAllocator",
    "Label",
    "ReservedIdentity",
    "canonical_prefix",
    "cidr_labels",
    "identity_labels",
    "is_identity_pod_label",
    "reserved_identities",
]
