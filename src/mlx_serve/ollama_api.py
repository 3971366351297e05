"""The Ollama-compatible API, so that Ollama clients (the ``ollama`` libraries, Open WebUI, ...) work unchanged.

Routes: ``GET /api/version``, ``GET /api/tags``, ``POST /api/show``, ``POST /api/chat``,
``POST /api/generate``, ``POST /api/embed``, ``POST /api/embeddings``, ``POST /api/pull``,
``DELETE /api/delete`` (and ``/api/create``, ``/api/copy``, ``/api/push``, which answer 501).
``GET /api/ps`` lives in :mod:`mlx_serve.management_api`, already in Ollama's shape.

Each request is checked, translated into the OpenAI request the model's worker serves
(:mod:`mlx_serve.ollama_convert`), and run under a lease of that worker, like the OpenAI routes.
Errors use Ollama's shape ``{"error": "message"}`` with the HTTP status the OpenAI routes would
give. Model names may carry Ollama's default tag: ``name:latest`` is the configured ``name``.
docs/ollama.md lists what maps to what and what does not.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import anyio
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from mlx_serve import __version__
from mlx_serve.config import ModelConfig
from mlx_serve.errors import APIError, bad_request
from mlx_serve.ollama_catalog import OLLAMA_KINDS, cache_location, show, tag_entry
from mlx_serve.ollama_convert import (CHAT_PATH, COMPLETIONS_PATH, chat_request, generate_request, is_loaded_only,
                                      now_iso, renamed, stream_flag)
from mlx_serve.ollama_pull import PullError, pull
from mlx_serve.ollama_stream import NDJSON, GenerationResponse, post_json, record
from mlx_serve.scheduler import Scheduler
from mlx_serve.validation import check_chat, check_completion, keep_alive_field, read_json_object

OLLAMA_API_VERSION = "0.9.0"
"""The Ollama release whose API this emulates, for clients that gate features on ``/api/version``."""

Handler = Callable[[Request], Awaitable[Response]]


def ollama_error(error: APIError) -> JSONResponse:
    return JSONResponse({"error": error.message}, status_code=error.status, headers=error.headers)


def _ollama_errors(handler: Handler) -> Handler:
    """Answer the handler's APIErrors in Ollama's shape, ``{"error": "message"}``."""
    async def wrapped(request: Request) -> Response:
        try:
            return await handler(request)
        except APIError as e:
            return ollama_error(e)

    wrapped.__name__ = handler.__name__
    return wrapped


def _checked(check: Callable[[], None]) -> None:
    """Run an OpenAI-side check; its errors name the Ollama fields the client sent."""
    try:
        check()
    except APIError as e:
        raise renamed(e) from None


class OllamaHandlers:
    def __init__(self, scheduler: Scheduler) -> None:
        self.scheduler = scheduler
        self.config = scheduler.config

    def routes(self) -> list[Route]:
        table: list[tuple[str, Handler, str]] = [
            ("/api/version", self.version, "GET"),
            ("/api/tags", self.tags, "GET"),
            ("/api/show", self.show, "POST"),
            ("/api/chat", self.chat, "POST"),
            ("/api/generate", self.generate, "POST"),
            ("/api/embed", self.embed, "POST"),
            ("/api/embeddings", self.embeddings, "POST"),
            ("/api/pull", self.pull, "POST"),
            ("/api/delete", self.delete, "DELETE"),
            ("/api/create", self.unsupported, "POST"),
            ("/api/copy", self.unsupported, "POST"),
            ("/api/push", self.unsupported, "POST"),
        ]
        return [Route(path, _ollama_errors(handler), methods=[method]) for path, handler, method in table]

    # -- catalog -------------------------------------------------------------------------------

    async def version(self, request: Request) -> Response:
        return JSONResponse({"version": OLLAMA_API_VERSION, "mlx_serve_version": __version__})

    async def tags(self, request: Request) -> Response:
        models = [m for m in self.config.models if m.type in OLLAMA_KINDS]
        base = self.config.base_dir
        # Reading config.json and safetensors headers is disk I/O: keep it off the event loop.
        entries = await anyio.to_thread.run_sync(lambda: [tag_entry(m, base) for m in models])
        return JSONResponse({"models": entries})

    async def show(self, request: Request) -> Response:
        body = await self._body(request)
        model, _ = self._model(body, OLLAMA_KINDS, "show")
        return JSONResponse(await anyio.to_thread.run_sync(show, model, self.config.base_dir))

    # -- generation ----------------------------------------------------------------------------

    async def chat(self, request: Request) -> Response:
        started = time.monotonic_ns()
        body = await self._body(request)
        model, echo = self._model(body, ("text", "vision"), "chat")
        keep_alive = keep_alive_field(body.get("keep_alive"))
        stream = stream_flag(body)
        if is_loaded_only(body.get("messages")):
            reason = await self._load_or_unload(model, keep_alive)
            return JSONResponse({"model": echo, "created_at": now_iso(),
                                 "message": {"role": "assistant", "content": ""}, "done": True, "done_reason": reason})
        messages = body["messages"]
        if model.type != "vision" and isinstance(messages, list) and any(
                isinstance(m, dict) and m.get("images") for m in messages):
            raise self._no_images(model)
        worker_body = chat_request(body, model.name)
        _checked(lambda: check_chat(worker_body, vision=model.type == "vision"))
        return self._generation(model, echo, "/api/chat", CHAT_PATH, worker_body, stream, keep_alive, started)

    async def generate(self, request: Request) -> Response:
        started = time.monotonic_ns()
        body = await self._body(request)
        model, echo = self._model(body, ("text", "vision"), "generate")
        keep_alive = keep_alive_field(body.get("keep_alive"))
        stream = stream_flag(body)
        if is_loaded_only(body.get("prompt")) and not body.get("images"):
            reason = await self._load_or_unload(model, keep_alive)
            return JSONResponse({"model": echo, "created_at": now_iso(), "response": "", "done": True,
                                 "done_reason": reason})
        if body.get("images") and model.type != "vision":
            raise self._no_images(model)
        path, worker_body = generate_request(body, model.name)
        if path == COMPLETIONS_PATH:
            if model.type == "vision":
                raise bad_request(f"model {model.name!r} is a vision model, which serves chat only: \"raw\": true "
                                  f"is not supported for it; leave raw out", param="raw")
            _checked(lambda: check_completion(worker_body))
        else:
            _checked(lambda: check_chat(worker_body, vision=model.type == "vision"))
        return self._generation(model, echo, "/api/generate", path, worker_body, stream, keep_alive, started)

    def _generation(self, model: ModelConfig, echo: str, endpoint: str, path: str, body: dict[str, Any],
                    stream: bool, keep_alive: float | None, started: int) -> Response:
        return GenerationResponse(self.scheduler, model=model.name, echo=echo, endpoint=endpoint, path=path,
                                  body=body, chat_chunks=path == CHAT_PATH, stream=stream, keep_alive=keep_alive,
                                  timeout=self.config.server.request_timeout,
                                  started_ns=started)  # type: ignore[return-value]

    async def _load_or_unload(self, model: ModelConfig, keep_alive: float | None) -> str:
        """Ollama's empty request: load the model (keep_alive 0: unload it); returns "load" or "unload"."""
        if keep_alive == 0:
            await self.scheduler.unload(model.name)
            return "unload"
        await self.scheduler.load(model.name, keep_alive)
        return "load"

    @staticmethod
    def _no_images(model: ModelConfig) -> APIError:
        return bad_request(f"model {model.name!r} is a {model.type} model and does not take images; send them to "
                           f"a vision model", param="images", code="unsupported_content")

    # -- embeddings ----------------------------------------------------------------------------

    async def embed(self, request: Request) -> Response:
        started = time.monotonic_ns()
        body = await self._body(request)
        model, echo = self._model(body, ("embedding",), "embeddings")
        keep_alive = keep_alive_field(body.get("keep_alive"))
        value = body.get("input")
        if is_loaded_only(value):
            await self._load_or_unload(model, keep_alive)
            return JSONResponse({"model": echo, "embeddings": []})
        if not (isinstance(value, str) or (isinstance(value, list) and all(isinstance(v, str) for v in value))):
            raise bad_request("'input' must be a string or a list of strings", param="input")
        worker_body: dict[str, Any] = {"model": model.name, "input": value}
        if body.get("dimensions") is not None:
            worker_body["dimensions"] = body["dimensions"]
        answer, leased = await self._embeddings(request, model, worker_body, keep_alive, started)
        usage = answer.get("usage") or {}
        out: dict[str, Any] = {"model": echo, "embeddings": _vectors(answer),
                               "total_duration": time.monotonic_ns() - started, "load_duration": leased - started}
        if isinstance(usage.get("prompt_tokens"), int):
            out["prompt_eval_count"] = usage["prompt_tokens"]
        return JSONResponse(out)

    async def embeddings(self, request: Request) -> Response:
        """The older ``/api/embeddings``: one ``prompt`` in, one ``embedding`` out."""
        started = time.monotonic_ns()
        body = await self._body(request)
        model, echo = self._model(body, ("embedding",), "embeddings")
        keep_alive = keep_alive_field(body.get("keep_alive"))
        prompt = body.get("prompt")
        if is_loaded_only(prompt):
            await self._load_or_unload(model, keep_alive)
            return JSONResponse({"embedding": []})
        if not isinstance(prompt, str):
            raise bad_request("'prompt' must be a string", param="prompt")
        answer, _ = await self._embeddings(request, model, {"model": model.name, "input": prompt}, keep_alive,
                                           started)
        return JSONResponse({"embedding": _vectors(answer)[0]})

    async def _embeddings(self, request: Request, model: ModelConfig, body: dict[str, Any],
                          keep_alive: float | None, started: int) -> tuple[dict[str, Any], int]:
        leased: int | None = None
        status, tokens = 500, None
        try:
            async with self.scheduler.lease(model.name, keep_alive) as worker:
                leased = time.monotonic_ns()
                answer = await post_json(worker, model.name, "/v1/embeddings", body,
                                         self.config.server.request_timeout)
            if not isinstance(answer.get("data"), list):
                raise APIError(502, f"the worker for model {model.name!r} answered without 'data'",
                               code="worker_error")
            status = 200
            usage = answer.get("usage")
            tokens = usage.get("prompt_tokens") if isinstance(usage, dict) else None
            return answer, leased
        except APIError as e:
            status = e.status
            raise
        finally:
            record(request.scope, model.name, request.url.path, status, started, leased, None, False, None,
                   tokens if isinstance(tokens, int) else None)

    # -- model store -----------------------------------------------------------------------------

    async def pull(self, request: Request) -> Response:
        body = await self._body(request)
        name = self._name(body)
        stream = stream_flag(body)
        model = self._lookup(name) or next((m for m in self.config.models if m.path == name), None)
        if model is None:
            raise APIError(404, f"model {name!r} is not in models.yaml: mlx-serve only pulls configured models. Add "
                                f"an entry (name, type, path: <Hugging Face repo id>) to models.yaml, restart, then "
                                f"pull it by name", code="model_not_found")
        events = self._pull_events(model)
        if stream:
            return StreamingResponse(_ndjson(events), media_type=NDJSON.decode())
        last: dict[str, Any] = {}
        try:
            async for event in events:
                last = event
        except PullError as e:
            return ollama_error(e)
        return JSONResponse(last)

    def _pull_events(self, model: ModelConfig) -> AsyncIterator[dict[str, Any]]:
        local = model.local_path(self.config.base_dir)
        if local is not None:
            return _events({"status": f"{model.name} is the local model directory {local}: nothing to download"},
                           {"status": "success"})
        if not _looks_like_repo_id(model.path):
            raise APIError(404, f"model {model.name!r} has path {model.path!r}, which is neither an existing "
                                f"directory nor a Hugging Face repo id: nothing to pull; fix its path in "
                                f"models.yaml", code="model_not_found")
        return pull(model.path)

    async def delete(self, request: Request) -> Response:
        body = await self._body(request)
        model, _ = self._model(body, None, "delete")
        where = (f"its files are in the Hugging Face cache ({cache_location()}); free them with "
                 f"`hf cache rm model/{model.path}`" if model.local_path(self.config.base_dir) is None
                 else f"its files are the local directory {model.path}")
        raise APIError(501, f"mlx-serve has no model store to delete {model.name!r} from: models come from "
                            f"models.yaml. To remove it, delete its entry there and restart; {where}",
                       code="not_supported")

    async def unsupported(self, request: Request) -> Response:
        action = request.url.path.rsplit("/", 1)[-1]
        raise APIError(501, f"mlx-serve does not {action} models: the models it serves are the ones listed in "
                            f"models.yaml (a Hugging Face repo id or a local MLX directory each)",
                       code="not_supported")

    # -- requests ------------------------------------------------------------------------------

    async def _body(self, request: Request) -> dict[str, Any]:
        return await read_json_object(request, self.config.server.max_body_bytes)

    @staticmethod
    def _name(body: dict[str, Any]) -> str:
        value = body.get("model")
        if value in (None, ""):
            value = body.get("name")  # the older spelling, still sent by some clients
        if value in (None, ""):
            raise bad_request("model is required", param="model", code="missing_required_parameter")
        if not isinstance(value, str):
            raise bad_request(f"'model' must be a string, got {value!r}", param="model")
        return value

    def _lookup(self, name: str) -> ModelConfig | None:
        """The configured model ``name`` names, allowing Ollama's default tag ``:latest`` either way."""
        model = self.config.model(name)
        if model is None and name.endswith(":latest"):
            model = self.config.model(name[: -len(":latest")])
        if model is None and ":" not in name.rsplit("/", 1)[-1]:
            model = self.config.model(name + ":latest")
        return model

    def _model(self, body: dict[str, Any], kinds: tuple[str, ...] | None, action: str) -> tuple[ModelConfig, str]:
        """The configured model the body names (404 if none), checked to serve ``action``; and the name sent."""
        name = self._name(body)
        model = self._lookup(name)
        if model is None:
            known = ", ".join(m.name for m in self.config.models if m.type in (kinds or OLLAMA_KINDS)) or "none"
            raise APIError(404, f"model {name!r} not found; the models for this endpoint in models.yaml are: "
                                f"{known}", param="model", code="model_not_found")
        if kinds is not None and model.type not in kinds:
            if model.type not in OLLAMA_KINDS:
                hint = "the Ollama API serves text, vision and embedding models; use the OpenAI endpoints (/v1/...)"
            elif model.type == "embedding":
                hint = "use /api/embed"
            else:
                hint = "use an embedding model for embeddings"
            raise bad_request(f"model {name!r} is a {model.type} model and does not support {action}; {hint}",
                              param="model", code="wrong_model_type")
        return model, name


def _vectors(answer: dict[str, Any]) -> list[Any]:
    rows = sorted((d for d in answer["data"] if isinstance(d, dict)), key=lambda d: d.get("index", 0))
    return [d.get("embedding") for d in rows]


def _looks_like_repo_id(path: str) -> bool:
    return not path.startswith(("/", ".", "~")) and path.count("/") <= 1 and " " not in path


async def _events(*objects: dict[str, Any]) -> AsyncIterator[dict[str, Any]]:
    for obj in objects:
        yield obj


async def _ndjson(events: AsyncIterator[dict[str, Any]]) -> AsyncIterator[bytes]:
    """Progress objects as NDJSON lines; a failure after the first line is an ``{"error": ...}`` line."""
    try:
        async for event in events:
            yield json.dumps(event).encode() + b"\n"
    except PullError as e:
        yield json.dumps({"error": e.message}).encode() + b"\n"
