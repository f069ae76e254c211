"""The load balancer's map entries, field for field as bpf/include/tendril_abi.h declares them.

Why plain dataclasses and not the numpy dtypes of `tendril.bpf.abi`: this package is pure (it is
tested without a kernel and must not depend on how the datapath packs bytes). Field names equal the
C members, addresses are text and ports are host order, so the agent's conversion is one line per
field (`addr` -> 16 bytes, IPv4 in the first 4; `port` -> network order).
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from enum import IntFlag

# map names, as the datapath's object declares them
MAP_SERVICES = "tnd_lb_services"
MAP_BACKENDS = "tnd_lb_backends"
MAP_REVNAT = "tnd_lb_revnat"
MAP_MAGLEV = "tnd_lb_maglev"

PROTO_NUMBERS = {"TCP": 6, "UDP": 17}
PROTO_NAMES = {v: k for k, v in PROTO_NUMBERS.items()}

BACKEND_ACTIVE = 0  # TND_BACKEND_ACTIVE
BACKEND_TERMINATING = 1  # TND_BACKEND_TERMINATING: existing connections finish, new ones never pick it
BACKEND_STATE_NAMES = {BACKEND_ACTIVE: "active", BACKEND_TERMINATING: "terminating"}

REVNAT_ID_MAX = 0xFFFF  # tnd_lb_value.rev_nat_id is a __u16; 0 means "none"
BACKEND_ID_MAX = 0xFFFFFFFF  # tnd_lb_value.backend_id is a __u32; 0 means "none"
SLOT_MAX = 0xFFFF  # tnd_lb_key.slot / tnd_lb_value.count are __u16
SERVICES_MAX = 65536  # TND_LB_SERVICES_MAX
BACKENDS_MAX = 65536  # TND_LB_BACKENDS_MAX


class SvcFlag(IntFlag):
    """TND_SVC_* (slot 0's `flags`)."""

    CLUSTERIP = 1 << 0
    NODEPORT = 1 << 1
    AFFINITY = 1 << 2
    MAGLEV = 1 << 3


def _family(addr: str) -> int:
    return ipaddress.ip_address(addr).version


def zero_address(family: int) -> str:
    """The all-zero address: "any local node address" in a NodePort frontend, "no backend" in slot 0."""
    return "0.0.0.0" if family == 4 else "::"


def host_port(addr: str, port: int) -> str:
    """`10.0.0.1:80` / `[fd00::1]:80`, as Go's net.JoinHostPort (and so Cilium) prints them."""
    return f"[{addr}]:{port}" if ":" in addr else f"{addr}:{port}"


@dataclass(frozen=True)
class L3n4Addr:
    """An address + port + L4 protocol: a frontend or a backend. `str()` is Cilium's notation
    (`10.96.0.10:53/UDP`), which is also the stable name Maglev hashes and IDs are kept under."""

    addr: str
    port: int
    proto: int  # IPPROTO_TCP / IPPROTO_UDP
    family: int  # 4 or 6

    @classmethod
    def of(cls, addr: str, port: int, protocol: str | int) -> L3n4Addr:
        ip = ipaddress.ip_address(addr)
        proto = protocol if isinstance(protocol, int) else PROTO_NUMBERS[protocol]
        return cls(str(ip), int(port), proto, ip.version)

    @classmethod
    def parse(cls, text: str) -> L3n4Addr:
        """The inverse of `str()`: `10.0.0.1:80/TCP`, `[fd00::1]:80/UDP`."""
        hostport, _, protocol = text.rpartition("/")
        host, _, port = hostport.rpartition(":")
        return cls.of(host.removeprefix("[").removesuffix("]"), int(port), protocol)

    @property
    def protocol(self) -> str:
        return PROTO_NAMES.get(self.proto, str(self.proto))

    @property
    def is_zero(self) -> bool:
        return self.addr == zero_address(self.family)

    def sort_key(self) -> tuple[int, int, int, int]:
        return (self.family, int(ipaddress.ip_address(self.addr)), self.port, self.proto)

    def __str__(self) -> str:
        return f"{host_port(self.addr, self.port)}/{self.protocol}"


@dataclass(frozen=True)
class LBKey:
    """struct tnd_lb_key: one slot of one frontend (slot 0 = the service's master entry)."""

    addr: str
    port: int
    proto: int
    family: int
    slot: int = 0

    @classmethod
    def of(cls, frontend: L3n4Addr, slot: int = 0) -> LBKey:
        return cls(frontend.addr, frontend.port, frontend.proto, frontend.family, slot)

    @property
    def frontend(self) -> L3n4Addr:
        return L3n4Addr(self.addr, self.port, self.proto, self.family)

    def sort_key(self) -> tuple[tuple[int, int, int, int], int]:
        return (self.frontend.sort_key(), self.slot)


@dataclass(frozen=True)
class LBValue:
    """struct tnd_lb_value. Slot 0: count, rev_nat_id, flags, affinity_timeout_s; slots > 0:
    backend_id (and, as Cilium does, the frontend's rev_nat_id, which `bpf lb list` shows)."""

    backend_id: int = 0
    count: int = 0
    rev_nat_id: int = 0
    flags: int = 0
    affinity_timeout_s: int = 0


@dataclass(frozen=True)
class BackendEntry:
    """struct tnd_lb_backend."""

    addr: str
    port: int
    proto: int
    family: int
    state: int = BACKEND_ACTIVE

    @classmethod
    def of(cls, address: L3n4Addr, state: int = BACKEND_ACTIVE) -> BackendEntry:
        return cls(address.addr, address.port, address.proto, address.family, state)

    @property
    def address(self) -> L3n4Addr:
        return L3n4Addr(self.addr, self.port, self.proto, self.family)

    @property
    def state_name(self) -> str:
        return BACKEND_STATE_NAMES.get(self.state, str(self.state))


@dataclass(frozen=True)
class RevNatEntry:
    """struct tnd_lb_revnat: the frontend replies are translated back to."""

    addr: str
    port: int
    family: int

    def __str__(self) -> str:
        return host_port(self.addr, self.port)
