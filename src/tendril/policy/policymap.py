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
from tendril.policy.l7 import L7Rules

#: (identity, egress, proto, first port, port prefix bits)
Key = tuple[int, bool, int, int, int]
#: (prefixlen, identity, egress, proto, dport, flags, match_type, rule_ref, proxy_port): one key/value
MapItem = tuple[int, int, int, int, int, int, int, str, int]


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
    #: L7 rules the proxy enforces on this key (any of them allows a request); () = none
    l7: tuple[L7Rules, ...] = ()
    #: the node proxy's port when `l7` is set (the datapath redirects), else 0
    proxy_port: int = 0

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
            (
                e.prefixlen,
                e.identity,
                int(e.egress),
                e.proto,
                e.port_lo,
                e.flags,
                e.match_type,
                e.rule_ref,
                e.proxy_port,
            )
            for e in self.entries
        ]
        for egress, enforced in ((0, self.ingress_enforced), (1, self.egress_enforced)):
            if enforced:
                items.append((PREFIX_FULL, ENFORCED_MARKER, egress, 0, 0, 0, int(MatchType.NONE), "", 0))
        return items

    def l7_rules(self, peer: int, egress: bool, proto: int, dport: int) -> tuple[L7Rules, ...] | None:
        """The L7 rules the proxy applies to a connection the datapath redirected for this
        endpoint, chosen exactly as `lookup` (and policy.h) choose the deciding entry; None when
        that entry does not redirect (or the direction is not enforced, or it denies)."""
        enforced = self.egress_enforced if egress else self.ingress_enforced
        if not enforced:
            return None
        by_id = self._longest(peer, egress, proto, dport)
        by_any = self._longest(0, egress, proto, dport)
        if any(h is not None and h.deny for h in (by_id, by_any)):
            return None
        best = by_id
        if best is None or (by_any is not None and _l4_rank(by_any) > _l4_rank(best)):
            best = by_any
        if best is None or not best.proxy_port:
            return None
        return best.l7

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
    """Collects (key -> deny?, rule) from many rules: deny beats allow, else the first rule wins.

    Allows also collect L7 rules per key: several L7 rules on one key are ORed (any of them allows
    a request), and a plain L3/L4 allow of the same key wins over them (no redirect), as an L4 rule
    "wildcards" L7 in Cilium.
    """

    def __init__(self) -> None:
        self.keys: dict[Key, tuple[bool, str]] = {}
        self.l7: dict[Key, list[L7Rules]] = {}
        self.plain: set[Key] = set()

    def add(self, key: Key, deny: bool, ref: str) -> None:
        old = self.keys.get(key)
        if old is None or (deny and not old[0]):
            self.keys[key] = (deny, ref)

    def add_many(self, keys: Iterable[Key], deny: bool, ref: str, l7: L7Rules | None = None) -> None:
        table = self.keys
        if not deny:
            keys = list(keys)
            if l7 is None:
                self.plain.update(keys)
            else:
                for k in keys:
                    self.l7.setdefault(k, []).append(l7)
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
    table: KeyTable,
    memo: dict[tuple, PolicyEntry] | None = None,
    proxy_port: int = 0,
    dns_proxy_port: int = 0,
) -> list[PolicyEntry]:
    """Final entries sorted by key, allows under a broader deny of the same identity dropped.

    `memo` lets a caller share entry objects between endpoints (most entries recur across them).
    Allows that carry L7 rules get `proxy_port` (0 = no proxy: L7 rules are then not enforced);
    DNS rules get `dns_proxy_port` instead (a key with both kinds goes to the DNS proxy, whose
    rules then apply: DNS ports are not HTTP ports in practice).
    """
    denies = {k for k, (deny, _) in table.keys.items() if deny}
    deny_peers = {(k[0], k[1]) for k in denies}
    memo = {} if memo is None else memo
    out = []
    for key in sorted(table.keys):
        deny, ref = table.keys[key]
        if not deny and (key[0], key[1]) in deny_peers and _shadowed(key, denies):
            continue
        l7: tuple[L7Rules, ...] = ()
        if not deny and key not in table.plain and key in table.l7:
            l7 = tuple(table.l7[key])
            is_dns = any(r.kind == "dns" for r in l7)
            if is_dns:
                l7 = tuple(r for r in l7 if r.kind == "dns")
            if not (dns_proxy_port if is_dns else proxy_port):
                l7 = ()
        entry = memo.get((key, deny, ref, l7))
        if entry is None:
            ident, egress, proto, port, bits = key
            hi = port + (1 << (16 - bits)) - 1 if bits else port
            mt = int(match_type(ident, proto, bits))
            pp = (dns_proxy_port if l7[0].kind == "dns" else proxy_port) if l7 else 0
            entry = memo[(key, deny, ref, l7)] = PolicyEntry(
                egress, ident, proto, port, hi, deny, mt, ref, l7, pp
            )
        out.append(entry)
    return out
