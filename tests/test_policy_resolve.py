"""Resolution: policies + identities -> each endpoint's policy-map entries, as the datapath sees them."""

from __future__ import annotations

import random
import textwrap
from collections.abc import Mapping

import pytest

from tendril.identity import IdentityAllocator, identity_labels
from tendril.policy import (
    EndpointPolicy,
    LocalEndpoint,
    MatchType,
    PolicyMapFull,
    PolicyResolver,
    parse_policy_documents,
    required_cidr_prefixes,
)
from tendril.policy.policymap import PolicyEntry

TCP, UDP, SCTP, ICMP = 6, 17, 132, 1
PODS = {
    "web": ("shop", {"app": "web"}),
    "client": ("shop", {"app": "client"}),
    "db": ("shop", {"app": "db"}),
    "lab-client": ("lab", {"app": "client"}),
    "dns": ("kube-system", {"k8s-app": "kube-dns"}),
}
NS_LABELS = {"shop": {"team": "blue"}, "lab": {"team": "red"}, "kube-system": {}}


class World:
    """A few pods, the policies under test, and the CIDR identities those policies need."""

    def __init__(self, docs: str, extra_cidrs: tuple[str, ...] = (), **resolver_opts: object) -> None:
        self.alloc = IdentityAllocator()
        self.ids = {
            name: self.alloc.acquire(identity_labels(ns, labels, NS_LABELS[ns]))
            for name, (ns, labels) in PODS.items()
        }
        self.policies = parse_policy_documents(textwrap.dedent(docs), "p.yaml")
        self.cidr = {p: self.alloc.cidr_identity(p) for p in sorted(required_cidr_prefixes(self.policies))}
        self.cidr.update({p: self.alloc.cidr_identity(p) for p in extra_cidrs})
        self.resolver = PolicyResolver(self.alloc.identities(), **resolver_opts)  # type: ignore[arg-type]

    def resolve(
        self, who: str = "web", named_ports: Mapping[str, tuple[int, int]] | None = None
    ) -> EndpointPolicy:
        ep = LocalEndpoint(
            7, self.ids[who] if who in self.ids else int(who), dict(named_ports or {}), f"x/{who}"
        )
        return self.resolver.resolve(self.policies, ep)


def cnp(body: str, name: str = "p", selector: str = "{matchLabels: {app: web}}") -> str:
    head = (
        f"apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {{name: {name}, namespace: shop}}\n"
    )
    return head + f"spec:\n  endpointSelector: {selector}\n" + textwrap.indent(textwrap.dedent(body), "  ")


def keys(ep: EndpointPolicy, egress: bool | None = None) -> set[tuple[int, int, int, int, bool]]:
    """(identity, proto, port_lo, port_hi, deny) of the entries, without allow-localhost."""
    return {
        (e.identity, e.proto, e.port_lo, e.port_hi, e.deny)
        for e in ep.entries
        if (egress is None or e.egress == egress) and e.rule_ref != "allow-localhost"
    }


# ---- rule kinds and match types -----------------------------------------------------------------
def test_l3_only() -> None:
    w = World(cnp("ingress: [{fromEndpoints: [{matchLabels: {app: client}}]}]"))
    ep = w.resolve()
    assert ep.ingress_enforced and not ep.egress_enforced
    assert keys(ep) == {(w.ids["client"], 0, 0, 0, False)}
    assert ep.lookup(w.ids["client"], False, TCP, 9999).match_type == MatchType.L3_ONLY
    assert ep.lookup(w.ids["client"], False, ICMP, 8).allowed
    assert ep.lookup(w.ids["db"], False, TCP, 80) == ep.lookup(w.ids["db"], False, TCP, 80)
    assert not ep.lookup(w.ids["db"], False, TCP, 80).allowed
    assert not ep.lookup(w.ids["lab-client"], False, TCP, 80).allowed  # other namespace
    assert ep.lookup(w.ids["db"], True, TCP, 80).allowed  # egress not enforced
    assert ep.map_entries == len(ep.entries) + 1  # + the ingress-enforced marker


def test_l3_l4_l4_only_proto_and_all() -> None:
    w = World(
        cnp(
            """
            ingress:
            - fromEndpoints: [{matchLabels: {app: client}}]
              toPorts: [{ports: [{port: "80", protocol: TCP}]}]
            - toPorts: [{ports: [{port: "443", protocol: TCP}]}]
            - fromEndpoints: [{matchLabels: {app: db}}]
              toPorts: [{ports: [{protocol: UDP}]}]
            - toPorts: [{ports: [{protocol: SCTP}]}]
            egress:
            - toEntities: [all]
            """
        )
    )
    ep = w.resolve()
    client, db = w.ids["client"], w.ids["db"]
    assert keys(ep, egress=False) == {
        (client, TCP, 80, 80, False),
        (0, TCP, 443, 443, False),
        (db, UDP, 0, 0, False),
        (0, SCTP, 0, 0, False),
    }
    assert keys(ep, egress=True) == {(0, 0, 0, 0, False)}
    m = {e.port_lo if e.proto == TCP else e.proto: e.match_type for e in ep.entries if e.identity != 1}
    assert m == {
        80: MatchType.L3_L4,
        443: MatchType.L4_ONLY,
        UDP: MatchType.L3_PROTO,
        SCTP: MatchType.PROTO_ONLY,
        0: 4,
    }
    assert ep.lookup(client, False, TCP, 80).match_type == MatchType.L3_L4
    assert not ep.lookup(client, False, TCP, 81).allowed
    assert not ep.lookup(client, False, UDP, 80).allowed
    assert ep.lookup(w.ids["dns"], False, TCP, 443).match_type == MatchType.L4_ONLY
    assert ep.lookup(db, False, UDP, 5353).match_type == MatchType.L3_PROTO
    assert ep.lookup(db, False, SCTP, 1).match_type == MatchType.PROTO_ONLY
    assert ep.lookup(12345, True, ICMP, 8).match_type == MatchType.ALL


def test_default_deny_sections() -> None:
    deny_all = World(cnp("ingress: [{}]")).resolve()
    assert deny_all.ingress_enforced and keys(deny_all) == set()
    assert not deny_all.lookup(300, False, TCP, 80).allowed
    assert deny_all.lookup(1, False, TCP, 80).allowed  # allow-localhost (kubelet probes)
    empty_list = World(cnp("ingress: []\negress: []")).resolve()
    assert not empty_list.ingress_enforced and not empty_list.egress_enforced
    deny_only = World(cnp("egressDeny: [{toEntities: [world]}]")).resolve()
    assert deny_only.egress_enforced  # a deny section alone makes the direction default-deny
    opt_out = World(
        cnp(
            """
            enableDefaultDeny: {egress: false}
            egress: [{toEndpoints: [{}]}]
            egressDeny: [{toEntities: [world]}]
            """
        )
    ).resolve()
    assert not opt_out.egress_enforced
    assert keys(opt_out) == {(2, 0, 0, 0, True)}  # only the deny is written; the rest stays allowed
    assert opt_out.lookup(300, True, TCP, 1).allowed and not opt_out.lookup(2, True, TCP, 1).allowed


def test_enforcement_modes() -> None:
    docs = cnp("ingress: [{fromEndpoints: [{}]}]")
    assert World(docs, enforcement="always").resolve("dns").ingress_enforced  # selected by nothing
    never = World(docs, enforcement="never").resolve()
    assert (never.ingress_enforced, never.entries) == (False, ())


# ---- entities and CIDRs -------------------------------------------------------------------------
def test_entities() -> None:
    w = World(
        cnp(
            """
            egress:
            - toEntities: [world]
            - toEntities: [host, remote-node]
              toPorts: [{ports: [{port: "10250", protocol: TCP}]}]
            - toEntities: [cluster]
              toPorts: [{ports: [{port: "9000", protocol: TCP}]}]
            - toEntities: [none]
            - toEntities: [world-ipv6]
              toPorts: [{ports: [{port: "8443", protocol: TCP}]}]
            """
        ),
        extra_cidrs=("198.51.100.0/24", "2001:db8::/32"),
    )
    ep = w.resolve()
    by_port: dict[int, set[int]] = {}
    for e in ep.entries:
        by_port.setdefault(e.port_lo, set()).add(e.identity)
    v4, v6 = w.cidr["198.51.100.0/24"], w.cidr["2001:db8::/32"]
    assert by_port[0] == {2, v4, v6}  # world = world identity + every CIDR identity
    assert by_port[10250] == {1, 6}
    assert by_port[9000] == {1, 3, 4, 5, 6, 7, 8, *w.ids.values()}  # cluster, not world
    assert by_port[8443] == {2, v6}


def test_cidr_with_except() -> None:
    w = World(
        cnp(
            """
            egress:
            - toCIDRSet: [{cidr: 10.0.0.0/8, except: [10.1.0.0/16]}]
            - toCIDR: [0.0.0.0/0]
              toPorts: [{ports: [{port: "443", protocol: TCP}]}]
            """
        ),
        extra_cidrs=("10.2.0.0/16", "192.0.2.0/24", "2001:db8::/32"),
    )
    assert set(w.cidr) >= {"10.0.0.0/8", "10.1.0.0/16"}
    ep = w.resolve()
    l3 = {e.identity for e in ep.entries if e.proto == 0}
    assert l3 == {w.cidr["10.0.0.0/8"], w.cidr["10.2.0.0/16"]}  # inside, and not inside the except
    assert not ep.lookup(w.cidr["10.1.0.0/16"], True, TCP, 80).allowed
    https = {e.identity for e in ep.entries if e.port_lo == 443}
    assert https == {2} | {w.cidr[p] for p in ("10.0.0.0/8", "10.1.0.0/16", "10.2.0.0/16", "192.0.2.0/24")}


def test_required_cidr_prefixes() -> None:
    policies = parse_policy_documents(
        textwrap.dedent(
            cnp(
                """
                egress:
                - toCIDRSet: [{cidr: 10.0.0.0/8, except: [10.1.0.0/16, 10.2.0.0/16]}]
                - toCIDR: [0.0.0.0/0, 192.0.2.7, "2001:db8::/48"]
                """
            )
        )
        + "\n---\napiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: k}\n"
        "spec: {podSelector: {}, ingress: [{from: [{ipBlock: {cidr: 172.16.0.0/12}}]}]}\n",
        "p.yaml",
    )
    assert required_cidr_prefixes(policies) == {
        "10.0.0.0/8",
        "10.1.0.0/16",
        "10.2.0.0/16",
        "192.0.2.7/32",
        "2001:db8::/48",
        "172.16.0.0/12",
    }


# ---- ports --------------------------------------------------------------------------------------
def test_port_range_becomes_prefixes() -> None:
    w = World(cnp('ingress: [{toPorts: [{ports: [{port: "8000", endPort: 8010, protocol: TCP}]}]}]'))
    ep = w.resolve()
    assert sorted((e.port_lo, e.port_hi, e.prefixlen) for e in ep.entries if e.identity == 0) == [
        (8000, 8007, 61),
        (8008, 8009, 63),
        (8010, 8010, 64),
    ]
    allowed = [p for p in range(7990, 8020) if ep.lookup(w.ids["db"], False, TCP, p).allowed]
    assert allowed == list(range(8000, 8011))


def test_any_protocol_means_tcp_udp_sctp_and_icmp_rules() -> None:
    w = World(
        cnp(
            """
            ingress:
            - toPorts: [{ports: [{port: "53"}]}]
            - icmps: [{fields: [{type: EchoRequest}, {type: 128, family: IPv6}]}]
            egress:
            - toPorts: [{ports: [{protocol: ICMP}]}]
            """
        )
    )
    ep = w.resolve()
    assert keys(ep, egress=False) == {
        (0, TCP, 53, 53, False),
        (0, UDP, 53, 53, False),
        (0, SCTP, 53, 53, False),
        (0, ICMP, 8, 8, False),
        (0, 58, 128, 128, False),
    }
    assert keys(ep, egress=True) == {(0, ICMP, 0, 0, False)}
    assert not ep.lookup(300, False, ICMP, 13).allowed
    assert ep.lookup(300, False, ICMP, 8).allowed  # the ICMP type is looked up as the port
    assert ep.lookup(300, True, ICMP, 13).allowed


def test_named_ports() -> None:
    docs = cnp(
        """
        ingress:
        - toPorts: [{ports: [{port: http, protocol: TCP}, {port: metrics}, {port: dns, protocol: TCP}]}]
        egress:
        - toEndpoints: [{matchLabels: {app: db}}]
          toPorts: [{ports: [{port: pg}]}]
        - toPorts: [{ports: [{port: admin, protocol: TCP}]}]
        """
    )
    peer_ports = {
        "db": {"pg": {(5432, TCP)}, "admin": {(9999, TCP)}},
        "client": {"pg": {(6432, TCP)}},
    }
    w0 = World(docs)
    ids = w0.ids
    lookup = {ids[k]: v for k, v in peer_ports.items()}

    def named(identity: int) -> dict[str, set[tuple[int, int]]]:
        if identity == 0:  # any peer: every named port of every peer
            out: dict[str, set[tuple[int, int]]] = {}
            for ports in lookup.values():
                for name, values in ports.items():
                    out.setdefault(name, set()).update(values)
            return out
        return lookup.get(identity, {})

    w = World(docs, peer_named_ports=named)
    ep = w.resolve(named_ports={"http": (8080, TCP), "metrics": (9090, UDP), "dns": (53, UDP)})
    assert keys(ep, egress=False) == {
        (0, TCP, 8080, 8080, False),
        (0, UDP, 9090, 9090, False),
    }  # dns: TCP≠UDP
    assert keys(ep, egress=True) == {(ids["db"], TCP, 5432, 5432, False), (0, TCP, 9999, 9999, False)}
    assert keys(w.resolve(named_ports={}), egress=False) == set()  # the endpoint has no such ports


# ---- deny precedence ----------------------------------------------------------------------------
def test_deny_beats_allow_across_specificity() -> None:
    w = World(
        cnp(
            """
            ingress:
            - fromEndpoints: [{matchLabels: {app: client}}]
            - fromEndpoints: [{matchLabels: {app: db}}]
              toPorts: [{ports: [{port: "5432", protocol: TCP}, {port: "22", protocol: TCP}]}]
            - toPorts: [{ports: [{port: "8000", endPort: 8100, protocol: TCP}]}]
            ingressDeny:
            - fromEndpoints: [{matchLabels: {app: client}}]
              toPorts: [{ports: [{port: "22", protocol: TCP}]}]
            - fromEndpoints: [{matchLabels: {app: db}}]
            - toPorts: [{ports: [{port: "8050", endPort: 8060, protocol: TCP}]}]
            """
        )
    )
    ep = w.resolve()
    client, db = w.ids["client"], w.ids["db"]
    assert ep.lookup(client, False, TCP, 80).allowed
    assert not ep.lookup(client, False, TCP, 22).allowed  # specific deny under a broad allow
    # specific allows under a broad deny are removed, so the LPM lookup lands on the deny
    assert not any(e.identity == db and not e.deny for e in ep.entries)
    assert not ep.lookup(db, False, TCP, 5432).allowed
    assert not ep.lookup(db, False, TCP, 8001).allowed  # allowed for any peer, denied for db
    assert ep.lookup(client, False, TCP, 8049).allowed
    assert not ep.lookup(client, False, TCP, 8050).allowed  # any-peer deny range inside the allow range
    assert not any(not e.deny and e.identity == 0 and 8050 <= e.port_lo <= 8060 for e in ep.entries)
    v = ep.lookup(db, False, TCP, 5432)
    assert (
        v.rule_ref == "CiliumNetworkPolicy/shop/p:spec.ingressDeny[1]" and v.match_type == MatchType.L3_ONLY
    )


def test_deny_of_host_beats_allow_localhost() -> None:
    ep = World(cnp("ingress: [{}]\ningressDeny: [{fromEntities: [host]}]")).resolve()
    assert not ep.lookup(1, False, TCP, 10250).allowed
    assert not any(e.identity == 1 and not e.deny for e in ep.entries)
    no_localhost = World(cnp("ingress: [{}]"), allow_localhost=False).resolve()
    assert no_localhost.entries == () and not no_localhost.lookup(1, False, TCP, 1).allowed


def _semantic_verdict(w: World, ep: EndpointPolicy, peer: int, egress: bool, proto: int, port: int) -> bool:
    """What the policies mean, evaluated directly (no map, no prefixes): deny > allow > default."""
    allowed = False
    for policy in w.policies:
        for rule in policy.rules:
            if not w.resolver.selects(rule, w.ids["web"]):
                continue
            for pr in rule.peer_rules:
                if pr.egress != egress:
                    continue
                peers = w.resolver.peer_identities(pr)
                if 0 not in peers and peer not in peers:
                    continue
                if pr.ports is None:
                    hit = True
                else:
                    hit = any(
                        (proto in ((TCP, UDP, SCTP) if s.proto is None else (s.proto,)))
                        and ((s.port_lo, s.port_hi) == (0, 0) or s.port_lo <= port <= s.port_hi)
                        for s in pr.ports
                    )
                if hit and pr.deny:
                    return False
                allowed = allowed or (hit and (ep.egress_enforced if egress else ep.ingress_enforced))
    return allowed or not (ep.egress_enforced if egress else ep.ingress_enforced)


@pytest.mark.parametrize("seed", range(40))
def test_map_lookup_equals_policy_meaning(seed: int) -> None:
    """Random allow/deny mixes: the two-lookup LPM result always equals the direct evaluation."""
    rnd = random.Random(seed)
    peers = ["[{matchLabels: {app: client}}]", "[{matchLabels: {app: db}}]", "[{}]"]

    def ports() -> str:
        lo = rnd.choice([20, 22, 80, 443, 1000, 8000])
        span = rnd.choice([0, 0, 1, 7, 100, 3000])
        proto = rnd.choice(["TCP", "UDP", "ANY"])
        end = f", endPort: {lo + span}" if span else ""
        return f'{{port: "{lo}"{end}, protocol: {proto}}}' if rnd.random() < 0.8 else f"{{protocol: {proto}}}"

    lines = {"ingress": [], "ingressDeny": []}
    for section in lines:
        for _ in range(rnd.randint(1, 4)):
            parts = []
            if rnd.random() < 0.7:
                parts.append(f"fromEndpoints: {rnd.choice(peers)}")
            if rnd.random() < 0.7 or not parts:
                parts.append(
                    f"toPorts: [{{ports: [{', '.join(ports() for _ in range(rnd.randint(1, 2)))}]}}]"
                )
            lines[section].append("- {" + ", ".join(parts) + "}")
    body = "".join(f"{s}:\n" + "".join(f"  {ln}\n" for ln in ls) for s, ls in lines.items())
    w = World(cnp(body), allow_localhost=False)
    ep = w.resolve()
    for peer in (w.ids["client"], w.ids["db"], w.ids["lab-client"]):
        for proto in (TCP, UDP, SCTP, ICMP):
            for port in (1, 20, 21, 22, 80, 81, 443, 999, 1000, 1007, 1008, 1100, 3999, 8000, 8100, 11000):
                expected = _semantic_verdict(w, ep, peer, False, proto, port)
                assert ep.lookup(peer, False, proto, port).allowed == expected, (body, peer, proto, port)


# ---- limits, scope, notices ---------------------------------------------------------------------
def test_policy_map_overflow_names_the_endpoint() -> None:
    ports = ", ".join(f'{{port: "{p}"}}' for p in range(1000, 1040))  # 40 ports x TCP/UDP/SCTP
    w = World(cnp(f"egress: [{{toEntities: [cluster], toPorts: [{{ports: [{ports}]}}]}}]"))
    for i in range(150):
        w.alloc.acquire(identity_labels("bulk", {"app": f"a{i}"}))
    w.resolver.set_identities(w.alloc.identities())
    with pytest.raises(PolicyMapFull) as e:
        w.resolve()
    assert str(e.value) == (
        "endpoint 7 (x/web): policy needs 19441 policy-map entries but the map holds 16384 "
        "(bpf-policy-map-max); narrow the policies that select it (fewer peers, CIDRs or port ranges)"
    )
    eps = [LocalEndpoint(7, w.ids["web"], name="x/web"), LocalEndpoint(8, w.ids["db"], name="x/db")]
    result = w.resolver.resolve_all(w.policies, eps)
    assert set(result.errors) == {7} and set(result.policies) == {8}  # the others still get their policy
    small = World(cnp("ingress: [{toPorts: [{ports: [{port: '1', endPort: 65535}]}]}]"), max_entries=40)
    with pytest.raises(PolicyMapFull, match=r"needs 50 policy-map entries but the map holds 40"):
        small.resolve()


def test_host_policies_apply_to_the_host_endpoint_only() -> None:
    w = World(
        "apiVersion: cilium.io/v2\nkind: CiliumClusterwideNetworkPolicy\nmetadata: {name: host}\n"
        "spec:\n  nodeSelector: {}\n  ingress: [{fromEntities: [remote-node]}]\n"
    )
    host = w.resolve("1")
    assert host.ingress_enforced and keys(host) == {(6, 0, 0, 0, False)}
    assert host.lookup(1, False, TCP, 1).allowed is False  # no allow-localhost for the host itself
    assert not w.resolve("web").ingress_enforced


def test_notices_reach_the_endpoints_they_concern() -> None:
    w = World(cnp("ingress: [{toPorts: [{ports: [{port: '80', protocol: TCP}], rules: {kafka: [{}]}}]}]"))
    assert w.resolve().notices == (
        "p.yaml: CiliumNetworkPolicy 'p': spec.ingress[0].toPorts[0].rules: L7 rule not yet enforced "
        "(KAFKA): only its L3/L4 part is enforced",
    )
    assert w.resolve("db").notices == ()


def test_entry_shape_matches_the_map_key() -> None:
    e = PolicyEntry(True, 300, TCP, 8000, 8007, True, MatchType.L3_L4, "r")
    assert (e.prefixlen, e.flags, e.port_bits) == (61, 1, 13)
    assert PolicyEntry(False, 0, 0, 0, 0, False, MatchType.ALL, "r").prefixlen == 40
    assert PolicyEntry(False, 0, UDP, 0, 0, False, MatchType.PROTO_ONLY, "r").prefixlen == 48
    assert EndpointPolicy.marker_identity() == 0xFFFFFFFF
    ep = World(cnp("ingress: [{toPorts: [{ports: [{port: '80', protocol: TCP}]}]}]")).resolve()
    assert sorted(ep.map_items()) == [
        (40, 1, 0, 0, 0, 0, MatchType.L3_ONLY, "allow-localhost", 0),
        (64, 0, 0, TCP, 80, 0, MatchType.L4_ONLY, "CiliumNetworkPolicy/shop/p:spec.ingress[0]", 0),
        (64, 0xFFFFFFFF, 0, 0, 0, 0, MatchType.NONE, "", 0),  # ingress is enforced
    ]


def test_unknown_endpoint_identity_is_a_caller_error() -> None:
    w = World(cnp("ingress: [{}]"))
    with pytest.raises(ValueError, match="identity 4242 is unknown"):
        w.resolve("4242")


def test_node_selector_matches_node_labels_on_the_host_identity() -> None:
    w = World(
        "apiVersion: cilium.io/v2\nkind: CiliumClusterwideNetworkPolicy\nmetadata: {name: cp}\n"
        "spec:\n  nodeSelector: {matchLabels: {node-role.kubernetes.io/control-plane: ''}}\n"
        "  ingress: [{fromEntities: [cluster]}]\n"
    )
    assert not w.resolve("1").ingress_enforced  # the host identity carries no node labels yet
    identities = w.alloc.identities()
    identities[1] = frozenset({"reserved:host", "k8s:node-role.kubernetes.io/control-plane"})
    w.resolver.set_identities(identities)
    assert w.resolve("1").ingress_enforced


def test_new_identities_update_existing_policies() -> None:
    w = World(cnp("ingress: [{fromEndpoints: [{matchLabels: {app: client}}]}]"))
    before = keys(w.resolve())
    canary = w.alloc.acquire(identity_labels("shop", {"app": "client", "track": "canary"}, NS_LABELS["shop"]))
    w.resolver.set_identities(w.alloc.identities())
    assert keys(w.resolve()) == before | {(canary, 0, 0, 0, False)}
    w.alloc.release(identity_labels("shop", {"app": "client"}, NS_LABELS["shop"]))
    w.resolver.set_identities(w.alloc.identities())
    assert keys(w.resolve()) == {(canary, 0, 0, 0, False)}


def test_reported_match_type_prefers_the_more_specific_l4_part() -> None:
    w = World(
        cnp(
            """
            ingress:
            - fromEndpoints: [{matchLabels: {app: client}}]
            - toPorts: [{ports: [{port: "80", protocol: TCP}]}]
            """
        )
    )
    ep = w.resolve()
    assert ep.lookup(w.ids["client"], False, TCP, 80).match_type == MatchType.L4_ONLY  # as policy.h
    assert ep.lookup(w.ids["client"], False, TCP, 81).match_type == MatchType.L3_ONLY
