"""An endpoint's resolved policy as policy-map entries, with deny precedence made LPM-safe.

The datapath (tendril_abi.h, `tnd_policy_key`) looks a packet up twice in the endpoint's LPM map:
with the peer's identity and with identity 0 (any peer). Within one lookup only the longest match
counts, so a specific ALLOW (TCP/80 from X) would hide a broader DENY (everything from X). Before
writing, `build_entries` removes every allow whose key has a deny ancestor for the same identity and
direction (protocol wildcard, or a shorter port prefix); the lookup then lands on the deny. Across
the two lookups the datapath already lets a deny from either win. Each `PolicyEntry` is exactly one
map key: port ranges are pre-split into aligned prefixes.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from tendril.identity.reserved import ENFORCED_MARKER
from tendril.policy.constants import POLICY_DENY, PREFIX_BASE, PREFIX_FULL, PREFIX_PROTO, MatchType

#: (identity, egress, proto, first port, port prefix bits)
Key = tuple[int, bool, int, int, int]
#: (prefixlen, identity, egress, proto, dport, flags, match_type, rule_ref): one tnd_policy_key/value
MapItem = tuple[int, int, int, int, int, int, int, str]


def match_type(identity: int, proto: int, port_bits: int) -> MatchType:
    """TND_MATCH_* for an entry of this shape (what a verdict on it reports)."""
    if identity:
        return MatchType.L3_ONLY if proto == 0 else MatchType.L3_PROTO if port_bits == 0 else MatchType.L3_L4
    return MatchType.ALL if proto == 0 else MatchType.PROTO_ONLY if port_bits == 0 else MatchType.L4_ONLY


@dataclass(frozen=True, slots=True)
class PolicyEntry:
    """One policy-map key and value. identity 0 = any peer, proto 0 = any protocol, ports (0, 0) = any.

    For ICMP/ICMPv6 the port is the ICMP type (the datapath must look those up with the type as
    dport, as Cilium does). `port_lo..port_hi` is always one aligned prefix block.
    """

    egress: bool
    identity: int
    proto: int
    port_lo: int
    port_hi: int
    deny: bool
    match_type: int
    rule_ref: str

    @property
    def port_bits(self) -> int:
        if self.proto == 0 or (self.port_lo, self.port_hi) == (0, 0):
            return 0
        return 17 - (self.port_hi - self.port_lo + 1).bit_length()

    @property
    def prefixlen(self) -> int:
        """tnd_policy_key.prefixlen: 40 any protocol, 48 protocol only, 48 + port bits otherwise."""
        return PREFIX_BASE if self.proto == 0 else PREFIX_PROTO + self.port_bits

    @property
    def flags(self) -> int:
        return POLICY_DENY if self.deny else 0

    def covers(self, proto: int, dport: int) -> bool:
        if self.proto == 0:
            return True
        return self.proto == proto and (self.port_bits == 0 or self.port_lo <= dport <= self.port_hi)


@dataclass(frozen=True, slots=True)
class Verdict:
    allowed: bool
    match_type: int
    rule_ref: str | None


@dataclass(frozen=True)
class EndpointPolicy:
    """What one endpoint's policy map must contain. Enforced directions also get the marker key
    {identity ENFORCED_MARKER, egress, proto 0, port 0, prefixlen 64}; `map_entries` counts it."""

    endpoint_id: int
    identity: int
    ingress_enforced: bool
    egress_enforced: bool
    entries: tuple[PolicyEntry, ...]
    notices: tuple[str, ...] = ()
    _index: dict[tuple[int, bool], list[PolicyEntry]] = field(default_factory=dict, repr=False, compare=False)

    @property
    def map_entries(self) -> int:
        return len(self.entries) + self.ingress_enforced + self.egress_enforced

    @staticmethod
    def marker_identity() -> int:
        return ENFORCED_MARKER

    def map_items(self) -> list[MapItem]:
        """Everything to write into the endpoint's inner map, enforcement markers included."""
        items = [
            (e.prefixlen, e.identity, int(e.egress), e.proto, e.port_lo, e.flags, e.match_type, e.rule_ref)
            for e in self.entries
        ]
        for egress, enforced in ((0, self.ingress_enforced), (1, self.egress_enforced)):
            if enforced:
                items.append((PREFIX_FULL, ENFORCED_MARKER, egress, 0, 0, 0, int(MatchType.NONE), ""))
        return items

    def _longest(self, identity: int, egress: bool, proto: int, dport: int) -> PolicyEntry | None:
        if not self._index:
            for e in self.entries:
                self._index.setdefault((e.identity, e.egress), []).append(e)
        best = None
        for e in self._index.get((identity, egress), ()):
            if e.covers(proto, dport) and (best is None or e.prefixlen > best.prefixlen):
                best = e
        return best

    def lookup(self, peer: int, egress: bool, proto: int, dport: int) -> Verdict:
        """The map's decision for a new connection, found the way bpf/include/policy.h finds it.

        Two LPM lookups (peer identity, then identity 0); a deny from either wins, else an allow
        from either, else the direction's default. Among two allows the more specific L4 part
        reports the match type (port > protocol > any), the peer's on a tie. (policy.h also passes
        ingress from the host before any lookup; this models the map alone.)
        """
        by_id = self._longest(peer, egress, proto, dport)
        by_any = self._longest(0, egress, proto, dport)
        for h in (by_id, by_any):
            if h is not None and h.deny:
                return Verdict(False, h.match_type, h.rule_ref)
        best = by_id
        if best is None or (by_any is not None and _l4_rank(by_any) > _l4_rank(best)):
            best = by_any
        if best is not None:
            return Verdict(True, best.match_type, best.rule_ref)
        enforced = self.egress_enforced if egress else self.ingress_enforced
        return Verdict(not enforced, int(MatchType.NONE), None)


def _l4_rank(e: PolicyEntry) -> int:
    return 0 if e.proto == 0 else 1 if e.port_bits == 0 else 2


class KeyTable:
    """Collects (key -> deny?, rule) from many rules: deny beats allow, else the first rule wins."""

    def __init__(self) -> None:
        self.keys: dict[Key, tuple[bool, str]] = {}

    def add(self, key: Key, deny: bool, ref: str) -> None:
        old = self.keys.get(key)
        if old is None or (deny and not old[0]):
            self.keys[key] = (deny, ref)

    def add_many(self, keys: Iterable[Key], deny: bool, ref: str) -> None:
        table = self.keys
        if deny:
            for k in keys:
                old = table.get(k)
                if old is None or not old[0]:
                    table[k] = (True, ref)
        else:
            for k in keys:
                if k not in table:
                    table[k] = (False, ref)


def _shadowed(key: Key, denies: set[Key]) -> bool:
    ident, egress, proto, port, bits = key
    if proto == 0:
        return False
    if (ident, egress, 0, 0, 0) in denies:
        return True
    for b in range(bits):
        mask = (0xFFFF << (16 - b)) & 0xFFFF
        if (ident, egress, proto, port & mask, b) in denies:
            return True
    return False


def build_entries(
    table: KeyTable, memo: dict[tuple[Key, bool, str], PolicyEntry] | None = None
) -> list[PolicyEntry]:
    """Final entries sorted by key, allows under a broader deny of the same identity dropped.

    `memo` lets a caller share entry objects between endpoints (most entries recur across them).
    """
    denies = {k for k, (deny, _) in table.keys.items() if deny}
    deny_peers = {(k[0], k[1]) for k in denies}
    memo = {} if memo is None else memo
    out = []
    for key in sorted(table.keys):
        deny, ref = table.keys[key]
        if not deny and (key[0], key[1]) in deny_peers and _shadowed(key, denies):
            continue
        entry = memo.get((key, deny, ref))
        if entry is None:
            ident, egress, proto, port, bits = key
            hi = port + (1 << (16 - bits)) - 1 if bits else port
            mt = int(match_type(ident, proto, bits))
            entry = memo[(key, deny, ref)] = PolicyEntry(egress, ident, proto, port, hi, deny, mt, ref)
        out.append(entry)
    return out
