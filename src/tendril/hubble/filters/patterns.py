"""Hubble's FQDN and node-name glob patterns, compiled to one anchored regular expression.

An FQDN pattern is lower-cased, loses one trailing dot, and may use `*` for any run of
`[-.0-9a-z]`. A node-name pattern is `[cluster/]node`, each part an FQDN pattern; an empty or
missing cluster part matches every cluster (flow node names without a cluster are matched as
`default/<name>`, as Hubble does).
"""

from __future__ import annotations

import re
from collections.abc import Sequence

_FQDN_CHARS = r"(?:[-0-9_a-z]+(?:\.[-0-9_a-z]+)*)"
_VALID_RUNE = re.compile(r"[-0-9_a-z]")


class PatternError(ValueError):
    pass


def _fqdn_regex(pattern: str) -> str:
    p = pattern.strip()
    if p.endswith("."):
        p = p[:-1]
    p = p.lower()
    if p == "":
        raise PatternError("empty pattern")
    if p.endswith("."):
        raise PatternError(f"{pattern!r}: multiple trailing dots in pattern")
    out = []
    for ch in p:
        if ch == ".":
            out.append(r"\.")
        elif ch == "*":
            out.append(r"[-.0-9a-z]*")
        elif _VALID_RUNE.fullmatch(ch):
            out.append(ch)
        else:
            raise PatternError(f"{pattern!r}: invalid character {ch!r} in pattern")
    return "".join(out)


def compile_fqdn_patterns(patterns: Sequence[str]) -> re.Pattern[str]:
    return re.compile("(?:" + "|".join(_fqdn_regex(p) for p in patterns) + r")\Z")


def _node_regex(pattern: str) -> str:
    if pattern == "":
        raise PatternError("empty pattern")
    parts = pattern.split("/")
    if len(parts) == 1:
        cluster, node = "", parts[0]
    elif len(parts) == 2:
        cluster, node = parts
    else:
        raise PatternError(f"{pattern!r}: too many slashes in pattern")
    c = _fqdn_regex(cluster) if cluster else _FQDN_CHARS
    n = _fqdn_regex(node) if node else _FQDN_CHARS
    return f"{c}/{n}"


def compile_node_name_patterns(patterns: Sequence[str]) -> re.Pattern[str]:
    return re.compile("(?:" + "|".join(_node_regex(p) for p in patterns) + r")\Z")
