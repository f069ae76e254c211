"""Filter flags -> the allowlist / denylist FlowFilters of a GetFlowsRequest, as `hubble observe`.

Each filter flag is applied the moment it is parsed (pflag order): ``--not`` sends the next filter
to the denylist, conflicting flags are rejected right away (with the flag that completed the
conflict named in the error), and "either side" flags (``--pod``, ``--ip``, ``-n`` ...) fill a
left (source) and a right (destination) FlowFilter that collapse into one when equal. The
resulting messages are what the server matches on, so they must equal hubble's exactly.
"""

from __future__ import annotations

from collections.abc import Callable

from tendril.hubble.api import flow_pb2
from tendril.hubble.cli.filter_values import (
    enum_value,
    ip_version,
    parse_event_type,
    parse_identity,
    parse_tcp_flags,
    parse_workload,
)
from tendril.hubble.cli.goquote import go_quote
from tendril.hubble.cli.pflags import FlagError, parse_uint

FlowFilter = flow_pb2.FlowFilter
Update = Callable[[FlowFilter], None]

# Groups of flags that may not be combined in one (allow or deny) list; order matters for the
# error text, which names the first flag of the group that is set and then its first conflict.
CONFLICTS: list[list[str]] = [
    [
        "from-fqdn",
        "from-ip",
        "ip",
        "fqdn",
        "from-namespace",
        "namespace",
        "from-all-namespaces",
        "all-namespaces",
    ],
    ["from-fqdn", "from-ip", "ip", "fqdn", "from-pod", "pod"],
    ["to-fqdn", "to-ip", "ip", "fqdn", "to-namespace", "namespace", "to-all-namespaces", "all-namespaces"],
    ["to-fqdn", "to-ip", "ip", "fqdn", "to-pod", "pod"],
    ["to-pod", "namespace", "all-namespaces"],
    ["from-pod", "namespace", "all-namespaces"],
    ["to-service", "namespace", "all-namespaces"],
    ["from-service", "namespace", "all-namespaces"],
    ["snat-ip"],
    ["label", "from-label"],
    ["label", "to-label"],
    ["service", "from-service"],
    ["service", "to-service"],
    ["verdict"],
    ["drop-reason-desc"],
    ["type"],
    ["http-status"],
    ["http-method"],
    ["http-path"],
    ["http-url"],
    ["http-header"],
    ["protocol"],
    ["port", "to-port"],
    ["port", "from-port"],
    ["identity", "to-identity"],
    ["identity", "from-identity"],
    ["workload", "to-workload"],
    ["workload", "from-workload"],
    ["node-label"],
    ["tcp-flags"],
    ["uuid"],
    ["traffic-direction"],
    ["cel-expression"],
    ["encrypted", "unencrypted"],
]


def _namespace_from_name(name: str) -> str:
    parts = name.split("/")
    return parts[0] if len(parts) > 1 else ""


def _add_namespaces(values: list[str], namespaces: list[str]) -> list[str]:
    if not namespaces or not values:
        return values
    out: list[str] = []
    for value in values:
        if "/" in value:
            out.append(value)
            continue
        out.extend(f"{ns}/{value}" for ns in namespaces)
    return out


def _replace(repeated: object, values: list[str]) -> None:
    del repeated[:]  # type: ignore[index]
    repeated.extend(values)  # type: ignore[attr-defined]


def _ns_conflicts(namespaces: list[str], values: list[str]) -> str | None:
    for ns in namespaces:
        for name in values:
            nn = _namespace_from_name(name)
            if nn and nn != ns:
                return f"namespace conflict: {go_quote(ns)} does not contain {go_quote(name)}"
    return None


def _inconsistent_namespaces(pods: list[str], services: list[str]) -> str | None:
    for pod in pods:
        pod_ns = _namespace_from_name(pod)
        if not pod_ns:
            continue
        for svc in services:
            if _namespace_from_name(svc) != pod_ns:
                return f"namespace of service {go_quote(svc)} conflict with pod {go_quote(pod_ns)}"
    return None


class FilterTracker:
    """One side (allow or deny) of the request: a source-side and destination-side FlowFilter."""

    def __init__(self) -> None:
        self.left: FlowFilter | None = None
        self.right: FlowFilter | None = None
        self.ns: list[str] = []
        self.src_ns: list[str] = []
        self.dst_ns: list[str] = []
        self.changed: list[str] = []

    def add(self, name: str) -> bool:
        """Record that the user set ``name``; True the first time (hubble then wipes defaults)."""
        if name in self.changed:
            return False
        self.changed.append(name)
        return True

    def apply_left(self, update: Update) -> None:
        if self.left is None:
            self.left = FlowFilter()
        update(self.left)

    def apply_right(self, update: Update) -> None:
        if self.right is None:
            self.right = FlowFilter()
        update(self.right)

    def apply(self, update: Update) -> None:
        self.apply_left(update)
        self.apply_right(update)

    def check_conflict(self) -> None:
        for group in CONFLICTS:
            for flag in group:
                if flag not in self.changed:
                    continue
                for other in group:
                    if other != flag and other in self.changed:
                        raise FlagError(f"filters --{flag} and --{other} cannot be combined")

    def check_namespace_conflicts(self, ff: FlowFilter | None) -> None:
        if ff is None:
            return
        errors = [
            _ns_conflicts(self.ns, list(ff.source_pod)),
            _ns_conflicts(self.ns, list(ff.source_service)),
            _ns_conflicts(self.ns, list(ff.destination_pod)),
            _ns_conflicts(self.ns, list(ff.destination_service)),
            _ns_conflicts(self.src_ns, list(ff.source_pod)),
            _ns_conflicts(self.src_ns, list(ff.source_service)),
            _ns_conflicts(self.dst_ns, list(ff.destination_pod)),
            _ns_conflicts(self.dst_ns, list(ff.destination_service)),
            _inconsistent_namespaces(list(ff.source_pod), list(ff.source_service)),
            _inconsistent_namespaces(list(ff.destination_pod), list(ff.destination_service)),
        ]
        found = [e for e in errors if e]
        if found:
            raise FlagError("\n".join(found))  # errors.Join

    @staticmethod
    def _apply_src_ns(namespaces: list[str], ff: FlowFilter) -> None:
        if not ff.source_pod and not ff.source_service:
            _replace(ff.source_pod, [""])
        _replace(ff.source_pod, _add_namespaces(list(ff.source_pod), namespaces))
        _replace(ff.source_service, _add_namespaces(list(ff.source_service), namespaces))

    @staticmethod
    def _apply_dst_ns(namespaces: list[str], ff: FlowFilter) -> None:
        if not ff.destination_pod and not ff.destination_service:
            _replace(ff.destination_pod, [""])
        _replace(ff.destination_pod, _add_namespaces(list(ff.destination_pod), namespaces))
        _replace(ff.destination_service, _add_namespaces(list(ff.destination_service), namespaces))

    def flow_filters(self) -> list[FlowFilter]:
        """Materialise the filters: namespaces applied, left and right merged when equal."""
        if self.left is None and self.right is None and not (self.ns or self.src_ns or self.dst_ns):
            return []
        left = FlowFilter()
        right = FlowFilter()
        if self.left is not None:
            left.CopyFrom(self.left)
        if self.right is not None:
            right.CopyFrom(self.right)
        if self.dst_ns:
            self._apply_dst_ns(self.dst_ns, left)
            self._apply_dst_ns(self.dst_ns, right)
        if self.src_ns:
            self._apply_src_ns(self.src_ns, left)
            self._apply_src_ns(self.src_ns, right)
        if self.ns:
            self._apply_src_ns(self.ns, left)
            self._apply_dst_ns(self.ns, right)
        if left == right:
            return [left]
        return [left, right]


class FlowFilterBuilder:
    """Receives filter flags in command-line order and builds whitelist / blacklist."""

    def __init__(self) -> None:
        self.whitelist: FilterTracker | None = None
        self.blacklist: FilterTracker | None = None
        self.blacklisting = False

    def setter(self, name: str) -> Callable[[str], None]:
        return lambda value: self.set(name, value)

    def set(self, name: str, value: str) -> None:
        if name == "not":
            if self.blacklisting:
                raise FlagError("consecutive --not statements")
            self.blacklisting = True
            return
        if self.blacklisting:
            self.blacklisting = False
            if self.blacklist is None:
                self.blacklist = FilterTracker()
            self._set(self.blacklist, name, value)
            return
        if self.whitelist is None:
            self.whitelist = FilterTracker()
        self._set(self.whitelist, name, value)

    def allowlist(self) -> list[FlowFilter]:
        return self.whitelist.flow_filters() if self.whitelist else []

    def denylist(self) -> list[FlowFilter]:
        return self.blacklist.flow_filters() if self.blacklist else []

    def _set(self, t: FilterTracker, name: str, val: str) -> None:  # noqa: C901 - one case per flag
        wipe = t.add(name)
        t.check_conflict()

        def append(fname: str, item: object) -> Update:
            return lambda ff: getattr(ff, fname).append(item)

        def both(src: str, dst: str, item: object) -> None:
            t.apply_left(append(src, item))
            t.apply_right(append(dst, item))

        simple = {
            "uuid": "uuid",
            "from-fqdn": "source_fqdn",
            "to-fqdn": "destination_fqdn",
            "from-pod": "source_pod",
            "to-pod": "destination_pod",
            "from-ip": "source_ip",
            "snat-ip": "source_ip_xlated",
            "to-ip": "destination_ip",
            "from-label": "source_label",
            "to-label": "destination_label",
            "from-service": "source_service",
            "to-service": "destination_service",
            "from-port": "source_port",
            "to-port": "destination_port",
            "trace-id": "trace_id",
            "http-status": "http_status_code",
            "http-method": "http_method",
            "http-path": "http_path",
            "http-url": "http_url",
            "protocol": "protocol",
            "node-name": "node_name",
            "node-label": "node_labels",
            "from-cluster": "source_cluster_name",
            "to-cluster": "destination_cluster_name",
        }
        either = {
            "fqdn": ("source_fqdn", "destination_fqdn"),
            "pod": ("source_pod", "destination_pod"),
            "ip": ("source_ip", "destination_ip"),
            "label": ("source_label", "destination_label"),
            "service": ("source_service", "destination_service"),
            "port": ("source_port", "destination_port"),
            "cluster": ("source_cluster_name", "destination_cluster_name"),
        }
        if name in simple:
            t.apply(append(simple[name], val))
        elif name in either:
            both(*either[name], val)
        elif name == "ipv4":
            t.apply(append("ip_version", flow_pb2.IPv4))
        elif name == "ipv6":
            t.apply(append("ip_version", flow_pb2.IPv6))
        elif name == "ip-version":
            t.apply(append("ip_version", ip_version(val)))
        elif name == "namespace":
            t.ns.append(val)
        elif name == "from-namespace":
            t.src_ns.append(val)
        elif name == "to-namespace":
            t.dst_ns.append(val)
        elif name == "all-namespaces":
            t.ns.append("")
        elif name == "from-all-namespaces":
            t.src_ns.append("")
        elif name == "to-all-namespaces":
            t.dst_ns.append("")
        elif name == "ip-trace-id":
            if val == "0":
                raise FlagError("invalid --ip-trace-id value; must be greater than 0")
            try:
                trace_id = parse_uint(val, 64, base=10)
            except ValueError as e:
                raise FlagError(f"invalid --ip-trace-id value: {e}") from None
            t.apply(append("ip_trace_id", trace_id))
        elif name == "verdict":
            if wipe:
                t.apply(lambda ff: ff.ClearField("verdict"))
            verdict = enum_value(flow_pb2.Verdict, val)
            if verdict is None:
                raise FlagError(f"invalid --verdict value: {val}")
            t.apply(append("verdict", verdict))
        elif name == "drop-reason-desc":
            if val == "":
                raise FlagError("empty --drop-reason-desc value")
            reason = enum_value(flow_pb2.DropReason, val)
            if reason is None:
                raise FlagError(f"invalid --drop-reason-desc value: {val}")
            t.apply(append("drop_reason_desc", reason))
        elif name == "http-header":
            key, sep, hval = val.partition(":")
            if not sep:
                raise FlagError(f"invalid http-header value {go_quote(val)}, expected name:value")
            t.apply(lambda ff: ff.http_header.add(key=key, value=hval))
        elif name == "type":
            if wipe:
                t.apply(lambda ff: ff.ClearField("event_type"))
            tf = parse_event_type(val)
            t.apply(lambda ff: ff.event_type.append(tf))
        elif name in ("workload", "from-workload", "to-workload"):
            wl = parse_workload(val)
            if name == "workload":
                t.apply_left(lambda ff: ff.source_workload.append(wl))
                t.apply_right(lambda ff: ff.destination_workload.append(wl))
            else:
                fname = "source_workload" if name == "from-workload" else "destination_workload"
                t.apply(lambda ff: getattr(ff, fname).append(wl))
        elif name in ("identity", "from-identity", "to-identity"):
            ident = parse_identity(val)
            if name == "identity":
                both("source_identity", "destination_identity", ident)
            else:
                t.apply(
                    append("source_identity" if name == "from-identity" else "destination_identity", ident)
                )
        elif name == "tcp-flags":
            flags = parse_tcp_flags(val)
            t.apply(lambda ff: ff.tcp_flags.append(flags))
        elif name == "traffic-direction":
            td = val.lower()
            if td not in ("ingress", "egress"):
                raise FlagError(f"{td}: invalid traffic direction, expected ingress or egress")
            t.apply(append("traffic_direction", flow_pb2.INGRESS if td == "ingress" else flow_pb2.EGRESS))
        elif name == "cel-expression":
            t.apply(lambda ff: ff.experimental.cel_expression.append(val))
        elif name == "interface":
            t.apply(lambda ff: ff.interface.add(name=val))
        elif name in ("encrypted", "unencrypted"):
            t.apply(append("encrypted", name == "encrypted"))
        t.check_namespace_conflicts(t.left)
        t.check_namespace_conflicts(t.right)
