"""The policies the tests apply: cilium-cli's test manifests, adapted to the lab.

Adaptations: the namespace is the test's; the external CIDR / target / other IP are the lab
world's (203.0.113.0/24, .10, .11; IPv4 only, the world has no IPv6); DNS rules name the lab's
kube-dns pod; the external target is a lab world name (world.lab.test.); HTTP and DNS `rules:`
are Cilium's (the node's L7 and DNS proxies enforce them).
"""

from __future__ import annotations

from string import Template

from tendril.connectivity.deploy import Deployment

_KUBE_DNS = """\
      - { key: 'k8s-app', operator: In, values: [ "kube-dns", "coredns", "node-local-dns", "nodelocaldns" ] }
      - { key: 'io.kubernetes.pod.namespace', operator: In, values: [ "kube-system" ] }"""

ALLOW_ALL_EXCEPT_WORLD = """\
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata:
  name: allow-all-except-world
  namespace: $ns
spec:
  endpointSelector: {}
  egress:
  - toEntities: [host, remote-node, cluster, init, health, kube-apiserver]
  - toEndpoints:
    - matchExpressions:
      - { key: io.cilium.k8s.policy.cluster, operator: Exists }
  - toPorts:
    - ports:
      - { port: "53", protocol: UDP }
      - { port: "53", protocol: TCP }
    toEntities: [world]
  ingress:
  - fromEntities: [host, remote-node, cluster, init, health, kube-apiserver]
  - fromEndpoints:
    - matchExpressions:
      - { key: io.cilium.k8s.policy.cluster, operator: Exists }
"""

CLIENT_INGRESS_FROM_CLIENT2 = """\
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata:
  name: client-ingress-from-client2
  namespace: $ns
spec:
  endpointSelector:
    matchLabels: { kind: client }
  ingress:
  - fromEndpoints:
    - matchLabels: { other: client }
"""

CLIENT_INGRESS_FROM_CLIENT2_KNP = """\
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  name: client-ingress-from-client2
  namespace: $ns
spec:
  podSelector:
    matchLabels: { kind: client }
  ingress:
  - from:
    - podSelector:
        matchLabels: { other: client }
        matchExpressions:
        - { key: io.cilium.k8s.policy.cluster, operator: Exists }
"""

DENY_ALL_INGRESS = """\
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata:
  name: all-ingress-deny
  namespace: $ns
spec:
  endpointSelector: {}
  ingress:
  - {}
"""

DENY_ALL_INGRESS_KNP = """\
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  name: all-ingress-deny
  namespace: $ns
spec:
  podSelector: {}
  policyTypes: [Ingress]
"""

DENY_ALL_EGRESS = """\
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata:
  name: all-egress-deny
  namespace: $ns
spec:
  endpointSelector: {}
  egress:
  - {}
"""

DENY_ALL_EGRESS_KNP = """\
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  name: all-egress-deny
  namespace: $ns
spec:
  podSelector: {}
  policyTypes: [Egress]
"""

ECHO_INGRESS_FROM_OTHER_CLIENT = """\
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata:
  name: echo-ingress-from-other-client
  namespace: $ns
spec:
  description: "Allow other client to contact echo"
  endpointSelector:
    matchLabels: { kind: echo }
  ingress:
  - fromEndpoints:
    - matchLabels: { other: client }
      matchExpressions:
      - { key: io.cilium.k8s.policy.cluster, operator: Exists }
"""

ECHO_INGRESS_FROM_OTHER_CLIENT_KNP = """\
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  name: echo-ingress-from-other-client
  namespace: $ns
spec:
  podSelector:
    matchLabels: { kind: echo }
  ingress:
  - from:
    - podSelector:
        matchLabels: { other: client }
        matchExpressions:
        - { key: io.cilium.k8s.policy.cluster, operator: Exists }
"""

ECHO_INGRESS_FROM_OTHER_CLIENT_DENY = """\
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata:
  name: echo-ingress-from-other-client-deny
  namespace: $ns
spec:
  description: "Deny other client to contact echo"
  endpointSelector:
    matchLabels: { kind: echo }
  ingressDeny:
  - fromEndpoints:
    - matchLabels: { other: client }
      matchExpressions:
      - { key: io.cilium.k8s.policy.cluster, operator: Exists }
"""

CLIENT_EGRESS_TO_ECHO = """\
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata:
  name: client-egress-to-echo
  namespace: $ns
spec:
  endpointSelector:
    matchLabels: { kind: client }
  egress:
  - toPorts:
    - ports:
      - { port: "8080", protocol: TCP }
    toEndpoints:
    - matchLabels:
        io.kubernetes.pod.namespace: $ns
        kind: echo
      matchExpressions:
      - { key: io.cilium.k8s.policy.cluster, operator: Exists }
  - toPorts:
    - ports:
      - { port: "53", protocol: UDP }
      - { port: "53", protocol: TCP }
    toEndpoints:
    - matchExpressions:
$kube_dns
  - toPorts:
    - ports:
      - { port: "53", protocol: UDP }
      - { port: "53", protocol: TCP }
    toEntities: [world]
"""

CLIENT_EGRESS_TO_ECHO_KNP = """\
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  name: client-egress-to-echo
  namespace: $ns
spec:
  podSelector:
    matchLabels: { kind: client }
  egress:
  - to:
    - podSelector:
        matchLabels: { kind: echo }
        matchExpressions:
        - { key: io.cilium.k8s.policy.cluster, operator: Exists }
    ports:
    - { port: 8080, protocol: TCP }
  - to:
    - podSelector:
        matchExpressions:
        - { key: 'k8s-app', operator: In, values: ["kube-dns", "coredns", "node-local-dns", "nodelocaldns"] }
      namespaceSelector:
        matchLabels: { kubernetes.io/metadata.name: kube-system }
    ports:
    - { port: 53 }
  - ports:
    - { port: 53, protocol: UDP }
"""

CLIENT_EGRESS_TO_ECHO_DENY = """\
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata:
  name: client-egress-to-echo-deny
  namespace: $ns
spec:
  endpointSelector:
    matchLabels: { kind: client }
  egressDeny:
  - toPorts:
    - ports:
      - { port: "8080", protocol: TCP }
    toEndpoints:
    - matchLabels:
        io.kubernetes.pod.namespace: $ns
        kind: echo
      matchExpressions:
      - { key: io.cilium.k8s.policy.cluster, operator: Exists }
"""

ALLOW_ALL_EGRESS = """\
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata:
  name: allow-all-egress
  namespace: $ns
spec:
  endpointSelector: {}
  egress:
  - toEndpoints:
    - matchExpressions:
      - { key: io.cilium.k8s.policy.cluster, operator: Exists }
  - toCIDR: [0.0.0.0/0, "::/0"]
"""

ALLOW_ALL_INGRESS = """\
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata:
  name: allow-all-ingress
  namespace: $ns
spec:
  endpointSelector: {}
  ingress:
  - fromEndpoints:
    - matchExpressions:
      - { key: io.cilium.k8s.policy.cluster, operator: Exists }
"""

CLIENT_EGRESS_TO_ENTITIES_WORLD = """\
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata:
  name: client-egress-to-entities-world
  namespace: $ns
spec:
  endpointSelector:
    matchLabels: { kind: client }
  egress:
  - toEntities: [world]
    toPorts:
    - ports:
      - { port: "80", protocol: TCP }
  - toEndpoints:
    - matchExpressions:
$kube_dns
    toPorts:
    - ports:
      - { port: "53", protocol: UDP }
      - { port: "53", protocol: TCP }
"""

CLIENT_EGRESS_TO_CIDR_EXTERNAL = """\
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata:
  name: client-egress-to-cidr
  namespace: $ns
spec:
  endpointSelector:
    matchLabels: { kind: client }
  egress:
  - toCIDRSet:
    - cidr: "$external_cidr"
      except: ["$external_other_ip/32"]
"""

CLIENT_EGRESS_TO_CIDR_EXTERNAL_KNP = """\
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  name: client-egress-to-cidr
  namespace: $ns
spec:
  podSelector:
    matchLabels: { kind: client }
  egress:
  - to:
    - ipBlock:
        cidr: "$external_cidr"
        except: ["$external_other_ip/32"]
"""

CLIENT_EGRESS_TO_CIDR_EXTERNAL_DENY = """\
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata:
  name: client-egress-to-cidr-deny
  namespace: $ns
spec:
  endpointSelector:
    matchLabels: { kind: client }
  egressDeny:
  - toCIDRSet:
    - cidr: "$external_cidr"
      except: ["$external_ip/32"]
"""

CLIENT_EGRESS_ONLY_DNS = """\
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata:
  name: client-egress-only-dns
  namespace: $ns
spec:
  endpointSelector:
    matchLabels: { kind: client }
  egress:
  - toPorts:
    - ports:
      - { port: "53", protocol: UDP }
      - { port: "53", protocol: TCP }
    toEndpoints:
    - matchExpressions:
$kube_dns
      - { key: 'io.cilium.k8s.policy.cluster', operator: Exists }
  - toPorts:
    - ports:
      - { port: "53", protocol: UDP }
      - { port: "53", protocol: TCP }
    toEntities: [world]
"""

ECHO_INGRESS_L7 = """\
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata:
  name: echo-ingress-l7-http
  namespace: $ns
spec:
  description: "Allow other client to GET on echo"
  endpointSelector:
    matchLabels: { kind: echo }
  ingress:
  - fromEndpoints:
    - matchLabels: { other: client }
      matchExpressions:
      - { key: io.cilium.k8s.policy.cluster, operator: Exists }
    toPorts:
    - ports:
      - { port: "$echo_port", protocol: TCP }
      rules:
        http:
        - { method: GET, path: "/$$" }
        - { method: GET, path: "/public$$" }
        - method: GET
          path: "/private$$"
          headers: [ "X-Very-Secret-Token: 42" ]
"""

CLIENT_EGRESS_L7_HTTP = """\
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata:
  name: client-egress-l7-http
  namespace: $ns
spec:
  description: "Allow GET / requests towards echo pods"
  endpointSelector:
    matchLabels: { other: client }
  egress:
  - toPorts:
    - ports:
      - { port: "$echo_port", protocol: TCP }
      rules:
        http:
        - { method: GET, path: "/$$" }
    toEndpoints:
    - matchLabels: { kind: echo }
"""

CLIENT_EGRESS_L7_HTTP_METHOD = """\
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata:
  name: client-egress-l7-http-method
  namespace: $ns
spec:
  description: "Allow only POST requests towards echo pods"
  endpointSelector:
    matchLabels: { other: client }
  egress:
  - toPorts:
    - ports:
      - { port: "$echo_port", protocol: TCP }
      rules:
        http:
        - { method: POST }
    toEndpoints:
    - matchLabels: { kind: echo }
"""

CLIENT_EGRESS_TO_FQDNS = """\
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata:
  name: client-egress-to-fqdns
  namespace: $ns
spec:
  endpointSelector:
    matchLabels: { kind: client }
  egress:
  - toPorts:
    - ports:
      - { port: "80", protocol: TCP }
      rules:
        http:
        - { method: GET, path: "/$$" }
    toFQDNs:
    - matchName: "$external_target"
  - toPorts:
    - ports:
      - { port: "53", protocol: UDP }
      - { port: "53", protocol: TCP }
      rules:
        dns:
        - matchPattern: "*"
    toEndpoints:
    - matchExpressions:
$kube_dns
"""


def named_port(template: str) -> str:
    """The policy with the echo servers' port named (their container port "http") instead."""
    for name in ("echo-ingress-l7-http", "client-egress-l7-http"):
        template = template.replace(f"name: {name}\n", f"name: {name}-named-port\n")
    return template.replace('"$echo_port"', "http")


def render(template: str, d: Deployment) -> str:
    return Template(template).substitute(
        echo_port="8080",
        ns=d.namespace,
        external_cidr=d.external_cidr,
        external_ip=d.external_ip,
        external_other_ip=d.external_other_ip,
        external_target=d.external_target,
        kube_dns=_KUBE_DNS,
    )


def names(text: str) -> list[tuple[str, str | None, str]]:
    """(kind, namespace, name) of every document."""
    import yaml

    out = []
    for doc in yaml.safe_load_all(text):
        if doc:
            meta = doc.get("metadata", {})
            out.append((doc["kind"], meta.get("namespace"), meta["name"]))
    return out
