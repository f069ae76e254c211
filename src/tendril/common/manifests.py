"""Validation shared by every kind of manifest (pods, policies, services): Kubernetes name rules and
one error sentence per pydantic failure, so all kinds report problems the same way:
`<file>: <Kind> '<name>': unknown field "spec.ports[0].prot"`.
"""

from __future__ import annotations

import re
from typing import Any

from pydantic import ValidationError

DNS1123_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
DNS1123_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")

# pydantic's tags for union members and constrained types: not fields of the manifest
_TAGS = ("int", "str", "constrained-int")


def check_name(v: str) -> str:
    if len(v) > 253 or not DNS1123_SUBDOMAIN.match(v):
        raise ValueError(f"invalid name {v!r}: must be a lowercase RFC 1123 subdomain")
    return v


def check_namespace(v: str | None) -> str | None:
    if v is not None and (len(v) > 63 or not DNS1123_LABEL.match(v)):
        raise ValueError(f"invalid namespace {v!r}: must be a lowercase RFC 1123 label")
    return v


def field_path(loc: tuple[Any, ...]) -> str:
    """pydantic's error location as the dotted path users know: spec.containers[0].command."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif part in _TAGS or str(part).startswith(("function-", "constrained")):
            continue
        else:
            out += f".{part}" if out else str(part)
    return out


def pydantic_message(e: ValidationError) -> str:
    """The first problem, as one sentence naming the field."""
    errs = e.errors()
    err = errs[0]
    # for a union (e.g. targetPort: int | str) report the member the input was meant for
    for candidate in errs:
        if candidate["type"] not in ("int_type", "string_type", "int_from_float"):
            err = candidate
            break
    field = field_path(err["loc"])
    if err["type"] == "extra_forbidden":
        return f'unknown field "{field}"'
    if err["type"] == "missing":
        return f'missing required field "{field}"'
    msg = err["msg"].removeprefix("Value error, ")
    return f'invalid value for "{field}": {msg}'
