"""Parsing the values of hubble's typed filter flags (--type, --identity, --tcp-flags, ...).

Each parser accepts exactly what hubble accepts and fails with hubble's wording, because the
message ends up verbatim after ``invalid argument "..." for "--flag" flag:``.
"""

from __future__ import annotations

from tendril.hubble.api import flow_pb2
from tendril.hubble.cli import names
from tendril.hubble.cli.pflags import FlagError, parse_uint

_TCP_FLAGS = ("SYN", "FIN", "RST", "PSH", "ACK", "URG", "ECE", "CWR", "NS")


def parse_identity(value: str) -> int:
    if value in names.RESERVED_IDENTITY_IDS:
        return names.RESERVED_IDENTITY_IDS[value]
    try:
        return parse_uint(value, 32)
    except ValueError:
        raise FlagError(
            "invalid security identity, expected one of "
            f"[{' '.join(names.RESERVED_IDENTITIES_FOR_HELP)}] or a numeric value"
        ) from None


def parse_workload(value: str) -> flow_pb2.Workload:
    if not value:
        return flow_pb2.Workload()
    kind, sep, name = value.partition("/")
    if not sep:
        return flow_pb2.Workload(name=value)
    return flow_pb2.Workload(kind=kind, name=name)


def parse_tcp_flags(value: str) -> flow_pb2.TCPFlags:
    flags = flow_pb2.TCPFlags()
    for part in value.split(","):
        upper = part.upper()
        if upper not in _TCP_FLAGS:
            raise FlagError(f"unknown tcp flag: {part}")
        setattr(flags, upper, True)
    return flags


def ip_version(value: str) -> int:
    lower = value.lower()
    if lower in ("4", "v4", "ipv4", "ip4"):
        return flow_pb2.IPv4
    if lower in ("6", "v6", "ipv6", "ip6"):
        return flow_pb2.IPv6
    return flow_pb2.IP_NOT_USED


def parse_event_type(value: str) -> flow_pb2.EventTypeFilter:
    tf = flow_pb2.EventTypeFilter()
    type_name, sep, sub = value.partition(":")
    named = names.MESSAGE_TYPE_NAMES.get(type_name)
    if named is not None:
        tf.type = named
    else:
        try:
            tf.type = parse_uint(type_name, 32, base=10) & 0xFFFFFFFF
        except ValueError as e:
            raise FlagError(
                f"unable to parse type '{type_name}', not a known type name and unable to parse "
                f"as numeric value: {e}"
            ) from None
        # hubble looks sub-type names up by the *named* type only (a numeric type never matches)
        named = 0
    if sep:
        if named == names.MESSAGE_TYPE_TRACE:
            for code, point in names.TRACE_OBSERVATION_POINTS.items():
                if point == sub:
                    tf.match_sub_type = True
                    tf.sub_type = code
                    break
        elif named == names.MESSAGE_TYPE_AGENT and sub in names.AGENT_EVENT_SUBTYPES:
            tf.match_sub_type = True
            tf.sub_type = names.AGENT_EVENT_SUBTYPES[sub]
        if not tf.match_sub_type:
            try:
                number = parse_uint(sub, 32, base=10)
            except ValueError as e:
                raise FlagError(
                    f"unable to parse event sub-type '{sub}', not a known sub-type name and unable "
                    f"to parse as numeric value: {e}"
                ) from None
            tf.match_sub_type = True
            tf.sub_type = number if number < 1 << 31 else number - (1 << 32)
    if tf.type >= 1 << 31:
        tf.type -= 1 << 32
    return tf


def enum_value(enum: object, value: str) -> int | None:
    by_name = enum.DESCRIPTOR.values_by_name  # type: ignore[attr-defined]
    return by_name[value].number if value in by_name else None
