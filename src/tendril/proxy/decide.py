"""Which L7 rules apply to a connection the datapath redirected, and who its two sides are.

The datapath redirects when the client pod's egress entry, or the server pod's ingress entry (for
a server on this node), carries the proxy port (bpf/include/proxy.h). The proxy repeats that
choice from the same resolved policies (`EndpointPolicy.l7_rules`, which picks the deciding entry
exactly as policy.h does) and learns identities as the datapath does: local pods from their
endpoint, everything else from the ipcache by address. A request must be allowed by every side
that has L7 rules (client egress and server ingress). A connection no side redirects any more
(the policy changed under it) or one made straight to the proxy's own port gets no context, and
the proxy closes it: L7 enforcement fails closed.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from tendril.hubble import record as rec
from tendril.policy.l7 import L7Rules

IPPROTO_TCP = 6


@dataclass(frozen=True)
class ConnectionContext:
    """A redirected connection: client (src) -> original destination (dst), and its rules."""

    src_ip: ipaddress.IPv4Address | ipaddress.IPv6Address
    src_port: int
    dst_ip: ipaddress.IPv4Address | ipaddress.IPv6Address
    dst_port: int
    src_identity: int
    dst_identity: int
    src_meta: int  # interned EndpointMeta ids (flow rows)
    dst_meta: int
    ep_id: int  # the local endpoint whose policy redirected (client for egress)
    egress: tuple[L7Rules, ...] | None
    ingress: tuple[L7Rules, ...] | None
    proto: int = IPPROTO_TCP

    @property
    def direction(self) -> int:
        """Hubble's traffic direction of the flows: egress when the client's rule redirected."""
        return rec.EGRESS if self.egress is not None else rec.INGRESS

    def allows(self, method: str, target: str, host: str, headers: Sequence[tuple[str, str]]) -> bool:
        for rules in (self.egress, self.ingress):
            if rules is not None and not any(r.allows(method, target, host, headers) for r in rules):
                return False
        return True

    def allows_dns(self, name: str) -> bool:
        """A DNS query (client egress rules only: DNS rules are egress rules)."""
        return self.egress is not None and any(r.allows_dns(name) for r in self.egress)


def meta_ids(endpoints: Any, *ips: ipaddress.IPv4Address | ipaddress.IPv6Address) -> list[int]:
    """The flow rows' endpoint metadata ids of addresses (a local pod, a remote one, or the ipcache
    identity's reserved metadata), through the agent's EndpointManager."""
    raw = [ip.packed.ljust(16, b"\0") for ip in ips]
    return [int(i) for i in endpoints.endpoint_ids(np.array(raw, dtype="V16"))]


class ProxyPolicy:
    """Answers `connection()` from the agent's endpoints, resolved policies and ipcache."""

    def __init__(self, agent: Any, proxy_port: int) -> None:
        self.agent = agent
        self.proxy_port = proxy_port

    def _local(self, ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> Any | None:
        text = str(ip)
        for ep in self.agent.state.endpoints.values():
            if ep.ipv4 == text or ep.ipv6 == text:
                return ep
        return None

    def _meta(self, ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> int:
        return meta_ids(self.agent.endpoints, ip)[0]

    def connection(
        self, src: tuple[str, int], dst: tuple[str, int], proto: int = IPPROTO_TCP
    ) -> ConnectionContext | None:
        src_ip, dst_ip = ipaddress.ip_address(src[0]), ipaddress.ip_address(dst[0])
        if dst[1] == self.proxy_port:
            return None  # straight to the proxy, not redirected
        src_ep, dst_ep = self._local(src_ip), self._local(dst_ip)
        lookup = self.agent.policy.ipcache.lookup
        src_id = src_ep.identity if src_ep is not None else int(lookup(src_ip))
        dst_id = dst_ep.identity if dst_ep is not None else int(lookup(dst_ip))
        resolved = self.agent.policy.resolved
        egress = ingress = None
        if src_ep is not None and src_ep.id in resolved:
            egress = resolved[src_ep.id].l7_rules(dst_id, True, proto, dst[1])
        if dst_ep is not None and dst_ep.id in resolved and proto == IPPROTO_TCP:
            ingress = resolved[dst_ep.id].l7_rules(src_id, False, IPPROTO_TCP, dst[1])
        if egress is None and ingress is None:
            return None
        owner = src_ep if egress is not None else dst_ep
        return ConnectionContext(
            src_ip=src_ip,
            src_port=src[1],
            dst_ip=dst_ip,
            dst_port=dst[1],
            src_identity=src_id,
            dst_identity=dst_id,
            src_meta=self._meta(src_ip),
            dst_meta=self._meta(dst_ip),
            ep_id=owner.id if owner is not None else 0,
            egress=egress,
            ingress=ingress,
            proto=proto,
        )
