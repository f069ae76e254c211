"""The catalogue: every test `tendril connectivity test` knows, in cilium-cli's order.

Each test names its policies, its scenarios and its expectations, as cilium-cli's
connectivity/builder/<test>.go do. Tests that need a feature the lab lacks are listed with the
reason they are skipped.
"""

from __future__ import annotations

from tendril.connectivity import policies as P
from tendril.connectivity import scenarios as S
from tendril.connectivity.deploy import EXTERNAL_IP, EXTERNAL_OTHER_IP, EXTERNAL_TARGET
from tendril.connectivity.metrics import FORWARD_COUNT
from tendril.connectivity.model import (
    DEFAULT_DENY_EGRESS_DROP,
    DEFAULT_DENY_INGRESS_DROP,
    DNS_L7_OK,
    DNS_OK_DEFAULT_DENY_EGRESS_DROP,
    DROP,
    DROP_CURL_HTTP_ERROR,
    DROP_CURL_TIMEOUT,
    L7_OK,
    NONE,
    OK,
    POLICY_DENY_EGRESS_DROP,
    POLICY_DENY_INGRESS_DROP,
    Action,
    ExpectFn,
    Result,
    Scenario,
    TestCase,
)

NO_TLS = (
    "L7 proxy without TLS interception yet (issue 8): no TLS origination/termination, no CA "
    "secrets (tls.secret / originatingTLS), and the lab's world serves no HTTPS"
)
NO_SET_HEADER = (
    "L7 proxy without header rewriting yet (issue 8): headerMatches `mismatch` actions "
    "(ADD/DELETE/REPLACE) are not supported, and Cilium's test also needs TLS interception"
)
NO_AUTH = "mutual authentication not implemented (issue 8): no `authentication.mode`, no SPIFFE/SPIRE"
NO_UNEXPECTED_PACKET_DROPS = "no-unexpected-packet-drops"


def _src(a: Action, key: str, value: str) -> bool:
    return getattr(a.source, "labels", {}).get(key) == value


def _external(a: Action) -> bool:
    return a.destination.address in (EXTERNAL_IP, EXTERNAL_OTHER_IP)


def client_ingress(a: Action) -> tuple[Result, Result]:
    if _src(a, "other", "client"):
        return OK, OK
    return OK, DEFAULT_DENY_INGRESS_DROP


def all_ingress_deny(a: Action) -> tuple[Result, Result]:
    # replies from the world are replies (conntrack), not new ingress: they pass
    if _external(a):
        return OK, NONE
    return DROP, DEFAULT_DENY_INGRESS_DROP


def all_egress_deny(_: Action) -> tuple[Result, Result]:
    return DEFAULT_DENY_EGRESS_DROP, NONE


def echo_ingress(a: Action) -> tuple[Result, Result]:
    if a.destination.has_label("kind", "echo") and not _src(a, "other", "client"):
        return DROP_CURL_TIMEOUT, DROP_CURL_TIMEOUT
    return OK, OK


def to_entities_world(a: Action) -> tuple[Result, Result]:
    if a.destination.port == 80:
        return OK, NONE
    return DROP_CURL_TIMEOUT, NONE


def to_cidr_external(a: Action) -> tuple[Result, Result]:
    if a.destination.address == EXTERNAL_OTHER_IP:
        return DROP_CURL_TIMEOUT, NONE
    return OK, NONE


def echo_ingress_from_other_client_deny(a: Action) -> tuple[Result, Result]:
    if _src(a, "other", "client") and a.destination.has_label("kind", "echo"):
        return DROP, POLICY_DENY_INGRESS_DROP
    return OK, OK


def client_egress_to_echo_deny(a: Action) -> tuple[Result, Result]:
    if _src(a, "kind", "client") and a.destination.has_label("kind", "echo") and a.destination.port == 8080:
        return POLICY_DENY_EGRESS_DROP, NONE
    return OK, NONE


def client_egress_to_cidr_deny(a: Action) -> tuple[Result, Result]:
    if a.destination.address == EXTERNAL_OTHER_IP:
        return POLICY_DENY_EGRESS_DROP, NONE
    if a.destination.address == EXTERNAL_IP:
        return OK, NONE
    return DROP, DROP


def dns_only(a: Action) -> tuple[Result, Result]:
    if a.destination.kind == "dns":
        return OK, OK
    return DROP_CURL_TIMEOUT, NONE


def to_fqdns(a: Action) -> tuple[Result, Result]:
    """Every name resolves through the DNS proxy; only the policy's name, on port 80, connects,
    through the L7 proxy (GET / allowed)."""
    if a.destination.address == EXTERNAL_TARGET and a.destination.port == 80:
        return DNS_L7_OK, NONE
    return DNS_OK_DEFAULT_DENY_EGRESS_DROP, NONE


def _http_denied(a: Action, allowed: list[tuple[str, str, dict[str, str]]]) -> bool:
    return (a.method, a.path, a.headers) not in allowed


ECHO_L7_ALLOWED = [
    ("GET", "/", {}),
    ("GET", "/public", {}),
    ("GET", "/private", {"X-Very-Secret-Token": "42"}),
]


def echo_ingress_l7(a: Action) -> tuple[Result, Result]:
    """Only client2 reaches echo (L3/L4), and the proxy on echo's node lets GET / and /public,
    and /private with the secret token, through; the rest gets 403."""
    if not _src(a, "other", "client"):
        return DROP_CURL_TIMEOUT, DROP_CURL_TIMEOUT
    if _http_denied(a, ECHO_L7_ALLOWED):
        return OK, DROP_CURL_HTTP_ERROR
    return OK, L7_OK


def client_egress_l7(allowed: list[tuple[str, str, dict[str, str]]]) -> ExpectFn:
    """client2 may send the allowed requests to echo:8080 through its node's proxy (others: 403);
    client1 may only resolve names (dns-only): its requests are dropped leaving it."""

    def expect(a: Action) -> tuple[Result, Result]:
        if not _src(a, "other", "client"):
            return DEFAULT_DENY_EGRESS_DROP, NONE
        if _http_denied(a, allowed):
            return DROP_CURL_HTTP_ERROR, NONE
        return L7_OK, NONE

    return expect


def _test(name: str, *scenarios: Scenario, **kw: object) -> TestCase:
    return TestCase(name, list(scenarios), **kw)  # type: ignore[arg-type]


def _skip(name: str, reason: str) -> TestCase:
    return TestCase(name, skip_reason=reason)


def catalogue() -> list[TestCase]:
    no_policies = [
        S.pod_to_pod, S.client_to_client, S.pod_to_service, S.pod_to_local_nodeport,
        S.pod_to_remote_nodeport, S.pod_to_world, S.pod_to_host, S.host_to_pod, S.pod_to_cidr, S.pod_to_dns,
    ]  # fmt: skip
    allow_all = [P.ALLOW_ALL_EGRESS, P.ALLOW_ALL_INGRESS]
    return [
        _test("no-policies", *no_policies),
        _test(
            "allow-all-except-world",
            S.pod_to_pod,
            S.client_to_client,
            S.pod_to_service,
            S.pod_to_host,
            policies=[P.ALLOW_ALL_EXCEPT_WORLD],
        ),  # fmt: skip
        _test(
            "client-ingress",
            S.client_to_client,
            policies=[P.CLIENT_INGRESS_FROM_CLIENT2],
            expect=client_ingress,
        ),
        _test(
            "client-ingress-knp",
            S.client_to_client,
            policies=[P.CLIENT_INGRESS_FROM_CLIENT2_KNP],
            expect=client_ingress,
        ),  # fmt: skip
        _test("allow-all-with-metrics-check", S.pod_to_pod, metrics=[FORWARD_COUNT], sequential=True),
        _test(
            "all-ingress-deny",
            S.pod_to_pod,
            S.pod_to_cidr,
            policies=[P.DENY_ALL_INGRESS],
            expect=all_ingress_deny,
        ),
        _test(
            "all-ingress-deny-knp",
            S.pod_to_pod,
            S.pod_to_cidr,
            policies=[P.DENY_ALL_INGRESS_KNP],
            expect=all_ingress_deny,
        ),  # fmt: skip
        _test("all-egress-deny", S.pod_to_pod, policies=[P.DENY_ALL_EGRESS], expect=all_egress_deny),
        _test("all-egress-deny-knp", S.pod_to_pod, policies=[P.DENY_ALL_EGRESS_KNP], expect=all_egress_deny),
        _test("echo-ingress", S.pod_to_pod, policies=[P.ECHO_INGRESS_FROM_OTHER_CLIENT], expect=echo_ingress),
        _test(
            "echo-ingress-knp",
            S.pod_to_pod,
            policies=[P.ECHO_INGRESS_FROM_OTHER_CLIENT_KNP],
            expect=echo_ingress,
        ),
        _test("client-egress", S.pod_to_pod, policies=[P.CLIENT_EGRESS_TO_ECHO]),
        _test("client-egress-knp", S.pod_to_pod, policies=[P.CLIENT_EGRESS_TO_ECHO_KNP]),
        _test(
            "to-entities-world",
            S.pod_to_world,
            policies=[P.CLIENT_EGRESS_TO_ENTITIES_WORLD],
            expect=to_entities_world,
        ),  # fmt: skip
        _test(
            "to-cidr-external",
            S.pod_to_cidr,
            policies=[P.CLIENT_EGRESS_TO_CIDR_EXTERNAL],
            expect=to_cidr_external,
        ),
        _test(
            "to-cidr-external-knp",
            S.pod_to_cidr,
            policies=[P.CLIENT_EGRESS_TO_CIDR_EXTERNAL_KNP],
            expect=to_cidr_external,
        ),  # fmt: skip
        _test(
            "echo-ingress-from-other-client-deny",
            S.pod_to_pod,
            S.client_to_client,
            policies=[*allow_all, P.ECHO_INGRESS_FROM_OTHER_CLIENT_DENY],
            expect=echo_ingress_from_other_client_deny,
        ),  # fmt: skip
        _test(
            "client-egress-to-echo-deny",
            S.client_to_client,
            S.pod_to_pod,
            policies=[*allow_all, P.CLIENT_EGRESS_TO_ECHO_DENY],
            expect=client_egress_to_echo_deny,
        ),  # fmt: skip
        _test(
            "client-egress-to-cidr-deny",
            S.pod_to_cidr,
            policies=[P.ALLOW_ALL_EGRESS, P.CLIENT_EGRESS_TO_CIDR_EXTERNAL_DENY],
            expect=client_egress_to_cidr_deny,
        ),  # fmt: skip
        _test(
            "echo-ingress-l7",
            S.pod_to_pod_with_endpoints(S.ROOT, S.PRIVATE, S.PRIVATE_WITH_TOKEN),
            policies=[P.ECHO_INGRESS_L7],
            expect=echo_ingress_l7,
        ),
        _test(
            "echo-ingress-l7-named-port",
            S.pod_to_pod_with_endpoints(S.ROOT, S.PRIVATE, S.PRIVATE_WITH_TOKEN),
            policies=[P.named_port(P.ECHO_INGRESS_L7)],
            expect=echo_ingress_l7,
        ),
        _test(
            "client-egress-l7-method",
            S.pod_to_pod_with_endpoints(S.POST_ROOT, S.ROOT),
            policies=[P.CLIENT_EGRESS_ONLY_DNS, P.CLIENT_EGRESS_L7_HTTP_METHOD],
            expect=client_egress_l7([("POST", "/", {})]),
        ),
        _test(
            "client-egress-l7",
            S.pod_to_pod_with_endpoints(S.ROOT, S.PRIVATE),
            policies=[P.CLIENT_EGRESS_ONLY_DNS, P.CLIENT_EGRESS_L7_HTTP],
            expect=client_egress_l7([("GET", "/", {})]),
        ),
        _test(
            "client-egress-l7-named-port",
            S.pod_to_pod_with_endpoints(S.ROOT, S.PRIVATE),
            policies=[P.CLIENT_EGRESS_ONLY_DNS, P.named_port(P.CLIENT_EGRESS_L7_HTTP)],
            expect=client_egress_l7([("GET", "/", {})]),
        ),
        _skip("client-egress-l7-tls-deny-without-headers", NO_TLS),
        _skip("client-egress-l7-tls-headers", NO_TLS),
        _skip("client-egress-l7-set-header", NO_SET_HEADER),
        _skip("echo-ingress-auth-always-fail", NO_AUTH),
        _skip("echo-ingress-mutual-auth-spiffe", NO_AUTH),
        _test(
            "dns-only",
            S.pod_to_pod,
            S.pod_to_world,
            S.pod_to_dns,
            policies=[P.CLIENT_EGRESS_ONLY_DNS],
            expect=dns_only,
        ),
        _test(
            "to-fqdns",
            S.pod_to_world,
            S.pod_to_world_2,
            policies=[P.CLIENT_EGRESS_TO_FQDNS],
            expect=to_fqdns,
        ),
        # judged on the whole run: the datapath's unexpected drop counters must not move
        TestCase(
            NO_UNEXPECTED_PACKET_DROPS, [Scenario(NO_UNEXPECTED_PACKET_DROPS, lambda d, t, s: [])], final=True
        ),
    ]
