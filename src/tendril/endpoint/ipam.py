"""Per-node pod address allocator (host-scope IPAM, like Cilium's cluster-pool per node).

One allocation gives an owner an IPv4 *and* an IPv6 address with the same
host offset (10.244.1.7 <-> fd00:10:244:1::7), which keeps flows readable.
Offsets 0 (network), 1 (the node's router, on tnd_host) and the IPv4
broadcast are never handed out.

State is a plain dict (``to_dict``/``from_dict``) so the agent can persist
it as JSON and restore it after a restart; ``restore`` re-registers
addresses that existing pods already use.
"""

from __future__ import annotations

from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network, ip_address
from typing import Any

ROUTER_OFFSET = 1
FIRST_POD_OFFSET = 2


class IPAMError(RuntimeError):
    """Base class for allocator errors."""


class IPAMExhausted(IPAMError):
    """No free address is left in the node's pod CIDR."""


@dataclass(frozen=True)
class Allocation:
    """The pair of addresses an owner holds."""

    ipv4: IPv4Address
    ipv6: IPv6Address


class IPAM:
    """Allocate pod addresses out of one node's IPv4 and IPv6 pod CIDRs.

    Owners are opaque strings (the agent uses ``<namespace>/<pod>``).
    """

    def __init__(self, v4_cidr: IPv4Network | str, v6_cidr: IPv6Network | str) -> None:
        self.v4_cidr = IPv4Network(v4_cidr)
        self.v6_cidr = IPv6Network(v6_cidr)
        if self.v4_cidr.num_addresses < 4:
            raise IPAMError(f"IPv4 pod CIDR {self.v4_cidr} too small: need at least a /30")
        if self.v6_cidr.num_addresses < 4:
            raise IPAMError(f"IPv6 pod CIDR {self.v6_cidr} too small: need at least a /126")
        # Last usable offset: v4 excludes broadcast; v6 has none.
        self._max_offset = min(self.v4_cidr.num_addresses - 2, self.v6_cidr.num_addresses - 1)
        self._by_owner: dict[str, int] = {}
        self._by_offset: dict[int, str] = {}
        self._next_hint = FIRST_POD_OFFSET

    # -- addresses -----------------------------------------------------
    @property
    def router_v4(self) -> IPv4Address:
        """The node's IPv4 router address (first host of the CIDR)."""
        return self.v4_cidr.network_address + ROUTER_OFFSET

    @property
    def router_v6(self) -> IPv6Address:
        """The node's IPv6 router address (``<prefix>::1``)."""
        return self.v6_cidr.network_address + ROUTER_OFFSET

    @property
    def capacity(self) -> int:
        """How many owners fit in total."""
        return self._max_offset - FIRST_POD_OFFSET + 1

    def _pair(self, offset: int) -> Allocation:
        return Allocation(self.v4_cidr.network_address + offset, self.v6_cidr.network_address + offset)

    # -- operations ----------------------------------------------------
    def allocate(self, owner: str) -> tuple[IPv4Address, IPv6Address]:
        """Return ``owner``'s addresses, allocating them on first call (idempotent)."""
        if owner in self._by_owner:
            a = self._pair(self._by_owner[owner])
            return a.ipv4, a.ipv6
        if len(self._by_owner) >= self.capacity:
            raise IPAMExhausted(
                f"pod CIDRs {self.v4_cidr} / {self.v6_cidr} are full ({self.capacity} addresses in use); "
                "release pods or configure a larger pod CIDR"
            )
        # Round-robin from the last allocation so a just-released address is
        # not immediately reused (stale conntrack/neighbour entries).
        span = self.capacity
        for i in range(span):
            off = FIRST_POD_OFFSET + (self._next_hint - FIRST_POD_OFFSET + i) % span
            if off not in self._by_offset:
                self._take(owner, off)
                self._next_hint = off + 1 if off < self._max_offset else FIRST_POD_OFFSET
                a = self._pair(off)
                return a.ipv4, a.ipv6
        raise IPAMExhausted(f"pod CIDRs {self.v4_cidr} / {self.v6_cidr} are full")  # pragma: no cover

    def release(self, owner: str) -> bool:
        """Free ``owner``'s addresses; returns False if it held none (idempotent)."""
        off = self._by_owner.pop(owner, None)
        if off is None:
            return False
        del self._by_offset[off]
        return True

    def get(self, owner: str) -> tuple[IPv4Address, IPv6Address] | None:
        """``owner``'s addresses, or None."""
        off = self._by_owner.get(owner)
        if off is None:
            return None
        a = self._pair(off)
        return a.ipv4, a.ipv6

    def owners(self) -> dict[str, tuple[IPv4Address, IPv6Address]]:
        """Snapshot of all allocations."""
        return {o: (self._pair(off).ipv4, self._pair(off).ipv6) for o, off in self._by_owner.items()}

    def restore(self, mapping: dict[str, Any]) -> None:
        """Re-register existing allocations: ``{owner: (ipv4, ipv6)}`` or ``{owner: {"ipv4":..,"ipv6":..}}``.

        Validates that each pair lies in the CIDRs, uses the same offset in
        both families and does not collide with another owner.
        """
        for owner, value in mapping.items():
            if isinstance(value, dict):
                v4, v6 = value["ipv4"], value["ipv6"]
            else:
                v4, v6 = value
            off = self._offset_of(owner, ip_address(str(v4)), ip_address(str(v6)))
            holder = self._by_offset.get(off)
            if holder is not None and holder != owner:
                raise IPAMError(f"cannot restore {owner!r}: {v4} is already allocated to {holder!r}")
            if owner in self._by_owner and self._by_owner[owner] != off:
                self.release(owner)
            self._take(owner, off)

    def _offset_of(self, owner: str, v4: Any, v6: Any) -> int:
        if not isinstance(v4, IPv4Address) or v4 not in self.v4_cidr:
            raise IPAMError(f"cannot restore {owner!r}: {v4} is not in {self.v4_cidr}")
        if not isinstance(v6, IPv6Address) or v6 not in self.v6_cidr:
            raise IPAMError(f"cannot restore {owner!r}: {v6} is not in {self.v6_cidr}")
        off = int(v4) - int(self.v4_cidr.network_address)
        if int(v6) - int(self.v6_cidr.network_address) != off:
            raise IPAMError(f"cannot restore {owner!r}: {v4} and {v6} have different host offsets")
        if not FIRST_POD_OFFSET <= off <= self._max_offset:
            raise IPAMError(f"cannot restore {owner!r}: {v4} is a reserved address")
        return off

    def _take(self, owner: str, off: int) -> None:
        self._by_owner[owner] = off
        self._by_offset[off] = owner

    # -- persistence ---------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """JSON-ready state."""
        return {
            "v4_cidr": str(self.v4_cidr),
            "v6_cidr": str(self.v6_cidr),
            "allocations": {
                o: {"ipv4": str(v4), "ipv6": str(v6)} for o, (v4, v6) in sorted(self.owners().items())
            },
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> IPAM:
        """Inverse of ``to_dict``."""
        ipam = cls(data["v4_cidr"], data["v6_cidr"])
        ipam.restore(data.get("allocations", {}))
        return ipam
