"""`tendril hubble ui`: the web UI's HTTP server (Starlette on uvicorn).

    GET /                     the page (static/index.html, static/app.js, static/style.css)
    GET /api/status           the relay (ServerStatus, GetNodes), the follow stream, the window
    GET /api/namespaces       namespaces from the relay (GetNamespaces) and those seen in flows
    GET /api/flows?FILTERS    newest matching flows first, as table rows (limit=N, default 200)
    GET /api/flows/{id}       one flow of the window: its row and its full `-o jsonpb` JSON
    GET /api/servicemap?FILTERS  nodes and edges for the matching flows of the window
    GET /api/stream?FILTERS   server-sent events: `update` with {flows, servicemap} whenever the
                              window changed (at most once per --push-interval)

FILTERS are `tendril.ui.query`'s (namespace, verdict, pod, protocol, port, limit); an invalid one is
answered 400 {"error": "invalid <filter> filter: ...", "filter": "<filter>"}.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response, StreamingResponse
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from tendril.ui import DEFAULT_ADDRESS, DEFAULT_PORT
from tendril.ui.model import FlowWindow, flow_json, flow_row, service_map
from tendril.ui.query import FlowQuery, QueryError
from tendril.ui.relay import RelaySource, error_text

log = logging.getLogger(__name__)

STATIC_DIR = Path(__file__).resolve().parent / "static"


@dataclass
class UIState:
    window: FlowWindow
    source: RelaySource | None = None  # None: serve the window only (tests)
    push_interval: float = 1.0


def _bad_request(e: QueryError) -> JSONResponse:
    return JSONResponse({"error": str(e), "filter": e.filter}, status_code=400)


def build_app(state: UIState) -> Starlette:
    window = state.window

    async def selection(q: FlowQuery) -> list:
        if state.source is not None and q.namespaces:
            await state.source.backfill(q.namespaces)
        return [e for e in window.select(q.namespaces) if q.matches(e.flow)]

    def flows_payload(q: FlowQuery, matched: list) -> dict:
        newest = matched[-q.limit :]
        return {
            "flows": [flow_row(e.id, e.flow) for e in reversed(newest)],
            "matched": len(matched),
            "window": len(window),
            "query": q.to_dict(),
        }

    def parse(request: Request) -> FlowQuery:
        return FlowQuery.parse(request.query_params.multi_items())

    async def index(request: Request) -> Response:
        return FileResponse(STATIC_DIR / "index.html", headers={"Cache-Control": "no-store"})

    async def status(request: Request) -> Response:
        out: dict = {
            "window": {
                "flows": len(window),
                "per_namespace": window.per_namespace,
                "namespaces": window.namespaces(),
                "version": window.version,
            }
        }
        if state.source is None:
            out["relay"] = None
        else:
            out["relay"] = await state.source.server_status()
            out["relay"]["node_events"] = state.source.node_events
            out["relay"]["lost_events"] = state.source.lost_events
        return JSONResponse(out)

    async def namespaces(request: Request) -> Response:
        names: dict[str, dict] = {}
        error = ""
        if state.source is not None:
            try:
                for ns in await state.source.namespaces():
                    names[ns["name"]] = {**ns, "seen": False}
            except Exception as e:  # noqa: BLE001 - shown to the user, the window still answers
                error = error_text(e)
        for ns in window.namespaces():
            names.setdefault(ns, {"name": ns, "cluster": ""})["seen"] = True
        body: dict = {"namespaces": [names[n] for n in sorted(names)]}
        if error:
            body["relay_error"] = error
        return JSONResponse(body)

    async def flows(request: Request) -> Response:
        try:
            q = parse(request)
        except QueryError as e:
            return _bad_request(e)
        return JSONResponse(flows_payload(q, await selection(q)))

    async def flow_detail(request: Request) -> Response:
        entry = window.get(request.path_params["flow_id"])
        if entry is None:
            return JSONResponse({"error": "no such flow in the window (it may have aged out)"}, 404)
        return JSONResponse(
            {"row": flow_row(entry.id, entry.flow), "flow": json.loads(flow_json(entry.flow))}
        )

    async def servicemap(request: Request) -> Response:
        try:
            q = parse(request)
        except QueryError as e:
            return _bad_request(e)
        matched = await selection(q)
        return JSONResponse(
            {**service_map(e.flow for e in matched), "matched": len(matched), "query": q.to_dict()}
        )

    async def stream(request: Request) -> Response:
        try:
            q = parse(request)
        except QueryError as e:
            return _bad_request(e)

        async def events() -> AsyncIterator[str]:
            seen = -1
            beat = time.monotonic()
            yield "retry: 2000\n\n"
            while True:
                if window.version != seen:
                    seen = window.version
                    matched = await selection(q)
                    payload = {
                        **flows_payload(q, matched),
                        "servicemap": service_map(e.flow for e in matched),
                        "version": seen,
                    }
                    yield f"event: update\ndata: {json.dumps(payload)}\n\n"
                    beat = time.monotonic()
                elif time.monotonic() - beat > 15:
                    yield ": keep-alive\n\n"
                    beat = time.monotonic()
                await asyncio.sleep(state.push_interval)

        return StreamingResponse(
            events(),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
        )

    async def not_found(request: Request, exc: Exception) -> Response:
        code = exc.status_code if isinstance(exc, HTTPException) else 500
        if request.url.path.startswith("/api/"):
            return JSONResponse(
                {"error": f"{request.url.path}: not found" if code == 404 else str(exc)}, code
            )
        return Response("not found\n" if code == 404 else "error\n", code, media_type="text/plain")

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        if state.source is not None:
            await state.source.start()
        try:
            yield
        finally:
            if state.source is not None:
                await state.source.stop()

    routes = [
        Route("/", index),
        Route("/api/status", status),
        Route("/api/namespaces", namespaces),
        Route("/api/flows", flows),
        Route("/api/flows/{flow_id:int}", flow_detail),
        Route("/api/servicemap", servicemap),
        Route("/api/stream", stream),
        Mount("/static", StaticFiles(directory=STATIC_DIR), name="static"),
    ]
    return Starlette(routes=routes, lifespan=lifespan, exception_handlers={404: not_found, 405: not_found})


def serve(
    relay: str,
    address: str = DEFAULT_ADDRESS,
    port: int = DEFAULT_PORT,
    last: int = 2000,
    per_namespace: int = 2000,
    push_interval: float = 1.0,
) -> None:
    """Run the UI until interrupted."""
    import uvicorn

    window = FlowWindow(per_namespace)
    state = UIState(window, RelaySource(relay, window, last=last), push_interval=push_interval)
    config = uvicorn.Config(
        build_app(state),
        host=address,
        port=port,
        log_level="warning",
        access_log=False,
        timeout_graceful_shutdown=2,
    )
    uvicorn.Server(config).run()
