"""Proxy-free HTTP visibility: who opted in, and the pump that turns datapath snaps into L7 flows.

Opt-in is per pod (annotation ``tendril.io/http-visibility: "true"``, on a Pod or a Deployment's
pod template; ``"false"`` opts a pod out) or per namespace (``tendril config
HTTPVisibility=ns1,ns2`` on every node; the pod annotation wins). Opted-in endpoints get
``EPF_HTTP_VISIBILITY`` in the endpoint map, so the datapath copies HTTP/1.x message starts into
the tnd_payloads ring (bpf/include/visibility.h); this pump pairs them
(hubble/parser/http_snap.py) and writes the same http-request / http-response rows the L7 proxy
writes, with the kernel timestamps as flow times and latency, and verdict FORWARDED: nothing is in
the path, so nothing is enforced.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from tendril.agent.events import RingPump, wall_offset_ns
from tendril.bpf import RingBufferReader, abi
from tendril.common.errors import InvalidInputError
from tendril.hubble import record as rec
from tendril.hubble.api.flow import flow_pb2
from tendril.hubble.parser.http_snap import Exchange, HttpPairing
from tendril.proxy.decide import ConnectionContext, meta_ids
from tendril.proxy.flows import L7FlowWriter, http_url

ANNOTATION = "tendril.io/http-visibility"
_BOOLS = {"true": True, "false": False}


def annotation_choice(annotations: Mapping[str, str], where: str = "") -> bool | None:
    """The pod's own choice (None: follow its namespace); a value other than true/false is an error."""
    value = annotations.get(ANNOTATION)
    if value is None:
        return None
    choice = _BOOLS.get(value.strip().lower())
    if choice is None:
        prefix = f"{where}: " if where else ""
        raise InvalidInputError(f'{prefix}annotation {ANNOTATION}: {value!r} is not "true" or "false"')
    return choice


def parse_namespaces(value: str) -> list[str]:
    """``HTTPVisibility=`` value: comma-separated namespaces ("" or "none" turns it off)."""
    from tendril.common.manifests import check_namespace

    if value.strip().lower() in ("", "none"):
        return []
    names = [n.strip() for n in value.split(",") if n.strip()]
    for n in names:
        try:
            check_namespace(n)
        except ValueError as e:
            raise InvalidInputError(f"HTTPVisibility={value!r}: {e}") from None
    return sorted(set(names))


def endpoint_flags(state: Any, namespace: str, pod: str) -> int:
    """EPF_* bits for one endpoint from its pod's annotation and the node's namespace list."""
    record = state.pods.get(f"{namespace}/{pod}")
    choice = annotation_choice(record.annotations) if record is not None else None
    if choice is None:
        choice = namespace in state.http_visibility_namespaces
    return abi.EPF_HTTP_VISIBILITY if choice else 0


class HttpVisibilityPump(RingPump):
    """tnd_payloads -> request/response pairs -> L7 rows through the proxy's flow writer."""

    def __init__(self, agent: Any, writer: L7FlowWriter) -> None:
        super().__init__(RingBufferReader(agent.datapath.payloads_map, abi.PAYLOAD_DTYPE), batch=4096)
        self.agent = agent
        self.writer = writer
        self.pairing = HttpPairing()
        self._contexts: dict[tuple, ConnectionContext] = {}
        self.requests = 0
        self.responses = 0

    def opted_in(self) -> int:
        """Endpoints of this node with visibility on."""
        state = self.agent.state
        return sum(1 for ep in state.endpoints.values() if endpoint_flags(state, ep.namespace, ep.pod))

    def stats(self) -> dict[str, int]:
        p = self.pairing
        return {
            "endpoints": self.opted_in(),
            "snaps": self.events_read,
            "drains": self.drains,
            "requests": self.requests,
            "responses": self.responses,
            "open": p.open_requests,
            "unmatched": p.unmatched,
            "retransmits": p.retransmits,
            "unparsed": p.unparsed,
        }

    def handle(self, records: np.ndarray) -> None:
        wall = wall_offset_ns()
        by_id = {ep.id: ep for ep in self.agent.state.endpoints.values()}
        rows = []
        for ex in self.pairing.feed(records):
            ep = by_id.get(ex.ep_id)
            if ep is None:
                continue  # the endpoint went away meanwhile
            ctx = self._context(ex, ep.identity)
            req = ex.request
            url = http_url(ctx, req.url, req.host)
            if ex.response is None:
                self.requests += 1
                headers = [flow_pb2.HTTPHeader(key="Host", value=req.host)] if req.host else []
                http = flow_pb2.HTTP(method=req.method, url=url, protocol=req.protocol, headers=headers)
                l7 = flow_pb2.Layer7(type=flow_pb2.REQUEST, http=http)
                rows.append((ctx, False, rec.FORWARDED, l7, ex.request_ns + wall))
            else:
                self.responses += 1
                resp = ex.response
                http = flow_pb2.HTTP(code=resp.code, method=req.method, url=url, protocol=resp.protocol)
                l7 = flow_pb2.Layer7(type=flow_pb2.RESPONSE, latency_ns=ex.latency_ns, http=http)
                rows.append((ctx, True, rec.FORWARDED, l7, ex.response_ns + wall))
        self.writer.publish_many(rows)

    def _context(self, ex: Exchange, own_identity: int) -> ConnectionContext:
        """One context per connection and side, cached: keep-alive exchanges share it."""
        key = (ex.ep_id, ex.client, ex.server, ex.egress, ex.peer_identity, own_identity)
        ctx = self._contexts.get(key)
        if ctx is None:
            if len(self._contexts) > 4096:
                self._contexts.clear()
            ctx = self._contexts[key] = self._new_context(ex, own_identity)
        return ctx

    def _new_context(self, ex: Exchange, own_identity: int) -> ConnectionContext:
        client_id, server_id = (
            (own_identity, ex.peer_identity) if ex.egress else (ex.peer_identity, own_identity)
        )
        src_meta, dst_meta = meta_ids(self.agent.endpoints, ex.client.ip, ex.server.ip)
        return ConnectionContext(
            src_ip=ex.client.ip,
            src_port=ex.client.port,
            dst_ip=ex.server.ip,
            dst_port=ex.server.port,
            src_identity=client_id,
            dst_identity=server_id,
            src_meta=src_meta,
            dst_meta=dst_meta,
            ep_id=ex.ep_id,
            # direction: egress when the endpoint is the client, as the proxy reports its rules
            egress=() if ex.egress else None,
            ingress=None if ex.egress else (),
        )
