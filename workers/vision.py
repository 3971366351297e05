"""Vision worker: OpenAI chat completions with images, served by mlx-vlm on a Unix socket.

The engine is mlx-vlm's own FastAPI server app (``mlx_vlm.server``), which does continuous
batching in one generation thread. It is preloaded before "ready" and never exposed directly:
``VisionApp`` sits in front of it and

* serves only ``POST /v1/chat/completions`` (also ``/chat/completions``), ``GET /v1/models`` and
  ``GET /health``; every other upstream route (embeddings, audio, rerank, images, responses,
  ``/unload``, settings, realtime websockets, ...) answers 404, because several of them load
  other weights;
* pins ``model`` to the preloaded path on every request (upstream treats any other string as a
  model to load, unloading ours) and strips adapter, draft-model and pixel-budget fields;
* resolves every image itself: ``data:`` base64 URLs are decoded strictly, ``http(s)`` URLs are
  fetched with a total timeout and a size cap (upstream would fetch them with no size limit),
  each image is decoded with Pillow and passed upstream as a ``data:`` URL; local paths,
  ``file:`` URLs and anything else are refused with a 400 naming the field, so a request can
  never make the worker read a local file;
* turns upstream errors (FastAPI ``{"detail": ...}``, 422 validation) into OpenAI error bodies
  and reports the served model name instead of the local path in responses.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import io
import json
import os
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from mlx_serve_workers.common import (
    StatusChannel,
    WorkerArgs,
    error_body,
    fail_and_exit,
    hide_torch,
    memory_report,
    parse_args,
    run_asgi_on_socket,
    watch_parent,
)
from mlx_serve_workers.options import VISION as OPTIONS, resolve

CHAT_PATHS = ("/v1/chat/completions", "/chat/completions")
MODELS_PATHS = ("/v1/models", "/models")
# Request fields that would load other weights or lift the per-image pixel budget.
STRIPPED_FIELDS = ("adapter_path", "adapters", "adapter", "draft_model", "draft_kind",
                   "draft_block_size", "num_draft_tokens", "min_pixels", "max_pixels", "resize_shape")
TEXT_PART_TYPES = {"text", "input_text", "output_text", "refusal"}
IMAGE_PART_TYPES = {"image_url", "input_image"}
# Pillow decoders allowed for images (no EPS/PDF-style formats that shell out or parse code).
IMAGE_FORMATS = ("PNG", "JPEG", "GIF", "WEBP", "BMP", "TIFF", "MPO", "ICO")
# Upstream environment read at import time; anything that could load other weights is cleared.
CLEARED_ENV = ("MLX_VLM_PRELOAD_MODEL", "MLX_VLM_PRELOAD_ADAPTER", "MLX_VLM_PRELOAD_IMAGE_MODEL",
               "MLX_VLM_PRELOAD_TTS_MODEL", "MLX_VLM_PRELOAD_STT_MODEL",
               "MLX_VLM_PRELOAD_EMBEDDING_MODEL", "MLX_VLM_PRELOAD_RERANKER_MODEL",
               "MLX_VLM_PRELOAD_DECISION_MODEL", "MLX_VLM_DRAFT_MODEL", "MLX_VLM_DRAFT_KIND",
               "MLX_VLM_SERVER_API_KEY", "MLX_VLM_MODEL_PATHS")


class RequestError(Exception):
    """A client error, answered with the OpenAI error body."""

    def __init__(self, status: int, message: str, param: str | None = None,
                 code: str | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code


def resolve_options(raw: dict[str, Any]) -> dict[str, Any]:
    """Options with defaults filled in; unknown keys, wrong types and bad values raise ValueError."""
    numbers = [k for k, (t, _d, _doc) in OPTIONS.items() if t in (int, float)]
    minimums = {k: 0.0 for k in numbers}
    minimums.update({k: 1 for k in ("max_tokens", "max_images", "max_image_bytes", "max_image_pixels",
                                    "max_request_bytes", "prefill_step_size")})
    return resolve("vision", raw, at_least=minimums)


def configure_upstream_env(options: dict[str, Any]) -> None:
    """Set mlx_vlm.server's environment knobs; it reads them when imported and per request."""
    for name in CLEARED_ENV:
        os.environ.pop(name, None)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # models are local directories: never ask the Hub
    os.environ["MLX_VLM_MAX_TOKENS"] = str(options["max_tokens"])
    os.environ["PREFILL_STEP_SIZE"] = str(options["prefill_step_size"])
    os.environ["MLX_VLM_VISION_CACHE_SIZE"] = str(options["vision_cache_size"])
    for key, env in (("min_pixels", "MLX_VLM_MIN_PIXELS"), ("max_pixels", "MLX_VLM_MAX_PIXELS"),
                     ("max_num_seqs", "MLX_VLM_MAX_NUM_SEQS")):
        if options[key]:
            os.environ[env] = str(options[key])
        else:
            os.environ.pop(env, None)


# --- images -------------------------------------------------------------------------------


def _decode_data_url(url: str, param: str, max_bytes: int) -> bytes:
    header, sep, payload = url.partition(",")
    if not sep or not header.lower().endswith(";base64"):
        raise RequestError(400, "image data URL must look like data:image/png;base64,<data>",
                           param, "invalid_image_url")
    payload = "".join(payload.split())  # line breaks are common in pasted base64
    if len(payload) * 3 // 4 > max_bytes + 3:
        raise RequestError(400, f"image is larger than {max_bytes} bytes", param, "image_too_large")
    try:
        data = base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError):
        try:  # accept the URL-safe alphabet too, still strictly
            data = base64.b64decode(payload.replace("-", "+").replace("_", "/"), validate=True)
        except (binascii.Error, ValueError):
            raise RequestError(400, "image data URL is not valid base64", param,
                               "invalid_base64") from None
    if not data:
        raise RequestError(400, "image data URL is empty", param, "invalid_image")
    if len(data) > max_bytes:
        raise RequestError(400, f"image is larger than {max_bytes} bytes", param, "image_too_large")
    return data


def _check_image(data: bytes, param: str, max_pixels: int) -> str:
    """Decode the image fully (bad input fails here, not in the engine); return its format."""
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data), formats=IMAGE_FORMATS) as img:
            width, height = img.size
            if width * height > max_pixels:
                raise RequestError(400, f"image is {width}x{height} pixels, more than the "
                                        f"{max_pixels} allowed", param, "image_too_large")
            img.load()
            return (img.format or "png").lower()
    except RequestError:
        raise
    except Exception as exc:  # Pillow raises many types for corrupt or unknown data
        raise RequestError(400, f"image could not be decoded ({type(exc).__name__}: {exc}); "
                                f"supported formats: {', '.join(IMAGE_FORMATS)}",
                           param, "invalid_image") from None


def _image_url_of(part: dict[str, Any], param: str) -> tuple[str, str]:
    """The URL string of an image content part and the param path naming it."""
    value = part.get("image_url")
    if isinstance(value, dict):
        value, param = value.get("url"), f"{param}.image_url.url"
    else:
        param = f"{param}.image_url"
    if not isinstance(value, str) or not value.strip():
        raise RequestError(400, "image part needs image_url.url (a data: or http(s) URL)", param,
                           "invalid_image_url")
    return value.strip(), param


# --- the ASGI front -----------------------------------------------------------------------


class VisionApp:
    """ASGI front for the upstream mlx-vlm app: validation, pinning and route filtering."""

    def __init__(self, upstream: Any, model_key: str, name: str, options: dict[str, Any]) -> None:
        self.upstream = upstream
        self.model_key = model_key
        self.name = name
        self.options = options
        self.started = int(time.time())
        self.active = 0
        self.served = 0
        self._http_client: Any = None
        self._executor_loop: Any = None
        # Upstream echoes the model path in every response; clients should see the served name.
        self._model_bytes = (b'"model":' + json.dumps(model_key, ensure_ascii=False).encode(),
                             b'"model":' + json.dumps(name, ensure_ascii=False).encode())
        from mlx_vlm.server import runtime

        self._runtime = runtime
        self._generator = runtime.response_generator

    # -- routing

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] == "websocket":  # upstream has realtime websockets: never reachable
            await send({"type": "websocket.close", "code": 1008})
            return
        if scope["type"] != "http":
            return
        loop = asyncio.get_running_loop()
        if self._executor_loop is not loop:
            # Upstream runs each request's blocking queue reads in asyncio.to_thread; the
            # default pool (cores + 4 threads) would cap concurrent requests far below the batch.
            loop.set_default_executor(ThreadPoolExecutor(max_workers=64, thread_name_prefix="vlm-io"))
            self._executor_loop = loop
        path, method = scope["path"].rstrip("/") or "/", scope["method"]
        if path == "/health":
            if method != "GET":
                return await self._json(send, 405, error_body("use GET"))
            return await self._health(send)
        if path in MODELS_PATHS:
            if method != "GET":
                return await self._json(send, 405, error_body("use GET"))
            return await self._json(send, 200, {"object": "list", "data": [
                {"id": self.name, "object": "model", "created": self.started, "owned_by": "mlx-serve"}]})
        if path in CHAT_PATHS:
            if method != "POST":
                return await self._json(send, 405, error_body("use POST"))
            return await self._chat(scope, receive, send)
        await self._json(send, 404, error_body(f"no route {method} {scope['path']} on this vision worker",
                                               code="not_found"))

    async def _json(self, send: Any, status: int, body: dict[str, Any]) -> None:
        data = json.dumps(body).encode()
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"content-type", b"application/json"),
                                (b"content-length", str(len(data)).encode())]})
        await send({"type": "http.response.body", "body": data})

    async def _health(self, send: Any) -> None:
        generator = self._runtime.response_generator
        thread = getattr(generator, "_thread", None)
        engine_ok = generator is not None and generator is self._generator and (
            thread is None or thread.is_alive())
        queued = 0
        try:
            queued = generator.requests.qsize() if generator is not None else 0
        except Exception:
            pass
        body = {"status": "ok" if engine_ok else "error", "memory": memory_report(),
                "model": self.name, "engine_ok": engine_ok, "active_requests": self.active,
                "queued_requests": queued, "requests_served": self.served}
        await self._json(send, 200 if engine_ok else 503, body)

    # -- chat

    async def _chat(self, scope: dict, receive: Any, send: Any) -> None:
        self.active += 1
        finished = False

        def finish(status: int) -> None:
            # Called just before the last body byte goes out, so /health is current for the client.
            nonlocal finished
            if not finished:
                finished = True
                self.active -= 1
                self.served += status < 400

        try:
            try:
                request = await self._read_json(receive)
                request = await self.prepare(request)
            except RequestError as exc:
                finish(exc.status)
                return await self._json(send, exc.status, error_body(exc.message, param=exc.param,
                                                                     code=exc.code))
            await self._forward(scope, receive, send, json.dumps(request).encode(), finish)
        finally:
            finish(599)

    async def _read_json(self, receive: Any) -> Any:
        limit = self.options["max_request_bytes"]
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise RequestError(400, "client disconnected")
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                raise RequestError(413, f"request body is larger than {limit} bytes",
                                   code="request_too_large")
            chunks.append(chunk)
            if not message.get("more_body"):
                break
        try:
            return json.loads(b"".join(chunks))
        except (ValueError, UnicodeDecodeError) as exc:
            raise RequestError(400, f"request body is not valid JSON: {exc}") from None

    async def prepare(self, request: Any) -> dict[str, Any]:
        """Validate and rewrite one chat request for the upstream engine (images resolved)."""
        if not isinstance(request, dict):
            raise RequestError(400, "request body must be a JSON object")
        messages = request.get("messages")
        if not isinstance(messages, list) or not messages:
            raise RequestError(400, "messages must be a non-empty list", "messages")
        for key in STRIPPED_FIELDS:
            request.pop(key, None)
        request["model"] = self.model_key  # any other string would make upstream swap models

        limit = request.pop("max_completion_tokens", None)
        if request.get("max_tokens") is None:
            request["max_tokens"] = self.options["max_tokens"] if limit is None else limit
        max_tokens = request["max_tokens"]
        if not isinstance(max_tokens, int) or isinstance(max_tokens, bool) or max_tokens < 1:
            raise RequestError(400, "max_tokens must be a positive integer", "max_tokens")
        if request.get("temperature") is None:
            request["temperature"] = self.options["temperature"]

        images: list[tuple[dict[str, Any], str, str]] = []
        for i, message in enumerate(messages):
            if not isinstance(message, dict):
                raise RequestError(400, "each message must be an object", f"messages[{i}]")
            content = message.get("content")
            if not isinstance(content, list):
                continue
            for j, part in enumerate(content):
                param = f"messages[{i}].content[{j}]"
                if not isinstance(part, dict):
                    raise RequestError(400, "content parts must be objects", param)
                kind = part.get("type")
                if kind in TEXT_PART_TYPES:
                    continue
                if kind not in IMAGE_PART_TYPES:
                    raise RequestError(400, f"unsupported content part type {kind!r} (this model "
                                            "takes text and image_url parts)", f"{param}.type")
                if message.get("role") != "user":
                    raise RequestError(400, "images are only accepted in user messages", param)
                url, url_param = _image_url_of(part, param)
                images.append((part, url, url_param))
        if len(images) > self.options["max_images"]:
            raise RequestError(400, f"{len(images)} images in one request, at most "
                                    f"{self.options['max_images']} allowed", "messages")
        if images:
            urls = await asyncio.gather(*(self._resolve_image(url, param) for _, url, param in images))
            for (part, _, _), data_url in zip(images, urls):
                part.clear()
                part.update({"type": "image_url", "image_url": {"url": data_url}})
        return request

    async def _resolve_image(self, url: str, param: str) -> str:
        """Any accepted image URL -> a checked data: URL the engine decodes without I/O."""
        scheme = url.split(":", 1)[0].lower() if ":" in url else ""
        if scheme == "data":
            data = _decode_data_url(url, param, self.options["max_image_bytes"])
        elif scheme in ("http", "https"):
            if not self.options["fetch_remote_images"]:
                raise RequestError(400, "http(s) image URLs are disabled on this server; send the "
                                        "image as a data: URL", param, "remote_images_disabled")
            data = await self._fetch(url, param)
        else:
            raise RequestError(400, "image URL must be a data: URL (base64) or an http(s) URL; "
                                    "local paths and file: URLs are not accepted", param,
                               "invalid_image_url")
        fmt = await asyncio.to_thread(_check_image, data, param, self.options["max_image_pixels"])
        return f"data:image/{fmt};base64,{base64.b64encode(data).decode()}"

    async def _fetch(self, url: str, param: str) -> bytes:
        import httpx

        if self._http_client is None:
            self._http_client = httpx.AsyncClient(follow_redirects=True, max_redirects=3,
                                                  headers={"user-agent": "mlx-serve"})
        timeout = self.options["image_fetch_timeout"]
        try:
            # wait_for bounds the whole fetch (slow trickles included), not just each read.
            return await asyncio.wait_for(self._download(url, param, timeout), timeout)
        except asyncio.TimeoutError:
            raise RequestError(400, f"fetching the image took longer than {timeout} s", param,
                               "image_fetch_timeout") from None
        except httpx.HTTPError as exc:
            raise RequestError(400, f"fetching the image failed: {type(exc).__name__}: {exc}", param,
                               "image_fetch_failed") from None

    async def _download(self, url: str, param: str, timeout: float) -> bytes:
        max_bytes = self.options["max_image_bytes"]
        too_large = RequestError(400, f"image is larger than {max_bytes} bytes", param, "image_too_large")
        async with self._http_client.stream("GET", url, timeout=timeout) as response:
            if response.status_code != 200:
                raise RequestError(400, f"fetching the image failed: HTTP {response.status_code}",
                                   param, "image_fetch_failed")
            declared = response.headers.get("content-length", "")
            if declared.isdigit() and int(declared) > max_bytes:
                raise too_large
            data = bytearray()
            async for chunk in response.aiter_bytes():
                data += chunk
                if len(data) > max_bytes:
                    raise too_large
            return bytes(data)

    async def _forward(self, scope: dict, receive: Any, send: Any, body: bytes,
                       on_done: Callable[[int], None]) -> None:
        """Call the upstream app with the rewritten body; fix up what it sends back."""
        headers = [(k, v) for k, v in scope["headers"]
                   if k not in (b"content-length", b"transfer-encoding", b"authorization")]
        headers.append((b"content-length", str(len(body)).encode()))
        inner_scope = {**scope, "path": "/v1/chat/completions", "raw_path": b"/v1/chat/completions",
                       "query_string": b"", "headers": headers}
        body_sent = False

        async def inner_receive() -> dict:
            nonlocal body_sent
            if not body_sent:
                body_sent = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()  # then wait for the client to go away, as upstream expects

        await self.upstream(inner_scope, inner_receive,
                            _ResponseFixer(send, self._model_bytes, on_done))


class _ResponseFixer:
    """ASGI send wrapper: OpenAI error bodies, and the served name in place of the local path."""

    def __init__(self, send: Any, model_bytes: tuple[bytes, bytes],
                 on_done: Callable[[int], None]) -> None:
        self.send = send
        self.old, self.new = model_bytes
        self.on_done = on_done
        self.status = 0
        self.start: dict | None = None
        self.buffer: list[bytes] | None = None

    async def __call__(self, message: dict) -> None:
        if message["type"] == "http.response.start":
            self.status = message["status"]
            headers = dict(message.get("headers", []))
            if message["status"] >= 400 or b"content-length" in headers:
                self.start, self.buffer = message, []  # small complete bodies: rewrite as a whole
                return
            await self.send(message)
            return
        if message["type"] != "http.response.body":
            await self.send(message)
            return
        body = message.get("body", b"")
        if self.buffer is None:  # streaming (SSE): each event arrives in one message
            if body.startswith(b'data: {"error": "'):
                body = self._stream_error(body)
            if not message.get("more_body"):
                self.on_done(self.status)
            await self.send({**message, "body": body.replace(self.old, self.new)})
            return
        self.buffer.append(body)
        if message.get("more_body"):
            return
        assert self.start is not None
        status, data = self._rewrite(self.start["status"], b"".join(self.buffer))
        headers = [(k, v) for k, v in self.start.get("headers", []) if k != b"content-length"]
        headers.append((b"content-length", str(len(data)).encode()))
        self.on_done(status)
        await self.send({"type": "http.response.start", "status": status, "headers": headers})
        await self.send({"type": "http.response.body", "body": data})

    @staticmethod
    def _stream_error(event: bytes) -> bytes:
        # Upstream ends a failed stream with data: {"error": "<text>"}; give it the OpenAI shape.
        try:
            message = json.loads(event[len(b"data: "):])["error"]
        except (ValueError, KeyError):
            return event
        return b"data: " + json.dumps(error_body(str(message), "server_error")).encode() + b"\n\n"

    def _rewrite(self, status: int, data: bytes) -> tuple[int, bytes]:
        if status < 400:
            return status, data.replace(self.old, self.new)
        try:
            detail = json.loads(data).get("detail", data.decode(errors="replace"))
        except (ValueError, AttributeError):
            detail = data.decode(errors="replace")
        param = None
        if status == 422 and isinstance(detail, list):  # FastAPI/pydantic validation errors
            status = 400
            first = detail[0] if detail and isinstance(detail[0], dict) else {}
            loc = [str(p) for p in first.get("loc", []) if p != "body"]
            param = ".".join(loc) or None
            message = "; ".join(f"{'.'.join(str(p) for p in d.get('loc', []) if p != 'body')}: "
                                f"{d.get('msg')}" for d in detail if isinstance(d, dict)) or str(detail)
        else:
            message = detail if isinstance(detail, str) else json.dumps(detail)
        type_ = "server_error" if status >= 500 else "invalid_request_error"
        return status, json.dumps(error_body(message, type_, param)).encode()


# --- start --------------------------------------------------------------------------------


def _tiny_png() -> str:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (32, 32), (200, 30, 30)).save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


async def _call(app: Any, path: str, payload: dict[str, Any]) -> tuple[int, bytes]:
    """One in-process HTTP request through the ASGI app (used for the warm-up)."""
    body = json.dumps(payload).encode()
    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST",
             "scheme": "http", "path": path, "raw_path": path.encode(), "query_string": b"",
             "root_path": "", "headers": [(b"content-type", b"application/json"),
                                          (b"content-length", str(len(body)).encode())],
             "client": ("warmup", 0), "server": ("worker", 0)}
    sent = False
    status, chunks = 0, []

    async def receive() -> dict:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        await asyncio.Event().wait()  # never disconnects
        return {"type": "http.disconnect"}

    async def send(message: dict) -> None:
        nonlocal status
        if message["type"] == "http.response.start":
            status = message["status"]
        elif message["type"] == "http.response.body":
            chunks.append(message.get("body", b""))

    await app(scope, receive, send)
    return status, b"".join(chunks)


def warm_up(app: VisionApp) -> None:
    """Answer one tiny image request end to end, so "ready" means the model can answer."""
    payload = {"model": "warmup", "max_tokens": 2, "messages": [{"role": "user", "content": [
        {"type": "text", "text": "Hi"}, {"type": "image_url", "image_url": {"url": _tiny_png()}}]}]}
    status, body = asyncio.run(_call(app, CHAT_PATHS[0], payload))
    if status != 200:
        raise RuntimeError(f"warm-up request failed with HTTP {status}: {body[:500]!r}")
    app.served = 0


def _skip_per_request_full_gc(upstream: Any) -> None:
    """Stop upstream's full ``gc.collect()`` after every non-streaming chat request.

    It runs on the event loop and holds the GIL for 30-70 ms, stalling every other request and
    the generation thread: 8 concurrent non-streaming requests took 0.83 s with it and 0.11 s
    without (tiny model, 2 cores). Python's automatic collector still runs, and upstream's
    ``mx.clear_cache()`` next to it is kept.
    """
    import gc
    import types

    openai_module = sys.modules.get("mlx_vlm.server.openai")
    if openai_module is not None and getattr(openai_module, "gc", None) is gc:
        openai_module.gc = types.SimpleNamespace(collect=lambda generation=0: gc.collect(0))


def load(args: WorkerArgs, options: dict[str, Any], timings: dict[str, float]) -> VisionApp:
    """Import mlx-vlm's server, preload the model into its engine, return the front app."""
    model_path = Path(args.model_path).expanduser().resolve()
    if not (model_path / "config.json").is_file():
        raise FileNotFoundError(f"{model_path} is not a model directory (no config.json)")
    model_key = str(model_path)
    t0 = time.monotonic()
    import mlx_vlm.server as upstream

    timings["import_s"] = round(time.monotonic() - t0, 3)
    _skip_per_request_full_gc(upstream)
    t0 = time.monotonic()
    # What the upstream lifespan does for MLX_VLM_PRELOAD_MODEL: load the weights and start the
    # continuous-batching generation thread, keyed by this exact path string.
    upstream.get_cached_model(model_key, None, model_kind="text_generation")
    if upstream.runtime.response_generator is None:
        raise RuntimeError("mlx-vlm did not start its generation engine for this model")
    timings["load_s"] = round(time.monotonic() - t0, 3)
    return VisionApp(upstream.app, model_key, args.name, options)


def main() -> None:
    args = parse_args("vision")
    status = StatusChannel(args.status_fd)
    watch_parent()
    timings: dict[str, float] = {}
    try:
        options = resolve_options(args.options)
        hide_torch()
        configure_upstream_env(options)
        app = load(args, options, timings)
        t0 = time.monotonic()
        warm_up(app)
        timings["warmup_s"] = round(time.monotonic() - t0, 3)
    except BaseException as exc:  # noqa: BLE001 - any start failure is reported, then exit
        fail_and_exit(status, exc)
        return
    run_asgi_on_socket(app, args, status, timings)


if __name__ == "__main__":
    main()
