"""What every filter module shares: the error type, the predicate type and the column helpers.

A filter is a function from stored rows (FLOW_DTYPE) to a boolean mask, so one filter over a
million flows is a handful of numpy expressions (design.md, "columnar flow store"). Each filter
module turns one FlowFilter field into such a function; `build.py` combines them.

Two kinds of per-value work stay in Python, and both run once per *distinct* value, never per row:
parsing the request (once per GetFlows call) and deciding what an interned value means for a
filter (once per interned endpoint, node name, service ... ; see `InternedLookup`).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable, Sequence
from typing import Protocol

import numpy as np

from tendril.hubble.record import FLOW_DTYPE

Mask = np.ndarray  # 1-D bool, one entry per row
RowPredicate = Callable[[np.ndarray], Mask]


class FilterError(ValueError):
    """A FlowFilter the server cannot accept; the gRPC layer answers INVALID_ARGUMENT with str(e).

    The message names the FlowFilter field (as it is spelled on the wire) so that a user who sent
    `--from-ip 10.0.0.300` sees which flag to fix.
    """

    def __init__(self, field: str, message: str) -> None:
        self.field = field
        self.message = message
        super().__init__(f"invalid {field} filter: {message}")


class _Interner(Protocol):
    def __len__(self) -> int: ...

    def value(self, i: int) -> object: ...


def falses(rows: np.ndarray) -> Mask:
    return np.zeros(len(rows), dtype=bool)


def trues(rows: np.ndarray) -> Mask:
    return np.ones(len(rows), dtype=bool)


def never(rows: np.ndarray) -> Mask:
    """The predicate of a filter that no stored flow can satisfy (e.g. data Tendril does not record)."""
    return falses(rows)


def any_of(preds: Sequence[RowPredicate]) -> RowPredicate:
    """OR of predicates (the values of one repeated field, or the FlowFilters of one list)."""
    if len(preds) == 1:
        return preds[0]

    def pred(rows: np.ndarray) -> Mask:
        m = falses(rows)
        for p in preds:
            m |= p(rows)
        return m

    return pred


def all_of(preds: Sequence[RowPredicate]) -> RowPredicate:
    """AND of predicates (the fields of one FlowFilter); no predicate at all matches everything."""
    if not preds:
        return trues
    if len(preds) == 1:
        return preds[0]

    def pred(rows: np.ndarray) -> Mask:
        m = preds[0](rows)
        for p in preds[1:]:
            if not m.any():  # nothing left to narrow down
                break
            m &= p(rows)
        return m

    return pred


def isin(column: str, values: Iterable[int]) -> RowPredicate:
    """rows[column] is one of the given integers."""
    wanted = np.fromiter(sorted(set(values)), dtype=np.int64)

    def pred(rows: np.ndarray) -> Mask:
        col = rows[column]
        if len(wanted) == 1:
            return col == wanted[0]
        return np.isin(col, wanted)

    return pred


class InternedLookup:
    """A per-interned-id answer (bool by default), computed once per distinct value.

    Interned values never change once they have an id, so an answer stays valid for the life of
    the tables; the table only grows (new pods, node names ...) and is extended lazily on the next
    call. The match over rows is then one gather: `table[ids]`.
    """

    def __init__(self, interner: _Interner, fn: Callable[[object], object], dtype: type = bool) -> None:
        self._interner = interner
        self._fn = fn
        self._dtype = np.dtype(dtype)
        self._table = np.zeros(0, dtype=self._dtype)

    def table(self) -> np.ndarray:
        table = self._table
        n = len(self._interner)
        if table.size < n:
            extra = np.fromiter(
                (self._fn(self._interner.value(i)) for i in range(table.size, n)),
                dtype=self._dtype,
                count=n - table.size,
            )
            table = np.concatenate([table, extra])
            self._table = table  # a racing thread computes the same answers; either copy is right
        return table

    def __call__(self, ids: np.ndarray) -> np.ndarray:
        return self.table()[ids]


def column_lookup(column: str, interner: _Interner, fn: Callable[[object], bool]) -> RowPredicate:
    """Predicate over an interned-id column: fn decides once per distinct interned value."""
    lut = InternedLookup(interner, fn)

    def pred(rows: np.ndarray) -> Mask:
        return lut(rows[column])

    return pred


# FlowFilter side -> the row's endpoint column (ids into tables.endpoints) and identity column
ENDPOINT_COLUMN = {"source": "src_ep", "destination": "dst_ep"}
IDENTITY_COLUMN = {"source": "src_identity", "destination": "dst_identity"}


def field_offset(column: str) -> int:
    return FLOW_DTYPE.fields[column][1]


def compile_regex(field: str, pattern: str) -> re.Pattern[str]:
    """A user regular expression (Go RE2 flavour upstream: ASCII classes, unanchored search)."""
    try:
        return re.compile(pattern, re.ASCII)
    except re.error as e:
        raise FilterError(field, f"{pattern!r} is not a valid regular expression: {e}") from None


def check_enum(field: str, values: Iterable[int], enum: object) -> list[int]:
    """Reject numbers outside a proto enum: proto3 decoding accepts them, Hubble would match nothing.

    `enum` is a generated enum wrapper (flow_pb2.Verdict ...); the error lists the valid names.
    """
    names = dict((v, k) for k, v in enum.items())  # type: ignore[attr-defined]
    out = []
    for v in values:
        if v not in names:
            valid = ", ".join(names[k] for k in sorted(names))
            raise FilterError(field, f"unknown value {v} (valid: {valid})")
        out.append(int(v))
    return out


def quote(s: str) -> str:
    """Quote a user value the way Go's %q does (double quotes), as Hubble's messages do."""
    return json.dumps(s, ensure_ascii=False)
