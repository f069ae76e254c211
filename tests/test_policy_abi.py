"""The numbers tendril.policy/identity write must be the datapath's (bpf/include/tendril_abi.h)."""

from __future__ import annotations

import re
from pathlib import Path

from tendril.identity import CLUSTER_ID_MIN, ENFORCED_MARKER, LOCAL_ID_MIN, ReservedIdentity
from tendril.policy import POLICY_DENY, POLICY_MAX_ENTRIES, MatchType

HEADER = Path(__file__).resolve().parents[1] / "bpf" / "include" / "tendril_abi.h"


def _value(text: str) -> int:
    """`12`, `0xFFFFFFFFU`, `(1 << 0)`, `(1U << 24)` -> int."""
    text = text.strip("()").replace("U", "")
    base, _, shift = text.partition("<<")
    return int(base.strip(), 0) << int(shift or 0)


def _defines() -> dict[str, int]:
    pattern = r"^#define\s+(TND_\w+)\s+(\(\w+\s*<<\s*\d+\)|\w+)"
    return {name: _value(v) for name, v in re.findall(pattern, HEADER.read_text(), re.M)}


def test_constants_match_the_header() -> None:
    d = _defines()
    for r in ReservedIdentity:
        assert d[f"TND_ID_{r.name}"] == r, r
    assert d["TND_ID_CLUSTER_MIN"] == CLUSTER_ID_MIN
    assert d["TND_ID_LOCAL_MIN"] == LOCAL_ID_MIN
    assert d["TND_ID_ENFORCED_MARKER"] == ENFORCED_MARKER
    assert d["TND_POLICY_DENY"] == POLICY_DENY
    assert d["TND_POLICY_MAX_ENTRIES"] == POLICY_MAX_ENTRIES
    for m in MatchType:
        assert d[f"TND_MATCH_{m.name}"] == m, m
