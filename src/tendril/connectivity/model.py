"""The vocabulary of a connectivity test: peers, expected results, actions, scenarios and tests.

Modelled on cilium-cli's `check` package: a Test has policies and Scenarios; a Scenario produces
Actions (one curl, ping or DNS lookup from a source to a destination); each Action is judged by
two expected Results, one for the source side (egress) and one for the destination side
(ingress), which say what the command should return and which flows Hubble must have recorded.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

# ---- peers -------------------------------------------------------------------------------------


@dataclass
class Pod:
    """A pod of the test deployment (or the cluster DNS pod), as the agents report it."""

    namespace: str
    name: str
    node: str
    labels: dict[str, str]
    ips: list[str]  # IPv4 first, then IPv6
    netns: str = ""
    cgroup: str = ""
    resolv_conf: str = ""  # the pod's own /etc/resolv.conf (bind-mounted for DNS lookups)

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"

    @property
    def ipv4(self) -> str:
        return next((ip for ip in self.ips if ":" not in ip), self.ips[0] if self.ips else "")

    def has_label(self, key: str, value: str) -> bool:
        return self.labels.get(key) == value


@dataclass
class Host:
    """A node's host network namespace (the source of host-to-pod, the target of pod-to-host)."""

    node: str
    netns: str
    ip: str  # underlay IPv4
    ips: list[str]  # every address the node may use as a source (underlay v4/v6, pod routers)

    @property
    def key(self) -> str:
        return self.node


@dataclass
class Destination:
    """What an action reaches. `address`/`port` is what the command addresses; `addresses` and
    `ports` are every address/port the packets of the connection may carry on the way (a service's
    frontends and its backends), which is what the flows are matched against."""

    kind: str  # pod | service | nodeport | external | host | dns
    name: str  # shown in the action line: "tendril-test/echo-same-node", "world-http", ...
    address: str  # what the command targets (an IP, or a DNS name for services / lookups)
    port: int = 0
    addresses: set[str] = field(default_factory=set)
    ports: set[int] = field(default_factory=set)
    backends: list[Pod] = field(default_factory=list)  # pods that receive the traffic (ingress side)
    labels: dict[str, str] = field(default_factory=dict)  # of the destination pod(s)

    @property
    def backend_nodes(self) -> set[str]:
        return {p.node for p in self.backends}

    def has_label(self, key: str, value: str) -> bool:
        return self.labels.get(key) == value


# ---- expected results -----------------------------------------------------------------------

EXIT_ANY_ERROR = -1  # any non-zero exit code
EXIT_CURL_TIMEOUT = 28
EXIT_CURL_HTTP_ERROR = 22  # curl --fail on an HTTP status >= 400

DEFAULT_DENY = ("POLICY_DENIED",)  # Hubble's drop_reason_desc for "Policy denied" (133)
DENYLIST = ("POLICY_DENY",)  # "Policy denied by denylist" (181): a deny rule matched
ANY_POLICY_DROP = DEFAULT_DENY + DENYLIST


@dataclass(frozen=True)
class Result:
    """An expected outcome on one side of an action (cilium-cli's check.Result)."""

    name: str
    none: bool = False  # no flows expected on this side (e.g. ingress when egress drops)
    drop: bool = False
    egress_drop: bool = False  # the drop must happen on the source's node, leaving the source
    ingress_drop: bool = False  # the drop must happen on the destination's node, entering it
    reasons: tuple[str, ...] = ANY_POLICY_DROP
    exit_code: int = 0  # what the command must return: 0, a code, or EXIT_ANY_ERROR
    l7: bool = False  # the request goes through the L7 proxy on this side: HTTP flows expected
    http_status: int = 0  # the HTTP status the command must report (0: not checked)
    dns: bool = False  # the source resolves the destination's name through its node's DNS proxy

    def __str__(self) -> str:
        return self.name

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"result": self.name}
        if self.drop:
            out["drop"] = "egress" if self.egress_drop else "ingress" if self.ingress_drop else "any"
            out["drop_reasons"] = list(self.reasons)
        if not self.none:
            out["exit_code"] = "non-zero" if self.exit_code == EXIT_ANY_ERROR else self.exit_code
        if self.l7:
            out["l7"] = "http"
        if self.http_status:
            out["http_status"] = self.http_status
        if self.dns:
            out["dns"] = "proxy"
        return out


OK = Result("OK")
NONE = Result("None", none=True)
DROP = Result("Drop", drop=True, exit_code=EXIT_ANY_ERROR)
DROP_CURL_TIMEOUT = Result("DropCurlTimeout", drop=True, exit_code=EXIT_CURL_TIMEOUT)
DEFAULT_DENY_EGRESS_DROP = Result(
    "DefaultDenyEgressDrop", drop=True, egress_drop=True, reasons=DEFAULT_DENY, exit_code=EXIT_ANY_ERROR
)
DEFAULT_DENY_INGRESS_DROP = Result(
    "DefaultDenyIngressDrop", drop=True, ingress_drop=True, reasons=DEFAULT_DENY, exit_code=EXIT_ANY_ERROR
)
POLICY_DENY_EGRESS_DROP = Result(
    "PolicyDenyEgressDrop", drop=True, egress_drop=True, reasons=DENYLIST, exit_code=EXIT_ANY_ERROR
)
POLICY_DENY_INGRESS_DROP = Result(
    "PolicyDenyIngressDrop", drop=True, ingress_drop=True, reasons=DENYLIST, exit_code=EXIT_ANY_ERROR
)
# through the L7 proxy: the request is answered (200 by the server, or 403 by the proxy) and
# Hubble shows an http-request and an http-response flow (FORWARDED, or DROPPED when denied)
L7_OK = Result("L7OK", l7=True, http_status=200)
DROP_CURL_HTTP_ERROR = Result("DropCurlHTTPError", l7=True, http_status=403, exit_code=EXIT_CURL_HTTP_ERROR)
# the name is resolved through the DNS proxy (dns-request and dns-response flows FORWARDED), then
# the request goes through the L7 proxy, or the connection is denied by default leaving the source
DNS_L7_OK = Result("DNSL7OK", l7=True, http_status=200, dns=True)
DNS_OK_DEFAULT_DENY_EGRESS_DROP = Result(
    "DNSOKDefaultDenyEgressDrop", drop=True, egress_drop=True, reasons=DEFAULT_DENY,
    exit_code=EXIT_CURL_TIMEOUT, dns=True,
)  # fmt: skip


# ---- actions, scenarios, tests --------------------------------------------------------------


@dataclass
class Action:
    """One command from a source to a destination, and what it must show."""

    test: str
    scenario: str
    name: str  # e.g. curl-ipv4-0
    source: Pod | Host
    destination: Destination
    protocol: str  # tcp | icmp | udp (DNS)
    egress: Result = OK
    ingress: Result = OK
    metrics: list[str] = field(default_factory=list)  # agent counters that must increase
    method: str = "GET"  # HTTP requests (protocol tcp)
    path: str = "/"
    headers: dict[str, str] = field(default_factory=dict)

    @property
    def full_name(self) -> str:
        return f"{self.test}/{self.scenario}/{self.name}"

    def expected_exit_code(self) -> int:
        """The command's expected exit code: the egress side decides, then the ingress side."""
        for r in (self.egress, self.ingress):
            if r.drop:
                code = r.exit_code
                if self.protocol != "tcp" and code == EXIT_CURL_TIMEOUT:
                    return EXIT_ANY_ERROR  # ping / DNS lookups fail with their own codes
                return code
        for r in (self.egress, self.ingress):
            if r.exit_code and not r.none:
                return r.exit_code
        return 0

    def expected_http_status(self) -> int:
        for r in (self.egress, self.ingress):
            if r.drop:
                return 0
        return next((r.http_status for r in (self.egress, self.ingress) if r.http_status), 0)

    @property
    def l7(self) -> bool:
        return self.egress.l7 or self.ingress.l7


@dataclass
class Scenario:
    name: str
    build: Callable[[Any, str, str], list[Action]]  # (deployment, test name, scenario name)
    min_nodes: int = 1


ExpectFn = Callable[[Action], tuple[Result, Result]]


def expect_ok(_: Action) -> tuple[Result, Result]:
    return OK, OK


@dataclass
class TestCase:
    """A named test: policies applied for its duration, scenarios, and how to judge actions."""

    name: str
    scenarios: list[Scenario] = field(default_factory=list)
    policies: list[str] = field(default_factory=list)  # YAML documents (namespaced to the test ns)
    expect: ExpectFn = expect_ok
    skip_reason: str = ""  # a missing feature: the test is listed as skipped
    sequential: bool = False  # run its actions one after another (metrics checks)
    metrics: list[str] = field(default_factory=list)  # counters each action must increase
    final: bool = False  # judged on the whole run (runs last)


# ---- outcomes ---------------------------------------------------------------------------------


@dataclass
class ActionOutcome:
    action: Action
    command: Any = None  # actions.CommandResult
    validation: Any = None  # flows.Validation, or None when flows were not checked
    failures: list[str] = field(default_factory=list)  # why the action failed, one line each
    warnings: list[str] = field(default_factory=list)  # flow problems in --flow-validation=warning
    metrics: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.failures


@dataclass
class ScenarioOutcome:
    name: str
    skip_reason: str = ""
    actions: list[ActionOutcome] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(a.ok for a in self.actions)


@dataclass
class TestOutcome:
    name: str
    index: int = 0
    skip_reason: str = ""  # set when the test did not run
    user_skipped: bool = False  # not selected by --test
    scenarios: list[ScenarioOutcome] = field(default_factory=list)
    policies: list[str] = field(default_factory=list)  # kind/name of the policies it applied
    errors: list[str] = field(default_factory=list)  # set-up / tear-down failures
    duration: float = 0.0
    timings: dict[str, float] = field(default_factory=dict)  # seconds since the test started

    @property
    def ran(self) -> bool:
        return not self.skip_reason

    @property
    def ok(self) -> bool:
        return not self.errors and all(s.ok for s in self.scenarios)

    def actions(self) -> list[ActionOutcome]:
        return [a for s in self.scenarios for a in s.actions]
