"""Go-compatible protobuf JSON (``hubble observe -o jsonpb``) for the Hubble API messages.

``dumps(msg)`` reproduces, byte for byte, the compact JSON the upstream hubble CLI prints:
Go's ``protojson`` with proto field names, passed through ``encoding/json`` (which compacts it
and escapes HTML characters). Concretely:

* fields in **declaration order** of the .proto (not field-number order as Python's
  ``json_format`` produces), map entries sorted by key;
* default (zero) values of fields without presence omitted, fields with presence (messages,
  oneof members, wrappers) printed when set, even if empty (``"ICMPv4":{}``);
* enums by name (unknown numbers as numbers), 64-bit integers as strings, bytes as base64,
  floats formatted like Go (``1e+21``, ``1e-7``, ``"NaN"``), Timestamps/Durations with 0, 3, 6
  or 9 fraction digits;
* no whitespace; strings escaped like Go (``\\n``, ``\\u001b``) and ``&``, ``<``, ``>``,
  U+2028, U+2029 written as ``\\u0026``, ``\\u003c``, ``\\u003e``, ``\\u2028``, ``\\u2029``.

The CLI prints one such object per line (``dumps(msg) + "\\n"``).
"""

from __future__ import annotations

import base64
import json
import math
import struct
from decimal import Decimal

from google.protobuf import descriptor as _d
from google.protobuf import symbol_database
from google.protobuf.message import Message

__all__ = ["dumps", "quote"]

_FD = _d.FieldDescriptor

_HTML_ESCAPES = {
    "&": "\\u0026",
    "<": "\\u003c",
    ">": "\\u003e",
    "\u2028": "\\u2028",
    "\u2029": "\\u2029",
}
_HTML_TABLE = str.maketrans(_HTML_ESCAPES)

_INT32_TYPES = {_FD.TYPE_INT32, _FD.TYPE_SINT32, _FD.TYPE_SFIXED32, _FD.TYPE_UINT32, _FD.TYPE_FIXED32}
_INT64_TYPES = {_FD.TYPE_INT64, _FD.TYPE_SINT64, _FD.TYPE_SFIXED64, _FD.TYPE_UINT64, _FD.TYPE_FIXED64}

_WRAPPERS = {
    "google.protobuf.BoolValue",
    "google.protobuf.Int32Value",
    "google.protobuf.UInt32Value",
    "google.protobuf.Int64Value",
    "google.protobuf.UInt64Value",
    "google.protobuf.FloatValue",
    "google.protobuf.DoubleValue",
    "google.protobuf.StringValue",
    "google.protobuf.BytesValue",
}


def dumps(msg: Message) -> str:
    """Serialise ``msg`` exactly as the hubble CLI's ``-o jsonpb`` (one line, no newline)."""
    out: list[str] = []
    _message(msg, out)
    return "".join(out)


def quote(s: str) -> str:
    """A JSON string literal escaped like Go protojson + encoding/json (HTML-safe)."""
    return json.dumps(s, ensure_ascii=False).translate(_HTML_TABLE)


def _go_float(x: float, bits: int) -> str:
    if math.isnan(x):
        return '"NaN"'
    if math.isinf(x):
        return '"Infinity"' if x > 0 else '"-Infinity"'
    if bits == 32:
        shortest = _shortest_float32(x)
        small, big = abs(float(shortest)) < 1e-6, abs(x) >= 1e21
    else:
        shortest = repr(x)
        small, big = abs(x) < 1e-6, abs(x) >= 1e21
    if x != 0 and (small or big):
        # 'e' format with the shortest digits: d[.ddd]e±XX, Go trims "e-0X" to "e-X".
        mant, _, exp = f"{Decimal(shortest):e}".partition("e")
        digits = Decimal(mant).normalize()
        mant_s = format(digits, "f")
        e = int(exp)
        exp_s = f"e{'-' if e < 0 else '+'}{abs(e):02d}"
        if exp_s.startswith("e-0"):
            exp_s = "e-" + exp_s[3:]
        return mant_s + exp_s
    return format(Decimal(shortest).normalize(), "f")


def _shortest_float32(x: float) -> str:
    f32 = struct.unpack("<f", struct.pack("<f", x))[0]
    for prec in range(1, 10):
        s = f"{f32:.{prec}g}"
        if struct.unpack("<f", struct.pack("<f", float(s)))[0] == f32:
            return s
    return repr(f32)  # pragma: no cover


def _scalar(fd: _d.FieldDescriptor, value: object, out: list[str]) -> None:
    t = fd.type
    if t == _FD.TYPE_STRING:
        out.append(quote(value))  # type: ignore[arg-type]
    elif t == _FD.TYPE_BOOL:
        out.append("true" if value else "false")
    elif t in _INT32_TYPES:
        out.append(str(int(value)))  # type: ignore[call-overload]
    elif t in _INT64_TYPES:
        out.append(f'"{int(value)}"')  # type: ignore[call-overload]
    elif t == _FD.TYPE_ENUM:
        if fd.enum_type.full_name == "google.protobuf.NullValue":
            out.append("null")
            return
        ev = fd.enum_type.values_by_number.get(int(value))  # type: ignore[call-overload]
        out.append(quote(ev.name) if ev is not None else str(int(value)))  # type: ignore[call-overload]
    elif t == _FD.TYPE_DOUBLE:
        out.append(_go_float(float(value), 64))  # type: ignore[arg-type]
    elif t == _FD.TYPE_FLOAT:
        out.append(_go_float(float(value), 32))  # type: ignore[arg-type]
    elif t == _FD.TYPE_BYTES:
        out.append('"' + base64.b64encode(value).decode("ascii") + '"')  # type: ignore[arg-type]
    elif t in (_FD.TYPE_MESSAGE, _FD.TYPE_GROUP):
        _message(value, out)  # type: ignore[arg-type]
    else:  # pragma: no cover
        raise TypeError(f"unsupported field type {t} for {fd.full_name}")


def _is_set(msg: Message, fd: _d.FieldDescriptor) -> bool:
    if _is_repeated(fd):
        return len(getattr(msg, fd.name)) > 0
    if fd.has_presence:
        return msg.HasField(fd.name)
    v = getattr(msg, fd.name)
    if fd.type == _FD.TYPE_BYTES or fd.type == _FD.TYPE_STRING:
        return len(v) > 0
    if fd.type in (_FD.TYPE_DOUBLE, _FD.TYPE_FLOAT):
        return v != 0 or math.copysign(1.0, v) < 0  # Go keeps -0 (non-zero bits)
    return bool(v)


def _is_repeated(fd: _d.FieldDescriptor) -> bool:
    rep = getattr(fd, "is_repeated", None)
    if rep is not None:
        return bool(rep)
    return fd.label == _FD.LABEL_REPEATED  # pragma: no cover - older protobuf


def _is_map(fd: _d.FieldDescriptor) -> bool:
    return (
        fd.type == _FD.TYPE_MESSAGE and fd.message_type.has_options and fd.message_type.GetOptions().map_entry
    )


def _map_key_str(fd: _d.FieldDescriptor, key: object) -> str:
    if fd.type == _FD.TYPE_BOOL:
        return "true" if key else "false"
    return str(key)


def _message(msg: Message, out: list[str]) -> None:
    desc = msg.DESCRIPTOR
    name = desc.full_name
    if name.startswith("google.protobuf.") and _well_known(msg, name, out):
        return
    out.append("{")
    first = True
    for fd in desc.fields:
        if not _is_set(msg, fd):
            continue
        if not first:
            out.append(",")
        first = False
        out.append(quote(fd.name))
        out.append(":")
        value = getattr(msg, fd.name)
        if _is_map(fd):
            key_fd = fd.message_type.fields_by_name["key"]
            val_fd = fd.message_type.fields_by_name["value"]
            out.append("{")
            for i, k in enumerate(sorted(value.keys())):
                if i:
                    out.append(",")
                out.append(quote(_map_key_str(key_fd, k)))
                out.append(":")
                _scalar(val_fd, value[k], out)
            out.append("}")
        elif _is_repeated(fd):
            out.append("[")
            for i, item in enumerate(value):
                if i:
                    out.append(",")
                _scalar(fd, item, out)
            out.append("]")
        else:
            _scalar(fd, value, out)
    out.append("}")


def _well_known(msg: Message, name: str, out: list[str]) -> bool:
    """Write the special JSON form of a well-known type; False if ``name`` has none."""
    if name in ("google.protobuf.Timestamp", "google.protobuf.Duration", "google.protobuf.FieldMask"):
        out.append(quote(msg.ToJsonString()))  # type: ignore[attr-defined]
    elif name in _WRAPPERS:
        _scalar(msg.DESCRIPTOR.fields_by_name["value"], msg.value, out)  # type: ignore[attr-defined]
    elif name == "google.protobuf.Struct":
        out.append("{")
        for i, k in enumerate(sorted(msg.fields.keys())):  # type: ignore[attr-defined]
            if i:
                out.append(",")
            out.append(quote(k))
            out.append(":")
            _message(msg.fields[k], out)  # type: ignore[attr-defined]
        out.append("}")
    elif name == "google.protobuf.ListValue":
        out.append("[")
        for i, v in enumerate(msg.values):  # type: ignore[attr-defined]
            if i:
                out.append(",")
            _message(v, out)
        out.append("]")
    elif name == "google.protobuf.Value":
        kind = msg.WhichOneof("kind")
        if kind is None:
            raise ValueError("google.protobuf.Value: no kind set")
        _scalar(msg.DESCRIPTOR.fields_by_name[kind], getattr(msg, kind), out)
    elif name == "google.protobuf.Any":
        _any(msg, out)
    else:
        return False
    return True


# Well-known types that Go protojson writes as {"@type": ..., "value": <special form>} inside an Any.
_ANY_VALUE_FORM = _WRAPPERS | {
    "google.protobuf.Any",
    "google.protobuf.Timestamp",
    "google.protobuf.Duration",
    "google.protobuf.FieldMask",
    "google.protobuf.Struct",
    "google.protobuf.ListValue",
    "google.protobuf.Value",
    "google.protobuf.Empty",
}


def _any(msg: Message, out: list[str]) -> None:
    type_url: str = msg.type_url  # type: ignore[attr-defined]
    if not type_url:
        out.append("{}")
        return
    full_name = type_url.rsplit("/", 1)[-1]
    inner = symbol_database.Default().GetSymbol(full_name)()
    inner.ParseFromString(msg.value)  # type: ignore[attr-defined]
    body: list[str] = []
    _message(inner, body)
    inner_json = "".join(body)
    out.append("{" + quote("@type") + ":" + quote(type_url))
    if full_name in _ANY_VALUE_FORM:
        out.append("," + quote("value") + ":" + inner_json + "}")
    elif inner_json == "{}":
        out.append("}")
    else:
        out.append("," + inner_json[1:])
