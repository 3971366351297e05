"""Translation between Ollama's API and the OpenAI requests the workers serve, both ways.

Pure functions and one accumulator, no I/O: an Ollama ``/api/chat`` or ``/api/generate`` body
becomes a worker's ``/v1/chat/completions`` or ``/v1/completions`` body (``options`` mapped onto
sampling fields, ``images`` onto ``image_url`` parts, ``format`` onto ``response_format``,
``think`` onto ``chat_template_kwargs``), and the worker's SSE chunks become Ollama's objects
(:class:`Reply`). What cannot be mapped is refused with a 400 that says so, or, for options that
only tune llama.cpp's runtime (``num_ctx``, ``num_gpu``, ...), ignored as docs/ollama.md lists.
"""

from __future__ import annotations

import base64
import binascii
import json
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from mlx_serve.errors import APIError, bad_request

CHAT_PATH = "/v1/chat/completions"
COMPLETIONS_PATH = "/v1/completions"

# Ollama option -> the worker's (OpenAI / mlx_lm.server) request field.
OPTION_FIELDS: dict[str, str] = {
    "temperature": "temperature",
    "top_p": "top_p",
    "top_k": "top_k",
    "min_p": "min_p",
    "num_predict": "max_tokens",
    "stop": "stop",
    "seed": "seed",
    "repeat_penalty": "repetition_penalty",
    "repeat_last_n": "repetition_context_size",
    "presence_penalty": "presence_penalty",
    "frequency_penalty": "frequency_penalty",
}

# Options that tune llama.cpp's runtime or samplers the MLX engines do not have. Ollama itself
# ignores options it does not know; these are ignored too (docs/ollama.md says what each means here).
IGNORED_OPTIONS = frozenset({
    "num_ctx", "num_batch", "num_gpu", "main_gpu", "low_vram", "f16_kv", "logits_all", "vocab_only",
    "use_mmap", "use_mlock", "embedding_only", "num_thread", "numa", "num_keep", "typical_p", "tfs_z",
    "mirostat", "mirostat_tau", "mirostat_eta", "penalize_newline",
})

_DONE_REASONS = {"stop": "stop", "length": "length", "tool_calls": "stop", "content_filter": "stop"}


def now_iso() -> str:
    """``created_at`` as Ollama writes it: RFC 3339 in UTC."""
    return datetime.now(timezone.utc).isoformat().replace("+00:00", "Z")


def is_loaded_only(value: Any) -> bool:
    """True for an absent or empty prompt/messages/input: Ollama's load (or unload) request."""
    return value is None or value == "" or value == []


# --- requests ---------------------------------------------------------------------------------

def sampling_fields(options: Any) -> dict[str, Any]:
    """Ollama ``options`` as worker request fields; unknown and llama.cpp-only options are dropped."""
    if options is None:
        return {}
    if not isinstance(options, dict):
        raise bad_request(f"'options' must be an object of model parameters, got {options!r}", param="options")
    fields: dict[str, Any] = {}
    for name, value in options.items():
        target = OPTION_FIELDS.get(name)
        if target is None or value is None:
            continue
        if name == "num_predict" and _is_int(value) and value <= 0:
            continue  # -1 (infinite) and -2 (fill the context): the worker's own max_tokens applies
        if name == "repeat_last_n":
            if not _is_int(value):
                raise bad_request(f"'options.repeat_last_n' must be an integer, got {value!r}",
                                  param="options.repeat_last_n")
            if value < 0:
                continue  # -1 means "num_ctx" in Ollama: keep the engine's default window
        fields[target] = value
    return fields


def ollama_param(param: str | None) -> str | None:
    """The name the client used for a worker field that failed validation (``options.num_predict``)."""
    if param is None:
        return None
    for option, target in OPTION_FIELDS.items():
        if param == target:
            return f"options.{option}"
    return param


def renamed(error: APIError) -> APIError:
    """``error`` (from the OpenAI-side checks) speaking of the Ollama fields the client sent."""
    param = ollama_param(error.param)
    if param == error.param or error.param is None:
        return error
    message = error.message.replace(f"'{error.param}'", f"'{param}'")
    return APIError(error.status, message, param=param, code=error.code, type_=error.type, headers=error.headers)


def image_data_url(value: Any, where: str) -> str:
    """An Ollama image (raw base64, as Ollama sends them) as a ``data:`` URL; data: URLs pass as they are."""
    if not isinstance(value, str) or not value.strip():
        raise bad_request(f"{where} must be a base64-encoded image", param=where, code="invalid_image")
    if value[:5].lower() == "data:":
        return value
    text = "".join(value.split())
    try:
        head = base64.b64decode(text[:64] + "=" * (-len(text[:64]) % 4), validate=True)
        base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise bad_request(f"{where} is not valid base64 image data (send the image file's bytes, "
                          f"base64-encoded)", param=where, code="invalid_image") from None
    return f"data:{_image_type(head)};base64,{text}"


def _image_type(head: bytes) -> str:
    if head.startswith(b"\xff\xd8\xff"):
        return "image/jpeg"
    if head.startswith((b"GIF87a", b"GIF89a")):
        return "image/gif"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "image/webp"
    if head.startswith(b"BM"):
        return "image/bmp"
    if head.startswith((b"II*\x00", b"MM\x00*")):
        return "image/tiff"
    # PNG, and anything else: the vision worker decodes the bytes whatever the declared type.
    return "image/png"


def chat_messages(messages: Any) -> list[dict[str, Any]]:
    """Ollama messages as OpenAI messages: images become parts, tool calls get JSON-string arguments."""
    if not isinstance(messages, list):
        raise bad_request("'messages' must be a list of messages", param="messages")
    out: list[dict[str, Any]] = []
    call_ids: list[tuple[str, str]] = []  # (id, function name) of tool calls not yet answered
    for i, message in enumerate(messages):
        if not isinstance(message, dict):
            raise bad_request(f"messages[{i}] must be an object with 'role' and 'content'", param=f"messages[{i}]")
        converted = {k: v for k, v in message.items() if k not in ("images", "tool_calls", "thinking", "tool_name")}
        images = message.get("images")
        if images:
            if not isinstance(images, list):
                raise bad_request(f"messages[{i}].images must be a list of base64 images",
                                  param=f"messages[{i}].images")
            content = message.get("content")
            parts: list[dict[str, Any]] = []
            if isinstance(content, str) and content:
                parts.append({"type": "text", "text": content})
            elif isinstance(content, list):
                parts.extend(content)
            for j, image in enumerate(images):
                url = image_data_url(image, f"messages[{i}].images[{j}]")
                parts.append({"type": "image_url", "image_url": {"url": url}})
            converted["content"] = parts
        calls = message.get("tool_calls")
        if calls:
            converted["tool_calls"] = [_openai_tool_call(call, f"messages[{i}].tool_calls[{j}]", f"call_{i}_{j}",
                                                         call_ids) for j, call in enumerate(_as_list(calls, i))]
        if message.get("role") == "tool":
            name = message.get("tool_name") or message.get("name")
            if isinstance(name, str) and name:
                converted["name"] = name
            if "tool_call_id" not in converted:
                call_id = _answer(call_ids, name)
                if call_id is not None:
                    converted["tool_call_id"] = call_id
        out.append(converted)
    return out


def _as_list(calls: Any, i: int) -> list[Any]:
    if not isinstance(calls, list):
        raise bad_request(f"messages[{i}].tool_calls must be a list", param=f"messages[{i}].tool_calls")
    return calls


def _openai_tool_call(call: Any, where: str, call_id: str, pending: list[tuple[str, str]]) -> dict[str, Any]:
    function = call.get("function") if isinstance(call, dict) else None
    if not isinstance(function, dict) or not isinstance(function.get("name"), str):
        raise bad_request(f"{where} must be {{\"function\": {{\"name\": ..., \"arguments\": {{...}}}}}}", param=where)
    arguments = function.get("arguments", {})
    if not isinstance(arguments, str):
        arguments = json.dumps(arguments, ensure_ascii=False)
    call_id = call.get("id") if isinstance(call.get("id"), str) else call_id
    pending.append((call_id, function["name"]))
    return {"id": call_id, "type": "function", "function": {"name": function["name"], "arguments": arguments}}


def _answer(pending: list[tuple[str, str]], name: Any) -> str | None:
    """The id of the oldest unanswered call of ``name`` (else the oldest of any), removed from ``pending``."""
    for index, (call_id, called) in enumerate(pending):
        if called == name:
            return pending.pop(index)[0]
    return pending.pop(0)[0] if pending else None


def response_format(value: Any) -> dict[str, Any] | None:
    """Ollama ``format`` ("json" or a JSON schema) as OpenAI ``response_format``."""
    if value is None or value == "":
        return None
    if value == "json":
        return {"type": "json_object"}
    if isinstance(value, dict):
        return {"type": "json_schema", "json_schema": {"name": "response", "schema": value}}
    raise bad_request(f"'format' must be \"json\" or a JSON schema object, got {value!r}", param="format")


def think_fields(value: Any) -> dict[str, Any]:
    """Ollama ``think`` as chat-template arguments (Qwen3-style ``enable_thinking``, gpt-oss effort)."""
    if value is None:
        return {}
    if isinstance(value, bool):
        return {"chat_template_kwargs": {"enable_thinking": value}}
    if value in ("low", "medium", "high"):
        return {"chat_template_kwargs": {"enable_thinking": True, "reasoning_effort": value}}
    raise bad_request(f"'think' must be true, false, \"low\", \"medium\" or \"high\", got {value!r}", param="think")


def stream_flag(body: dict[str, Any]) -> bool:
    """Ollama streams unless told ``"stream": false``."""
    value = body.get("stream", True)
    if value is None:
        return True
    if not isinstance(value, bool):
        raise bad_request(f"'stream' must be true or false, got {value!r}", param="stream")
    return value


def _common(body: dict[str, Any], model_name: str) -> dict[str, Any]:
    # The worker always streams: the router needs the time of the first token for Ollama's
    # prompt/eval durations, and the usage chunk for the token counts, streaming or not.
    out: dict[str, Any] = {"model": model_name, "stream": True, "stream_options": {"include_usage": True}}
    out.update(sampling_fields(body.get("options")))
    return out


def chat_request(body: dict[str, Any], model_name: str) -> dict[str, Any]:
    """The worker's /v1/chat/completions body for an Ollama /api/chat body."""
    out = _common(body, model_name)
    out["messages"] = chat_messages(body.get("messages"))
    tools = body.get("tools")
    if tools:
        if not isinstance(tools, list):
            raise bad_request("'tools' must be a list of tools", param="tools")
        out["tools"] = tools
    fmt = response_format(body.get("format"))
    if fmt is not None:
        out["response_format"] = fmt
    out.update(think_fields(body.get("think")))
    return out


def generate_request(body: dict[str, Any], model_name: str) -> tuple[str, dict[str, Any]]:
    """The worker path and body for an Ollama /api/generate body.

    Ollama applies the model's chat template to ``prompt`` (and ``system``) unless ``raw``: so a
    templated generate is a one-turn chat, and a raw one is a plain completion.
    """
    prompt = body.get("prompt")
    if prompt is not None and not isinstance(prompt, str):
        raise bad_request("'prompt' must be a string", param="prompt")
    for name, meaning in (("template", "a prompt template"), ("suffix", "fill-in-the-middle"),
                          ("context", "the token context of an earlier /api/generate")):
        if body.get(name):
            raise bad_request(f"'{name}' ({meaning}) is not supported by mlx-serve: the model's own chat template "
                              f"is applied; send the full text with \"raw\": true, or use /api/chat for a "
                              f"conversation", param=name, code="unsupported_parameter")
    raw = body.get("raw") or False
    if not isinstance(raw, bool):
        raise bad_request(f"'raw' must be true or false, got {raw!r}", param="raw")
    out = _common(body, model_name)
    if raw:
        if body.get("images"):
            raise bad_request("images cannot be sent with \"raw\": true (the image tokens come from the chat "
                              "template); leave raw out", param="images")
        out["prompt"] = prompt or ""
        if body.get("format") not in (None, ""):
            out["response_format"] = response_format(body.get("format"))
        return COMPLETIONS_PATH, out
    messages: list[dict[str, Any]] = []
    system = body.get("system")
    if system:
        if not isinstance(system, str):
            raise bad_request("'system' must be a string", param="system")
        messages.append({"role": "system", "content": system})
    user: dict[str, Any] = {"role": "user", "content": prompt or ""}
    if body.get("images"):
        user["images"] = body["images"]
    messages.append(user)
    out["messages"] = chat_messages(messages)
    fmt = response_format(body.get("format"))
    if fmt is not None:
        out["response_format"] = fmt
    out.update(think_fields(body.get("think")))
    return CHAT_PATH, out


# --- responses --------------------------------------------------------------------------------

@dataclass
class Reply:
    """Collects a worker's OpenAI stream chunks and turns them into Ollama pieces and a final object.

    ``chat``: the chunks are chat completion chunks (else text completion chunks). ``message``:
    the client gets /api/chat's ``message`` objects (else /api/generate's ``response`` text); a
    templated /api/generate reads chat chunks and answers with ``response``.
    """

    chat: bool
    message: bool = True
    content: list[str] = field(default_factory=list)
    thinking: list[str] = field(default_factory=list)
    calls: dict[int, dict[str, Any]] = field(default_factory=dict)
    finish_reason: str | None = None
    usage: dict[str, Any] | None = None
    first_token_ns: int | None = None

    def feed(self, chunk: dict[str, Any], now_ns: int | None = None) -> dict[str, Any] | None:
        """Take one chunk; return the Ollama fields of the text it carries (None when it carries none)."""
        if isinstance(chunk.get("usage"), dict):
            self.usage = chunk["usage"]
        text, thought = "", ""
        for choice in chunk.get("choices") or []:
            if not isinstance(choice, dict):
                continue
            if choice.get("finish_reason"):
                self.finish_reason = choice["finish_reason"]
            if self.chat:
                delta = choice.get("delta") or choice.get("message") or {}
                text += delta.get("content") or ""
                thought += delta.get("reasoning") or delta.get("reasoning_content") or ""
                for call in delta.get("tool_calls") or []:
                    self._add_call(call)
            else:
                text += choice.get("text") or ""
        if not (text or thought):
            return None
        if self.first_token_ns is None:
            self.first_token_ns = now_ns if now_ns is not None else time.monotonic_ns()
        self.content.append(text)
        self.thinking.append(thought)
        return self.piece(text, thought)

    def _add_call(self, call: dict[str, Any]) -> None:
        # Streamed tool calls may arrive in pieces (OpenAI deltas): join them by index.
        index = call.get("index", len(self.calls))
        slot = self.calls.setdefault(index, {"name": "", "arguments": ""})
        function = call.get("function") or {}
        slot["name"] += function.get("name") or ""
        arguments = function.get("arguments")
        if isinstance(arguments, str):
            slot["arguments"] += arguments
        elif isinstance(arguments, dict):
            slot["arguments"] += json.dumps(arguments)

    def piece(self, text: str, thought: str = "", tool_calls: list[dict[str, Any]] | None = None) -> dict[str, Any]:
        if self.message:
            message: dict[str, Any] = {"role": "assistant", "content": text}
            if thought:
                message["thinking"] = thought
            if tool_calls:
                message["tool_calls"] = tool_calls
            return {"message": message}
        out: dict[str, Any] = {"response": text}
        if thought:
            out["thinking"] = thought
        return out

    def tool_calls(self) -> list[dict[str, Any]]:
        """The tool calls, Ollama style: ``{"function": {"name", "arguments": {...}}}``."""
        calls = []
        for _, slot in sorted(self.calls.items()):
            try:
                arguments = json.loads(slot["arguments"]) if slot["arguments"] else {}
            except ValueError:
                arguments = {"_raw": slot["arguments"]}  # keep what the model wrote rather than lose it
            if not isinstance(arguments, dict):
                arguments = {"_value": arguments}
            calls.append({"function": {"name": slot["name"], "arguments": arguments}})
        return calls

    @property
    def done_reason(self) -> str:
        return _DONE_REASONS.get(self.finish_reason or "stop", "stop")

    def counts(self) -> dict[str, int]:
        """Ollama's token counts, from the worker's usage chunk (absent when the worker sent none)."""
        usage = self.usage or {}
        out = {}
        if isinstance(usage.get("prompt_tokens"), int):
            out["prompt_eval_count"] = usage["prompt_tokens"]
        if isinstance(usage.get("completion_tokens"), int):
            out["eval_count"] = usage["completion_tokens"]
        return out


def timings(started_ns: int, leased_ns: int, sent_ns: int, first_token_ns: int | None, end_ns: int) -> dict[str, int]:
    """Ollama's durations (ns). Prompt evaluation is the time to the first token, the rest is eval."""
    first = first_token_ns if first_token_ns is not None else end_ns
    return {
        "total_duration": end_ns - started_ns,
        "load_duration": leased_ns - started_ns,
        "prompt_eval_duration": max(0, first - sent_ns),
        "eval_duration": max(0, end_ns - first),
    }


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)
