"""The router's ASGI application: routes, authentication, error handling and the lifespan."""

from __future__ import annotations

import contextlib
import hmac
import logging
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import parse_qs

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.types import ASGIApp, Receive, Scope, Send

from mlx_serve.config import Config
from mlx_serve.durations import parse_budget
from mlx_serve.errors import APIError, error_body
from mlx_serve.events import EventLog
from mlx_serve.management_api import ManagementHandlers
from mlx_serve.memory import physical_memory
from mlx_serve.metrics import Metrics
from mlx_serve.observability_api import ObservabilityHandlers
from mlx_serve.ollama_api import OllamaHandlers
from mlx_serve.openai_api import OpenAIHandlers
from mlx_serve.requestlog import RequestLog
from mlx_serve.runtime import Runtime
from mlx_serve.scheduler import Scheduler

log = logging.getLogger("mlx_serve.app")

PUBLIC_ROUTES = {("GET", "/health")}
# A browser navigating to the dashboard cannot send a header, so this page alone also takes ?key=
# (it then sends the key as a Bearer header itself). Not a cookie: a cookie would authenticate every
# route, and so let any web page the operator visits make requests to the router in their name.
QUERY_KEY_ROUTES = {("GET", "/dashboard")}


class APIKeyMiddleware:
    """Every route but ``GET /health`` needs the key, as ``Authorization: Bearer`` or ``x-api-key``."""

    def __init__(self, app: ASGIApp, api_key: str) -> None:
        self.app = app
        self.key = api_key.encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or (scope["method"], scope["path"]) in PUBLIC_ROUTES:
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        offered = headers.get("x-api-key", "")
        auth = headers.get("authorization", "")
        if auth[:7].lower() == "bearer ":
            offered = auth[7:].strip()
        by_query = (scope["method"], scope["path"]) in QUERY_KEY_ROUTES
        if not offered and by_query:
            offered = parse_qs(scope.get("query_string", b"").decode("latin-1")).get("key", [""])[0]
        if not hmac.compare_digest(offered.encode(), self.key):  # constant time
            message = ("missing API key: send 'Authorization: Bearer <key>' or 'x-api-key: <key>'" if not offered
                       else "invalid API key")
            if by_query:
                message += f"; in a browser, open {scope['path']}?key=<key>"
            response = JSONResponse(error_body(message, "authentication_error", None, "invalid_api_key"),
                                    status_code=401, headers={"WWW-Authenticate": "Bearer"})
            await response(scope, receive, send)
            return
        await self.app(scope, receive, send)


async def _api_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, APIError)
    return exc.response()


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    message = {404: f"no route {request.method} {request.url.path}",
               405: f"method {request.method} is not allowed on {request.url.path}"}.get(exc.status_code, exc.detail)
    # The type follows the status like every other error (404: not_found_error); 405 keeps its Allow header.
    return APIError(exc.status_code, message, code="not_found" if exc.status_code == 404 else None,
                    headers=dict(exc.headers or {})).response()


async def _unexpected(request: Request, exc: Exception) -> Response:
    log.exception("unexpected error on %s %s", request.method, request.url.path)
    return JSONResponse(error_body(f"internal error: {type(exc).__name__}: {exc}", "server_error"), status_code=500)


def create_app(config: Config, runtime: Runtime | None = None) -> Starlette:
    runtime = runtime or Runtime.for_config(config)
    budget = parse_budget(config.server.memory_budget, physical_memory())
    metrics = Metrics()
    events = EventLog(runtime.state_dir / "events.jsonl", listeners=[metrics.observe_event])
    scheduler = Scheduler(config, runtime, budget, on_event=events)
    metrics.watch(scheduler)
    requests = RequestLog(listeners=[metrics.observe_request])  # filled by every ProxyResponse
    observability = ObservabilityHandlers(metrics, requests)
    openai = OpenAIHandlers(scheduler)
    management = ManagementHandlers(scheduler, events)
    ollama = OllamaHandlers(scheduler)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[dict[str, Any]]:
        runtime.prepare()
        log.info("mlx-serve: %d models configured, memory budget %.2f GB, runtime dir %s",
                 len(config.models), budget / 1e9, runtime.runtime_dir)
        scheduler.start_background()
        preloads = scheduler.preload()
        try:
            yield {}
        finally:
            for task in preloads:
                task.cancel()
            await scheduler.shutdown()
            runtime.remove()

    app = Starlette(
        routes=[*openai.routes(), *management.routes(), *ollama.routes(), *observability.routes()],
        exception_handlers={APIError: _api_error, HTTPException: _http_error, Exception: _unexpected},
        lifespan=lifespan,
    )
    app.state.scheduler = scheduler
    app.state.events = events
    app.state.requests = requests
    app.state.metrics = metrics
    app.state.config = config
    if config.server.api_key:
        app.add_middleware(APIKeyMiddleware, api_key=config.server.api_key)
    return app
