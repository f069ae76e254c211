"""Maglev consistent hashing (Eisenbud et al., "Maglev: A Fast and Reliable Software Network Load
Balancer", NSDI 2016), as Cilium uses it to pick service backends.

Why Maglev: with a plain random pick, a connection's backend is remembered only in conntrack, so a
packet that reaches another node (or this node after a restart) may land elsewhere. A Maglev table
maps a flow hash to a backend the same way on every node, and when one of N backends goes away only
about 1/N of the table changes, so most existing flows keep their backend.

Every agent must compute the *same* table for the same backends, so nothing here depends on the
process (no Python `hash()`, no insertion order): backends are identified by a stable string such as
`10.244.1.5:8080/TCP`, sorted, and their permutations come from a keyed BLAKE2b of that string with a
cluster-wide seed. The table holds indices into the sorted backend list; `backend_ids()` turns it
into the array of backend IDs the datapath's inner map holds (IDs are per node, names are not).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass

import numpy as np

DEFAULT_TABLE_SIZE = 16381  # Cilium's default (--bpf-lb-maglev-table-size), TND_MAGLEV_DEFAULT_M
#: keys the backend hashes; must be the same on every node of a cluster
DEFAULT_SEED = b"tendril-maglev-seed-v1"


def is_prime(n: int) -> bool:
    """Deterministic Miller-Rabin (exact for every n below 3.3e24, far beyond any table size)."""
    if n < 2:
        return False
    small = (2, 3, 5, 7, 11, 13, 17, 19, 23, 29, 31, 37)
    for p in small:
        if n % p == 0:
            return n == p
    d, r = n - 1, 0
    while d % 2 == 0:
        d, r = d // 2, r + 1
    for a in small:
        x = pow(a, d, n)
        if x in (1, n - 1):
            continue
        for _ in range(r - 1):
            x = x * x % n
            if x == n - 1:
                break
        else:
            return False
    return True


def validate_table_size(m: int) -> int:
    """M must be prime so every `skip` in 1..M-1 walks all M slots (a full permutation)."""
    if not isinstance(m, int) or m < 3 or not is_prime(m):
        raise ValueError(f"Maglev table size {m!r} must be a prime number (e.g. 16381 or 65521)")
    return m


def permutation_params(
    names: Iterable[str], m: int, seed: bytes = DEFAULT_SEED
) -> tuple[np.ndarray, np.ndarray]:
    """(offset, skip) per backend: its preference list is `(offset + j * skip) % m` for j = 0, 1, ..."""
    offsets, skips = [], []
    for name in names:
        digest = hashlib.blake2b(name.encode(), key=seed, digest_size=16).digest()
        offsets.append(int.from_bytes(digest[:8], "little") % m)
        skips.append(int.from_bytes(digest[8:], "little") % (m - 1) + 1)
    return np.asarray(offsets, dtype=np.int64), np.asarray(skips, dtype=np.int64)


@dataclass(frozen=True, eq=False)
class MaglevTable:
    """A populated lookup table: `table[h % M]` is the index of the backend for flow hash h."""

    backends: tuple[str, ...]  # sorted, the ones with weight > 0
    weights: tuple[int, ...]
    table: np.ndarray  # int32 indices into `backends`, length M, read-only

    @property
    def m(self) -> int:
        return int(self.table.shape[0])

    def lookup(self, flow_hash: int) -> str:
        return self.backends[int(self.table[flow_hash % self.m])]

    def counts(self) -> dict[str, int]:
        """Slots per backend (the share of flows each receives)."""
        per = np.bincount(self.table, minlength=len(self.backends))
        return {b: int(c) for b, c in zip(self.backends, per, strict=True)}

    def backend_ids(self, ids: Mapping[str, int]) -> np.ndarray:
        """The table as the datapath stores it: a uint32 backend ID per slot."""
        lut = np.asarray([ids[b] for b in self.backends], dtype=np.uint32)
        return lut[self.table]

    def __eq__(self, other: object) -> bool:
        return (
            isinstance(other, MaglevTable)
            and self.backends == other.backends
            and self.weights == other.weights
            and np.array_equal(self.table, other.table)
        )

    __hash__ = None  # type: ignore[assignment]


def build_table(
    backends: Iterable[str] | Mapping[str, int],
    m: int = DEFAULT_TABLE_SIZE,
    seed: bytes = DEFAULT_SEED,
) -> MaglevTable:
    """Populate a table of size M (prime) for the backends (names, or name -> weight).

    The paper's population: backends take turns, each claiming the next slot of its own preference
    list that is still free, until all M slots are taken. Weights (positive integers; 0 drops the
    backend) are honoured by giving a backend of weight w `w / max weight` turns per round, so its
    share of slots is proportional to its weight. With equal weights every backend gets floor(M/N)
    or ceil(M/N) slots.
    """
    validate_table_size(m)
    weighted = dict(backends) if isinstance(backends, Mapping) else dict.fromkeys(backends, 1)
    for name, w in weighted.items():
        if not isinstance(w, int) or w < 0:
            raise ValueError(f"Maglev weight of {name!r} must be a non-negative integer, not {w!r}")
    names = tuple(sorted(n for n, w in weighted.items() if w > 0))
    if not names:
        raise ValueError("a Maglev table needs at least one backend with a positive weight")
    if len(names) > m:
        raise ValueError(f"{len(names)} backends do not fit a Maglev table of size {m}")
    weights = tuple(weighted[n] for n in names)
    offsets, skips = permutation_params(names, m, seed)
    table = _populate([int(o) for o in offsets], [int(s) for s in skips], list(weights), m)
    arr = np.asarray(table, dtype=np.int32)
    arr.setflags(write=False)
    return MaglevTable(names, weights, arr)


def _populate(pos: list[int], skip: list[int], weight: list[int], m: int) -> list[int]:
    """The sequential fill. Plain Python lists on purpose: the loop is inherently sequential (each
    claim depends on all earlier ones) and list indexing is several times faster than numpy scalars.
    `pos[i]` is backend i's next candidate slot, advanced by `skip[i]` modulo m."""
    table = [-1] * m
    n = len(pos)
    wmax = max(weight)
    filled = 0
    rnd = 0
    while True:
        for i in range(n):
            w = weight[i]
            turns = 1 if w == wmax else ((rnd + 1) * w) // wmax - (rnd * w) // wmax
            for _ in range(turns):
                c = pos[i]
                s = skip[i]
                while table[c] >= 0:
                    c += s
                    if c >= m:
                        c -= m
                table[c] = i
                c += s
                pos[i] = c - m if c >= m else c
                filled += 1
                if filled == m:
                    return table
        rnd += 1


class MaglevCache:
    """Tables by backend set, for one (M, seed). Every frontend of a Service port in one family (the
    VIP, each node address, the any-address NodePort frontend) has the same backends, and most
    updates leave most Services unchanged, so a small memo avoids recomputing the same table."""

    def __init__(self, m: int = DEFAULT_TABLE_SIZE, seed: bytes = DEFAULT_SEED, maxsize: int = 1024) -> None:
        self.m = validate_table_size(m)
        self.seed = seed
        self.maxsize = maxsize
        self._tables: dict[tuple[str, ...], MaglevTable] = {}

    def table(self, backends: Iterable[str]) -> MaglevTable:
        key = tuple(sorted(backends))
        got = self._tables.pop(key, None)
        if got is None:
            got = build_table(key, self.m, self.seed)
            while len(self._tables) >= self.maxsize:
                self._tables.pop(next(iter(self._tables)))
        self._tables[key] = got  # re-inserted: the dict's order is least recently used first
        return got


TableSpec = tuple[tuple[str, int], ...]  # (backend name, backend ID), sorted by name


class MaglevTables(Mapping[int, np.ndarray]):
    """rev_nat_id -> the datapath's table (uint32 backend IDs), each built on first access.

    Why lazy: a table costs about 10 ms to build in Python, and it is a pure function of its
    backends (names and IDs) and of M and the seed. Comparing those *specs* (`spec()`) tells whether
    a table changed without building it, so a steady-state sync, or the first sync after a restart,
    builds only the tables that really change."""

    def __init__(self, cache: MaglevCache, specs: Mapping[int, TableSpec] | None = None) -> None:
        self._cache = cache
        self._specs = dict(specs or {})
        self._built: dict[int, np.ndarray] = {}

    def spec(self, rev_nat_id: int) -> tuple[int, bytes, TableSpec]:
        return (self._cache.m, self._cache.seed, self._specs[rev_nat_id])

    def __getitem__(self, rev_nat_id: int) -> np.ndarray:
        got = self._built.get(rev_nat_id)
        if got is None:
            spec = self._specs[rev_nat_id]
            got = self._cache.table(name for name, _ in spec).backend_ids(dict(spec))
            got.setflags(write=False)
            self._built[rev_nat_id] = got
        return got

    def __iter__(self) -> Iterator[int]:
        return iter(self._specs)

    def __len__(self) -> int:
        return len(self._specs)

    def __contains__(self, rev_nat_id: object) -> bool:
        return rev_nat_id in self._specs
