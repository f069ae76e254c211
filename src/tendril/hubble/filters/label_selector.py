"""Kubernetes label selectors over Cilium labels, as Hubble's label filters read them.

Selector syntax is Kubernetes': requirements joined by `,` (AND), each one of `key`, `!key`,
`key=v`, `key==v`, `key!=v`, `key in (a,b)`, `key notin (a,b)`, `key>n`, `key<n`. Keys may carry a
Cilium source prefix (`k8s:app`, `reserved:world`); a key without one matches labels of any source.
Flow labels are Cilium labels: `source:key=value` (`k8s:app=echo`, `reserved:host`).

As Hubble does, the selector is first rewritten so the source prefix survives Kubernetes key
validation (`k8s:app` -> `k8s.app`, bare `app` -> `any.app`), then parsed; matching splits the key
at its first dot back into source and key.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

SOURCE_ANY = "any"
SOURCE_UNSPEC = "unspec"
SOURCE_RESERVED = "reserved"


class SelectorError(ValueError):
    pass


# ---- Cilium labels ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Label:
    source: str
    key: str
    value: str


def parse_label(text: str) -> Label:
    """`k8s:app=echo` -> Label("k8s", "app", "echo"); `$host` is `reserved:host`."""
    if text.startswith("$"):
        src, rest = SOURCE_RESERVED, text[1:]
    else:
        colon, eq = text.find(":"), text.find("=")
        if colon < 0 or (0 <= eq < colon):
            src, rest = "", text
        else:
            src, rest = text[:colon], text[colon + 1 :]
    key, sep, value = rest.partition("=")
    if sep and key == "" and src == SOURCE_RESERVED:
        key, value = value, ""
    return Label(src or SOURCE_UNSPEC, key, value)


class LabelArray:
    """A flow side's labels, answering Kubernetes' Has/Get with Cilium's `any` source rule."""

    def __init__(self, labels: Iterable[str]) -> None:
        self._labels = [parse_label(s) for s in labels]

    def _find(self, selector_key: str) -> Label | None:
        src, dot, key = selector_key.partition(".")
        if not dot:
            src, key = SOURCE_ANY, selector_key
        for lbl in self._labels:
            if lbl.key == key and (src == SOURCE_ANY or lbl.source == src):
                return lbl
        return None

    def has(self, key: str) -> bool:
        return self._find(key) is not None

    def get(self, key: str) -> str:
        lbl = self._find(key)
        return lbl.value if lbl else ""


# ---- source-prefix translation (Hubble's translateSelector) ------------------------------------


def translate(selector: str) -> str:
    """Rewrite `k8s:app in (a)` to `k8s.app in (a)` and bare keys `app` to `any.app`."""
    out: list[str] = []
    i, n = 0, len(selector)
    while i < n:
        while i < n and (selector[i].isspace() or selector[i] == "!"):  # up to the next key
            out.append(selector[i])
            i += 1
        start = i
        while i < n and not (selector[i].isspace() or selector[i] in "=!,"):
            i += 1
        key = selector[start:i]
        if ":" not in key:
            key = f"{SOURCE_ANY}:{key}"
        out.append(key.replace(":", ".", 1))
        depth = 0
        while i < n:  # up to and including the ',' that ends this requirement
            ch = selector[i]
            out.append(ch)
            i += 1
            depth += ch == "("
            depth -= ch == ")"
            if ch == "," and depth == 0:
                break
    return "".join(out)


# ---- Kubernetes selector parsing ----------------------------------------------------------------

_NAME = re.compile(r"([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]")
_DNS1123_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")
_SPECIAL = "=!(),<>"
_OPERATORS = ("in", "notin", "=", "==", "!=", ">", "<")


def validate_key(key: str) -> None:
    parts = key.split("/")
    if len(parts) == 1:
        name = parts[0]
    elif len(parts) == 2:
        prefix, name = parts
        if not prefix:
            raise SelectorError(f"invalid label key {key!r}: prefix part must be non-empty")
        if len(prefix) > 253 or not _DNS1123_SUBDOMAIN.fullmatch(prefix):
            raise SelectorError(f"invalid label key {key!r}: prefix part must be a lowercase DNS subdomain")
    else:
        raise SelectorError(f"invalid label key {key!r}: at most one '/' allowed")
    if not name:
        raise SelectorError(f"invalid label key {key!r}: name part must be non-empty")
    if len(name) > 63 or not _NAME.fullmatch(name):
        raise SelectorError(
            f"invalid label key {key!r}: name part must be at most 63 alphanumeric characters, "
            "'-', '_' or '.', starting and ending with an alphanumeric character"
        )


def validate_value(value: str) -> None:
    if value and (len(value) > 63 or not _NAME.fullmatch(value)):
        raise SelectorError(
            f"invalid label value {value!r}: must be at most 63 alphanumeric characters, '-', '_' or '.', "
            "starting and ending with an alphanumeric character"
        )


def _tokens(text: str) -> list[str]:
    """Kubernetes' selector lexer: identifiers, and the operators `= == != ! ( ) , < >`."""
    toks: list[str] = []
    i, n = 0, len(text)
    while i < n:
        ch = text[i]
        if ch.isspace():
            i += 1
        elif ch in _SPECIAL:
            two = text[i : i + 2]
            if two in ("==", "!="):
                toks.append(two)
                i += 2
            else:
                toks.append(ch)
                i += 1
        else:
            start = i
            while i < n and not text[i].isspace() and text[i] not in _SPECIAL:
                i += 1
            toks.append(text[start:i])
    return toks


def _is_ident(tok: str | None) -> bool:
    return tok is not None and tok not in _SPECIAL and tok not in ("==", "!=")


@dataclass(frozen=True)
class Requirement:
    key: str
    op: str  # exists, !, in, notin, >, <
    values: frozenset[str] = frozenset()

    def matches(self, labels: LabelArray) -> bool:
        has = labels.has(self.key)
        if self.op == "exists":
            return has
        if self.op == "!":
            return not has
        if self.op == "in":
            return has and labels.get(self.key) in self.values
        if self.op == "notin":
            return not has or labels.get(self.key) not in self.values
        if not has:
            return False
        try:
            got = int(labels.get(self.key))
        except ValueError:
            return False
        want = int(next(iter(self.values)))
        return got > want if self.op == ">" else got < want


@dataclass(frozen=True)
class Selector:
    requirements: tuple[Requirement, ...]

    def matches(self, labels: LabelArray) -> bool:
        return all(r.matches(labels) for r in self.requirements)


def parse(text: str) -> Selector:
    """Parse a Kubernetes label selector (already translated); "" selects everything."""
    toks = _tokens(text)
    pos = 0

    def peek() -> str | None:
        return toks[pos] if pos < len(toks) else None

    def take() -> str | None:
        nonlocal pos
        tok = peek()
        pos += 1
        return tok

    def show(tok: str | None) -> str:
        return "end of string" if tok is None else repr(tok)

    reqs: list[Requirement] = []
    while peek() is not None:
        negate = False
        if peek() == "!":
            take()
            negate = True
        key = take()
        if not _is_ident(key):
            raise SelectorError(f"found {show(key)}, expected: identifier")
        assert key is not None
        validate_key(key)
        nxt = peek()
        if nxt is None or nxt == ",":
            reqs.append(Requirement(key, "!" if negate else "exists"))
        elif negate:
            raise SelectorError(f"found {show(nxt)}, expected: ',' or end of string after '!{key}'")
        else:
            op = take()
            if op not in _OPERATORS:
                raise SelectorError(f"found {show(op)}, expected one of: {', '.join(_OPERATORS)}")
            if op in ("in", "notin"):
                values = _parse_value_list(take, peek, show)
                reqs.append(Requirement(key, op, frozenset(values)))
            else:
                nxt = peek()
                value = "" if nxt is None or nxt == "," else take()
                if not (value == "" or _is_ident(value)):
                    raise SelectorError(f"found {show(value)}, expected: identifier")
                assert value is not None
                validate_value(value)
                if op in (">", "<"):
                    if not re.fullmatch(r"[-+]?[0-9]+", value):
                        raise SelectorError(f"for '{op}' the value must be an integer, got {value!r}")
                    reqs.append(Requirement(key, op, frozenset([value])))
                else:
                    reqs.append(Requirement(key, "notin" if op == "!=" else "in", frozenset([value])))
        sep = take()
        if sep is None:
            break
        if sep != ",":
            raise SelectorError(f"found {show(sep)}, expected: ',' or end of string")
        if peek() is None:
            raise SelectorError("found end of string, expected: identifier after ','")
    return Selector(tuple(reqs))


def _parse_value_list(take, peek, show) -> list[str]:  # noqa: ANN001 - the parser's cursor closures
    tok = take()
    if tok != "(":
        raise SelectorError(f"found {show(tok)}, expected: '('")
    values: list[str] = []
    expect_value = True
    while True:
        tok = take()
        if tok == ")":
            if expect_value:
                values.append("")
            return values
        if tok == ",":
            if expect_value:
                values.append("")
            expect_value = True
        elif _is_ident(tok) and expect_value:
            assert tok is not None
            validate_value(tok)
            values.append(tok)
            expect_value = False
        else:
            raise SelectorError(f"found {show(tok)}, expected: ',', ')' or identifier")


def parse_cilium_selector(text: str) -> Selector:
    """A selector as typed by a Hubble user (`k8s:app=echo`, `reserved:world`, `!k8s:debug`)."""
    return parse(translate(text))


def compile_selectors(texts: Sequence[str]) -> list[Selector]:
    return [parse_cilium_selector(t) for t in texts]
