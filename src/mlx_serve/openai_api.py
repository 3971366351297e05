"""The OpenAI-compatible endpoints: check the request, resolve the model, hand it to the proxy.

Each endpoint serves some model kinds. The router checks what it can without a model (JSON
shape, model name and kind, keep_alive, image URLs, sampling ranges), rewrites the body for the
worker (``model`` pinned, ``keep_alive`` and weight-loading fields removed) and returns a
:class:`~mlx_serve.proxy.ProxyResponse`, which takes the lease.
"""

from __future__ import annotations

import json
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from starlette.datastructures import FormData
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from mlx_serve.config import ModelConfig
from mlx_serve.errors import APIError, bad_request
from mlx_serve.proxy import ProxyResponse
from mlx_serve.scheduler import Scheduler
from mlx_serve.validation import (check_chat, check_completion, keep_alive_field, model_field, read_body,
                                  read_json_object, strip_forbidden)

Check = Callable[[dict[str, Any], ModelConfig], None]


@dataclass(frozen=True)
class Endpoint:
    path: str
    kinds: tuple[str, ...]
    check: Check | None = None
    multipart: bool = False


def _chat(body: dict[str, Any], model: ModelConfig) -> None:
    check_chat(body, vision=model.type == "vision")


def _completion(body: dict[str, Any], model: ModelConfig) -> None:
    check_completion(body)


def _embedding(body: dict[str, Any], model: ModelConfig) -> None:
    value = body.get("input")
    if value is None:
        raise bad_request("missing required parameter 'input'", param="input", code="missing_required_parameter")
    if value == "" or value == []:
        raise bad_request("'input' must not be empty", param="input")
    if not isinstance(value, (str, list)):
        raise bad_request("'input' must be a string, a list of strings or a list of token ids", param="input",
                          code="invalid_type")


def _speech(body: dict[str, Any], model: ModelConfig) -> None:
    value = body.get("input")
    if not isinstance(value, str) or not value.strip():
        raise bad_request("'input' must be a non-empty string: the text to speak", param="input")


def _rerank(body: dict[str, Any], model: ModelConfig) -> None:
    # The shape only: the worker checks the limits (max_documents, tokens per document).
    query = body.get("query")
    if not isinstance(query, str) or not query.strip():
        raise bad_request("'query' must be a non-empty string: the text to rank the documents for", param="query")
    documents = body.get("documents")
    if not isinstance(documents, list) or not documents:
        raise bad_request("'documents' must be a non-empty list of strings or {\"text\": ...} objects",
                          param="documents")
    for i, doc in enumerate(documents):
        if not isinstance(doc, str) and not (isinstance(doc, dict) and isinstance(doc.get("text"), str)):
            raise bad_request(f"documents[{i}] must be a string or an object with a string 'text'",
                              param="documents")
    top_n = body.get("top_n")
    if top_n is not None and (not isinstance(top_n, int) or isinstance(top_n, bool) or top_n < 1):
        raise bad_request(f"'top_n' must be a positive integer, got {top_n!r}", param="top_n")


ENDPOINTS = (
    Endpoint("/v1/chat/completions", ("text", "vision"), _chat),
    Endpoint("/v1/completions", ("text",), _completion),
    Endpoint("/v1/embeddings", ("embedding",), _embedding),
    Endpoint("/v1/audio/speech", ("tts",), _speech),
    Endpoint("/v1/audio/transcriptions", ("stt",), multipart=True),
    Endpoint("/v1/audio/translations", ("stt",), multipart=True),
    Endpoint("/v1/rerank", ("rerank",), _rerank),
    Endpoint("/rerank", ("rerank",), _rerank),
)


class OpenAIHandlers:
    def __init__(self, scheduler: Scheduler) -> None:
        self.scheduler = scheduler
        self.config = scheduler.config

    def routes(self) -> list[Route]:
        routes = [Route(e.path, self._handler(e), methods=["POST"]) for e in ENDPOINTS]
        routes += [Route("/v1/models", self.list_models, methods=["GET"]),
                   Route("/v1/models/{model:path}", self.get_model, methods=["GET"])]
        return routes

    def _handler(self, endpoint: Endpoint) -> Callable[[Request], Awaitable[Response]]:
        async def handle(request: Request) -> Response:
            if endpoint.multipart:
                return await self._multipart(request, endpoint)
            return await self._json(request, endpoint)

        handle.__name__ = endpoint.path.strip("/").replace("/", "_")
        return handle

    async def _json(self, request: Request, endpoint: Endpoint) -> Response:
        body = await read_json_object(request, self.config.server.max_body_bytes)
        model = self._resolve(body.get("model"), endpoint)
        keep_alive = keep_alive_field(body.pop("keep_alive", None))
        strip_forbidden(body)
        body["model"] = model.name
        if endpoint.check is not None:
            endpoint.check(body, model)
        return ProxyResponse(self.scheduler, model.name, endpoint.path, json.dumps(body).encode(),
                             "application/json", keep_alive=keep_alive,
                             timeout=self.config.server.request_timeout)  # type: ignore[return-value]

    async def _multipart(self, request: Request, endpoint: Endpoint) -> Response:
        content_type = request.headers.get("content-type", "")
        if not content_type.lower().startswith("multipart/form-data"):
            raise APIError(415, f"unsupported content type {content_type.split(';')[0]!r}: upload the audio as "
                                f"multipart/form-data with a 'file' field", code="unsupported_media_type")
        raw = await read_body(request, self.config.server.max_body_bytes)
        form = await _parse_form(raw, request)
        try:
            model = self._resolve(form.get("model"), endpoint)
            keep_alive = keep_alive_field(form.get("keep_alive"))
            if form.get("file") is None or isinstance(form.get("file"), str):
                raise bad_request("missing required file upload 'file'", param="file",
                                  code="missing_required_parameter")
        finally:
            await form.close()
        # The worker gets the upload as sent: it ignores `model` (it serves one model) and `keep_alive`.
        return ProxyResponse(self.scheduler, model.name, endpoint.path, raw, content_type, keep_alive=keep_alive,
                             timeout=self.config.server.request_timeout)  # type: ignore[return-value]

    def _resolve(self, value: Any, endpoint: Endpoint) -> ModelConfig:
        name = model_field(value)
        model = self.config.model(name)
        if model is None:
            known = ", ".join(m.name for m in self.config.models if m.type in endpoint.kinds) or "none"
            raise APIError(404, f"model {name!r} not found; models for {endpoint.path}: {known}",
                           param="model", code="model_not_found")
        if model.type not in endpoint.kinds:
            raise bad_request(f"model {name!r} is a {model.type} model and cannot serve {endpoint.path}, which "
                              f"takes {' or '.join(endpoint.kinds)} models", param="model", code="wrong_model_type")
        return model

    async def list_models(self, request: Request) -> Response:
        return JSONResponse({"object": "list", "data": [self._model_card(m) for m in self.config.models]})

    async def get_model(self, request: Request) -> Response:
        model = self.config.model(request.path_params["model"])
        if model is None:
            raise APIError(404, f"model {request.path_params['model']!r} not found", param="model",
                           code="model_not_found")
        return JSONResponse(self._model_card(model))

    def _model_card(self, model: ModelConfig) -> dict[str, Any]:
        return {"id": model.name, "object": "model", "created": int(_STARTED), "owned_by": "mlx-serve",
                "type": model.type, "state": self.scheduler.state_of(model.name),
                "expected_memory": self.scheduler.expected_footprint(model.name)}


_STARTED = time.time()


async def _parse_form(raw: bytes, request: Request) -> FormData:
    """Parse a multipart body already read (and size-checked) by the router."""
    from starlette.formparsers import MultiPartException, MultiPartParser

    async def stream() -> Any:
        yield raw

    try:
        return await MultiPartParser(request.headers, stream()).parse()
    except MultiPartException as e:
        raise bad_request(f"invalid multipart body: {e.message}", code="invalid_multipart") from None
