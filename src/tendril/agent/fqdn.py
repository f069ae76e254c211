"""toFQDNs: the FQDN cache, filled by the DNS proxy, read by policy resolution.

Like Cilium's DNS proxy + FQDN name manager: when an allowed DNS answer names IPs, each (endpoint,
name, IP) is kept until `max(TTL, tofqdns_min_ttl)` from now (Cilium's --tofqdns-min-ttl; default
3600 s here as there). If any `toFQDNs` selector of a policy matches the name, and the cache
changed, policy is re-synchronised *before* the proxy releases the answer: every cached IP gets a
/32 or /128 CIDR identity and ipcache entry (as a toCIDR prefix does), and each FQDNPeer selects
the identities of the IPs cached for names it matches, so the pod's connect right after the
lookup finds the allow entry in its policy map. A sweep every second removes expired entries and
re-synchronises when something went, which removes the access again.

Selection is node-wide (the IPs any endpoint resolved are selected for every rule whose names
match), as Cilium's selector cache is. The cache is in memory: an agent restart empties it (the
pods' next lookups fill it again).
"""

from __future__ import annotations

import ipaddress
import time
from dataclasses import dataclass
from typing import Any

from tendril.policy.l7 import fqdn
from tendril.policy.rules import FQDNPeer, IPNetwork

SOURCE = "proxy"  # how Cilium's `fqdn cache list` calls entries learned from DNS answers


@dataclass
class Entry:
    ttl: int  # seconds, as applied (the answer's TTL raised to the minimum)
    expires: float  # wall clock


class FQDNCache:
    def __init__(self, agent: Any, min_ttl: int) -> None:
        self.agent = agent
        self.min_ttl = min_ttl
        self.entries: dict[tuple[int, str, str], Entry] = {}  # (endpoint ID, name, IP) -> entry

    # ---- what policy resolution asks -------------------------------------------------------------
    def _live(self) -> list[tuple[str, str]]:
        now = time.time()
        return [(name, ip) for (_ep, name, ip), e in self.entries.items() if e.expires > now]

    def _selectors(self) -> list[FQDNPeer]:
        return [
            peer
            for pol in self.agent.policy.repo.policies()
            for rule in pol.rules
            for pr in rule.peer_rules
            for peer in pr.peers
            if isinstance(peer, FQDNPeer)
        ]

    def prefixes(self) -> set[str]:
        """CIDR prefixes (/32, /128) of cached IPs that some toFQDNs selector selects."""
        peers = self._selectors()
        return {
            str(ipaddress.ip_network(ip)) for name, ip in self._live() if any(p.matches(name) for p in peers)
        }

    def peer_prefixes(self, peer: FQDNPeer) -> frozenset[IPNetwork]:
        return frozenset(ipaddress.ip_network(ip) for name, ip in self._live() if peer.matches(name))

    # ---- what the DNS proxy reports --------------------------------------------------------------
    async def observe(self, ctx: Any, name: str, ips: list[str], ttl: int) -> None:
        """An allowed answer: cache it; when selected IPs changed, sync policy before returning."""
        name = fqdn(name)
        ttl = max(int(ttl), self.min_ttl)
        expires = time.time() + ttl
        changed = False
        for ip in ips:
            key = (ctx.ep_id, name, str(ipaddress.ip_address(ip)))
            old = self.entries.get(key)
            if old is None or old.expires <= time.time():
                changed = True
            if old is None or old.expires < expires:
                self.entries[key] = Entry(ttl, expires)
        if changed and any(p.matches(name) for p in self._selectors()):
            self._sync()

    def sweep(self) -> int:
        """Drop expired entries; re-sync policy when a selected one went. Returns how many went."""
        now = time.time()
        gone = [k for k, e in self.entries.items() if e.expires <= now]
        for k in gone:
            del self.entries[k]
        if gone:
            peers = self._selectors()
            if any(p.matches(name) for _ep, name, _ip in gone for p in peers):
                self._sync()
        return len(gone)

    def _sync(self) -> None:
        self.agent.policy.resolver.fqdn_changed()
        self.agent.policy.sync()

    def list(self) -> list[dict[str, Any]]:
        """Rows of `tendril fqdn cache list` (cilium-dbg fqdn cache list)."""
        out = []
        for (ep, name, ip), e in sorted(self.entries.items(), key=lambda kv: (kv[0], kv[1].expires)):
            out.append(
                {
                    "endpoint": ep,
                    "fqdn": name,
                    "ttl": e.ttl,
                    "expiration": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(e.expires)) + "Z",
                    "expires": e.expires,
                    "ips": [ip],
                    "source": SOURCE,
                }
            )
        return out
