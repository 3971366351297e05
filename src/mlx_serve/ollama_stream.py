"""Talking to a leased worker for the Ollama API: JSON calls, and generations relayed as Ollama NDJSON.

:class:`GenerationResponse` is an ASGI response (like :class:`~mlx_serve.proxy.ProxyResponse`)
so that the lease lasts exactly as long as the answer: it takes the lease, asks the worker for a
streamed OpenAI completion, and sends the client Ollama's newline-delimited JSON objects as the
chunks arrive (or one JSON object at the end when the client asked ``"stream": false``). Errors
before the first byte get their HTTP status and ``{"error": "..."}``; errors after it (the worker
died mid-stream) end the stream with an ``{"error": "..."}`` line, which Ollama clients raise.
A client that disconnects cancels the request: the upstream connection closes (stopping the
worker's generation) and the lease is released.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

import anyio
import httpx
from starlette.types import Receive, Scope, Send

from mlx_serve.errors import APIError
from mlx_serve.ollama_convert import Reply, now_iso, timings
from mlx_serve.proxy import until_disconnect, worker_failure
from mlx_serve.requestlog import CLIENT_CLOSED, RequestRecord, request_log_of
from mlx_serve.scheduler import Scheduler
from mlx_serve.worker import Worker

log = logging.getLogger("mlx_serve.ollama")

NDJSON = b"application/x-ndjson"


def error_message(raw: bytes, status: int) -> str:
    """The message of a worker's error body, whatever its shape (OpenAI, mlx_lm's, FastAPI's or text)."""
    try:
        body = json.loads(raw)
    except ValueError:
        body = None
    if isinstance(body, dict):
        error = body.get("error", body.get("detail"))
        if isinstance(error, dict) and isinstance(error.get("message"), str):
            return error["message"]
        if isinstance(error, str):
            return error
        if error is not None:
            return json.dumps(error)
    return raw.decode("utf-8", "replace").strip()[:2000] or f"HTTP {status}"


async def post_json(worker: Worker, model: str, path: str, body: dict[str, Any], timeout: float) -> dict[str, Any]:
    """POST ``body`` to the worker and return its JSON answer; worker errors keep their status."""
    try:
        response = await worker.client.post(path, json=body, timeout=httpx.Timeout(timeout, connect=10.0))
    except httpx.TimeoutException:
        raise APIError(504, f"model {model!r} did not answer within server.request_timeout ({timeout:g}s)",
                       code="worker_timeout") from None
    except httpx.HTTPError as e:
        raise await worker_failure(worker, model, e) from None
    if response.status_code >= 400:
        raise APIError(response.status_code, error_message(response.content, response.status_code))
    try:
        answer = response.json()
    except ValueError:
        raise APIError(502, f"the worker for model {model!r} answered {path} with something that is not JSON",
                       code="worker_error") from None
    if not isinstance(answer, dict):
        raise APIError(502, f"the worker for model {model!r} answered {path} with a JSON "
                            f"{type(answer).__name__}, not an object", code="worker_error")
    return answer


def record(scope: Scope, model: str, endpoint: str, status: int, started_ns: int, leased_ns: int | None,
           first_ns: int | None, stream: bool, completion: int | None, prompt: int | None) -> None:
    """Add the request to the app's request log (``/api/requests``, the metrics), as proxied ones are."""
    requests = request_log_of(scope)
    if requests is None:
        return
    end = time.monotonic_ns()
    rate = None
    if completion and leased_ns is not None and end > leased_ns:
        rate = round(completion / ((end - leased_ns) / 1e9), 2)
    requests.add(RequestRecord(
        time=round(time.time() - (end - started_ns) / 1e9, 3), model=model, endpoint=endpoint, status=status,
        duration_s=round((end - started_ns) / 1e9, 4),
        queue_s=None if leased_ns is None else round((leased_ns - started_ns) / 1e9, 4),
        ttft_s=round((first_ns - started_ns) / 1e9, 4) if stream and first_ns is not None else None,
        stream=stream, completion_tokens=completion, prompt_tokens=prompt, tokens_per_s=rate))


async def sse_data(lines: AsyncIterator[str]) -> AsyncIterator[str]:
    """The ``data`` of each server-sent event (comment lines such as ``: keepalive`` are skipped)."""
    data: list[str] = []
    async for line in lines:
        if not line:
            if data:
                yield "\n".join(data)
                data = []
        elif line.startswith("data:"):
            value = line[5:]
            data.append(value[1:] if value.startswith(" ") else value)
        # ":" comments and other fields (event:, id:) carry nothing for us
    if data:
        yield "\n".join(data)


class GenerationResponse:
    """Lease ``model``, stream an OpenAI completion from its worker, answer in Ollama's shape."""

    def __init__(self, scheduler: Scheduler, *, model: str, echo: str, endpoint: str, path: str,
                 body: dict[str, Any], chat_chunks: bool, stream: bool, keep_alive: float | None,
                 timeout: float, started_ns: int) -> None:
        self.scheduler = scheduler
        self.model = model  # the configured name
        self.echo = echo  # the name the client sent (e.g. "name:latest"), echoed as Ollama does
        self.endpoint = endpoint  # the client's route (/api/chat), for the request log
        self.path = path
        self.body = body
        self.stream = stream
        self.keep_alive = keep_alive
        self.timeout = timeout
        self.started_ns = started_ns
        self.status: int | None = None
        self._started = False
        self._client_gone = False
        self._leased_ns: int | None = None
        self._reply = Reply(chat=chat_chunks, message=endpoint == "/api/chat")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await self._respond(receive, send)
        finally:
            counts = self._reply.counts()
            status = self.status or (CLIENT_CLOSED if self._client_gone else 500)
            record(scope, self.model, self.endpoint, status, self.started_ns, self._leased_ns,
                   self._reply.first_token_ns, self.stream, counts.get("eval_count"), counts.get("prompt_eval_count"))

    async def _respond(self, receive: Receive, send: Send) -> None:
        await until_disconnect(receive, lambda: self._serve(send), on_disconnect=self._mark_client_gone)

    def _mark_client_gone(self) -> None:
        self._client_gone = True

    async def _serve(self, send: Send) -> None:
        try:
            async with self.scheduler.lease(self.model, self.keep_alive) as worker:
                self._leased_ns = time.monotonic_ns()
                await self._relay(worker, send, self._leased_ns)
        except APIError as e:
            if self._started:
                log.warning("ollama stream for %s ended abnormally: %s", self.model, e.message.splitlines()[0])
                await self._line(send, {"error": e.message})
                await send({"type": "http.response.body", "body": b"", "more_body": False})
            else:
                await self._json(send, e.status, {"error": e.message}, e.headers)

    async def _relay(self, worker: Worker, send: Send, leased_ns: int) -> None:
        request = worker.client.build_request("POST", self.path, json=self.body,
                                              timeout=httpx.Timeout(self.timeout, connect=10.0))
        sent_ns = time.monotonic_ns()
        upstream: httpx.Response | None = None
        reply = self._reply
        try:
            upstream = await worker.client.send(request, stream=True)
            if upstream.status_code >= 400:
                raw = await upstream.aread()
                raise self._worker_error(upstream.status_code, error_message(raw, upstream.status_code))
            finished = False
            async for data in sse_data(upstream.aiter_lines()):
                if data.strip() == "[DONE]":
                    finished = True
                    break
                try:
                    chunk = json.loads(data)
                except ValueError:
                    raise APIError(502, f"the worker for model {self.model!r} sent an event that is not JSON: "
                                        f"{data[:200]!r}", code="worker_error") from None
                if not isinstance(chunk, dict):
                    continue
                if "error" in chunk:  # the worker failed after its first byte
                    raise self._worker_error(500, error_message(data.encode(), 500))
                piece = reply.feed(chunk, time.monotonic_ns())
                if piece is not None and self.stream:
                    await self._line(send, self._object(piece, done=False))
            if not finished:
                raise await worker_failure(worker, self.model, None)
        except httpx.TimeoutException:
            raise APIError(504, f"model {self.model!r} did not answer within server.request_timeout "
                                f"({self.timeout:g}s)", code="worker_timeout") from None
        except httpx.HTTPError as e:
            raise await worker_failure(worker, self.model, e) from None
        finally:
            if upstream is not None:
                with anyio.CancelScope(shield=True):
                    await upstream.aclose()
        await self._finish(send, reply, leased_ns, sent_ns)

    def _worker_error(self, status: int, message: str) -> APIError:
        if "response_format" in self.body and "Metal" in message:
            message += (" ('format' asks the vision engine for structured output, which needs the Metal backend "
                        "of Apple silicon: leave 'format' out on this machine)")
        return APIError(status, message, code="worker_error" if status >= 500 else None)

    async def _finish(self, send: Send, reply: Reply, leased_ns: int, sent_ns: int) -> None:
        calls = reply.tool_calls()
        if self.stream:
            if calls:  # Ollama sends tool calls in a message of their own, before the final object
                await self._line(send, self._object(reply.piece("", tool_calls=calls), done=False))
            final = reply.piece("")
        else:
            final = reply.piece("".join(reply.content), "".join(reply.thinking), calls)
        final = self._object(final, done=True)
        final["done_reason"] = reply.done_reason
        final.update(timings(self.started_ns, leased_ns, sent_ns, reply.first_token_ns, time.monotonic_ns()))
        final.update(reply.counts())
        if self.stream:
            await self._line(send, final)
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        else:
            await self._json(send, 200, final)

    def _object(self, piece: dict[str, Any], done: bool) -> dict[str, Any]:
        return {"model": self.echo, "created_at": now_iso(), **piece, "done": done}

    async def _line(self, send: Send, obj: dict[str, Any]) -> None:
        if not self._started:
            self._started = True
            self.status = 200
            await send({"type": "http.response.start", "status": 200,
                        "headers": [(b"content-type", NDJSON), (b"cache-control", b"no-cache"),
                                    (b"x-accel-buffering", b"no")]})
        payload = json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode() + b"\n"
        await send({"type": "http.response.body", "body": payload, "more_body": True})

    async def _json(self, send: Send, status: int, obj: dict[str, Any], headers: dict[str, str] | None = None) -> None:
        self.status = status
        self._started = True
        payload = json.dumps(obj, ensure_ascii=False).encode()
        raw_headers = [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode())]
        raw_headers += [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()]
        await send({"type": "http.response.start", "status": status, "headers": raw_headers})
        await send({"type": "http.response.body", "body": payload})
