"""The names hubble's printer and flag parser give to numbers (cilium pkg/monitor/api, pkg/identity).

The CLI turns event sub-types into words (``to-endpoint``, ``Policy denied``) and accepts names in
``--type`` / ``--identity``; these tables are the vocabulary of cilium v1.19 that the golden
fixtures were produced with.
"""

from __future__ import annotations

from tendril.monitor import api

# pkg/monitor/api MessageType*.
MESSAGE_TYPE_DROP = 1
MESSAGE_TYPE_DEBUG = 2
MESSAGE_TYPE_CAPTURE = 3
MESSAGE_TYPE_TRACE = 4
MESSAGE_TYPE_POLICY_VERDICT = 5
MESSAGE_TYPE_RECORD_CAPTURE = 6
MESSAGE_TYPE_TRACE_SOCK = 7
MESSAGE_TYPE_ACCESS_LOG = 129
MESSAGE_TYPE_AGENT = 130

# monitorAPI.MessageTypeNames: what `--type NAME[:SUB]` accepts.
MESSAGE_TYPE_NAMES: dict[str, int] = {
    "drop": MESSAGE_TYPE_DROP,
    "debug": MESSAGE_TYPE_DEBUG,
    "capture": MESSAGE_TYPE_CAPTURE,
    "trace": MESSAGE_TYPE_TRACE,
    "policy-verdict": MESSAGE_TYPE_POLICY_VERDICT,
    "recorder": MESSAGE_TYPE_RECORD_CAPTURE,
    "trace-sock": MESSAGE_TYPE_TRACE_SOCK,
    "l7": MESSAGE_TYPE_ACCESS_LOG,
    "agent": MESSAGE_TYPE_AGENT,
}

# monitorAPI.TraceObservationPoints (trace event sub-types).
TRACE_OBSERVATION_POINTS: dict[int, str] = {
    0: "to-endpoint",
    1: "to-proxy",
    2: "to-host",
    3: "to-stack",
    4: "to-overlay",
    5: "from-endpoint",
    6: "from-proxy",
    7: "from-host",
    8: "from-stack",
    9: "from-overlay",
    10: "from-network",
    11: "to-network",
    12: "from-crypto",
    13: "to-crypto",
}

# Agent event sub-type names accepted by `--type agent:SUB` (hubble's agentEventSubtypes).
AGENT_EVENT_SUBTYPES: dict[str, int] = {
    "unspecified": 0,
    "message": 1,
    "agent-started": 2,
    "policy-updated": 5,
    "policy-deleted": 6,
    "endpoint-regenerate-success": 3,
    "endpoint-regenerate-failure": 4,
    "endpoint-created": 7,
    "endpoint-deleted": 8,
    "ipcache-upserted": 9,
    "ipcache-deleted": 10,
}

# monitorAPI drop reason texts (bpf/lib/common.h DROP_* codes).
DROP_REASONS: dict[int, str] = api.DROP_REASON_TEXT

# monitorAPI.PolicyMatchType strings.
POLICY_MATCH_TYPES: dict[int, str] = api.POLICY_MATCH_TYPES

# pkg/identity reserved identities that have a name (printed as "(name)").
RESERVED_IDENTITY_NAMES: dict[int, str] = api.RESERVED_IDENTITY_NAMES

# identity.GetAllReservedIdentities() as printed in hubble's "expected one of [...]" message:
# 11 (encrypted overlay) is reserved but has no name, so Go prints the number.
RESERVED_IDENTITIES_FOR_HELP = [
    "host",
    "world",
    "unmanaged",
    "health",
    "init",
    "remote-node",
    "kube-apiserver",
    "ingress",
    "world-ipv4",
    "world-ipv6",
    "11",
]

# identity.GetReservedID: names `--identity` accepts.
RESERVED_IDENTITY_IDS: dict[str, int] = {
    name: num for num, name in RESERVED_IDENTITY_NAMES.items() if num != 0
}


def trace_observation_point(sub_type: int) -> str:
    return TRACE_OBSERVATION_POINTS.get(sub_type & 0xFF, str(sub_type & 0xFF))


def drop_reason(sub_type: int, ext_error: int = 0) -> str:
    """monitorAPI.DropReasonExt: the text, or "<code>, <ext>" for codes it does not know."""
    code = sub_type & 0xFF
    if code in DROP_REASONS:
        return DROP_REASONS[code]
    return f"{code}, {ext_error}"


def policy_match_type(value: int) -> str:
    return POLICY_MATCH_TYPES.get(value, "unknown")


def identity_label(identity: int) -> str:
    """hubble's fmtIdentity: ``(name)`` for named reserved identities, else ``(ID:n)``."""
    name = RESERVED_IDENTITY_NAMES.get(identity)
    return f"({name})" if name is not None else f"(ID:{identity})"
