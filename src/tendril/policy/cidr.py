"""CIDR peers: parsing, which CIDR identities a rule selects, and the prefixes the ipcache needs.

Decision: a CIDR with host bits set (`10.0.0.1/24`) is an error, not silently masked: it is ambiguous
(one host? the /24?) and a policy is the wrong place to guess. A bare address is accepted where Cilium
accepts one (`toCIDR`/`fromCIDR`) and means /32 or /128. `except` prefixes must lie strictly inside
their `cidr`, in the same address family.

How CIDR rules are enforced: every rule prefix and every `except` prefix gets a CIDR identity in the
ipcache (LPM), so an address inside an `except` resolves to the except's identity, which the rule
does not select. A rule selects every CIDR identity inside its prefix and outside its excepts, and a
/0 rule also selects the world identity (addresses with no ipcache entry). As in Cilium, CIDR rules
select external peers only: pods, the host and nodes keep their own identities in the ipcache
(their /32 and /128 entries are more specific), so use endpoint selectors or entities for those.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable

from tendril.policy.rules import CIDRPeer, IPNetwork, Policy


def parse_cidr(text: str, *, allow_bare_ip: bool) -> IPNetwork:
    """Parse a policy CIDR; ValueError explains what is wrong."""
    if not isinstance(text, str) or not text:
        raise ValueError("must be a CIDR such as 10.0.0.0/8")
    if "/" not in text and not allow_bare_ip:
        raise ValueError(f"{text!r} is not a CIDR: add a prefix length (e.g. {text}/32)")
    try:
        return ipaddress.ip_network(text, strict=True)
    except ValueError:
        pass
    try:
        masked = ipaddress.ip_network(text, strict=False)
    except ValueError:
        raise ValueError(f"{text!r} is not a valid CIDR") from None
    raise ValueError(f"{text!r} has host bits set (did you mean {str(masked)!r}?)")


def check_except(prefix: IPNetwork, exc: IPNetwork) -> None:
    if exc.version != prefix.version or not exc.subnet_of(prefix) or exc == prefix:  # type: ignore[arg-type]
        raise ValueError(f"except {str(exc)!r} must lie strictly inside cidr {str(prefix)!r}")


def cidr_peer_prefixes(peer: CIDRPeer) -> list[IPNetwork]:
    """Prefixes of one CIDR peer that need an ipcache entry (a /0 is the world identity instead)."""
    return [p for p in (peer.prefix, *peer.excepts) if p.prefixlen > 0]


def required_cidr_prefixes(policies: Iterable[Policy]) -> set[str]:
    """Every prefix the agent must give a CIDR identity and an ipcache entry, for these policies."""
    out: set[str] = set()
    for policy in policies:
        for rule in policy.rules:
            for pr in rule.peer_rules:
                for peer in pr.peers:
                    if isinstance(peer, CIDRPeer):
                        out.update(str(p) for p in cidr_peer_prefixes(peer))
    return out


def selects_prefix(peer: CIDRPeer, prefix: IPNetwork) -> bool:
    """Whether the CIDR identity of `prefix` is selected by this rule (inside it, outside excepts)."""
    if prefix.version != peer.prefix.version or not prefix.subnet_of(peer.prefix):  # type: ignore[arg-type]
        return False
    return not any(prefix.subnet_of(e) for e in peer.excepts)  # type: ignore[arg-type]
