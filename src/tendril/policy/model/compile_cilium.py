"""CiliumNetworkPolicy / CiliumClusterwideNetworkPolicy documents -> internal rules.

Semantics follow Cilium (pkg/k8s/apis/cilium.io/utils/utils.go, pkg/policy/api/rule_validation.go):

- A CNP's `endpointSelector` only ever selects its own namespace. A CCNP's selects any namespace;
  `nodeSelector` (host policy) is CCNP-only and selects the host endpoint.
- Peer selectors (`fromEndpoints`/`toEndpoints`) in a CNP get the policy's namespace added unless they
  name `io.kubernetes.pod.namespace`, a namespace label (`io.cilium.k8s.namespace.labels.*`) or a
  `reserved:` label; in a CCNP they get "has a namespace" added instead (so `{}` means every pod).
- A rule section (`ingress`, `ingressDeny`, ...) that is non-empty makes the selected endpoints
  default-deny in that direction, unless `enableDefaultDeny` says otherwise.
- `ingress: [{}]` allows nothing (deny all); a rule with ports but no peers allows any peer.
- `toPorts` protocol ANY (or none) means TCP, UDP and SCTP; only a rule without `toPorts` and
  `icmps` allows every protocol (L3 only).
- One kind of peer per rule, and `icmps` not together with `toPorts`, as Cilium requires.

What tendril cannot enforce yet is never silently dropped: L7 rules are accepted with their L3/L4
part enforced and a notice "L7 rule not yet enforced"; `toServices`, `*Groups`, `*Nodes`
and CIDR groups are accepted in allow rules with a notice and select nothing (fail closed), and are
errors in deny rules (ignoring them would leave traffic allowed). `*Requires` and `authentication`
are errors (ignoring them would weaken the policy).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from tendril.identity.labels import ANY, K8S, NAMESPACE_LABELS_PREFIX, POD_NAMESPACE_LABEL, RESERVED
from tendril.policy.cidr import check_except, parse_cidr
from tendril.policy.constants import PORT_PROTOCOLS, Proto
from tendril.policy.entities import ENTITIES
from tendril.policy.errors import invalid, missing
from tendril.policy.l7 import compile_dns_match, compile_dns_rules, compile_http_rules
from tendril.policy.model import cilium as m
from tendril.policy.model.common import EndpointSelector
from tendril.policy.ports import CILIUM_PROTOCOLS, check_end_port, icmp_type, parse_port
from tendril.policy.rules import (
    AllPeers,
    CIDRPeer,
    EndpointPeers,
    EntityPeers,
    FQDNPeer,
    NoPeers,
    Peer,
    PeerRule,
    PortSpec,
    Rule,
)
from tendril.policy.selector import EXISTS, IN, Requirement, Selector

_INGRESS_L3 = ("fromEndpoints", "fromCIDR", "fromCIDRSet", "fromEntities", "fromNodes", "fromGroups")
_EGRESS_L3 = (
    "toEndpoints",
    "toCIDR",
    "toCIDRSet",
    "toEntities",
    "toServices",
    "toFQDNs",
    "toGroups",
    "toNodes",
)
_UNSUPPORTED_PEERS = {
    "fromNodes": "fromNodes (node selectors)",
    "toNodes": "toNodes (node selectors)",
    "fromGroups": "fromGroups (cloud provider groups)",
    "toGroups": "toGroups (cloud provider groups)",
    "toServices": "toServices",
}
_TLS_FIELDS = ("terminatingTLS", "originatingTLS", "serverNames", "listener")


@dataclass
class _Ctx:
    kind: str
    namespace: str | None  # None: cluster-wide
    ref_prefix: str
    notices: list[str] = field(default_factory=list)

    def note(self, path: str, message: str) -> None:
        self.notices.append(f"{path}: {message}")


def compile_cilium(
    doc: m.CiliumNetworkPolicy | m.CiliumClusterwideNetworkPolicy, namespace: str | None, ref_prefix: str
) -> tuple[tuple[Rule, ...], list[str]]:
    """Validate a Cilium policy's semantics and build its rules; FieldError names the field."""
    ctx = _Ctx(doc.kind, namespace, ref_prefix)
    if doc.spec is None and not doc.specs:
        raise missing("spec", ' (or a non-empty "specs")')
    specs = [("spec", doc.spec)] if doc.spec is not None else []
    specs += [(f"specs[{i}]", r) for i, r in enumerate(doc.specs or [])]
    return tuple(_rule(ctx, r, path) for path, r in specs), ctx.notices


# ---- subject ----------------------------------------------------------------------------------
def _namespace_requirements(sel: Selector) -> list[Requirement]:
    return [r for r in sel.requirements if r.key == POD_NAMESPACE_LABEL and r.source in (K8S, ANY)]


def _subject(ctx: _Ctx, rule: m.Rule, path: str) -> tuple[Selector, bool]:
    es, ns_sel = rule.endpointSelector, rule.nodeSelector
    if es is None and ns_sel is None:
        raise missing(f"{path}.endpointSelector", ' (or "nodeSelector")')
    if es is not None and ns_sel is not None:
        raise invalid(path, "a rule cannot have both endpointSelector and nodeSelector")
    if ns_sel is not None:
        if ctx.namespace is not None:
            raise invalid(
                f"{path}.nodeSelector",
                "nodeSelector (host policy) is only allowed in a CiliumClusterwideNetworkPolicy",
            )
        return ns_sel.to_selector(default_source=ANY), True
    assert es is not None
    subject = es.to_selector(default_source=ANY)
    if ctx.namespace is not None:
        for req in _namespace_requirements(subject):
            if req.op != IN or req.values != (ctx.namespace,):
                raise invalid(
                    f"{path}.endpointSelector",
                    f"a CiliumNetworkPolicy in namespace {ctx.namespace!r} only selects endpoints of that "
                    f"namespace, but this selector asks for {req}; use a CiliumClusterwideNetworkPolicy",
                )
        subject = subject.plus(Requirement(K8S, POD_NAMESPACE_LABEL, IN, (ctx.namespace,)))
    return subject, False


def _peer_selector(ctx: _Ctx, es: EndpointSelector, matches_init: bool) -> Selector:
    sel = es.to_selector(default_source=ANY)
    if sel.has_source(RESERVED) or _namespace_requirements(sel):
        return sel
    if ctx.namespace is None:
        return sel if matches_init else sel.plus(Requirement(K8S, POD_NAMESPACE_LABEL, EXISTS))
    if sel.has_key_prefix(K8S, NAMESPACE_LABELS_PREFIX) or sel.has_key_prefix(ANY, NAMESPACE_LABELS_PREFIX):
        return sel
    return sel.plus(Requirement(K8S, POD_NAMESPACE_LABEL, IN, (ctx.namespace,)))


# ---- rule -------------------------------------------------------------------------------------
def _default_deny(explicit: bool | None, sections: list[object]) -> bool:
    return explicit if explicit is not None else any(bool(s) for s in sections)


def _rule(ctx: _Ctx, rule: m.Rule, path: str) -> Rule:
    subject, host = _subject(ctx, rule, path)
    matches_init = subject.has_key(RESERVED, "init")
    dd = rule.enableDefaultDeny or m.DefaultDeny()
    peer_rules: list[PeerRule] = []
    for section, egress, deny in (
        ("ingress", False, False),
        ("ingressDeny", False, True),
        ("egress", True, False),
        ("egressDeny", True, True),
    ):
        for i, r in enumerate(getattr(rule, section) or []):
            peer_rules.extend(_peer_rules(ctx, r, f"{path}.{section}[{i}]", egress, deny, host, matches_init))
    return Rule(
        subject=subject,
        host=host,
        ingress_default_deny=_default_deny(dd.ingress, [rule.ingress, rule.ingressDeny]),
        egress_default_deny=_default_deny(dd.egress, [rule.egress, rule.egressDeny]),
        peer_rules=tuple(peer_rules),
        ref=f"{ctx.ref_prefix}:{path}",
    )


def _peer_rules(
    ctx: _Ctx, r: m.Strict, path: str, egress: bool, deny: bool, host: bool, matches_init: bool
) -> list[PeerRule]:
    """One PeerRule, or one per `toPorts[]` item when any carries HTTP rules (each item's rules
    apply to its own ports only)."""
    pfx = "to" if egress else "from"
    if getattr(r, f"{pfx}Requires"):
        raise invalid(
            f"{path}.{pfx}Requires",
            f"{pfx}Requires is deprecated in Cilium and not supported by tendril; "
            "put the required labels into the peer selectors instead",
        )
    if getattr(r, "authentication", None) is not None:
        raise invalid(
            f"{path}.authentication",
            "mutual authentication is not supported by tendril (ignoring it would allow "
            "unauthenticated traffic); remove it to allow the traffic without authentication",
        )
    present = [f for f in (_EGRESS_L3 if egress else _INGRESS_L3) if getattr(r, f, None)]
    if len(present) > 1:
        raise invalid(
            path,
            f"combining {present[0]} and {present[1]} in one rule is not supported; write separate rules",
        )
    to_ports = getattr(r, "toPorts", None) or []
    icmps = getattr(r, "icmps", None) or []
    if to_ports and icmps:
        raise invalid(path, "icmps cannot be combined with toPorts in one rule; write separate rules")
    if present == ["toServices"] and to_ports:
        raise invalid(path, "combining toServices and toPorts is not supported")

    peers: tuple[Peer, ...]
    if present:
        peers = _peers(ctx, r, path, present[0], deny, matches_init)
    else:
        peers = (AllPeers(),) if (to_ports or icmps) else ()
    ref = f"{ctx.ref_prefix}:{path}"
    if not deny and any(_http_of(pr) is not None or _dns_of(pr) is not None for pr in to_ports):
        out = []
        for i, pr in enumerate(to_ports):
            ports, l7 = _ports(ctx, [pr], [], path, egress, deny, host, first=i)
            http, dns = _http_of(pr), _dns_of(pr)
            l7_rules = None
            if http is not None:
                l7_rules = compile_http_rules(http, f"{path}.toPorts[{i}].rules.http", f"{ref}.toPorts[{i}]")
            elif dns is not None:
                l7_rules = compile_dns_rules(dns, f"{path}.toPorts[{i}].rules.dns", f"{ref}.toPorts[{i}]")
            out.append(PeerRule(egress, deny, peers, ports, f"{ref}.toPorts[{i}]", l7, l7_rules))
        return out
    ports, l7 = _ports(ctx, to_ports, icmps, path, egress, deny, host)
    return [PeerRule(egress=egress, deny=deny, peers=peers, ports=ports, ref=ref, l7=l7)]


def _http_of(pr: m.PortRule | m.PortDenyRule) -> list[m.HTTPRule] | None:
    rules = getattr(pr, "rules", None)
    return rules.http if rules is not None else None


def _dns_of(pr: m.PortRule | m.PortDenyRule) -> list[m.DNSRule] | None:
    rules = getattr(pr, "rules", None)
    return rules.dns if rules is not None else None


def _peers(ctx: _Ctx, r: m.Strict, path: str, name: str, deny: bool, matches_init: bool) -> tuple[Peer, ...]:
    items = getattr(r, name)
    fpath = f"{path}.{name}"
    if name in ("fromEndpoints", "toEndpoints"):
        return (EndpointPeers(tuple(_peer_selector(ctx, es, matches_init) for es in items)),)
    if name in ("fromEntities", "toEntities"):
        for i, ent in enumerate(items):
            if ent not in ENTITIES:
                raise invalid(f"{fpath}[{i}]", f"unknown entity {ent!r} (known: {', '.join(ENTITIES)})")
        return (EntityPeers(tuple(dict.fromkeys(items))),)
    if name in ("fromCIDR", "toCIDR"):
        out: list[Peer] = []
        for i, text in enumerate(items):
            try:
                out.append(CIDRPeer(parse_cidr(text, allow_bare_ip=True)))
            except ValueError as e:
                raise invalid(f"{fpath}[{i}]", str(e)) from None
        return tuple(out)
    if name in ("fromCIDRSet", "toCIDRSet"):
        return tuple(_cidr_rule(ctx, c, f"{fpath}[{i}]", deny) for i, c in enumerate(items))
    if name == "toFQDNs":
        if deny:
            raise invalid(fpath, "toFQDNs is not allowed in deny rules (as in Cilium)")
        return (
            FQDNPeer(
                tuple(
                    compile_dns_match(s.matchName, s.matchPattern, f"{fpath}[{i}]")
                    for i, s in enumerate(items)
                )
            ),
        )
    what = _UNSUPPORTED_PEERS[name]
    return (_unsupported(ctx, fpath, what, deny),)


def _unsupported(ctx: _Ctx, path: str, what: str, deny: bool) -> NoPeers:
    if deny:
        raise invalid(
            path,
            f"{what} is not supported by tendril in deny rules (ignoring it would leave traffic allowed)",
        )
    ctx.note(path, f"{what} not yet enforced by tendril: this peer selects nothing")
    return NoPeers(what)


def _cidr_rule(ctx: _Ctx, c: m.CIDRRule, path: str, deny: bool) -> Peer:
    groups = [f for f in ("cidrGroupRef", "cidrGroupSelector") if getattr(c, f) is not None]
    if (c.cidr is not None) + len(groups) > 1:
        raise invalid(path, "set exactly one of cidr, cidrGroupRef and cidrGroupSelector")
    if groups:
        return _unsupported(ctx, f"{path}.{groups[0]}", f"{groups[0]} (CiliumCIDRGroup)", deny)
    if c.cidr is None:
        raise missing(f"{path}.cidr")
    try:
        prefix = parse_cidr(c.cidr, allow_bare_ip=False)
    except ValueError as e:
        raise invalid(f"{path}.cidr", str(e)) from None
    excepts = []
    for j, text in enumerate(c.except_):
        try:
            exc = parse_cidr(text, allow_bare_ip=False)
            check_except(prefix, exc)
        except ValueError as e:
            raise invalid(f"{path}.except[{j}]", str(e)) from None
        excepts.append(exc)
    return CIDRPeer(prefix, tuple(dict.fromkeys(excepts)))


# ---- ports ------------------------------------------------------------------------------------
def _ports(
    ctx: _Ctx,
    to_ports: list[m.PortRule] | list[m.PortDenyRule],
    icmps: list[m.ICMPRule],
    path: str,
    egress: bool,
    deny: bool,
    host: bool,
    first: int = 0,
) -> tuple[tuple[PortSpec, ...] | None, bool]:
    if not to_ports and not icmps:
        return None, False
    specs: list[PortSpec] = []
    l7 = False
    for i, pr in enumerate(to_ports, start=first):
        ppath = f"{path}.toPorts[{i}]"
        if not pr.ports:
            raise invalid(f"{ppath}.ports", "must list at least one port")
        for j, pp in enumerate(pr.ports):
            specs.extend(_port_protocol(pp, f"{ppath}.ports[{j}]"))
        if isinstance(pr, m.PortRule):
            l7 = _l7_check(ctx, pr, ppath, egress, host) or l7
    for i, ic in enumerate(icmps):
        if not ic.fields:
            raise invalid(f"{path}.icmps[{i}].fields", "must list at least one ICMP type")
        for j, f in enumerate(ic.fields):
            try:
                t = icmp_type(f.type, f.family)
            except ValueError as e:
                raise invalid(f"{path}.icmps[{i}].fields[{j}].type", str(e)) from None
            specs.append(PortSpec(Proto.ICMP if f.family == "IPv4" else Proto.ICMPV6, t, t))
    return tuple(dict.fromkeys(specs)), l7


def _port_protocol(pp: m.PortProtocol, path: str) -> list[PortSpec]:
    name = pp.protocol or "ANY"
    if name not in CILIUM_PROTOCOLS:
        raise invalid(
            f"{path}.protocol", f"unknown protocol {name!r} (allowed: {', '.join(CILIUM_PROTOCOLS)})"
        )
    proto = CILIUM_PROTOCOLS[name]
    if proto is not None and proto not in PORT_PROTOCOLS:
        if pp.port is not None or pp.endPort is not None:
            where = "port" if pp.port is not None else "endPort"
            raise invalid(f"{path}.{where}", f"{name} has no ports (use icmps to match ICMP types)")
        return [PortSpec(proto)]
    if pp.port is None:
        if pp.endPort is not None:
            raise invalid(f"{path}.endPort", "endPort needs a numeric port")
        return [PortSpec(proto)]
    try:
        number, port_name = parse_port(pp.port)
    except ValueError as e:
        raise invalid(f"{path}.port", str(e)) from None
    if pp.endPort is not None:
        try:
            check_end_port(number, pp.endPort)
        except ValueError as e:
            raise invalid(f"{path}.endPort", str(e)) from None
    if port_name is not None:
        return [PortSpec(proto, name=port_name)]
    assert number is not None
    return [PortSpec(proto, number, pp.endPort or number)]


def _l7_check(ctx: _Ctx, pr: m.PortRule, ppath: str, egress: bool, host: bool) -> bool:
    kinds = pr.rules.kinds() if pr.rules is not None else []
    tls = [f for f in _TLS_FIELDS if getattr(pr, f) is not None]
    if not kinds and not tls:
        return False
    if host:
        raise invalid(f"{ppath}.rules", "host policies (nodeSelector) do not support L7 rules")
    if "DNS" in kinds and not egress:
        raise invalid(f"{ppath}.rules.dns", "DNS rules are only allowed on egress")
    if "DNS" not in kinds and kinds:
        for j, pp in enumerate(pr.ports):
            if (pp.protocol or "ANY") != "TCP":
                raise invalid(
                    f"{ppath}.ports[{j}].protocol",
                    f"L7 rules apply to TCP only (not {pp.protocol or 'ANY'}), except DNS rules",
                )
    if "HTTP" in kinds and "DNS" in kinds:
        raise invalid(f"{ppath}.rules", "one L7 protocol per toPorts item (http or dns)")
    pending = [k for k in kinds if k not in ("HTTP", "DNS")] + tls
    if pending:
        what = ", ".join(pending)
        where = f"{ppath}.rules" if [k for k in kinds if k not in ("HTTP", "DNS")] else f"{ppath}.{tls[0]}"
        ctx.note(where, f"L7 rule not yet enforced ({what}): only its L3/L4 part is enforced")
    return True
