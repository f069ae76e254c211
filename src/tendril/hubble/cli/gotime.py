"""Go's time and duration text, as the hubble CLI prints and parses it.

The hubble CLI formats flow times with Go layouts (``--time-format``), accepts ``--since`` /
``--until`` in a handful of Go layouts or as a Go duration, and prints uptimes with
``time.Duration.String()``. Python's strftime/strptime differ in padding, fraction trimming and
strictness, so the few layouts hubble uses are implemented here directly.
"""

from __future__ import annotations

import calendar
import datetime as _dt
import re
import time as _time

from tendril.hubble.cli.goquote import go_quote

# Go layout strings (kept verbatim: they appear in help texts and name the formats).
STAMP_MILLI = "Jan _2 15:04:05.000"
YEAR_MONTH_DAY = "2006-01-02"
YEAR_MONTH_DAY_HOUR = "2006-01-02T15Z07:00"
YEAR_MONTH_DAY_HOUR_MINUTE = "2006-01-02T15:04Z07:00"
RFC3339 = "2006-01-02T15:04:05Z07:00"
RFC3339_MILLI = "2006-01-02T15:04:05.999Z07:00"
RFC3339_MICRO = "2006-01-02T15:04:05.999999Z07:00"
RFC3339_NANO = "2006-01-02T15:04:05.999999999Z07:00"
RFC1123Z = "Mon, 02 Jan 2006 15:04:05 -0700"

# `--time-format` names, in the order hubble lists them.
FORMAT_NAMES = [
    "YearMonthDay",
    "YearMonthDayHour",
    "YearMonthDayHourMinute",
    "StampMilli",
    "RFC3339",
    "RFC3339Milli",
    "RFC3339Micro",
    "RFC3339Nano",
    "RFC1123Z",
]

_NAME_TO_LAYOUT = {
    "yearmonthday": YEAR_MONTH_DAY,
    "yearmonthdayhour": YEAR_MONTH_DAY_HOUR,
    "yearmonthdayhourminute": YEAR_MONTH_DAY_HOUR_MINUTE,
    "rfc3339": RFC3339,
    "rfc3339milli": RFC3339_MILLI,
    "rfc3339micro": RFC3339_MICRO,
    "rfc3339nano": RFC3339_NANO,
    "rfc1123z": RFC1123Z,
}

_MONTHS = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"]
_DAYS = ["Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"]  # datetime.weekday() order

# google.protobuf.Timestamp validity range (0001-01-01 .. 9999-12-31T23:59:59).
_MIN_SECONDS = -62135596800
_MAX_SECONDS = 253402300799
_EPOCH = _dt.datetime(1970, 1, 1)

NANOSECOND = 1
MICROSECOND = 1000
MILLISECOND = 1000 * MICROSECOND
SECOND = 1000 * MILLISECOND
MINUTE = 60 * SECOND
HOUR = 60 * MINUTE
_MAX_DURATION = (1 << 63) - 1


def layout_for_name(name: str) -> str:
    """The Go layout for a `--time-format` name; unknown names fall back to StampMilli, as in hubble."""
    return _NAME_TO_LAYOUT.get(name.lower(), STAMP_MILLI)


def timestamp_valid(seconds: int, nanos: int) -> bool:
    """Mirror of timestamppb.IsValid: hubble prints N/A for anything outside this range."""
    return _MIN_SECONDS <= seconds <= _MAX_SECONDS and 0 <= nanos < 1_000_000_000


def _fraction(nanos: int, digits: int, trim: bool) -> str:
    text = f"{nanos:09d}"[:digits]
    if trim:
        text = text.rstrip("0")
        return "." + text if text else ""
    return "." + text


def format_time(seconds: int, nanos: int, layout: str) -> str:
    """Format a UTC instant with one of the Go layouts above (hubble always prints UTC)."""
    t = _EPOCH + _dt.timedelta(seconds=seconds)
    date = f"{t.year:04d}-{t.month:02d}-{t.day:02d}"
    hms = f"{t.hour:02d}:{t.minute:02d}:{t.second:02d}"
    if layout == STAMP_MILLI:
        return f"{_MONTHS[t.month - 1]} {t.day:>2} {hms}{_fraction(nanos, 3, False)}"
    if layout == YEAR_MONTH_DAY:
        return date
    if layout == YEAR_MONTH_DAY_HOUR:
        return f"{date}T{t.hour:02d}Z"
    if layout == YEAR_MONTH_DAY_HOUR_MINUTE:
        return f"{date}T{t.hour:02d}:{t.minute:02d}Z"
    if layout == RFC3339:
        return f"{date}T{hms}Z"
    if layout == RFC3339_MILLI:
        return f"{date}T{hms}{_fraction(nanos, 3, True)}Z"
    if layout == RFC3339_MICRO:
        return f"{date}T{hms}{_fraction(nanos, 6, True)}Z"
    if layout == RFC3339_NANO:
        return f"{date}T{hms}{_fraction(nanos, 9, True)}Z"
    if layout == RFC1123Z:
        return f"{_DAYS[t.weekday()]}, {t.day:02d} {_MONTHS[t.month - 1]} {t.year:04d} {hms} +0000"
    raise ValueError(f"unsupported time layout {layout!r}")


# --- parsing -------------------------------------------------------------------------------------

_DATE = r"(?P<y>\d{4})-(?P<mo>\d{2})-(?P<d>\d{2})"
_FRAC = r"(?:[.,](?P<frac>\d+))?"
_ZONE = r"(?P<zone>Z|[+-]\d{2}:\d{2})"
_DAY_NAMES = "|".join(_DAYS)
_MONTH_NAMES = "|".join(_MONTHS)

# Go's time.Parse accepts a fractional second after the seconds field even when the layout has
# none, and a 1- or 2-digit hour for the "15" element; everything else is fixed width.
_PARSERS: list[re.Pattern[str]] = [
    re.compile(_DATE),
    re.compile(_DATE + r"T(?P<h>\d{1,2})" + _ZONE),
    re.compile(_DATE + r"T(?P<h>\d{1,2}):(?P<mi>\d{2})" + _ZONE),
    re.compile(_DATE + r"T(?P<h>\d{1,2}):(?P<mi>\d{2}):(?P<s>\d{2})" + _FRAC + _ZONE),
    re.compile(
        rf"(?:{_DAY_NAMES}), (?P<d>\d{{2}}) (?P<mon>{_MONTH_NAMES}) (?P<y>\d{{4}}) "
        r"(?P<h>\d{1,2}):(?P<mi>\d{2}):(?P<s>\d{2})" + _FRAC + r" (?P<zone>[+-]\d{4})",
        re.IGNORECASE,
    ),
]


def _zone_offset(zone: str) -> int | None:
    if zone == "Z":
        return 0
    sign = -1 if zone[0] == "-" else 1
    digits = zone[1:].replace(":", "")
    hours, minutes = int(digits[:2]), int(digits[2:])
    if hours > 24 or minutes > 60:
        return None
    return sign * (hours * 3600 + minutes * 60)


def _parse_layouts(text: str) -> tuple[int, int] | None:
    for rx in _PARSERS:
        m = rx.fullmatch(text)
        if not m:
            continue
        g = m.groupdict()
        year = int(g["y"])
        month = int(g["mo"]) if g.get("mo") else _MONTHS.index(g["mon"].capitalize()) + 1
        day = int(g["d"])
        hour, minute, second = int(g.get("h") or 0), int(g.get("mi") or 0), int(g.get("s") or 0)
        if not 1 <= month <= 12 or hour > 23 or minute > 59 or second > 59:
            continue
        if not 1 <= day <= calendar.monthrange(year, month)[1]:
            continue
        offset = _zone_offset(g["zone"]) if g.get("zone") else 0
        if offset is None:
            continue
        frac = (g.get("frac") or "")[:9]
        nanos = int(frac.ljust(9, "0")) if frac else 0
        seconds = calendar.timegm((year, month, day, hour, minute, second)) - offset
        return seconds, nanos
    return None


def parse_duration(text: str) -> int:
    """Go's time.ParseDuration: a signed sequence like ``1h30m``, ``1.5s``, ``300ms``; nanoseconds."""
    units = {
        "ns": NANOSECOND,
        "us": MICROSECOND,
        "\u00b5s": MICROSECOND,
        "\u03bcs": MICROSECOND,
        "ms": MILLISECOND,
        "s": SECOND,
        "m": MINUTE,
        "h": HOUR,
    }
    invalid = ValueError(f"time: invalid duration {go_quote(text)}")
    s = text
    neg = False
    if s and s[0] in "+-":
        neg = s[0] == "-"
        s = s[1:]
    if s == "0":
        return 0
    if not s:
        raise invalid
    total = 0
    while s:
        m = re.match(r"(\d*)(?:\.(\d*))?", s)
        assert m is not None
        whole, frac = m.group(1), m.group(2)
        if not whole and not frac:
            raise invalid
        s = s[m.end() :]
        u = re.match(r"[^0-9.]*", s)
        assert u is not None
        unit = u.group(0)
        if not unit:
            raise ValueError(f"time: missing unit in duration {go_quote(text)}")
        if unit not in units:
            raise ValueError(f"time: unknown unit {go_quote(unit)} in duration {go_quote(text)}")
        s = s[u.end() :]
        scale = units[unit]
        value = int(whole or "0") * scale
        if frac:
            value += int(int(frac) * (scale / 10 ** len(frac)))
        total += value
        if total > _MAX_DURATION + (1 if neg else 0):
            raise invalid
    return -total if neg else total


def parse_time(text: str, now_ns: int | None = None) -> tuple[int, int]:
    """hubble's time.FromString: a duration ago, or one of the accepted layouts (UTC if no zone).

    Returns (seconds, nanos) since the epoch; raises ValueError with hubble's message.
    """
    try:
        ago = parse_duration(text)
    except ValueError:
        pass
    else:
        now = _time.time_ns() if now_ns is None else now_ns
        return divmod(now - ago, 1_000_000_000)
    parsed = _parse_layouts(text)
    if parsed is None:
        raise ValueError(f"failed to convert {text} to time")
    return parsed


def duration_string(ns: int) -> str:
    """Go's time.Duration.String(): ``1h2m3.5s``, ``1.2ms``, ``0s``."""
    neg = ns < 0
    u = -ns if neg else ns
    if u < SECOND:
        if u == 0:
            return "0s"
        if u < MICROSECOND:
            prec, unit = 0, "ns"
        elif u < MILLISECOND:
            prec, unit = 3, "\u00b5s"
        else:
            prec, unit = 6, "ms"
        frac, u = _duration_fraction(u, prec)
        out = f"{u}{frac}{unit}"
    else:
        frac, u = _duration_fraction(u, 9)
        out = f"{u % 60}{frac}s"
        u //= 60
        if u > 0:
            out = f"{u % 60}m{out}"
            u //= 60
            if u > 0:
                out = f"{u}h{out}"
    return "-" + out if neg else out


def _duration_fraction(v: int, prec: int) -> tuple[str, int]:
    digits = ""
    printed = False
    for _ in range(prec):
        digit = v % 10
        printed = printed or digit != 0
        if printed:
            digits = str(digit) + digits
        v //= 10
    return ("." + digits if printed else ""), v
