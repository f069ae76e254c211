"""The UI's flow filters: query parameters -> a validated `FlowQuery`, and flows matched against it.

Parameters (each may repeat; values of one parameter are OR-ed, different parameters AND-ed):

    namespace=NS     flows with either side in NS (none given: every namespace)
    verdict=V        FORWARDED, DROPPED, ... (flow.Verdict names, case-insensitive)
    pod=[NS/]PREFIX  either side's pod name starts with PREFIX (in NS, else in the selected namespaces)
    protocol=P       tcp, udp, icmp, icmpv4, icmpv6, sctp, ... (Hubble's names, case-insensitive)
    port=N           either side's TCP/UDP/SCTP port is N (0-65535)
    limit=N          at most N flows in the answer (newest; /api/flows only)

The values are checked with the rules the Hubble server applies to the same FlowFilter fields
(`tendril.hubble.filters`), so the UI rejects what `tendril hubble observe` would; an invalid value
is a `QueryError` whose message names the filter (the API answers 400 with it).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from tendril.hubble.api import flow_pb2
from tendril.hubble.cli.offline_filters import L4_KINDS
from tendril.hubble.filters.base import FilterError, quote
from tendril.hubble.filters.port import parse_ports
from tendril.hubble.filters.protocol import L4_PROTOCOLS, L7_PROTOCOLS

PARAMS = ("namespace", "verdict", "pod", "protocol", "port", "limit")
DEFAULT_LIMIT = 200
MAX_LIMIT = 10_000

# Kubernetes namespace names are DNS-1123 labels; pod names are DNS-1123 subdomains (a prefix here).
_NAMESPACE_RE = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_POD_PREFIX_RE = re.compile(r"^[a-z0-9][-a-z0-9.]*$")

VERDICTS = tuple(name for name, number in flow_pb2.Verdict.items() if number != 0)

_PORT_KINDS = ("TCP", "UDP", "SCTP")


class QueryError(ValueError):
    """An invalid filter; str() is the message shown to the user, naming the filter."""

    def __init__(self, name: str, message: str) -> None:
        self.filter = name
        super().__init__(f"invalid {name} filter: {message}")


def check_namespace(value: str, name: str = "namespace") -> str:
    if not value:
        raise QueryError(name, "empty namespace")
    if len(value) > 63 or not _NAMESPACE_RE.match(value):
        raise QueryError(
            name,
            f"{quote(value)} is not a namespace name (lower-case letters, digits and '-', "
            "starting and ending with a letter or digit, at most 63 characters)",
        )
    return value


def _pod(value: str) -> tuple[str, str]:
    """`[ns/]prefix` -> (ns or "", prefix); `ns/` alone is every pod of ns."""
    if not value or value == "/":
        raise QueryError("pod", f"{quote(value)} is not [namespace/]<pod name prefix>: it names nothing")
    ns, slash, prefix = value.partition("/")
    if not slash:
        ns, prefix = "", value
    else:
        check_namespace(ns, "pod")
    if prefix and (len(prefix) > 253 or not _POD_PREFIX_RE.match(prefix) or "/" in prefix):
        raise QueryError(
            "pod",
            f"{quote(value)} is not [namespace/]<pod name prefix> (pod names are lower-case "
            "letters, digits, '-' and '.')",
        )
    return ns, prefix


def _verdict(value: str) -> int:
    name = value.strip().upper()
    if name not in VERDICTS:
        raise QueryError("verdict", f"unknown verdict {quote(value)} (known: {', '.join(VERDICTS)})")
    return flow_pb2.Verdict.Value(name)


def _protocol(value: str) -> str:
    name = value.strip().lower()
    if name not in L4_PROTOCOLS and name not in L7_PROTOCOLS:
        known = ", ".join([*L4_PROTOCOLS, *L7_PROTOCOLS])
        raise QueryError("protocol", f"unknown protocol {quote(value)} (known: {known})")
    return name


def _port(value: str) -> int:
    try:
        return int(parse_ports("port", [value.strip()])[0])
    except FilterError as e:
        raise QueryError("port", e.message) from None


def _limit(value: str) -> int:
    v = value.strip()
    if not (v.isascii() and v.isdigit()) or not 1 <= int(v) <= MAX_LIMIT:
        raise QueryError("limit", f"{quote(value)} is not a number from 1 to {MAX_LIMIT}")
    return int(v)


def _uniq(values: Iterable) -> tuple:  # noqa: ANN001
    return tuple(dict.fromkeys(values))


@dataclass(frozen=True)
class FlowQuery:
    """A validated selection of flows (see the module docstring for the semantics)."""

    namespaces: tuple[str, ...] = ()
    verdicts: tuple[int, ...] = ()
    pods: tuple[tuple[str, str], ...] = ()  # (namespace or "", name prefix)
    protocols: tuple[str, ...] = ()
    ports: tuple[int, ...] = ()
    limit: int = DEFAULT_LIMIT
    _kinds: frozenset[str] = field(default=frozenset(), init=False, compare=False, repr=False)

    def __post_init__(self) -> None:
        kinds = frozenset(k for p in self.protocols for k in L4_KINDS.get(p, ()))
        object.__setattr__(self, "_kinds", kinds)

    @classmethod
    def parse(cls, params: Mapping[str, list[str]] | Iterable[tuple[str, str]]) -> FlowQuery:
        """From query parameters ({name: [values]} or (name, value) pairs); raises QueryError."""
        pairs = (
            [(k, v) for k, vs in params.items() for v in vs] if isinstance(params, Mapping) else list(params)
        )
        values: dict[str, list[str]] = {p: [] for p in PARAMS}
        for key, value in pairs:
            if key not in values:
                raise QueryError(key, f"unknown filter {quote(key)} (known: {', '.join(PARAMS)})")
            # a form field left empty means "no filter"; "a,b" is two values, like repeating it
            values[key] += [v.strip() for v in value.split(",") if v.strip()]
        if len(values["limit"]) > 1:
            raise QueryError("limit", "given more than once")
        return cls(
            namespaces=_uniq(check_namespace(v) for v in values["namespace"]),
            verdicts=_uniq(_verdict(v) for v in values["verdict"]),
            pods=_uniq(_pod(v) for v in values["pod"]),
            protocols=_uniq(_protocol(v) for v in values["protocol"]),
            ports=_uniq(_port(v) for v in values["port"]),
            limit=_limit(values["limit"][0]) if values["limit"] else DEFAULT_LIMIT,
        )

    def to_dict(self) -> dict:
        return {
            "namespace": list(self.namespaces),
            "verdict": [flow_pb2.Verdict.Name(v) for v in self.verdicts],
            "pod": [f"{ns}/{p}" if ns else p for ns, p in self.pods],
            "protocol": list(self.protocols),
            "port": list(self.ports),
            "limit": self.limit,
        }

    # --- matching ------------------------------------------------------------------------

    def in_namespaces(self, f: flow_pb2.Flow) -> bool:
        if not self.namespaces:
            return True
        return f.source.namespace in self.namespaces or f.destination.namespace in self.namespaces

    def _pod_ok(self, ep: flow_pb2.Endpoint) -> bool:
        if not ep.pod_name:
            return False
        for ns, prefix in self.pods:
            if ns:
                if ep.namespace != ns:
                    continue
            elif self.namespaces and ep.namespace not in self.namespaces:
                continue
            if ep.pod_name.startswith(prefix):
                return True
        return False

    def _protocol_ok(self, f: flow_pb2.Flow) -> bool:
        kind = f.l4.WhichOneof("protocol") if f.HasField("l4") else None
        if kind is not None and kind in self._kinds:
            return True
        if f.HasField("l7"):
            record = f.l7.WhichOneof("record")
            return record is not None and record in self.protocols
        return False

    def _port_ok(self, f: flow_pb2.Flow) -> bool:
        kind = f.l4.WhichOneof("protocol") if f.HasField("l4") else None
        if kind not in _PORT_KINDS:
            return False
        l4 = getattr(f.l4, kind)
        return l4.source_port in self.ports or l4.destination_port in self.ports

    def matches(self, f: flow_pb2.Flow) -> bool:
        if not self.in_namespaces(f):
            return False
        if self.verdicts and f.verdict not in self.verdicts:
            return False
        if self.pods and not (self._pod_ok(f.source) or self._pod_ok(f.destination)):
            return False
        if self.protocols and not self._protocol_ok(f):
            return False
        return not (self.ports and not self._port_ok(f))


def namespace_filters(namespace: str) -> list[flow_pb2.FlowFilter]:
    """The whitelist `hubble observe -n NS` sends: flows with either side in NS."""
    return [
        flow_pb2.FlowFilter(source_pod=[f"{namespace}/"]),
        flow_pb2.FlowFilter(destination_pod=[f"{namespace}/"]),
    ]
