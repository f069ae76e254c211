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

        Inputs must be non-negative integer columns (they are stacked as uint64 when more than one).
        """
        hit = self._cache.get(key)
        if hit is not None:
            return hit
        if self.n == 0:
            codes = np.zeros(0, dtype=np.int64)
        elif len(inputs) == 1:
            uniq, inverse = np.unique(inputs[0], return_inverse=True)
            codes = np.array([self.pool.id(fn(int(u))) for u in uniq], dtype=np.int64)[inverse.reshape(-1)]
        else:
            stacked = np.stack([np.asarray(a).astype(np.uint64, copy=False) for a in inputs], axis=1)
            uniq, inverse = np.unique(stacked, axis=0, return_inverse=True)
            ids = [self.pool.id(fn(*(int(v) for v in u))) for u in uniq.tolist()]
            codes = np.array(ids, dtype=np.int64)[inverse.reshape(-1)]
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
    def groups(self, mask: np.ndarray, columns: Sequence[np.ndarray]) -> Iterator[tuple[tuple[str, ...], int]]:
        """(label values, row count) for every distinct label tuple among the masked rows."""
        idx = np.flatnonzero(mask)
        if idx.size == 0:
            return
        values = self.pool.values
        if not columns:
            yield (), int(idx.size)
            return
        keys = np.stack([c[idx] for c in columns], axis=1)
        uniq, counts = np.unique(keys, axis=0, return_counts=True)
        for key, count in zip(uniq.tolist(), counts.tolist(), strict=True):
            yield tuple(values[k] for k in key), count
