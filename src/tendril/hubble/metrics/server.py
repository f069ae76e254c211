"""Serve a registry over HTTP for Prometheus: Hubble on :9965, the agent on :9962."""

from __future__ import annotations

import threading
from wsgiref.simple_server import WSGIServer

from prometheus_client import start_http_server
from prometheus_client.registry import CollectorRegistry


class MetricsServer:
    """A running /metrics endpoint (prometheus_client's threaded WSGI server); `close()` stops it."""

    def __init__(self, server: WSGIServer, thread: threading.Thread) -> None:
        self.server = server
        self.thread = thread

    @property
    def port(self) -> int:
        return int(self.server.server_address[1])

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5)


def parse_listen_address(addr: str) -> tuple[str, int]:
    """Cilium's listen syntax: ":9965" (all interfaces), "127.0.0.1:9965", "[::1]:9965"."""
    host, sep, port = addr.rpartition(":")
    if not sep or not port.isdigit():
        raise ValueError(f"metrics listen address {addr!r}: use [host]:port, e.g. :9965 or 127.0.0.1:9965")
    return host.strip("[]"), int(port)


def serve_metrics(registry: CollectorRegistry, host: str, port: int) -> MetricsServer:
    """Start serving `registry` at http://host:port/metrics in a daemon thread (port 0 = any free port).

    An empty host means every IPv4 interface (Cilium's ":9965"). Raises OSError naming the address
    when it cannot bind (e.g. another agent already owns the port).
    """
    host = host or "0.0.0.0"
    try:
        server, thread = start_http_server(port, addr=host, registry=registry)
    except OSError as e:
        raise OSError(e.errno, f"cannot serve metrics on {host}:{port}: {e.strerror}") from e
    return MetricsServer(server, thread)
