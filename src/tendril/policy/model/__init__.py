"""Policy documents users already write, parsed strictly and compiled to `tendril.policy.rules`.

- `parse_policy_documents(text, source) -> list[Policy]`: a whole file; all documents are validated
  before anything is returned, errors are `PolicyValidationError` naming file, kind, name and field.
- `parse_policy_object(doc, source, index) -> Policy`: one already-loaded document (mixed files).
- `is_policy_document(doc)`: whether a loaded document is a CNP, CCNP or NetworkPolicy.
- The pydantic models: `CiliumNetworkPolicy`, `CiliumClusterwideNetworkPolicy` (cilium.io/v2) and
  `NetworkPolicy` (networking.k8s.io/v1), with `extra="forbid"`.
- `compile_cilium` / `compile_k8s`: model -> rules (both formats share one internal form).
"""

from tendril.policy.model.cilium import CiliumClusterwideNetworkPolicy, CiliumNetworkPolicy
from tendril.policy.model.compile_cilium import compile_cilium
from tendril.policy.model.compile_k8s import compile_k8s
from tendril.policy.model.k8s import NetworkPolicy
from tendril.policy.model.parse import KINDS, is_policy_document, parse_policy_documents, parse_policy_object

__all__ = [
    "KINDS",
    "CiliumClusterwideNetworkPolicy",
    "CiliumNetworkPolicy",
    "NetworkPolicy",
    "compile_cilium",
    "compile_k8s",
    "is_policy_document",
    "parse_policy_documents",
    "parse_policy_object",
]
