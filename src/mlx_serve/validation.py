"""Checks on request bodies that the router makes before any worker is involved.

Each check raises :class:`~mlx_serve.errors.APIError` with a 4xx and the offending ``param``,
so bad input costs no model load and never reaches a worker. Kind-specific details (token
limits, audio decoding) are checked by the workers, which know their model.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

from starlette.requests import Request

from mlx_serve.durations import DurationError, parse_keep_alive
from mlx_serve.errors import APIError, bad_request

# Fields that would make a worker load other weights or read local files: never forwarded.
FORBIDDEN_FIELDS = ("adapters", "adapter_path", "adapter", "draft_model", "draft_model_path", "model_path",
                    "model_dir", "lora", "lora_path")


async def read_body(request: Request, max_bytes: int) -> bytes:
    """The request body, refusing (413) anything over ``max_bytes`` without reading it all."""
    declared = request.headers.get("content-length")
    if declared is not None:
        try:
            if int(declared) > max_bytes:
                raise _too_large(max_bytes)
        except ValueError:
            raise bad_request("invalid Content-Length header") from None
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > max_bytes:
            raise _too_large(max_bytes)
        chunks.append(chunk)
    return b"".join(chunks)


def _too_large(max_bytes: int) -> APIError:
    return APIError(413, f"request body is larger than the limit of {max_bytes} bytes (server.max_body_bytes)",
                    code="request_too_large")


async def read_json_object(request: Request, max_bytes: int) -> dict[str, Any]:
    content_type = request.headers.get("content-type", "application/json").split(";")[0].strip().lower()
    if content_type not in ("application/json", "") and not content_type.endswith("+json"):
        raise APIError(415, f"unsupported content type {content_type!r}: send the body as JSON with "
                            f"'Content-Type: application/json'", code="unsupported_media_type")
    raw = await read_body(request, max_bytes)
    if not raw.strip():
        raise bad_request("the request body is empty; send a JSON object", code="invalid_json")
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as e:
        raise bad_request(f"the request body is not valid JSON: {e}", code="invalid_json") from None
    except RecursionError:  # json's decoder recurses once per nesting level: [[[[... is not a 500
        raise bad_request("the request body is nested too deeply; send a JSON object of ordinary depth",
                          code="invalid_json") from None
    if not isinstance(body, dict):
        raise bad_request(f"the request body must be a JSON object, got a JSON {type(body).__name__}",
                          code="invalid_json")
    return body


def model_field(value: Any) -> str:
    if value is None:
        raise bad_request("missing required parameter 'model'", param="model", code="missing_required_parameter")
    if not isinstance(value, str) or not value:
        raise bad_request(f"'model' must be a non-empty string, got {value!r}", param="model")
    return value


def keep_alive_field(value: Any) -> float | None:
    """The request's keep_alive in seconds (inf = pinned), None when absent; 400 quoting a bad value."""
    if value is None:
        return None
    try:
        return parse_keep_alive(value)
    except DurationError as e:
        raise bad_request(f"invalid keep_alive {value!r}: {e}. Use seconds (300), a duration ('10m', '1h30m'), "
                          f"0 to unload when done or -1 to keep loaded", param="keep_alive") from None


def strip_forbidden(body: dict[str, Any]) -> None:
    for key in FORBIDDEN_FIELDS:
        body.pop(key, None)


# --- generation requests (chat and completions) ----------------------------------------------

_RANGES: dict[str, tuple[float, float]] = {
    "temperature": (0.0, 2.0),
    "top_p": (0.0, 1.0),
    "min_p": (0.0, 1.0),
    "presence_penalty": (-2.0, 2.0),
    "frequency_penalty": (-2.0, 2.0),
    "repetition_penalty": (0.0, 10.0),
}


def check_generation(body: dict[str, Any]) -> None:
    for name, (low, high) in _RANGES.items():
        value = body.get(name)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value):
            raise bad_request(f"'{name}' must be a number, got {value!r}", param=name, code="invalid_type")
        if not low <= value <= high:
            raise bad_request(f"'{name}' must be between {low:g} and {high:g}, got {value!r}", param=name)
    for name in ("max_tokens", "max_completion_tokens"):
        value = body.get(name)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int):
            raise bad_request(f"'{name}' must be an integer, got {value!r}", param=name, code="invalid_type")
        if value < 1:
            raise bad_request(f"'{name}' must be at least 1, got {value}", param=name)
    if "top_k" in body and body["top_k"] is not None:
        value = body["top_k"]
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise bad_request(f"'top_k' must be a non-negative integer, got {value!r}", param="top_k")
    n = body.get("n")
    if n is not None and n != 1:
        raise bad_request(f"only n=1 is supported, got {n!r}", param="n")
    stream = body.get("stream")
    if stream is not None and not isinstance(stream, bool):
        raise bad_request(f"'stream' must be true or false, got {stream!r}", param="stream", code="invalid_type")
    stream_options = body.get("stream_options")  # the engines index it: a non-object breaks the stream mid-way
    if stream_options is not None and not (isinstance(stream_options, dict) and
                                           isinstance(stream_options.get("include_usage", False), bool)):
        raise bad_request("'stream_options' must be an object such as {\"include_usage\": true}",
                          param="stream_options", code="invalid_type")
    stop = body.get("stop")
    if stop is not None and not (isinstance(stop, str) or
                                 (isinstance(stop, list) and all(isinstance(s, str) for s in stop))):
        raise bad_request("'stop' must be a string or a list of strings", param="stop", code="invalid_type")
    seed = body.get("seed")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
        raise bad_request(f"'seed' must be an integer, got {seed!r}", param="seed", code="invalid_type")


def check_chat(body: dict[str, Any], vision: bool) -> None:
    messages = body.get("messages")
    if messages is None:
        raise bad_request("missing required parameter 'messages'", param="messages",
                          code="missing_required_parameter")
    if not isinstance(messages, list) or not messages:
        raise bad_request("'messages' must be a non-empty list of messages", param="messages")
    for i, message in enumerate(messages):
        if not isinstance(message, dict):
            raise bad_request(f"messages[{i}] must be an object with 'role' and 'content'", param=f"messages[{i}]")
        role = message.get("role")
        if role not in ("system", "user", "assistant", "tool", "developer", "function"):
            raise bad_request(f"messages[{i}].role must be one of system, user, assistant, tool, got {role!r}",
                              param=f"messages[{i}].role")
        content = message.get("content")
        if content is None and role in ("assistant", "tool", "function"):
            continue
        if isinstance(content, str):
            continue
        if not isinstance(content, list):
            raise bad_request(f"messages[{i}].content must be a string or a list of content parts",
                              param=f"messages[{i}].content")
        for j, part in enumerate(content):
            where = f"messages[{i}].content[{j}]"
            if not isinstance(part, dict) or not isinstance(part.get("type"), str):
                raise bad_request(f"{where} must be an object with a 'type'", param=where)
            if part["type"] in ("image_url", "input_image", "image"):
                if not vision:
                    raise bad_request(f"{where}: this model does not take images (it is a text model); "
                                      f"use a vision model", param=where, code="unsupported_content")
                check_image_url(part, where)
            elif part["type"] == "text":
                if not isinstance(part.get("text"), str):
                    raise bad_request(f"{where}.text must be a string", param=f"{where}.text")
    check_generation(body)


_DATA_URL = re.compile(r"^data:image/[A-Za-z0-9.+-]+;base64,", re.IGNORECASE)


def check_image_url(part: dict[str, Any], where: str) -> None:
    """Images may come as data: URLs or http(s) URLs; never as local paths or file: URLs."""
    ref = part.get("image_url", part.get("image"))
    url = ref.get("url") if isinstance(ref, dict) else ref
    if not isinstance(url, str) or not url:
        raise bad_request(f"{where}: missing image URL; send {{\"image_url\": {{\"url\": \"data:image/png;base64,...\"}}}}",
                          param=f"{where}.image_url")
    lowered = url[:16].lower()
    if lowered.startswith(("http://", "https://")):
        return
    if lowered.startswith("data:"):
        if not _DATA_URL.match(url):
            raise bad_request(f"{where}: a data URL must look like data:image/png;base64,...",
                              param=f"{where}.image_url", code="invalid_image")
        import base64
        import binascii

        payload = url[url.index(",") + 1:]
        try:
            base64.b64decode(payload, validate=True)
        except (binascii.Error, ValueError):
            raise bad_request(f"{where}: the image's base64 data is invalid", param=f"{where}.image_url",
                              code="invalid_image") from None
        return
    raise bad_request(f"{where}: image URLs must be data: or http(s) URLs; local paths and file: URLs are "
                      f"refused (the server never reads local files for a request)", param=f"{where}.image_url",
                      code="invalid_image_url")


def check_completion(body: dict[str, Any]) -> None:
    prompt = body.get("prompt")
    if prompt is None:
        raise bad_request("missing required parameter 'prompt'", param="prompt", code="missing_required_parameter")
    if not isinstance(prompt, str):
        raise bad_request("'prompt' must be a string", param="prompt", code="invalid_type")
    check_generation(body)
