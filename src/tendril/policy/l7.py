"""L7 HTTP rules (CiliumNetworkPolicy `toPorts[].rules.http[]`): compiled once, matched by the proxy.

Semantics follow Cilium (which hands them to Envoy as RE2 `safe_regex` matchers):

- `method`, `path` and `host` are regular expressions matched against the *whole* value (anchored
  at both ends: `path: "/public"` does not allow `/public/x`, `path: "/public.*"` does). `path` is
  matched against the whole request target, query string included, as Envoy's `:path` matcher
  that Cilium generates does. Python's `re` stands in for RE2 (same syntax for ordinary patterns).
- `headers: ["X-Foo"]` requires the header to be present; `"X-Foo: bar"` requires that exact value.
  `headerMatches: [{name, value}]` requires the exact value (`mismatch` actions are not supported).
  Header names are case-insensitive.
- A request is allowed when any rule of the port matches (rules are ORed; the fields of one rule
  are ANDed). `http: []` or `http: [{}]` allows every request: the proxy then only gives visibility.

A regular expression that does not compile is a validation error naming the rule, so nothing of the
file is applied.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from tendril.policy.errors import FieldError, invalid


@dataclass(frozen=True, slots=True)
class HeaderMatch:
    """One header condition: presence when `value` is None, else an exact value."""

    name: str  # lower-case
    value: str | None = None


@dataclass(frozen=True, eq=False)
class HTTPRule:
    """One `http[]` item; None fields match anything."""

    method: re.Pattern[str] | None = None
    path: re.Pattern[str] | None = None
    host: re.Pattern[str] | None = None
    headers: tuple[HeaderMatch, ...] = ()

    def matches(self, method: str, target: str, host: str, headers: Sequence[tuple[str, str]]) -> bool:
        if self.method is not None and not self.method.fullmatch(method):
            return False
        if self.path is not None and not self.path.fullmatch(target):
            return False
        if self.host is not None and not self.host.fullmatch(host):
            return False
        for want in self.headers:
            values = [v for k, v in headers if k.lower() == want.name]
            if not values or (want.value is not None and want.value not in values):
                return False
        return True


_NAME_RE = re.compile(r"^([-a-zA-Z0-9_]+[.]?)+$")
_PATTERN_RE = re.compile(r"^([-a-zA-Z0-9_*]+[.]?)+$")
_DNS_CHARS = "[-a-zA-Z0-9_]"


def fqdn(name: str) -> str:
    """Lower case with the trailing dot, as Cilium compares DNS names."""
    name = name.strip().lower()
    return name if name.endswith(".") else name + "."


@dataclass(frozen=True, eq=False)
class DNSMatch:
    """One `dns[]` / `toFQDNs[]` item: `matchName` (exact, case-insensitive) or `matchPattern`.

    Cilium's matchPattern (pkg/fqdn/matchpattern): `*` alone matches every name; otherwise each `*`
    matches zero or more DNS-name characters (`[-a-zA-Z0-9_]`) but never a `.`, so `*.example.com`
    matches `a.example.com` but neither `example.com` nor `a.b.example.com`.
    """

    text: str
    regex: re.Pattern[str]

    def matches(self, name: str) -> bool:
        return self.regex.fullmatch(fqdn(name)) is not None


def compile_dns_match(match_name: str | None, match_pattern: str | None, path: str) -> DNSMatch:
    """One matcher; FieldError naming `path.matchName` / `path.matchPattern` when invalid."""
    if (match_name is None) == (match_pattern is None):
        raise invalid(path, "exactly one of matchName and matchPattern is required")
    if match_name is not None:
        if not _NAME_RE.fullmatch(match_name.strip()):
            raise invalid(f"{path}.matchName", f"invalid DNS name {match_name!r}")
        name = fqdn(match_name)
        return DNSMatch(name, re.compile(re.escape(name)))
    assert match_pattern is not None
    pat = match_pattern.strip().lower()
    if pat == "*":
        return DNSMatch("*", re.compile(r"(.+\.)|\."))
    if not _PATTERN_RE.fullmatch(pat):
        raise invalid(f"{path}.matchPattern", f"invalid DNS pattern {match_pattern!r}")
    pat = fqdn(pat)
    body = "".join(f"{_DNS_CHARS}*" if c == "*" else re.escape(c) for c in pat)
    return DNSMatch(pat, re.compile(body))


@dataclass(frozen=True, eq=False)
class L7Rules:
    """The L7 part of one `toPorts[]` item: HTTP or DNS rules. Hashes by identity."""

    http: tuple[HTTPRule, ...] = ()
    ref: str = ""
    dns: tuple[DNSMatch, ...] = ()
    kind: str = "http"  # "http" or "dns": which proxy the port redirects to

    def allows_dns(self, name: str) -> bool:
        """A DNS query for `name`; `dns: []` / `dns: [{}]` is not accepted (Cilium needs a matcher)."""
        return any(m.matches(name) for m in self.dns)

    def allows(self, method: str, target: str, host: str, headers: Sequence[tuple[str, str]]) -> bool:
        if not self.http:
            return True
        return any(r.matches(method, target, host, headers) for r in self.http)


def _regex(value: str | None, path: str) -> re.Pattern[str] | None:
    if value is None or value == "":
        return None
    try:
        return re.compile(value)
    except re.error as e:
        raise invalid(path, f"invalid regular expression {value!r}: {e}") from None


def _header_list(items: list[str] | None, path: str) -> list[HeaderMatch]:
    out = []
    for i, text in enumerate(items or []):
        name, sep, value = text.partition(":")
        name = name.strip()
        if not name or any(c.isspace() for c in name):
            raise invalid(f"{path}[{i}]", f"header {text!r}: expected a name, or 'Name: value'")
        out.append(HeaderMatch(name.lower(), value.strip() if sep else None))
    return out


def _header_matches(items: list[dict[str, Any]] | None, path: str) -> list[HeaderMatch]:
    out = []
    for i, item in enumerate(items or []):
        where = f"{path}[{i}]"
        unknown = sorted(set(item) - {"name", "value"})
        if unknown:
            raise invalid(
                f"{where}.{unknown[0]}",
                "not supported by tendril (only name and value; mismatch actions and secrets are not)",
            )
        name = item.get("name")
        if not isinstance(name, str) or not name.strip():
            raise invalid(f"{where}.name", "must be a non-empty header name")
        value = item.get("value")
        if value is not None and not isinstance(value, str):
            raise invalid(f"{where}.value", "must be a string")
        out.append(HeaderMatch(name.strip().lower(), value))
    return out


def compile_http_rules(rules: Sequence[Any], path: str, ref: str) -> L7Rules:
    """model HTTPRule items (pydantic objects with method/path/host/headers/headerMatches) -> L7Rules.

    Raises FieldError naming `path[i].field` for a bad regular expression or header.
    """
    out = []
    for i, r in enumerate(rules):
        where = f"{path}[{i}]"
        out.append(
            HTTPRule(
                method=_regex(r.method, f"{where}.method"),
                path=_regex(r.path, f"{where}.path"),
                host=_regex(r.host, f"{where}.host"),
                headers=tuple(
                    _header_list(r.headers, f"{where}.headers")
                    + _header_matches(r.headerMatches, f"{where}.headerMatches")
                ),
            )
        )
    return L7Rules(tuple(out), ref)


def compile_dns_rules(rules: Sequence[Any], path: str, ref: str) -> L7Rules:
    """model DNSRule items (matchName / matchPattern) -> L7Rules of kind dns."""
    return L7Rules(
        ref=ref,
        dns=tuple(
            compile_dns_match(r.matchName, r.matchPattern, f"{path}[{i}]") for i, r in enumerate(rules)
        ),
        kind="dns",
    )


__all__ = [
    "DNSMatch",
    "FieldError",
    "HTTPRule",
    "HeaderMatch",
    "L7Rules",
    "compile_dns_match",
    "compile_dns_rules",
    "compile_http_rules",
    "fqdn",
]
