"""Identity allocation: label set -> number, shared by every pod with the same labels.

Cluster identities are numbered from 256 (lowest free number first) and reference counted: each
endpoint `acquire`s its labels and `release`s them when it goes away; the number is freed when the
last user is gone. CIDR identities (for `toCIDR`/`fromCIDR` prefixes written to the ipcache) are
numbered from 1 << 24 and counted per prefix. A freed number may be handed to different labels
later, so whoever holds policy maps must recompute them when identities change (the agent does).
"""

from __future__ import annotations

import heapq
import ipaddress
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from tendril.common.errors import InvalidInputError, TendrilError
from tendril.identity.labels import CIDR, RESERVED, Label
from tendril.identity.reserved import (
    CLUSTER_ID_MAX,
    CLUSTER_ID_MIN,
    LOCAL_ID_MAX,
    LOCAL_ID_MIN,
    ReservedIdentity,
    reserved_identities,
)

_WORLD_LABEL = ReservedIdentity.WORLD.label


def cidr_labels(prefix: str) -> frozenset[str]:
    """Labels of a CIDR identity: the prefix, and `reserved:world` so `toEntities: [world]` selects it."""
    return frozenset({f"{CIDR}:{prefix}", _WORLD_LABEL})


def canonical_prefix(prefix: str) -> str:
    """`10.1.2.3` -> `10.1.2.3/32`; host bits must be clear (`ValueError` otherwise)."""
    return str(ipaddress.ip_network(prefix, strict=True))


class _Numbers:
    """Lowest-free-first number allocation in [lo, hi]."""

    def __init__(self, lo: int, hi: int) -> None:
        self.lo, self.hi = lo, hi
        self._next = lo
        self._free: list[int] = []

    def take(self) -> int | None:
        if self._free:
            return heapq.heappop(self._free)
        if self._next > self.hi:
            return None
        self._next += 1
        return self._next - 1

    def give_back(self, n: int) -> None:
        heapq.heappush(self._free, n)

    def rebuild(self, used: Iterable[int]) -> None:
        used = set(used)
        self._next = max(used, default=self.lo - 1) + 1
        self._free = [n for n in range(self.lo, self._next) if n not in used]
        heapq.heapify(self._free)


class _Pool:
    """Refcounted key -> number, over one number range.

    `numberer` (when set) hands out the number for a new key instead of the local free list: in a
    cluster the number must be the same on every node, so it comes from the kvstore. `on_free` is
    told when the last local user of a number is gone.
    """

    def __init__(self, lo: int, hi: int) -> None:
        self.numbers = _Numbers(lo, hi)
        self.by_key: dict[Any, int] = {}
        self.by_id: dict[int, Any] = {}
        self.refs: dict[int, int] = {}
        self.numberer: Callable[[Any], int] | None = None
        self.on_free: Callable[[int], None] | None = None

    def acquire(self, key: Any, what: str) -> int:
        n = self.by_key.get(key)
        if n is None:
            n = self.numberer(key) if self.numberer is not None else self.numbers.take()
            if n is None:
                lo, hi = self.numbers.lo, self.numbers.hi
                raise TendrilError(f"no free {what} identity left in {lo}..{hi}")
            self.by_key[key], self.by_id[n], self.refs[n] = n, key, 0
        self.refs[n] += 1
        return n

    def release(self, key: Any) -> bool:
        n = self.by_key[key]
        self.refs[n] -= 1
        if self.refs[n] > 0:
            return False
        del self.by_key[key], self.by_id[n], self.refs[n]
        if self.numberer is None:
            self.numbers.give_back(n)
        if self.on_free is not None:
            self.on_free(n)
        return True

    def restore(self, items: list[tuple[int, Any, int]]) -> None:
        for n, key, refs in items:
            self.by_key[key], self.by_id[n], self.refs[n] = n, key, refs
        self.numbers.rebuild(self.by_id)


class IdentityAllocator:
    """Label sets and CIDR prefixes -> security identities (reserved 1..8 are fixed).

    - `acquire(labels) -> id`, `release(labels) -> freed?`: refcounted per label set.
    - `cidr_identity(prefix) -> id`, `release_cidr(prefix) -> freed?`: refcounted per prefix; a /0
      prefix is the reserved world identity and is not counted.
    - `lookup(id) -> labels | None`, `identity_of(labels) -> id | None` (no refcount change),
      `identities()`: every known id -> labels (reserved, cluster and CIDR), as policy resolution needs.
    - `to_dict()` / `from_dict()`: persistence, so numbers survive an agent restart.
    """

    VERSION = 1

    def __init__(self) -> None:
        self._reserved = reserved_identities()
        self._reserved_by_labels = {labels: n for n, labels in self._reserved.items()}
        self._cluster = _Pool(CLUSTER_ID_MIN, CLUSTER_ID_MAX)
        self._cidr = _Pool(LOCAL_ID_MIN, LOCAL_ID_MAX)
        self._remote: dict[int, frozenset[str]] = {}

    # ---- cluster -----------------------------------------------------------------------------
    def use_cluster_numbers(
        self, numberer: Callable[[frozenset[str]], int], on_free: Callable[[int], None]
    ) -> None:
        """Take label identities' numbers from the cluster (kvstore) instead of the local free list."""
        self._cluster.numberer, self._cluster.on_free = numberer, on_free

    def set_remote(self, identities: Mapping[int, frozenset[str]]) -> bool:
        """Identities allocated anywhere in the cluster (id -> labels), so selectors match remote
        pods; returns True when that changed anything."""
        new = {n: frozenset(labels) for n, labels in identities.items() if n not in self._reserved}
        if new == self._remote:
            return False
        self._remote = new
        return True

    def local_cluster_ids(self) -> list[int]:
        """Label identities with local users (the node holds a cluster reference on each)."""
        return sorted(self._cluster.by_id)

    # ---- label identities --------------------------------------------------------------------
    @staticmethod
    def _key(labels: Iterable[str]) -> frozenset[str]:
        key = frozenset(str(Label.parse(lbl)) for lbl in labels)
        if not key:
            raise ValueError("an identity needs at least one label")
        if any(lbl.startswith(f"{CIDR}:") for lbl in key):
            raise ValueError("cidr: labels belong to CIDR identities: use cidr_identity(prefix)")
        return key

    def acquire(self, labels: Iterable[str]) -> int:
        """The identity for this label set, allocating it on first use; counts one more user."""
        key = self._key(labels)
        reserved = self._reserved_by_labels.get(key)
        if reserved is not None:
            return reserved
        if any(lbl.startswith(f"{RESERVED}:") for lbl in key):
            raise ValueError(f"reserved labels cannot be combined with others: {sorted(key)}")
        return self._cluster.acquire(key, "cluster")

    def release(self, labels: Iterable[str]) -> bool:
        """Drop one user of this label set; True when that freed the identity."""
        key = self._key(labels)
        if key in self._reserved_by_labels:
            return False
        if key not in self._cluster.by_key:
            raise KeyError(f"identity for labels {sorted(key)} is not allocated")
        return self._cluster.release(key)

    def identity_of(self, labels: Iterable[str]) -> int | None:
        key = self._key(labels)
        return self._reserved_by_labels.get(key, self._cluster.by_key.get(key))

    def refcount(self, identity: int) -> int:
        """Users of an allocated identity (0 for reserved and unknown ones)."""
        return self._cluster.refs.get(identity, self._cidr.refs.get(identity, 0))

    # ---- CIDR identities ---------------------------------------------------------------------
    def cidr_identity(self, prefix: str) -> int:
        """The node-local identity of a CIDR prefix, allocating it on first use (refcounted)."""
        p = canonical_prefix(prefix)
        if p.endswith("/0"):
            return int(ReservedIdentity.WORLD)
        return self._cidr.acquire(p, "CIDR")

    def release_cidr(self, prefix: str) -> bool:
        p = canonical_prefix(prefix)
        if p.endswith("/0"):
            return False
        if p not in self._cidr.by_key:
            raise KeyError(f"no CIDR identity for {p}")
        return self._cidr.release(p)

    def cidr_identity_of(self, prefix: str) -> int | None:
        """The identity already allocated for a prefix (no new user counted), or None."""
        p = canonical_prefix(prefix)
        if p.endswith("/0"):
            return int(ReservedIdentity.WORLD)
        return self._cidr.by_key.get(p)

    def cidr_prefix(self, identity: int) -> str | None:
        return self._cidr.by_id.get(identity)

    # ---- lookups -----------------------------------------------------------------------------
    def lookup(self, identity: int) -> frozenset[str] | None:
        if identity in self._reserved:
            return self._reserved[identity]
        if identity in self._cluster.by_id:
            return self._cluster.by_id[identity]
        if identity in self._remote:
            return self._remote[identity]
        prefix = self._cidr.by_id.get(identity)
        return cidr_labels(prefix) if prefix is not None else None

    def identities(self) -> dict[int, frozenset[str]]:
        """Every known identity -> its labels (a fresh dict; callers may keep it)."""
        out = dict(self._reserved)
        out.update(self._remote)
        out.update(self._cluster.by_id)
        out.update((n, cidr_labels(p)) for n, p in self._cidr.by_id.items())
        return out

    # ---- persistence -------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {
            "version": self.VERSION,
            "cluster": [
                {"id": n, "labels": sorted(key), "refs": self._cluster.refs[n]}
                for n, key in sorted(self._cluster.by_id.items())
            ],
            "cidr": [
                {"id": n, "prefix": p, "refs": self._cidr.refs[n]}
                for n, p in sorted(self._cidr.by_id.items())
            ],
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> IdentityAllocator:
        """Restore a saved allocator; a damaged file is an InvalidInputError naming the entry."""
        alloc = cls()
        if data.get("version") != cls.VERSION:
            raise InvalidInputError(f"identity state: unsupported version {data.get('version')!r}")
        for section, pool, lo, hi in (
            ("cluster", alloc._cluster, CLUSTER_ID_MIN, CLUSTER_ID_MAX),
            ("cidr", alloc._cidr, LOCAL_ID_MIN, LOCAL_ID_MAX),
        ):
            items: list[tuple[int, Any, int]] = []
            seen_keys: set[Any] = set()
            for i, entry in enumerate(data.get(section, [])):
                where = f"identity state: {section}[{i}]"
                try:
                    n, refs = int(entry["id"]), int(entry["refs"])
                    key = (
                        alloc._key(entry["labels"])
                        if section == "cluster"
                        else canonical_prefix(entry["prefix"])
                    )
                except (KeyError, TypeError, ValueError) as e:
                    raise InvalidInputError(f"{where}: {e}") from None
                if not lo <= n <= hi or refs < 1 or key in seen_keys or any(n == m for m, _, _ in items):
                    raise InvalidInputError(f"{where}: id {n} out of range, duplicate, or without users")
                seen_keys.add(key)
                items.append((n, key, refs))
            pool.restore(items)
        return alloc
