"""Label selectors over identity label sets, and the cache that makes resolution cheap.

Cilium semantics: a selector key may carry a source (`k8s:app`, `reserved:host`, `any:app`); a key
without one means any source. `matchLabels` are `In` requirements with one value; `matchExpressions`
are In / NotIn / Exists / DoesNotExist (NotIn and DoesNotExist also match when the key is absent).
An empty selector selects every identity.

Policies are evaluated against identities, not pods: many pods share an identity, so a selector's
verdict is cached per (selector, identity), and the set of identities a peer selector picks is cached
per selector (`SelectorCache.selections`) and updated incrementally when identities come and go.
"""

from __future__ import annotations

import re
import weakref
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from tendril.identity.labels import ANY, K8S, NAMESPACE_LABELS_PREFIX, RESERVED
from tendril.identity.reserved import RESERVED_NAMES

IN, NOT_IN, EXISTS, DOES_NOT_EXIST = "In", "NotIn", "Exists", "DoesNotExist"
OPERATORS = (IN, NOT_IN, EXISTS, DOES_NOT_EXIST)
SELECTOR_SOURCES = (ANY, K8S, RESERVED)
_RESERVED_KEYS = frozenset(RESERVED_NAMES.values()) - {"unknown"}

_NAME = re.compile(r"^[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$")
_DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")


# ---- validation (used by the document models) ---------------------------------------------------
def _qualified_name_error(key: str) -> str | None:
    prefix, slash, name = key.rpartition("/")
    if slash and (not prefix or len(prefix) > 253 or not _DNS_SUBDOMAIN.match(prefix)):
        return "the part before '/' must be a lowercase DNS subdomain"
    if not name or len(name) > 63 or not _NAME.match(name):
        return "the name must be 1-63 characters of [A-Za-z0-9-_.], starting and ending alphanumeric"
    return None


def label_key_error(key: str, *, allow_source: bool = True) -> str | None:
    """Why a selector key is invalid, or None. Sources: `k8s:`, `reserved:`, `any:` (or none)."""
    source, colon, name = key.partition(":")
    if colon:
        if not allow_source:
            return f"label key {key!r} is invalid: Kubernetes label keys cannot contain ':'"
        if source not in SELECTOR_SOURCES:
            allowed = ", ".join(f"{s}:" for s in SELECTOR_SOURCES)
            return f"label key {key!r} has unknown source {source + ':'!r} (allowed: {allowed} or none)"
        if source == RESERVED:
            if name not in _RESERVED_KEYS:
                known = ", ".join(sorted(_RESERVED_KEYS))
                return f"label key {key!r} names no reserved identity (known: {known})"
            return None
    else:
        name = key
    checked = name.removeprefix(NAMESPACE_LABELS_PREFIX) if name.startswith(NAMESPACE_LABELS_PREFIX) else name
    why = _qualified_name_error(checked)
    return f"label key {key!r} is invalid: {why}" if why else None


def label_value_error(value: str) -> str | None:
    if len(value) > 63 or not _VALUE.match(value):
        return (
            f"label value {value!r} is invalid: at most 63 characters of [A-Za-z0-9-_.], "
            "starting and ending alphanumeric (or empty)"
        )
    return None


# ---- selectors --------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True, order=True)
class Requirement:
    """One condition on one label: `source` is a label source or `any`."""

    source: str
    key: str
    op: str
    values: tuple[str, ...] = ()

    def matches(self, index: LabelIndex) -> bool:
        entries = index.get(self.key, ())
        if self.source != ANY:
            entries = tuple(e for e in entries if e[0] == self.source)
        if self.op == IN:
            return any(v in self.values for _, v in entries)
        if self.op == NOT_IN:
            return not any(v in self.values for _, v in entries)
        if self.op == EXISTS:
            return bool(entries)
        return not entries

    def __str__(self) -> str:
        key = f"{self.source}:{self.key}"
        if self.op == IN and len(self.values) == 1:
            return f"{key}={self.values[0]}"
        if self.op in (EXISTS, DOES_NOT_EXIST):
            return f"{key} {self.op}"
        return f"{key} {self.op} ({','.join(self.values)})"


class Selector:
    """An immutable, hashable conjunction of requirements (empty = select everything).

    Equal selectors are one object (interned), so the per-(selector, identity) cache hits on an
    identity check instead of comparing requirement tuples.
    """

    __slots__ = ("requirements", "_hash", "__weakref__")
    _interned: weakref.WeakValueDictionary[tuple[Requirement, ...], Selector] = weakref.WeakValueDictionary()

    def __new__(cls, requirements: Iterable[Requirement] = ()) -> Selector:
        reqs = tuple(sorted(set(requirements)))
        self = cls._interned.get(reqs)
        if self is None:
            self = super().__new__(cls)
            self.requirements = reqs
            self._hash = hash(reqs)
            cls._interned[reqs] = self
        return self

    def __hash__(self) -> int:
        return self._hash

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Selector) and self.requirements == other.requirements

    def __repr__(self) -> str:
        return f"Selector({', '.join(map(str, self.requirements)) or '*'})"

    def matches(self, index: LabelIndex) -> bool:
        return all(r.matches(index) for r in self.requirements)

    def matches_labels(self, labels: Iterable[str]) -> bool:
        return self.matches(label_index(labels))

    def has_key(self, source: str, key: str) -> bool:
        return any(r.source == source and r.key == key for r in self.requirements)

    def has_key_prefix(self, source: str, prefix: str) -> bool:
        return any(r.source == source and r.key.startswith(prefix) for r in self.requirements)

    def has_source(self, source: str) -> bool:
        return any(r.source == source for r in self.requirements)

    def plus(self, *requirements: Requirement) -> Selector:
        return Selector((*self.requirements, *requirements))


def split_key(key: str, default_source: str = ANY) -> tuple[str, str]:
    """`k8s:app` -> ('k8s', 'app'); `app` -> (default_source, 'app')."""
    source, colon, name = key.partition(":")
    return (source, name) if colon else (default_source, key)


def selector_from_k8s(
    match_labels: Mapping[str, str],
    match_expressions: Iterable[tuple[str, str, Iterable[str]]],
    *,
    default_source: str = ANY,
    key_prefix: str = "",
) -> Selector:
    """A Kubernetes-style LabelSelector (already validated) -> Selector.

    `key_prefix` is put in front of every key: Kubernetes `namespaceSelector` keys become
    `io.cilium.k8s.namespace.labels.<key>` because that is how namespace labels appear on identities.
    """
    reqs = []
    for key, value in match_labels.items():
        source, name = split_key(key, default_source)
        reqs.append(Requirement(source, key_prefix + name, IN, (value,)))
    for key, op, values in match_expressions:
        source, name = split_key(key, default_source)
        reqs.append(Requirement(source, key_prefix + name, op, tuple(sorted(set(values)))))
    return Selector(reqs)


# ---- identity label index ----------------------------------------------------------------------
LabelIndex = dict[str, tuple[tuple[str, str], ...]]


def label_index(labels: Iterable[str]) -> LabelIndex:
    """key -> ((source, value), ...) for one identity's labels, so requirements are dict lookups."""
    out: dict[str, list[tuple[str, str]]] = {}
    for text in labels:
        key, _, value = text.partition("=")
        source, colon, name = key.partition(":")
        if not colon:
            source, name = "unspec", key
        out.setdefault(name, []).append((source, value))
    return {k: tuple(v) for k, v in out.items()}


class SelectorCache:
    """Selector verdicts per (selector, identity) and selections per selector, kept incrementally.

    `set_identities()` takes the full id -> labels map whenever it changes; only identities that
    appeared, vanished or changed labels are re-evaluated against the selectors seen so far.
    """

    def __init__(self, identities: Mapping[int, frozenset[str]] | None = None) -> None:
        self._labels: dict[int, frozenset[str]] = {}
        self._index: dict[int, LabelIndex] = {}
        self._match: dict[int, dict[Selector, bool]] = {}
        self._selections: dict[Selector, frozenset[int]] = {}
        self._by_value: dict[tuple[str, str], set[int]] | None = None  # (key, value) -> ids
        self._by_key: dict[str, set[int]] = {}  # key -> ids
        self.evaluations = 0  # selector evaluations done (cache misses), for tests and benchmarks
        if identities:
            self.set_identities(identities)

    @property
    def identities(self) -> Mapping[int, frozenset[str]]:
        return self._labels

    def set_identities(self, identities: Mapping[int, frozenset[str]]) -> set[int]:
        """Replace the identity universe; returns the ids whose selection may have changed."""
        old = self._labels
        changed = {n for n in old if identities.get(n) != old[n]}
        changed.update(n for n in identities if n not in old)
        if not changed:
            return changed
        self._labels = dict(identities)
        self._by_value = None
        for n in changed:
            self._index.pop(n, None)
            self._match.pop(n, None)
        present = [n for n in changed if n in self._labels]
        for sel, chosen in list(self._selections.items()):
            keep = chosen - changed
            self._selections[sel] = keep | {n for n in present if self.matches(sel, n)}
        return changed

    def index(self, identity: int) -> LabelIndex:
        idx = self._index.get(identity)
        if idx is None:
            idx = self._index[identity] = label_index(self._labels.get(identity, ()))
        return idx

    def matches(self, selector: Selector, identity: int) -> bool:
        per_id = self._match.get(identity)
        if per_id is None:
            per_id = self._match[identity] = {}
        hit = per_id.get(selector)
        if hit is None:
            self.evaluations += 1
            hit = per_id[selector] = selector.matches(self.index(identity))
        return hit

    def selections(self, selector: Selector) -> frozenset[int]:
        """Every known identity the selector picks."""
        chosen = self._selections.get(selector)
        if chosen is None:
            candidates = self._candidates(selector)
            chosen = self._selections[selector] = frozenset(
                n for n in candidates if self.matches(selector, n)
            )
        return chosen

    def _candidates(self, selector: Selector) -> Iterable[int]:
        """Identities that can match: narrowed by the In/Exists requirements through an inverted
        label index, so a selector is evaluated against a handful of identities, not all of them."""
        if self._by_value is None:
            self._by_value, self._by_key = {}, {}
            for n in self._labels:
                for key, entries in self.index(n).items():
                    self._by_key.setdefault(key, set()).add(n)
                    for _, value in entries:
                        self._by_value.setdefault((key, value), set()).add(n)
        out: set[int] | None = None
        for req in selector.requirements:
            if req.op == IN:
                found = set().union(*(self._by_value.get((req.key, v), ()) for v in req.values))
            elif req.op == EXISTS:
                found = self._by_key.get(req.key, set())
            else:
                continue
            out = found if out is None else out & found
            if not out:
                return ()
        return self._labels if out is None else out
