"""What an operator looks at: ``/metrics`` (Prometheus), ``/api/requests`` and the ``/dashboard`` page.

Like every route but ``/health`` these need the API key when one is set. A browser cannot send a
header when it navigates, so ``GET /dashboard`` alone also takes the key as ``?key=...`` (see
:class:`mlx_serve.app.APIKeyMiddleware`); the page then sends it as ``Authorization: Bearer``
on its own requests. The page is static: it holds no data, only the code that polls the API.
"""

from __future__ import annotations

from functools import lru_cache
from importlib import resources

from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import Route

from mlx_serve.errors import bad_request
from mlx_serve.metrics import CONTENT_TYPE, Metrics
from mlx_serve.requestlog import RequestLog

# The page runs only its own inline script and talks only to this origin; it must not leak the
# key in its URL through a Referer header, nor be cached, nor be framed by another site.
DASHBOARD_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; "
                               "connect-src 'self'; img-src data:; base-uri 'none'; form-action 'none'; "
                               "frame-ancestors 'none'",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
    "X-Content-Type-Options": "nosniff",
}


@lru_cache(maxsize=1)
def dashboard_html() -> str:
    return (resources.files("mlx_serve") / "static" / "dashboard.html").read_text(encoding="utf-8")


class ObservabilityHandlers:
    def __init__(self, metrics: Metrics, requests: RequestLog) -> None:
        self.metrics = metrics
        self.requests = requests

    def routes(self) -> list[Route]:
        return [
            Route("/metrics", self.prometheus, methods=["GET"]),
            Route("/api/requests", self.recent_requests, methods=["GET"]),
            Route("/dashboard", self.dashboard, methods=["GET"]),
        ]

    async def prometheus(self, request: Request) -> Response:
        return Response(self.metrics.exposition(), media_type=CONTENT_TYPE)

    async def recent_requests(self, request: Request) -> Response:
        try:
            limit = int(request.query_params.get("limit", "100"))
        except ValueError:
            raise bad_request("'limit' must be an integer", param="limit") from None
        records = self.requests.recent(max(1, min(limit, 1000)), request.query_params.get("model"))
        return JSONResponse({"requests": records})

    async def dashboard(self, request: Request) -> Response:
        return HTMLResponse(dashboard_html(), headers=DASHBOARD_HEADERS)
