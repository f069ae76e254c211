"""The set of policies in force, keyed like Kubernetes objects, with a revision counter.

Applying a file is atomic: `apply()` takes the already-validated policies of one file (from
`parse_policy_documents`, which fails before returning anything), so either all of them replace their
previous versions or, on a parse error, none do. Every change bumps `revision`, which is what the
agent compares to know endpoint policies must be recomputed.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from tendril.common.errors import InvalidInputError, NotFoundError
from tendril.policy.cidr import required_cidr_prefixes
from tendril.policy.model.parse import parse_policy_object
from tendril.policy.rules import CCNP, CNP, KNP, Policy

#: what users type for kinds (kubectl-style names and short names) -> kind
KIND_ALIASES = {
    "ciliumnetworkpolicy": CNP,
    "ciliumnetworkpolicies": CNP,
    "cnp": CNP,
    "ciliumclusterwidenetworkpolicy": CCNP,
    "ciliumclusterwidenetworkpolicies": CCNP,
    "ccnp": CCNP,
    "networkpolicy": KNP,
    "networkpolicies": KNP,
    "netpol": KNP,
}


def normalize_kind(text: str) -> str:
    """`cnp`, `networkpolicies`, `CiliumNetworkPolicy`... -> the kind name; InvalidInputError otherwise."""
    kind = KIND_ALIASES.get(text.lower())
    if kind is None:
        raise InvalidInputError(f"unknown policy kind {text!r} (use cnp, ccnp or netpol)")
    return kind


class PolicyRepository:
    """Policies by (kind, namespace, name); `revision` increases with every change."""

    def __init__(self) -> None:
        self._policies: dict[tuple[str, str, str], Policy] = {}
        self.revision = 0
        self._sorted: tuple[Policy, ...] | None = ()
        self._ref_ids: dict[str, int] = {}
        self._ref_names: list[str] = [""]

    def apply(self, policies: Iterable[Policy]) -> list[tuple[str, Policy]]:
        """Add or replace each policy; returns kubectl-style ("created"/"configured"/"unchanged", policy)."""
        out = []
        for p in policies:
            old = self._policies.get(p.key)
            if old is not None and old.document == p.document:
                out.append(("unchanged", old))
                continue
            self._policies[p.key] = p
            out.append(("configured" if old is not None else "created", p))
        if any(action != "unchanged" for action, _ in out):
            self._changed()
        return out

    def delete(self, kind: str, namespace: str | None, name: str) -> Policy:
        key = (kind, "" if kind == CCNP else (namespace or "default"), name)
        policy = self._policies.pop(key, None)
        if policy is None:
            where = f" in namespace {key[1]!r}" if key[1] else ""
            raise NotFoundError(f"{kind} {name!r} not found{where}")
        self._changed()
        return policy

    def get(self, kind: str, namespace: str | None, name: str) -> Policy | None:
        return self._policies.get((kind, "" if kind == CCNP else (namespace or "default"), name))

    def list(self, kind: str | None = None, namespace: str | None = None) -> list[Policy]:
        """Policies sorted by key; `namespace` filters namespaced kinds (cluster-wide ones always show)."""
        return [
            p
            for p in self.policies()
            if (kind is None or p.kind == kind) and (namespace is None or p.namespace in (None, namespace))
        ]

    def policies(self) -> tuple[Policy, ...]:
        """All policies in key order (the order resolution uses to pick a rule_ref among equals)."""
        if self._sorted is None:
            self._sorted = tuple(self._policies[k] for k in sorted(self._policies))
        return self._sorted

    def __len__(self) -> int:
        return len(self._policies)

    def required_cidr_prefixes(self) -> set[str]:
        return required_cidr_prefixes(self._policies.values())

    def _changed(self) -> None:
        self.revision += 1
        self._sorted = None

    # ---- rule references (tnd_policy_value.rule_ref is a u32) -----------------------------------
    def rule_ref_id(self, ref: str) -> int:
        """A stable number for a rule reference (1, 2, ...; 0 means none) for the policy map."""
        n = self._ref_ids.get(ref)
        if n is None:
            n = self._ref_ids[ref] = len(self._ref_names)
            self._ref_names.append(ref)
        return n

    def rule_ref_name(self, n: int) -> str | None:
        return self._ref_names[n] if 0 < n < len(self._ref_names) else None

    # ---- persistence ---------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {
            "revision": self.revision,
            "policies": [{"source": p.source, "document": p.document} for p in self.policies()],
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PolicyRepository:
        """Re-validate saved documents (a policy that no longer validates is an error, not dropped)."""
        repo = cls()
        for i, item in enumerate(data.get("policies", [])):
            p = parse_policy_object(item.get("document"), item.get("source", "<saved>"), i)
            repo._policies[p.key] = p
        repo.revision = int(data.get("revision", 0))
        repo._sorted = None
        return repo
