"""The flags of `hubble observe`, `hubble status` and `hubble list`, with hubble's names and defaults.

Kept apart from the commands so the help text, the request builder and the tests all see one
definition. Group names follow hubble's help sections.
"""

from __future__ import annotations

import os

from tendril.hubble.cli import gotime
from tendril.hubble.cli.filters_builder import FlowFilterBuilder
from tendril.hubble.cli.pflags import (
    BOOL,
    DURATION,
    FUNC,
    STRING,
    STRING_ARRAY,
    STRING_SLICE,
    UINT64,
    Flag,
    FlagSet,
)

DEFAULT_SERVER = "localhost:4245"
DEFAULT_LAB = "tendril"

SELECTORS = "Selectors"
FILTERS = "Filters"
RAW_FILTERS = "Raw-Filters"
FORMATTING = "Formatting"
SERVER = "Server"
OTHER = "Other"
GLOBAL = "Global"

OBSERVE_GROUPS = [SELECTORS, FILTERS, RAW_FILTERS, FORMATTING, SERVER, OTHER, GLOBAL]

_TIME_HELP = (
    "The format is relative (e.g. 3s, 4m, 1h43,, ...) or one of: YearMonthDay, YearMonthDayHour, "
    "YearMonthDayHourMinute, RFC3339, RFC3339Milli, RFC3339Micro, RFC3339Nano, RFC1123Z"
)


# (flag, shorthand, value used when given without a value, help) for every filter flag, in the
# order `hubble observe --help` lists them.
FILTER_FLAGS: list[tuple[str, str, str | None, str]] = [
    ("not", "", "true", "Reverses the next filter to be blacklist i.e. --not --from-ip 2.2.2.2"),
    ("uuid", "", None, "Show the only flow matching this unique flow identifier, if any"),
    ("node-name", "", None, 'Show all flows which match the given node names (e.g. "k8s*")'),
    ("node-label", "", None, 'Show only flows observed on nodes matching the label filter ("k=v")'),
    ("from-cluster", "", None, "Show all flows originating from endpoints in the given cluster"),
    ("cluster", "", None, 'Show all flows which match the cluster names (e.g. "prod-*")'),
    ("to-cluster", "", None, "Show all flows destined to endpoints in the given cluster"),
    ("protocol", "", None, 'Show only flows which match the given L4/L7 flow protocol (e.g. "udp")'),
    ("tcp-flags", "", None, 'Show only flows which match the given TCP flags (e.g. "syn", "ack")'),
    ("type", "t", None, "Filter by event types TYPE[:SUBTYPE] (drop, trace[:to-endpoint...], l7 ...)"),
    ("verdict", "", None, "Show only flows with this verdict (FORWARDED, DROPPED, AUDIT, ...)"),
    ("drop-reason-desc", "", None, 'Show only flows with this drop reason (e.g. "POLICY_DENIED")'),
    ("http-status", "", None, 'Show only flows which match this HTTP status code prefix (e.g. "5+")'),
    ("http-method", "", None, 'Show only flows which match this HTTP method (e.g. "get")'),
    ("http-path", "", None, "Show only flows which match this HTTP path regular expression"),
    ("http-url", "", None, "Show only flows which match this HTTP URL regular expression"),
    ("http-header", "", None, 'Show only flows which match this HTTP header key:value (e.g. "foo:bar")'),
    ("trace-id", "", None, "Show only flows which match this trace ID"),
    ("ip-trace-id", "", None, "Show only flows which match this IP trace ID"),
    ("from-fqdn", "", None, 'Show all flows originating at the given FQDN (e.g. "*.cilium.io")'),
    ("fqdn", "", None, 'Show all flows related to the given FQDN (e.g. "*.cilium.io")'),
    ("to-fqdn", "", None, 'Show all flows terminating at the given FQDN (e.g. "*.cilium.io")'),
    ("from-ip", "", None, "Show all flows originating at the given IP address or CIDR"),
    ("snat-ip", "", None, "Show all flows SNATed with the given IP address or CIDR"),
    ("ip", "", None, "Show all flows originating or terminating at the given IP address or CIDR"),
    ("to-ip", "", None, "Show all flows terminating at the given IP address or CIDR"),
    ("ipv4", "4", "v4", "Show only IPv4 flows"),
    ("ipv6", "6", "v6", "Show only IPv6 flows"),
    ("ip-version", "", None, 'Show only IPv4, IPv6 or non-IP flows ("v4", "v6", "none")'),
    ("from-pod", "", None, "Show all flows originating in the given pod name prefix ([namespace/]<pod>)"),
    ("pod", "", None, "Show all flows related to the given pod name prefix ([namespace/]<pod>)"),
    ("to-pod", "", None, "Show all flows terminating in the given pod name prefix ([namespace/]<pod>)"),
    ("from-namespace", "", None, "Show all flows originating in the given Kubernetes namespace."),
    ("namespace", "n", None, "Show all flows related to the given Kubernetes namespace."),
    ("to-namespace", "", None, "Show all flows terminating in the given Kubernetes namespace."),
    ("from-all-namespaces", "", "true", "Show flows originating in any Kubernetes namespace."),
    ("all-namespaces", "A", "true", "Show all flows in any Kubernetes namespace."),
    ("to-all-namespaces", "", "true", "Show flows terminating in any Kubernetes namespace."),
    ("from-label", "", None, 'Show only flows originating in an endpoint with the given labels ("k=v")'),
    ("label", "l", None, 'Show only flows related to an endpoint with the given labels ("k=v")'),
    ("to-label", "", None, 'Show only flows terminating in an endpoint with the given labels ("k=v")'),
    ("from-service", "", None, "Show flows whose source IP is the ClusterIP of the given service"),
    ("service", "", None, "Show flows whose source or destination IP is the given service's ClusterIP"),
    ("to-service", "", None, "Show flows whose destination IP is the ClusterIP of the given service"),
    ("from-port", "", None, "Show only flows with the given source port (e.g. 8080)"),
    ("port", "", None, "Show only flows with given port in either source or destination (e.g. 8080)"),
    ("to-port", "", None, "Show only flows with the given destination port (e.g. 8080)"),
    ("from-workload", "", None, "Show all flows originating at an endpoint with the given workload"),
    ("workload", "", None, "Show all flows related to an endpoint with the given workload"),
    ("to-workload", "", None, "Show all flows terminating at an endpoint with the given workload"),
    ("from-identity", "", None, "Show all flows originating at an endpoint with the given identity"),
    ("identity", "", None, "Show all flows related to an endpoint with the given security identity"),
    ("to-identity", "", None, "Show all flows terminating at an endpoint with the given identity"),
    ("traffic-direction", "", None, "Show all flows in the given traffic direction (ingress or egress)"),
    ("cel-expression", "", None, "Filter flows using the given CEL expression"),
    ("interface", "", None, "Show all flows observed at the given interface name (e.g. eth0)"),
    ("encrypted", "", "true", "Show only encrypted flows"),
    ("unencrypted", "", "true", "Show only unencrypted flows"),
]


def add_global_flags(fs: FlagSet) -> None:
    fs.add(Flag("config", STRING, "", help="Optional config file", group=GLOBAL))
    fs.add(Flag("debug", BOOL, False, shorthand="D", help="Enable debug messages", group=GLOBAL))


def add_server_flags(fs: FlagSet) -> None:
    g = SERVER
    fs.add(
        Flag(
            "server",
            STRING,
            DEFAULT_SERVER,
            help="Address of a Hubble server (default: the local Tendril agent's socket, else "
            "localhost:4245). Ignored when --input-file is provided.",
            group=g,
        )
    )
    fs.add(Flag("timeout", DURATION, 5 * gotime.SECOND, help="Hubble server dialing timeout", group=g))
    fs.add(
        Flag(
            "request-timeout",
            DURATION,
            12 * gotime.SECOND,
            help="Unary Request timeout. Only applies to non-streaming RPCs (ServerStatus, ListNodes, "
            "ListNamespaces).",
            group=g,
        )
    )
    fs.add(
        Flag("tls", BOOL, False, help="Specify that TLS must be used when establishing a connection", group=g)
    )
    fs.add(
        Flag(
            "tls-allow-insecure",
            BOOL,
            False,
            help="Allows the client to skip verifying the server's certificate chain and host name.",
            group=g,
        )
    )
    fs.add(Flag("tls-ca-cert-files", STRING_SLICE, [], help="Paths to custom CA certificate files", group=g))
    fs.add(
        Flag("tls-client-cert-file", STRING, "", help="Path to the client certificate (implies TLS)", group=g)
    )
    fs.add(
        Flag("tls-client-key-file", STRING, "", help="Path to the client private key (implies TLS)", group=g)
    )
    fs.add(Flag("tls-server-name", STRING, "", help="Server name to verify the certificate against", group=g))
    fs.add(Flag("basic-auth-username", STRING, "", help="Specify a username for basic auth", group=g))
    fs.add(Flag("basic-auth-password", STRING, "", help="Specify a password for basic auth", group=g))
    fs.add(Flag("port-forward", BOOL, False, help="Kubernetes only; not supported", group=g))
    fs.add(Flag("port-forward-port", STRING, "4245", help="Kubernetes only; not supported", group=g))
    fs.add(Flag("kube-context", STRING, "", help="Kubernetes only; not supported", group=g))
    fs.add(Flag("kube-namespace", STRING, "kube-system", help="Kubernetes only; not supported", group=g))
    fs.add(Flag("kubeconfig", STRING, "", help="Kubernetes only; not supported", group=g))
    fs.add(
        Flag(
            "lab",
            STRING,
            os.environ.get("TENDRIL_LAB", DEFAULT_LAB),
            help="Tendril lab whose agent to talk to when no server is given (env TENDRIL_LAB)",
            group=g,
        )
    )
    fs.add(
        Flag(
            "node",
            STRING,
            "",
            help="Tendril node whose agent to talk to when no server is given (default: the lab's first)",
            group=g,
        )
    )


def observe_flagset(builder: FlowFilterBuilder) -> FlagSet:
    """Every flag `hubble observe` accepts, filter flags wired to ``builder``."""
    fs = FlagSet()
    g = SELECTORS
    fs.add(Flag("all", BOOL, False, help="Get all flows stored in Hubble's buffer", group=g))
    fs.add(Flag("last", UINT64, 0, help="Get last N flows stored in Hubble's buffer (default 20)", group=g))
    fs.add(Flag("first", UINT64, 0, help="Get first N flows stored in Hubble's buffer", group=g))
    fs.add(Flag("follow", BOOL, False, shorthand="f", help="Follow flows output", group=g))
    fs.add(Flag("since", STRING, "", help="Filter flows since a specific date. " + _TIME_HELP, group=g))
    fs.add(Flag("until", STRING, "", help="Filter flows until a specific date. " + _TIME_HELP, group=g))

    for name, short, no_opt, text in FILTER_FLAGS:
        fs.add(
            Flag(
                name,
                FUNC,
                None,
                shorthand=short,
                help=text,
                no_opt_default=no_opt,
                setter=builder.setter(name),
                group=FILTERS,
            )
        )

    fs.add(
        Flag(
            "allowlist",
            STRING_ARRAY,
            [],
            help="Specify allowlist as JSON encoded FlowFilters",
            group=RAW_FILTERS,
        )
    )
    fs.add(
        Flag(
            "denylist",
            STRING_ARRAY,
            [],
            help="Specify denylist as JSON encoded FlowFilters",
            group=RAW_FILTERS,
        )
    )

    g = FORMATTING
    fs.add(
        Flag(
            "output",
            STRING,
            "compact",
            shorthand="o",
            help="Specify the output format, one of: compact, dict, jsonpb, json, table",
            group=g,
        )
    )
    fs.add(Flag("print-node-name", BOOL, False, help="Print node name in output", group=g))
    fs.add(Flag("print-policy-names", BOOL, False, help="Print policy names in output", group=g))
    fs.add(
        Flag(
            "time-format",
            STRING,
            "StampMilli",
            help="Specify the time format for printing, one of: " + ", ".join(gotime.FORMAT_NAMES),
            group=g,
        )
    )
    fs.add(Flag("numeric", BOOL, False, help="Display all information in numeric form", group=g))
    fs.add(
        Flag(
            "ip-translation",
            BOOL,
            True,
            help="Translate IP addresses to logical names such as pod name, FQDN, ...",
            group=g,
        )
    )
    fs.add(
        Flag(
            "color",
            STRING,
            "auto",
            help="Colorize the output: 'auto' (default), 'always' or 'never'",
            group=g,
        )
    )

    add_server_flags(fs)

    g = OTHER
    fs.add(
        Flag(
            "silent-errors", BOOL, False, shorthand="s", help="Silently ignores errors and warnings", group=g
        )
    )
    fs.add(
        Flag(
            "print-raw-filters",
            BOOL,
            False,
            help="Print allowlist/denylist filters and exit without sending the request to Hubble server",
            group=g,
        )
    )
    fs.add(
        Flag(
            "input-file",
            STRING,
            "",
            help="Query flows from this file instead of the server. Use '-' to read from stdin.",
            group=g,
        )
    )
    fs.add(Flag("field-mask", STRING_SLICE, [], help="Comma-separated list of fields for mask", group=g))
    fs.add(
        Flag(
            "use-default-field-masks",
            BOOL,
            True,
            help="Request only visible fields when the output format is compact, tab, or dict.",
            group=g,
        )
    )
    add_global_flags(fs)
    return fs


def status_flagset() -> FlagSet:
    fs = FlagSet()
    fs.add(
        Flag(
            "output",
            STRING,
            "compact",
            shorthand="o",
            help="Specify the output format, one of: compact, dict, json, table",
            group=FORMATTING,
        )
    )
    add_server_flags(fs)
    add_global_flags(fs)
    return fs


def list_flagset() -> FlagSet:
    fs = FlagSet()
    fs.add(
        Flag(
            "output",
            STRING,
            "table",
            shorthand="o",
            help="Specify the output format, one of: json, table, wide",
            group=FORMATTING,
        )
    )
    add_server_flags(fs)
    add_global_flags(fs)
    return fs
