"""The agent's local REST API (JSON over a Unix socket, mode 0600: root only, like cilium's API socket)."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from tendril.common.errors import InvalidInputError, NotFoundError, TendrilError
from tendril.hubble.parser.flow import flow_from_row, flow_to_wire
from tendril.monitor.api import EVENT_TYPE_NAMES

if TYPE_CHECKING:
    from tendril.agent.daemon import Agent


def _error(e: Exception) -> JSONResponse:
    status = 404 if isinstance(e, NotFoundError) else 400 if isinstance(e, InvalidInputError) else 500
    return JSONResponse({"error": str(e)}, status_code=status)


def build_app(agent: Agent) -> Starlette:
    async def call(fn: Any, *args: Any) -> Response:
        try:
            async with agent.lock:
                result = await asyncio.get_running_loop().run_in_executor(None, fn, *args)
            return JSONResponse(result)
        except TendrilError as e:
            return _error(e)

    async def healthz(request: Request) -> Response:
        return JSONResponse({"status": "ok", "node": agent.config.name})

    async def status(request: Request) -> Response:
        return JSONResponse(agent.status())

    async def proxy(request: Request) -> Response:
        return JSONResponse(agent.proxy_status())

    async def fqdn_cache(request: Request) -> Response:
        return JSONResponse(agent.fqdn.list())

    async def endpoints(request: Request) -> Response:
        return JSONResponse(agent.endpoint_list())

    async def endpoint_put(request: Request) -> Response:
        body = await request.json()
        ns, pod = request.path_params["ns"], request.path_params["name"]
        return await call(agent.endpoint_create, ns, pod, body.get("labels", {}))

    async def endpoint_delete(request: Request) -> Response:
        return await call(agent.endpoint_delete, request.path_params["ns"], request.path_params["name"])

    async def namespaces(request: Request) -> Response:
        return JSONResponse(agent.state.namespaces)

    async def namespace_put(request: Request) -> Response:
        body = await request.json()
        return await call(agent.namespace_apply, request.path_params["name"], body.get("labels", {}))

    async def namespace_delete(request: Request) -> Response:
        return await call(agent.namespace_delete, request.path_params["name"])

    async def pods(request: Request) -> Response:
        ns = request.query_params.get("namespace")
        return await call(agent.pods.list, ns)

    async def pod_put(request: Request) -> Response:
        b = await request.json()
        ns, name = request.path_params["ns"], request.path_params["name"]
        return await call(
            agent.pod_apply,
            ns,
            name,
            b.get("labels", {}),
            b.get("annotations", {}),
            b["containers"],
            b.get("owner", ""),
        )

    async def pod_delete(request: Request) -> Response:
        return await call(agent.pod_delete, request.path_params["ns"], request.path_params["name"])

    async def ct(request: Request) -> Response:
        return await call(agent.ct_list)

    async def ct_flush(request: Request) -> Response:
        return await call(agent.ct_flush)

    async def metrics(request: Request) -> Response:
        return await call(agent.metrics_list)

    async def config_get(request: Request) -> Response:
        return JSONResponse(agent.runtime_config())

    async def config_put(request: Request) -> Response:
        body = await request.json()
        return await call(agent.set_config, body)

    async def flows(request: Request) -> Response:
        try:
            last = int(request.query_params.get("last", "100"))
            wanted = _event_type(request.query_params.get("type"))
        except (ValueError, TendrilError) as e:
            return JSONResponse({"error": str(e)}, status_code=400)
        rows = agent.ring.view_all()
        if wanted is not None:
            rows = rows[rows["event_type"] == wanted]
        rows = rows[-last:] if last > 0 else rows[:0]
        return JSONResponse([flow_to_wire(flow_from_row(r, agent.tables)) for r in rows])

    async def monitor(request: Request) -> Response:
        try:
            wanted = _event_type(request.query_params.get("type"))
        except TendrilError as e:
            return JSONResponse({"error": str(e)}, status_code=400)

        async def stream() -> AsyncIterator[bytes]:
            yield (json.dumps({"hello": agent.monitor_hello()}) + "\n").encode()
            cursor = agent.ring.written
            while True:
                if not await agent.ring.wait(cursor, timeout=1.0):
                    yield b"\n"  # keep-alive; also notices a gone client
                    continue
                lost = agent.ring.oldest - cursor
                if lost > 0:
                    yield (json.dumps({"lost": lost}) + "\n").encode()
                rows = agent.ring.read(cursor, agent.ring.written)
                cursor = agent.ring.written
                if wanted is not None:
                    rows = rows[rows["event_type"] == wanted]
                out = [json.dumps({"flow": flow_to_wire(flow_from_row(r, agent.tables))}) for r in rows]
                if out:
                    yield ("\n".join(out) + "\n").encode()

        return StreamingResponse(stream(), media_type="application/x-ndjson")

    async def policies(request: Request) -> Response:
        return JSONResponse(agent.policy.list())

    async def policy_import(request: Request) -> Response:
        b = await request.json()
        return await call(agent.policy_import, b["text"], b.get("source", "<stdin>"))

    async def policy_delete(request: Request) -> Response:
        p = request.path_params
        ns = p["ns"] if p["ns"] != "-" else None
        return await call(agent.policy_delete, p["kind"], ns, p["name"])

    async def identities(request: Request) -> Response:
        return JSONResponse(agent.policy.identity_list())

    async def bpf_policy(request: Request) -> Response:
        return await call(agent.policy.policy_map, int(request.path_params["ep"]))

    async def services(request: Request) -> Response:
        return await call(agent.services.list)

    async def service_apply(request: Request) -> Response:
        b = await request.json()
        return await call(agent.service_apply, b["text"], b.get("source", "<stdin>"))

    async def service_delete(request: Request) -> Response:
        return await call(agent.service_delete, request.path_params["ns"], request.path_params["name"])

    routes = [
        Route("/v1/services", services),
        Route("/v1/services", service_apply, methods=["PUT"]),
        Route("/v1/services/{ns}/{name}", service_delete, methods=["DELETE"]),
        Route("/v1/policies", policies),
        Route("/v1/policies", policy_import, methods=["PUT"]),
        Route("/v1/policies/{kind}/{ns}/{name}", policy_delete, methods=["DELETE"]),
        Route("/v1/identities", identities),
        Route("/v1/bpf/policy/{ep:int}", bpf_policy),
        Route("/v1/healthz", healthz),
        Route("/v1/status", status),
        Route("/v1/proxy", proxy),
        Route("/v1/fqdn/cache", fqdn_cache),
        Route("/v1/endpoints", endpoints),
        Route("/v1/endpoints/{ns}/{name}", endpoint_put, methods=["PUT"]),
        Route("/v1/endpoints/{ns}/{name}", endpoint_delete, methods=["DELETE"]),
        Route("/v1/namespaces", namespaces),
        Route("/v1/namespaces/{name}", namespace_put, methods=["PUT"]),
        Route("/v1/namespaces/{name}", namespace_delete, methods=["DELETE"]),
        Route("/v1/pods", pods),
        Route("/v1/pods/{ns}/{name}", pod_put, methods=["PUT"]),
        Route("/v1/pods/{ns}/{name}", pod_delete, methods=["DELETE"]),
        Route("/v1/bpf/ct", ct),
        Route("/v1/bpf/ct", ct_flush, methods=["DELETE"]),
        Route("/v1/bpf/metrics", metrics),
        Route("/v1/config", config_get),
        Route("/v1/config", config_put, methods=["PUT"]),
        Route("/v1/flows", flows),
        Route("/v1/monitor", monitor),
    ]
    app = Starlette(routes=routes)
    app.state.started = time.time()
    return app


def _event_type(kind: str | None) -> int | None:
    if not kind:
        return None
    if kind not in EVENT_TYPE_NAMES:
        raise InvalidInputError(f"unknown event type {kind!r} (drop, trace, policy-verdict)")
    return EVENT_TYPE_NAMES[kind]
