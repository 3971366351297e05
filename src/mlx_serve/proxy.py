"""Forward one request to a model's worker and stream its answer back, untouched and unbuffered.

The proxy knows nothing of swapping: it takes a lease on a ready worker and forwards. What it
does add is honesty about failures: a stream that the worker ends without ``data: [DONE]``
reaches the client as an SSE error event rather than a clean end, a worker that dies before
answering becomes a 502 quoting its log, and worker error bodies that are not in the OpenAI
shape are put into it.
"""

from __future__ import annotations

import asyncio
import json
import logging

from collections.abc import Awaitable, Callable
from typing import Any

import anyio
import httpx
from starlette.types import Message, Receive, Scope, Send

from mlx_serve.errors import APIError, error_body
from mlx_serve.requestlog import CLIENT_CLOSED, RequestMeter, request_log_of
from mlx_serve.scheduler import Scheduler
from mlx_serve.worker import Worker

log = logging.getLogger("mlx_serve.proxy")

HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade",
              "proxy-authenticate", "proxy-authorization", "server", "date"}
SSE_DONE = b"data: [DONE]"


async def until_disconnect(receive: Receive, serve: Callable[[], Awaitable[None]],
                           on_disconnect: Callable[[], None]) -> None:
    """Run ``serve()``, cancelling it if the client disconnects first.

    A client that goes away (while queued or mid-stream) cancels its request: leaving the
    lease's block releases it, and closing the upstream request stops the worker's generation.
    """
    async with anyio.create_task_group() as tg:
        async def watch_disconnect() -> None:
            while True:
                message = await receive()
                if message["type"] == "http.disconnect":
                    on_disconnect()
                    tg.cancel_scope.cancel()
                    return

        tg.start_soon(watch_disconnect)
        try:
            await serve()
        finally:
            tg.cancel_scope.cancel()


async def worker_failure(worker: Worker, model: str, cause: Exception | None) -> APIError:
    """A 502 saying how the worker failed, quoting its log when it died."""
    for _ in range(20):  # let the router reap a dying worker so that the message can say how it died
        if worker.returncode is not None:
            break
        await asyncio.sleep(0.025)
    if worker.returncode is not None:
        message = (f"the worker for model {model!r} died ({worker.exit_reason()}) while serving this request; "
                   f"the next request starts a new one.")
        tail = worker.log_tail(8)
        if tail:
            message += f"\n--- last lines of its log ---\n{tail}"
        return APIError(502, message, code="worker_died")
    detail = f": {type(cause).__name__}: {cause}" if cause else " without finishing its answer"
    return APIError(502, f"the worker for model {model!r} failed{detail}", code="worker_error")


class ProxyResponse:
    """An ASGI response that leases ``model``'s worker, forwards the request, and relays the answer."""

    def __init__(self, scheduler: Scheduler, model: str, path: str, content: bytes, content_type: str, *,
                 keep_alive: float | None = None, timeout: float = 600.0) -> None:
        self.scheduler = scheduler
        self.model = model
        self.path = path
        self.content = content
        self.content_type = content_type
        self.keep_alive = keep_alive
        self.timeout = timeout
        self.status: int | None = None  # what the client got, for metrics and logs
        self.meter = RequestMeter(model, path)  # timings and tokens, for /metrics and /api/requests
        self._client_gone = False
        self._recorded = False

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        requests = request_log_of(scope)
        if requests is None:
            await self._respond(receive, send)
            return

        def record() -> None:
            if not self._recorded:
                self._recorded = True
                # No status means no answer was sent: the client left, or the relay itself failed.
                requests.add(self.meter.finish(self.status or (CLIENT_CLOSED if self._client_gone else 500)))

        async def send_and_record(message: Message) -> None:
            if message["type"] == "http.response.body" and not message.get("more_body", False):
                record()  # before the client can see the end, so /metrics and /api/requests already count it
            await send(message)

        try:
            await self._respond(receive, send_and_record)
        finally:
            record()

    async def _respond(self, receive: Receive, send: Send) -> None:
        await until_disconnect(receive, lambda: self._serve(send), on_disconnect=self._mark_client_gone)

    def _mark_client_gone(self) -> None:
        self._client_gone = True

    async def _serve(self, send: Send) -> None:
        started = False
        try:
            async with self.scheduler.lease(self.model, self.keep_alive) as worker:
                self.meter.leased()
                started = await self._forward(worker, send)
        except APIError as e:
            if not started:
                await self._send_error(send, e)

    async def _forward(self, worker: Worker, send: Send) -> bool:
        request = worker.client.build_request(
            "POST", self.path, content=self.content, headers={"content-type": self.content_type},
            timeout=httpx.Timeout(self.timeout, connect=10.0))
        try:
            upstream = await worker.client.send(request, stream=True)
        except httpx.TimeoutException:
            raise APIError(504, f"model {self.model!r} did not answer within server.request_timeout "
                                f"({self.timeout:g}s)", code="worker_timeout") from None
        except httpx.HTTPError as e:
            raise await worker_failure(worker, self.model, e) from None
        try:
            if upstream.status_code >= 400:
                await self._relay_error(upstream, send)
                return True
            is_sse = upstream.headers.get("content-type", "").startswith("text/event-stream")
            headers = [(k.encode(), v.encode()) for k, v in upstream.headers.items() if k.lower() not in HOP_BY_HOP]
            if is_sse:
                headers = [h for h in headers if h[0].lower() != b"content-length"]
                headers.append((b"cache-control", b"no-cache"))
                headers.append((b"x-accel-buffering", b"no"))
            self.status = upstream.status_code
            self.meter.begin(upstream.headers.get("content-type", ""))
            await send({"type": "http.response.start", "status": upstream.status_code, "headers": headers})
            tail = b""
            try:
                async for chunk in upstream.aiter_raw():
                    if chunk:
                        await send({"type": "http.response.body", "body": chunk, "more_body": True})
                        self.meter.chunk(chunk)
                        if is_sse:
                            tail = (tail + chunk)[-256:]
            except httpx.HTTPError as e:
                if not is_sse:
                    raise  # the body is cut short; the client sees a broken response, not a clean one
                error = await worker_failure(worker, self.model, e)
                await self._send_sse_error(send, error)
                return True
            if is_sse and SSE_DONE not in tail:
                error = await worker_failure(worker, self.model, None)
                await self._send_sse_error(send, error)
                return True
            await send({"type": "http.response.body", "body": b"", "more_body": False})
            return True
        finally:
            await upstream.aclose()

    async def _relay_error(self, upstream: httpx.Response, send: Send) -> None:
        raw = await upstream.aread()
        self.status = upstream.status_code
        body: Any
        try:
            body = json.loads(raw)
        except ValueError:
            body = None
        if not (isinstance(body, dict) and isinstance(body.get("error"), dict)):
            message = body.get("error") or body.get("detail") if isinstance(body, dict) else None
            if not isinstance(message, str):
                message = raw.decode("utf-8", "replace").strip()[:2000] or f"HTTP {upstream.status_code}"
            body = error_body(message, "invalid_request_error" if upstream.status_code < 500 else "server_error")
        payload = json.dumps(body).encode()
        await send({"type": "http.response.start", "status": upstream.status_code,
                    "headers": [(b"content-type", b"application/json"),
                                (b"content-length", str(len(payload)).encode())]})
        await send({"type": "http.response.body", "body": payload})

    async def _send_error(self, send: Send, error: APIError) -> None:
        self.status = error.status
        payload = json.dumps(error.body()).encode()
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode())]
        headers += [(k.lower().encode(), v.encode()) for k, v in error.headers.items()]
        await send({"type": "http.response.start", "status": error.status, "headers": headers})
        await send({"type": "http.response.body", "body": payload})

    async def _send_sse_error(self, send: Send, error: APIError) -> None:
        log.warning("stream for %s ended abnormally: %s", self.model, error.message.splitlines()[0])
        event = b"data: " + json.dumps(error.body()).encode() + b"\n\n"
        await send({"type": "http.response.body", "body": event, "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})


