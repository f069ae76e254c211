"""Bad policy input: one error naming the file, the object and the field; nothing of the file applies."""

from __future__ import annotations

import textwrap

import pytest

from tendril.common.errors import InvalidInputError
from tendril.policy import PolicyRepository, PolicyValidationError, parse_policy_documents
from tendril.policy.rules import FQDNPeer

CNP_HEAD = """\
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: web, namespace: shop}
spec:
  endpointSelector: {matchLabels: {app: web}}
"""
KNP_HEAD = """\
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: web}
spec:
  podSelector: {matchLabels: {app: web}}
"""


def error_of(text: str) -> str:
    with pytest.raises(PolicyValidationError) as e:
        parse_policy_documents(textwrap.dedent(text), "p.yaml")
    assert isinstance(e.value, InvalidInputError)  # the CLI prints these as one line
    return str(e.value)


def cnp(body: str) -> str:
    return CNP_HEAD + textwrap.indent(textwrap.dedent(body), "  ")


def knp(body: str) -> str:
    return KNP_HEAD + textwrap.indent(textwrap.dedent(body), "  ")


CNP_ERRORS = [
    (
        "ingress: [{fromEndpoint: [{}]}]",
        'unknown field "spec.ingress[0].fromEndpoint"',
    ),
    (
        'ingress: [{toPorts: [{ports: [{port: "0", protocol: TCP}]}]}]',
        'invalid value for "spec.ingress[0].toPorts[0].ports[0].port": port 0 is out of range 1..65535 '
        '(omit "port" to allow every port)',
    ),
    (
        "egress: [{toPorts: [{ports: [{port: 70000}]}]}]",
        'invalid value for "spec.egress[0].toPorts[0].ports[0].port": port 70000 is out of range 1..65535 '
        '(omit "port" to allow every port)',
    ),
    (
        'ingress: [{toPorts: [{ports: [{port: "8080", endPort: 8000}]}]}]',
        'invalid value for "spec.ingress[0].toPorts[0].ports[0].endPort": endPort 8000 must be >= port 8080',
    ),
    (
        'ingress: [{toPorts: [{ports: [{port: "http", endPort: 90}]}]}]',
        'invalid value for "spec.ingress[0].toPorts[0].ports[0].endPort": endPort needs a numeric port',
    ),
    (
        'ingress: [{toPorts: [{ports: [{port: "not_a_name"}]}]}]',
        "invalid value for \"spec.ingress[0].toPorts[0].ports[0].port\": port 'not_a_name' is neither a "
        "number 1..65535 nor a port name (a port name is at most 15 characters of a-z, 0-9 and '-', "
        "with at least one letter)",
    ),
    (
        'ingress: [{toPorts: [{ports: [{port: "80", protocol: tcp}]}]}]',
        "invalid value for \"spec.ingress[0].toPorts[0].ports[0].protocol\": unknown protocol 'tcp' "
        "(allowed: TCP, UDP, SCTP, ICMP, ICMPV6, VRRP, IGMP, ANY)",
    ),
    (
        'ingress: [{toPorts: [{ports: [{port: "8", protocol: ICMP}]}]}]',
        'invalid value for "spec.ingress[0].toPorts[0].ports[0].port": ICMP has no ports '
        "(use icmps to match ICMP types)",
    ),
    (
        "egress: [{toCIDR: [10.0.0.1/8]}]",
        "invalid value for \"spec.egress[0].toCIDR[0]\": '10.0.0.1/8' has host bits set "
        "(did you mean '10.0.0.0/8'?)",
    ),
    (
        "egress: [{toCIDR: [10.0.0.300]}]",
        "invalid value for \"spec.egress[0].toCIDR[0]\": '10.0.0.300' is not a valid CIDR",
    ),
    (
        "egress: [{toCIDRSet: [{cidr: 10.0.0.1}]}]",
        "invalid value for \"spec.egress[0].toCIDRSet[0].cidr\": '10.0.0.1' is not a CIDR: "
        "add a prefix length (e.g. 10.0.0.1/32)",
    ),
    (
        "egress: [{toCIDRSet: [{cidr: 10.0.0.0/8, except: [192.168.0.0/16]}]}]",
        "invalid value for \"spec.egress[0].toCIDRSet[0].except[0]\": except '192.168.0.0/16' must lie "
        "strictly inside cidr '10.0.0.0/8'",
    ),
    (
        "egress: [{toEntities: [world, internet]}]",
        "invalid value for \"spec.egress[0].toEntities[1]\": unknown entity 'internet' (known: all, world, "
        "world-ipv4, world-ipv6, cluster, host, init, ingress, unmanaged, remote-node, health, none, "
        "kube-apiserver)",
    ),
    (
        "ingress: [{fromEndpoints: [{matchLabels: {Bad Key: x}}]}]",
        "invalid value for \"spec.ingress[0].fromEndpoints[0].matchLabels\": label key 'Bad Key' is "
        "invalid: the name must be 1-63 characters of [A-Za-z0-9-_.], starting and ending alphanumeric",
    ),
    (
        "ingress: [{fromEndpoints: [{matchLabels: {foo:app: x}}]}]",
        "invalid value for \"spec.ingress[0].fromEndpoints[0].matchLabels\": label key 'foo:app' has unknown "
        "source 'foo:' (allowed: any:, k8s:, reserved: or none)",
    ),
    (
        "ingress: [{fromEndpoints: [{matchLabels: {reserved:wrld: ''}}]}]",
        "invalid value for \"spec.ingress[0].fromEndpoints[0].matchLabels\": label key 'reserved:wrld' names "
        "no reserved identity (known: health, host, ingress, init, kube-apiserver, remote-node, unmanaged, "
        "world)",
    ),
    (
        "ingress: [{fromEndpoints: [{matchLabels: {app: 'a b'}}]}]",
        "invalid value for \"spec.ingress[0].fromEndpoints[0].matchLabels\": label value 'a b' is invalid: "
        "at most 63 characters of [A-Za-z0-9-_.], starting and ending alphanumeric (or empty)",
    ),
    (
        "ingress: [{fromEndpoints: [{matchLabels: {version: 2}}]}]",
        'invalid value for "spec.ingress[0].fromEndpoints[0].matchLabels.version": Input should be a valid '
        "string",
    ),
    (
        "ingress: [{fromEndpoints: [{matchExpressions: [{key: app, operator: Equals, values: [a]}]}]}]",
        'invalid value for "spec.ingress[0].fromEndpoints[0].matchExpressions[0].operator": unknown operator '
        "'Equals' (allowed: In, NotIn, Exists, DoesNotExist)",
    ),
    (
        "ingress: [{fromEndpoints: [{matchExpressions: [{key: app, operator: In}]}]}]",
        'invalid value for "spec.ingress[0].fromEndpoints[0].matchExpressions[0].values": must be non-empty '
        "when operator is In",
    ),
    (
        "ingress: [{fromEndpoints: [{matchExpressions: [{key: app, operator: Exists, values: [a]}]}]}]",
        'invalid value for "spec.ingress[0].fromEndpoints[0].matchExpressions[0].values": must be empty '
        "when operator is Exists",
    ),
    (
        "ingress: [{fromEndpoints: [{}], fromCIDR: [10.0.0.0/8]}]",
        'invalid value for "spec.ingress[0]": combining fromEndpoints and fromCIDR in one rule is not '
        "supported; write separate rules",
    ),
    (
        "ingress: [{toPorts: [{ports: [{port: '80'}]}], icmps: [{fields: [{type: 8}]}]}]",
        'invalid value for "spec.ingress[0]": icmps cannot be combined with toPorts in one rule; write '
        "separate rules",
    ),
    (
        "ingress: [{icmps: [{fields: [{type: EchoReply}]}]}]",
        'invalid value for "spec.ingress[0].icmps[0].fields[0].type": ICMP type 0 (echo reply) cannot be '
        "selected: the policy map uses type 0 for 'every type', and replies are allowed by connection "
        "tracking anyway",
    ),
    (
        "ingress: [{icmps: [{fields: [{type: Ping}]}]}]",
        "invalid value for \"spec.ingress[0].icmps[0].fields[0].type\": unknown IPv4 ICMP type 'Ping' "
        "(known: EchoReply, DestinationUnreachable, Redirect, Echo, EchoRequest, RouterAdvertisement, "
        "RouterSelection, TimeExceeded, ParameterProblem, Timestamp, TimestampReply, Photuris, "
        "ExtendedEchoRequest, ExtendedEchoReply)",
    ),
    (
        "ingress: [{toPorts: [{ports: [{port: '53', protocol: UDP}], rules: {dns: [{matchPattern: '*'}]}}]}]",
        'invalid value for "spec.ingress[0].toPorts[0].rules.dns": DNS rules are only allowed on egress',
    ),
    (
        "ingress: [{toPorts: [{ports: [{port: '80', protocol: UDP}], rules: {http: [{}]}}]}]",
        'invalid value for "spec.ingress[0].toPorts[0].ports[0].protocol": L7 rules apply to TCP only '
        "(not UDP), except DNS rules",
    ),
    (
        "ingress: [{toPorts: [{rules: {http: [{}]}}]}]",
        'invalid value for "spec.ingress[0].toPorts[0].ports": must list at least one port',
    ),
    (
        "ingress: [{fromRequires: [{matchLabels: {env: prod}}]}]",
        'invalid value for "spec.ingress[0].fromRequires": fromRequires is deprecated in Cilium and not '
        "supported by tendril; put the required labels into the peer selectors instead",
    ),
    (
        "ingress: [{fromEndpoints: [{}], authentication: {mode: required}}]",
        'invalid value for "spec.ingress[0].authentication": mutual authentication is not supported by '
        "tendril (ignoring it would allow unauthenticated traffic); remove it to allow the traffic "
        "without authentication",
    ),
    (
        "egressDeny: [{toServices: [{k8sService: {serviceName: db, namespace: shop}}]}]",
        'invalid value for "spec.egressDeny[0].toServices": toServices is not supported by tendril in deny '
        "rules (ignoring it would leave traffic allowed)",
    ),
    (
        "egressDeny: [{toFQDNs: [{matchName: example.com}]}]",
        'unknown field "spec.egressDeny[0].toFQDNs"',
    ),
    (
        "ingressDeny: [{toPorts: [{ports: [{port: '80'}], rules: {http: [{}]}}]}]",
        'unknown field "spec.ingressDeny[0].toPorts[0].rules"',
    ),
    (
        "ingress: {fromEndpoints: []}",
        'invalid value for "spec.ingress": Input should be a valid list',
    ),
]


@pytest.mark.parametrize(("body", "message"), CNP_ERRORS, ids=[m.split('"')[1] for _, m in CNP_ERRORS])
def test_cnp_errors_name_file_object_and_field(body: str, message: str) -> None:
    assert error_of(cnp(body)) == f"p.yaml: CiliumNetworkPolicy 'web': {message}"


KNP_ERRORS = [
    ("ingress: [{ports: [{port: 0}]}]", "spec.ingress[0].ports[0].port", "port 0 is out of range 1..65535"),
    ("egress: [{ports: [{port: 65536}]}]", "spec.egress[0].ports[0].port", "port 65536 is out of range"),
    (
        "ingress: [{ports: [{port: 80, endPort: 79}]}]",
        "spec.ingress[0].ports[0].endPort",
        "must be >= port 80",
    ),
    (
        "ingress: [{ports: [{port: 80, protocol: ICMP}]}]",
        "spec.ingress[0].ports[0].protocol",
        "Input should be",
    ),
    (
        "ingress: [{from: [{}]}]",
        "spec.ingress[0].from[0]",
        "a peer needs podSelector, namespaceSelector or ipBlock",
    ),
    (
        "ingress: [{from: [{ipBlock: {cidr: 10.0.0.0/8}, podSelector: {}}]}]",
        "spec.ingress[0].from[0]",
        "ipBlock cannot be combined with podSelector or namespaceSelector",
    ),
    (
        "egress: [{to: [{ipBlock: {cidr: 10.0.0.0/8, except: [10.0.0.0/8]}}]}]",
        "spec.egress[0].to[0].ipBlock.except[0]",
        "must lie strictly inside cidr",
    ),
    (
        "ingress: [{from: [{podSelector: {matchLabels: {k8s:app: web}}}]}]",
        "spec.ingress[0].from[0].podSelector.matchLabels",
        "Kubernetes label keys cannot contain ':'",
    ),
    ("policyTypes: [Ingress, Ingress]", "spec.policyTypes", "lists Ingress more than once"),
    ("policyTypes: [Sideways]", "spec.policyTypes[0]", "Input should be 'Ingress' or 'Egress'"),
]


@pytest.mark.parametrize(("body", "field", "message"), KNP_ERRORS, ids=[f for _, f, _ in KNP_ERRORS])
def test_networkpolicy_errors(body: str, field: str, message: str) -> None:
    err = error_of(knp(body))
    assert err.startswith(f"p.yaml: NetworkPolicy 'web': invalid value for \"{field}\": "), err
    assert message in err


def test_document_level_errors() -> None:
    assert error_of("a: [b\n").startswith("p.yaml: malformed YAML: ")
    assert error_of("- 1\n- 2\n") == "p.yaml: document 1: expected a mapping with apiVersion/kind, got list"
    assert error_of("kind: Pod\nmetadata: {name: x}\n") == (
        "p.yaml: Pod 'x': unsupported kind 'Pod' (supported: CiliumNetworkPolicy, "
        "CiliumClusterwideNetworkPolicy, NetworkPolicy)"
    )
    assert error_of(CNP_HEAD.replace("cilium.io/v2", "cilium.io/v1")) == (
        "p.yaml: CiliumNetworkPolicy 'web': invalid value for \"apiVersion\": Input should be 'cilium.io/v2'"
    )
    no_spec = "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {name: web}\n"
    assert error_of(no_spec) == (
        'p.yaml: CiliumNetworkPolicy \'web\': missing required field "spec" (or a non-empty "specs")'
    )
    assert error_of(no_spec + "spec: {ingress: [{}]}\n") == (
        "p.yaml: CiliumNetworkPolicy 'web': missing required field \"spec.endpointSelector\" "
        '(or "nodeSelector")'
    )
    assert error_of(
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: x}\nspec: {}\n"
    ) == ("p.yaml: NetworkPolicy 'x': missing required field \"spec.podSelector\"")
    assert error_of(CNP_HEAD.replace("name: web", "name: Web")) == (
        "p.yaml: CiliumNetworkPolicy 'Web': invalid value for \"metadata.name\": invalid name 'Web': "
        "must be a lowercase RFC 1123 subdomain"
    )


def test_scope_errors() -> None:
    ccnp = CNP_HEAD.replace("kind: CiliumNetworkPolicy", "kind: CiliumClusterwideNetworkPolicy")
    assert error_of(ccnp) == (
        "p.yaml: CiliumClusterwideNetworkPolicy 'web': invalid value for \"metadata.namespace\": a "
        "CiliumClusterwideNetworkPolicy is cluster-scoped; remove the namespace"
    )
    node = "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {name: h}\n"
    node += "spec:\n  nodeSelector: {}\n"
    assert error_of(node) == (
        "p.yaml: CiliumNetworkPolicy 'h': invalid value for \"spec.nodeSelector\": nodeSelector (host "
        "policy) is only allowed in a CiliumClusterwideNetworkPolicy"
    )
    other_ns = CNP_HEAD.replace("{app: web}", "{app: web, k8s:io.kubernetes.pod.namespace: lab}")
    assert error_of(other_ns) == (
        "p.yaml: CiliumNetworkPolicy 'web': invalid value for \"spec.endpointSelector\": a "
        "CiliumNetworkPolicy in namespace 'shop' only selects endpoints of that namespace, but this selector "
        "asks for k8s:io.kubernetes.pod.namespace=lab; use a CiliumClusterwideNetworkPolicy"
    )


def test_bad_second_document_fails_the_whole_file() -> None:
    good = cnp("ingress: [{}]")
    bad = knp("ingress: [{ports: [{port: 0}]}]")
    repo = PolicyRepository()
    with pytest.raises(PolicyValidationError, match=r"p\.yaml: NetworkPolicy 'web': invalid value"):
        repo.apply(parse_policy_documents(good + "\n---\n" + bad, "p.yaml"))
    assert len(repo) == 0 and repo.revision == 0
    assert error_of(good + "\n---\n" + good).endswith("defined twice in this file (documents 1 and 2)")


def test_l7_rules_are_accepted_and_reported() -> None:
    (policy,) = parse_policy_documents(
        cnp(
            """
            ingress:
            - toPorts:
              - ports: [{port: "80", protocol: TCP}]
                rules: {http: [{method: GET, path: /}]}
            egress:
            - toPorts:
              - ports: [{port: "53", protocol: ANY}]
                rules: {dns: [{matchPattern: "*"}]}
            - toFQDNs: [{matchName: example.com}]
            - toPorts: [{ports: [{port: "443", protocol: TCP}], serverNames: [example.com]}]
            """
        ),
        "p.yaml",
    )
    assert policy.notices == (  # HTTP and DNS rules are enforced by the proxies, toFQDNs too
        "p.yaml: CiliumNetworkPolicy 'web': spec.egress[2].toPorts[0].serverNames: L7 rule not yet enforced "
        "(serverNames): only its L3/L4 part is enforced",
    )
    peer_rules = policy.rules[0].peer_rules
    assert [pr.l7 for pr in peer_rules] == [True, True, False, True]
    assert peer_rules[0].l7_rules is not None and peer_rules[1].l7_rules is not None
    assert peer_rules[1].l7_rules.kind == "dns"
    (fqdn,) = peer_rules[2].peers
    assert isinstance(fqdn, FQDNPeer) and fqdn.matches("Example.com.") and not fqdn.matches("a.example.com")


def test_networkpolicy_rules_outside_policy_types_are_reported() -> None:
    (policy,) = parse_policy_documents(knp("policyTypes: [Ingress]\negress: [{}]"), "p.yaml")
    assert policy.notices == (
        "p.yaml: NetworkPolicy 'web': spec.egress: ignored, spec.policyTypes does not include Egress",
    )
    assert not policy.rules[0].egress_default_deny and policy.rules[0].peer_rules == ()


def test_valid_inputs_that_look_odd() -> None:
    # bare YAML numbers for Cilium ports, bare IPs in toCIDR, named ports, ICMP by number and name
    (policy,) = parse_policy_documents(
        cnp(
            """
            egress:
            - toCIDR: [192.0.2.1, "2001:db8::/32"]
              toPorts: [{ports: [{port: 443, protocol: TCP}, {port: HTTP-alt}]}]
            - icmps: [{fields: [{type: 8}, {type: EchoRequest, family: IPv6}]}]
            """
        ),
        "p.yaml",
    )
    first, icmp = policy.rules[0].peer_rules
    assert [str(p.prefix) for p in first.peers] == ["192.0.2.1/32", "2001:db8::/32"]  # type: ignore[union-attr]
    assert first.ports is not None and first.ports[1].name == "http-alt"
    assert icmp.ports is not None and [(p.proto, p.port_lo) for p in icmp.ports] == [(1, 8), (58, 128)]
