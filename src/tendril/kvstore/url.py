"""Parse a kvstore URL: "" / "embedded" for the in-process store, "etcd://host:port" for etcd.

Kept apart from the backends so the CLI and the lab can validate a URL (and print it back in
errors) without importing gRPC.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from urllib.parse import urlsplit

from tendril.kvstore.base import KvStoreError

EMBEDDED = "embedded"


@dataclass(frozen=True)
class StoreURL:
    """A validated kvstore address.  ``endpoint`` is the canonical form used in every message."""

    backend: str  # "embedded" | "etcd"
    host: str = ""
    port: int = 0

    @property
    def endpoint(self) -> str:
        if self.backend == EMBEDDED:
            return EMBEDDED
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"etcd://{host}:{self.port}"

    @property
    def grpc_target(self) -> str:
        """The address in gRPC's target syntax (IPv6 literals need brackets)."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"


def parse_url(url: str) -> StoreURL:
    """Validate ``url``; raise KvStoreError naming it (and what a good one looks like) if it is wrong."""
    text = (url or "").strip()
    if text in ("", EMBEDDED):
        return StoreURL(EMBEDDED)

    def bad(why: str) -> KvStoreError:
        return KvStoreError(f"kvstore URL {url!r} is invalid: {why} (use 'embedded' or 'etcd://HOST:PORT')")

    if "://" not in text:
        raise bad("no scheme")
    try:
        parts = urlsplit(text)
        port = parts.port
    except ValueError as exc:  # bad port number, unbalanced brackets
        raise bad(str(exc)) from None
    if parts.scheme != "etcd":
        raise bad(f"unsupported scheme {parts.scheme!r}")
    if parts.username or parts.password:
        raise bad("credentials in the URL are not supported")
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise bad("a path, query or fragment is not allowed")
    host = parts.hostname or ""
    if not host:
        raise bad("no host")
    if port is None or port == 0:
        raise bad("no port")
    if ":" in host:  # an IPv6 literal: make sure it really is one
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise bad(f"invalid IPv6 address {host!r}") from None
    return StoreURL("etcd", host, port)
