"""Network policy: CiliumNetworkPolicy, CiliumClusterwideNetworkPolicy and Kubernetes NetworkPolicy,
validated strictly and resolved into per-endpoint policy-map entries for the datapath.

Public API (what the agent uses):

- `parse_policy_documents(text, source) -> list[Policy]` (tendril.policy.model): a whole file, all
  documents validated first; `PolicyValidationError` names file, kind, name and field. Each
  `Policy.notices` lists what is accepted but not (fully) enforced, e.g. "L7 rule not yet enforced".
- `PolicyRepository`: `apply(policies)` (created/configured/unchanged), `delete(kind, ns, name)`,
  `get`, `list`, `policies()`, `revision`, `required_cidr_prefixes()` (prefixes needing a CIDR
  identity + ipcache entry), `rule_ref_id(ref)` (u32 for tnd_policy_value.rule_ref), `to_dict/from_dict`.
- `PolicyResolver(identities, cluster_name=, allow_localhost=, enforcement=, max_entries=,
  peer_named_ports=)`: `set_identities(id -> labels)`, `resolve(policies, LocalEndpoint)` ->
  `EndpointPolicy` (raises `PolicyMapFull`), `resolve_all(policies, endpoints)` -> `ResolveResult`.
- `EndpointPolicy(ingress_enforced, egress_enforced, entries)`: each `PolicyEntry` is one map key
  (egress, identity 0=any, proto 0=any, port_lo..port_hi one prefix block with (0, 0)=any, `prefixlen`,
  deny/`flags`, `match_type` TND_MATCH_*, `rule_ref`); enforced directions also need the
  ENFORCED_MARKER key. `lookup(peer, egress, proto, dport)` is the datapath's decision, for tests.
- `required_cidr_prefixes(policies)`, `MatchType`, `Proto`, `POLICY_MAX_ENTRIES`, `POLICY_DENY`.
"""

from tendril.policy.cidr import required_cidr_prefixes
from tendril.policy.constants import POLICY_DENY, POLICY_MAX_ENTRIES, MatchType, Proto
from tendril.policy.errors import PolicyMapFull, PolicyValidationError
from tendril.policy.model import is_policy_document, parse_policy_documents, parse_policy_object
from tendril.policy.policymap import EndpointPolicy, PolicyEntry, Verdict
from tendril.policy.repository import KIND_ALIASES, PolicyRepository, normalize_kind
from tendril.policy.resolve import LocalEndpoint, PolicyResolver, ResolveResult
from tendril.policy.rules import CCNP, CNP, KNP, Policy
from tendril.policy.selector import Selector, SelectorCache

__all__ = [
    "CCNP",
    "CNP",
    "KIND_ALIASES",
    "KNP",
    "POLICY_DENY",
    "POLICY_MAX_ENTRIES",
    "EndpointPolicy",
    "LocalEndpoint",
    "MatchType",
    "Policy",
    "PolicyEntry",
    "PolicyMapFull",
    "PolicyRepository",
    "PolicyResolver",
    "PolicyValidationError",
    "Proto",
    "ResolveResult",
    "Selector",
    "SelectorCache",
    "Verdict",
    "is_policy_document",
    "normalize_kind",
    "parse_policy_documents",
    "parse_policy_object",
    "required_cidr_prefixes",
]
