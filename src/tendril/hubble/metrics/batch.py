"""One parsed batch seen as label columns: the vectorised core every metrics plugin shares.

Why: Hubble increments a counter per flow; in Python that is a call per row. Here each label becomes
a per-row integer column (codes into a per-batch string pool); a string is computed once per
*distinct* input (np.unique + inverse), never per row; and a plugin's rows are grouped by their
whole label tuple with one np.unique over the stacked columns, so the Prometheus client sees one
`inc(count)` per distinct series per batch.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterator, Sequence

import numpy as np

from tendril.hubble import record
from tendril.hubble.metrics import names


class StringPool:
    """Label strings of one batch <-> small ints; code 0 is the empty string (a "missing" value)."""

    def __init__(self) -> None:
        self.values: list[str] = [""]
        self._ids: dict[str, int] = {"": 0}

    def id(self, value: str) -> int:
        i = self._ids.get(value)
        if i is None:
            i = self._ids[value] = len(self.values)
            self.values.append(value)
        return i


class Batch:
    """Rows + tables of one `process()` call, with cached label columns shared by all plugins."""

    def __init__(self, rows: np.ndarray, tables: record.Tables) -> None:
        self.rows = rows
        self.tables = tables
        self.n = len(rows)
        self.pool = StringPool()
        self._cache: dict[Hashable, np.ndarray] = {}

    # ---- building columns ----------------------------------------------------------------------
    def mapped(self, key: Hashable, inputs: Sequence[np.ndarray], fn: Callable[..., str]) -> np.ndarray:
        """Per-row pool codes of fn(*inputs[i]); fn runs once per distinct input tuple. Cached by key.

        Inputs are integer columns of the batch (any width; uint64 halves of an IPv6 address are fine).
        """
        hit = self._cache.get(key)
        if hit is not None:
            return hit
        if self.n == 0:
            codes = np.zeros(0, dtype=np.int64)
        else:
            group, rep = dense_key([np.asarray(a) for a in inputs])
            ids = [self.pool.id(fn(*(int(a[i]) for a in inputs))) for i in rep.tolist()]
            codes = np.array(ids, dtype=np.int64)[group]
        self._cache[key] = codes
        return codes

    def field(self, name: str, fn: Callable[[int], str]) -> np.ndarray:
        """Codes of fn(value) for one row field, cached under the function's identity."""
        return self.mapped(("field", name, fn), [self.rows[name]], fn)

    def const(self, value: str) -> np.ndarray:
        return self.cached(("const", value), lambda: np.full(self.n, self.pool.id(value), dtype=np.int64))

    def cached(self, key: Hashable, build: Callable[[], np.ndarray]) -> np.ndarray:
        hit = self._cache.get(key)
        if hit is None:
            hit = self._cache[key] = build()
        return hit

    # ---- columns several plugins use -----------------------------------------------------------
    def protocol(self) -> np.ndarray:
        """v1.FlowProtocol per row."""
        r = self.rows
        return self.mapped("protocol", [r["event_type"], r["l4_proto"]], names.flow_protocol)

    def verdict(self) -> np.ndarray:
        return self.field("verdict", names.verdict_name)

    def every(self) -> np.ndarray:
        """A mask selecting every row."""
        return self.cached("every", lambda: np.ones(self.n, dtype=bool))

    def has_l4(self) -> np.ndarray:
        return self.cached("has_l4", lambda: np.isin(self.rows["l4_proto"], list(names.L4_NAMES)))

    # ---- grouping ------------------------------------------------------------------------------
    def groups(
        self, mask: np.ndarray, columns: Sequence[np.ndarray]
    ) -> Iterator[tuple[tuple[str, ...], int]]:
        """(label values, row count) for every distinct label tuple among the masked rows."""
        idx = np.flatnonzero(mask)
        if idx.size == 0:
            return
        values = self.pool.values
        if not columns:
            yield (), int(idx.size)
            return
        picked = [c[idx] for c in columns]
        group, rep = dense_key(picked, radix=len(values))
        counts = np.bincount(group, minlength=len(rep))
        rows = np.stack([c[rep] for c in picked], axis=1).tolist()
        for key, count in zip(rows, counts.tolist(), strict=True):
            yield tuple(values[k] for k in key), count


def dense_key(columns: Sequence[np.ndarray], radix: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Group rows by their tuple of column values: (group id per row, one row index per group).

    Each column is made dense (unless `radix` says its values are already in 0..radix-1, as pool
    codes are), the codes are combined mixed-radix into one int64 key, which is made dense again.
    Small non-negative integers (pool codes, ports, endpoint ids) are densified with a presence
    table in O(n); only wide values (identities, IP halves) pay for a sort.
    """

    def dense(col: np.ndarray) -> tuple[np.ndarray, int]:
        return (col.astype(np.int64, copy=False), radix) if radix else _dense(col)

    key, size = dense(columns[0])
    for col in columns[1:]:
        code, radix_i = dense(col)
        if size > (1 << 62) // max(radix_i, 1):  # the combined key would overflow: re-densify first
            key, size = _dense(key)
        key, size = key * radix_i + code, size * radix_i
    group, groups = _dense(key)
    rep = np.empty(groups, dtype=np.int64)
    rep[group] = np.arange(len(group))  # any row of a group will do: its values are the group's
    return group, rep


def _dense(col: np.ndarray) -> tuple[np.ndarray, int]:
    """(codes 0..k-1 per row, k) for one integer column, preserving value order."""
    if col.size and (col.dtype.kind == "u" or (col.dtype.kind == "i" and int(col.min()) >= 0)):
        top = int(col.max())
        if top < max(1 << 16, 4 * col.size):
            present = np.zeros(top + 1, dtype=bool)
            present[col] = True
            remap = np.cumsum(present, dtype=np.int64) - 1
            return remap[col], int(remap[-1]) + 1
    uniq, inverse = np.unique(col, return_inverse=True)
    return inverse.reshape(-1).astype(np.int64, copy=False), len(uniq)
