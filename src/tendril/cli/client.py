"""Talking to node agents: find the right socket, make requests, turn failures into one clear line."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx

from tendril.common import paths
from tendril.common.errors import TendrilError
from tendril.common.jsonfile import read_json

DEFAULT_LAB = "tendril"


def lab_nodes(lab: str) -> list[str]:
    state = read_json(paths.lab_state_file(lab))
    if not state:
        return []
    return [n["name"] for n in state.get("nodes", [])]


def resolve_nodes(lab: str, node: str | None) -> list[str]:
    """The node(s) a command talks to: --node if given, else every node of the lab."""
    if node:
        return [node]
    nodes = lab_nodes(lab)
    if nodes:
        return nodes
    running = sorted(p.parent.name for p in paths.RUN_ROOT.glob("*/agent.sock"))
    if running:
        return running
    raise TendrilError(f"no lab {lab!r} and no running agent found: run `tendril lab up` first")


class AgentClient:
    def __init__(self, node: str, timeout: float = 30.0) -> None:
        self.node = node
        self.socket = paths.agent_socket(node)
        self.http = httpx.Client(
            transport=httpx.HTTPTransport(uds=str(self.socket)), base_url="http://agent", timeout=timeout
        )

    def __enter__(self) -> AgentClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.http.close()

    def _unreachable(self, e: Exception) -> TendrilError:
        return TendrilError(f"cannot reach the agent of node {self.node!r} at {self.socket}: {e}")

    def request(self, method: str, path: str, **kw: Any) -> Any:
        try:
            r = self.http.request(method, path, **kw)
        except (httpx.TransportError, OSError) as e:
            raise self._unreachable(e) from None
        if r.status_code >= 400:
            try:
                msg = r.json().get("error", r.text)
            except ValueError:
                msg = r.text
            raise TendrilError(msg)
        return r.json()

    def get(self, path: str, **params: Any) -> Any:
        return self.request("GET", path, params={k: v for k, v in params.items() if v is not None})

    def put(self, path: str, body: Any) -> Any:
        return self.request("PUT", path, json=body)

    def delete(self, path: str) -> Any:
        return self.request("DELETE", path)

    def healthy(self) -> bool:
        try:
            return self.http.get("/v1/healthz", timeout=2.0).status_code == 200
        except (httpx.TransportError, OSError):
            return False

    def stream(self, path: str, **params: Any) -> Iterator[dict[str, Any]]:
        try:
            with self.http.stream("GET", path, params=params, timeout=None) as r:
                if r.status_code >= 400:
                    r.read()
                    raise TendrilError(r.json().get("error", r.text))
                for line in r.iter_lines():
                    if line.strip():
                        yield json.loads(line)
        except (httpx.TransportError, OSError) as e:
            raise self._unreachable(e) from None


def cluster_write(
    nodes: list[str], method: str, path: str, body: Any = None, timeout: float = 600.0, wait: float = 20.0
) -> Any:
    """Cluster configuration (namespaces, policies, services) goes to one agent, which applies it and
    publishes it in the kvstore; the others converge from there. Returns that agent's answer once
    every other node reports having applied that kvstore revision (a warning names any that did not
    within `wait` seconds: it will still converge when it can)."""
    import sys
    import time

    up = [n for n in nodes if agent_healthy(n)] if len(nodes) > 1 else nodes
    first = up[0] if up else nodes[0]  # a stopped node catches up from the kvstore when it returns
    with AgentClient(first, timeout=timeout) as c:
        result = c.request(method, path, **({"json": body} if body is not None else {}))
    rev = int(result.get("kvstore_revision", 0)) if isinstance(result, dict) else 0
    others = [n for n in up if n != first]
    if not others:
        return result
    if rev == 0:
        print(f"Warning: the kvstore is unreachable: applied on {first} only for now", file=sys.stderr)
        return result
    deadline = time.monotonic() + wait
    pending = list(others)
    while pending and time.monotonic() < deadline:
        still = []
        for n in pending:
            try:
                with AgentClient(n, timeout=5.0) as c:
                    seen = int(c.get("/v1/status").get("cluster", {}).get("config_revision", 0))
            except TendrilError:
                seen = 0
            if seen < rev:
                still.append(n)
        pending = still
        if pending:
            time.sleep(0.05)
    if pending:
        print(f"Warning: not yet applied on {', '.join(pending)} (kvstore revision {rev})", file=sys.stderr)
    return result


def agent_healthy(node: str) -> bool:
    with AgentClient(node) as c:
        return c.healthy()
