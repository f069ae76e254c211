"""http_status_code / http_method / http_path / http_url / http_header against the L7 HTTP record.

Semantics as Hubble's: a status is `NNN` (exact) or `N+` / `NN+` (prefix of the zero-padded code);
methods compare case-insensitively; path and URL are unanchored regular expressions (the path is
taken from the request URL); a header filter matches when key and value are equal (an empty key
or value matches any). Flows without an HTTP record never match. Like Hubble, an HTTP filter
combined with an event_type filter that cannot match L7 events (type 129) is rejected.
"""

from __future__ import annotations

import re
from urllib.parse import unquote, urlsplit

from tendril.hubble.api import flow_pb2
from tendril.hubble.filters import l7
from tendril.hubble.filters.base import FilterError, RowPredicate, compile_regex, quote
from tendril.hubble.record import Tables

FIELDS = ("http_status_code", "http_method", "http_path", "http_url", "http_header")

MESSAGE_TYPE_ACCESS_LOG = 129  # Cilium monitor type of L7 records

_STATUS_FULL = re.compile(r"[1-5][0-9]{2}", re.ASCII)
_STATUS_PREFIX = re.compile(r"[1-5][0-9]?\+", re.ASCII)


def _l7_compatible(ff: flow_pb2.FlowFilter) -> bool:
    return not ff.event_type or any(t.type == MESSAGE_TYPE_ACCESS_LOG for t in ff.event_type)


def parse_status(values: list[str]) -> tuple[set[str], tuple[str, ...]]:
    full: set[str] = set()
    prefixes: list[str] = []
    for s in values:
        if _STATUS_FULL.fullmatch(s):
            full.add(s)
        elif _STATUS_PREFIX.fullmatch(s):
            prefixes.append(s[:-1])
        else:
            raise FilterError(
                "http_status_code",
                f"invalid status code {quote(s)} (expected NNN, N+ or NN+, e.g. 404, 5+, 40+)",
            )
    return full, tuple(prefixes)


def request_path(url: str) -> str | None:
    """The path of a request URL as Go's url.ParseRequestURI sees it; None if it is not one."""
    if url.startswith("/"):
        return unquote(url.split("?", 1)[0])
    try:
        parts = urlsplit(url, allow_fragments=False)
    except ValueError:
        return None
    if not parts.scheme:
        return None
    return unquote(parts.path)


def _http(rec: object) -> object | None:
    return l7.part(rec, "http")


def build(ff: flow_pb2.FlowFilter, tables: Tables) -> list[RowPredicate]:
    preds: list[RowPredicate] = []
    for name in FIELDS:
        if getattr(ff, name) and not _l7_compatible(ff):
            raise FilterError(
                name, "filtering by HTTP fields requires the event type filter to match 'l7' events"
            )

    if ff.http_status_code:
        full, prefixes = parse_status(list(ff.http_status_code))

        def status_ok(rec: object) -> bool:
            h = _http(rec)
            code = int(getattr(h, "code", 0) or 0)
            if not code:  # not a response
                return False
            text = f"{code:03d}"
            return text in full or text.startswith(prefixes)

        preds.append(l7.record_predicate(tables, status_ok))

    if ff.http_method:
        methods = {m.lower() for m in ff.http_method}

        def method_ok(rec: object) -> bool:
            method = str(getattr(_http(rec), "method", "") or "")
            return bool(method) and method.lower() in methods

        preds.append(l7.record_predicate(tables, method_ok))

    if ff.http_path:
        paths = [compile_regex("http_path", p) for p in ff.http_path]

        def path_ok(rec: object) -> bool:
            path = request_path(str(getattr(_http(rec), "url", "") or ""))
            return path is not None and any(r.search(path) for r in paths)

        preds.append(l7.record_predicate(tables, path_ok))

    if ff.http_url:
        urls = [compile_regex("http_url", u) for u in ff.http_url]

        def url_ok(rec: object) -> bool:
            url = str(getattr(_http(rec), "url", "") or "")
            return bool(url) and any(r.search(url) for r in urls)

        preds.append(l7.record_predicate(tables, url_ok))

    if ff.http_header:
        wanted = [(h.key, h.value) for h in ff.http_header]

        def header_ok(rec: object) -> bool:
            for h in getattr(_http(rec), "headers", None) or ():
                key, value = getattr(h, "key", ""), getattr(h, "value", "")
                if any((not k or k == key) and (not v or v == value) for k, v in wanted):
                    return True
            return False

        preds.append(l7.record_predicate(tables, header_ok))
    return preds
