"""Model management: ``/health``, ``/api/ps``, ``/api/load``, ``/api/unload``, ``/api/events``."""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from mlx_serve import __version__
from mlx_serve.errors import APIError, bad_request
from mlx_serve.events import EventLog
from mlx_serve.scheduler import Scheduler
from mlx_serve.validation import keep_alive_field, read_json_object


class ManagementHandlers:
    def __init__(self, scheduler: Scheduler, events: EventLog) -> None:
        self.scheduler = scheduler
        self.events = events

    def routes(self) -> list[Route]:
        return [
            Route("/health", self.health, methods=["GET"]),
            Route("/api/ps", self.ps, methods=["GET"]),
            Route("/api/load", self.load, methods=["POST"]),
            Route("/api/unload", self.unload, methods=["POST"]),
            Route("/api/events", self.recent_events, methods=["GET"]),
        ]

    async def health(self, request: Request) -> Response:
        """Answers without touching any worker."""
        return JSONResponse({"status": "ok", "version": __version__})

    async def ps(self, request: Request) -> Response:
        s = self.scheduler
        spares = [{"type": kind, "pid": spare.proc.pid} for kind, spare in s.spares.ready().items()]
        return JSONResponse({"models": s.snapshot(), "memory": {"budget": s.budget, "used": s.used_bytes()},
                             "spares": spares, "queue": s.queue_snapshot()})

    async def load(self, request: Request) -> Response:
        body = await self._body(request)
        name = body.get("model")
        if not isinstance(name, str) or not name:
            raise bad_request("missing required parameter 'model'", param="model", code="missing_required_parameter")
        keep_alive = keep_alive_field(body.get("keep_alive"))
        worker = await self.scheduler.load(name, keep_alive)
        row = next((r for r in self.scheduler.snapshot() if r["name"] == name), {"name": name, "pid": worker.pid})
        return JSONResponse({"status": "loaded", "model": row})

    async def unload(self, request: Request) -> Response:
        body = await self._body(request, allow_empty=True)
        name = body.get("model")
        if name is not None and (not isinstance(name, str) or not name):
            raise bad_request("'model' must be a model name (or absent to unload all)", param="model")
        unloaded = await self.scheduler.unload(name)
        return JSONResponse({"status": "unloaded", "models": unloaded})

    async def recent_events(self, request: Request) -> Response:
        try:
            limit = int(request.query_params.get("limit", "100"))
        except ValueError:
            raise bad_request("'limit' must be an integer", param="limit") from None
        return JSONResponse({"events": self.events.recent(max(1, min(limit, 1000)),
                                                          request.query_params.get("model"))})

    async def _body(self, request: Request, allow_empty: bool = False) -> dict[str, Any]:
        if allow_empty:
            raw_length = request.headers.get("content-length")
            if raw_length in (None, "0"):
                return {}
        try:
            return await read_json_object(request, 1 << 20)
        except APIError as e:
            if allow_empty and e.code == "invalid_json" and "empty" in e.message:
                return {}
            raise
