"""The Ollama translation layer: requests to worker bodies, worker chunks to Ollama objects, model facts."""

from __future__ import annotations

import asyncio
import base64
import json
import struct
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from mlx_serve.config import ModelConfig
from mlx_serve.errors import APIError, bad_request
from mlx_serve.hub import snapshot_dir
from mlx_serve.ollama_catalog import capabilities, facts, format_parameters, parameter_count, quantization
from mlx_serve.ollama_convert import (CHAT_PATH, COMPLETIONS_PATH, Reply, chat_messages, chat_request,
                                      generate_request, image_data_url, renamed, response_format, sampling_fields,
                                      stream_flag, think_fields, timings)
from mlx_serve.ollama_stream import error_message, sse_data

PNG = base64.b64encode(b"\x89PNG\r\n\x1a\n" + b"\x00" * 32).decode()
JPEG = base64.b64encode(b"\xff\xd8\xff\xe0" + b"\x00" * 32).decode()


def test_options_map_onto_worker_fields() -> None:
    fields = sampling_fields({"temperature": 0.7, "top_p": 0.9, "top_k": 20, "min_p": 0.05, "num_predict": 64,
                              "stop": ["\n"], "seed": 3, "repeat_penalty": 1.1, "repeat_last_n": 32,
                              "presence_penalty": 0.5, "frequency_penalty": 0.25, "num_ctx": 8192,
                              "mirostat": 1, "made_up": True})
    assert fields == {"temperature": 0.7, "top_p": 0.9, "top_k": 20, "min_p": 0.05, "max_tokens": 64,
                      "stop": ["\n"], "seed": 3, "repetition_penalty": 1.1, "repetition_context_size": 32,
                      "presence_penalty": 0.5, "frequency_penalty": 0.25}


@pytest.mark.parametrize("value", [-1, -2, 0])
def test_unlimited_num_predict_leaves_the_worker_default(value: int) -> None:
    assert "max_tokens" not in sampling_fields({"num_predict": value})


def test_options_must_be_an_object() -> None:
    with pytest.raises(APIError) as info:
        sampling_fields(["temperature", 1])
    assert info.value.status == 400 and info.value.param == "options"


def test_errors_about_worker_fields_name_the_ollama_option() -> None:
    error = renamed(bad_request("'repetition_penalty' must be between 0 and 10, got 50", param="repetition_penalty"))
    assert error.param == "options.repeat_penalty"
    assert error.message == "'options.repeat_penalty' must be between 0 and 10, got 50"
    untouched = bad_request("'messages' must be a list", param="messages")
    assert renamed(untouched) is untouched


def test_images_become_typed_data_urls() -> None:
    assert image_data_url(PNG, "images[0]") == f"data:image/png;base64,{PNG}"
    assert image_data_url(JPEG, "images[0]").startswith("data:image/jpeg;base64,")
    assert image_data_url("data:image/gif;base64,R0lG", "x") == "data:image/gif;base64,R0lG"
    with pytest.raises(APIError) as info:
        image_data_url("@@ not base64 @@", "messages[0].images[1]")
    assert info.value.param == "messages[0].images[1]" and "base64" in info.value.message


def test_chat_messages_carry_images_and_tool_calls() -> None:
    messages = chat_messages([
        {"role": "user", "content": "what is it?", "images": [PNG]},
        {"role": "assistant", "content": "", "tool_calls": [
            {"function": {"name": "lookup", "arguments": {"q": "cat"}}},
            {"function": {"name": "weather", "arguments": {"city": "Paris"}}}]},
        {"role": "tool", "content": "sunny", "tool_name": "weather"},
        {"role": "tool", "content": "a cat", "tool_name": "lookup"},
    ])
    assert messages[0]["content"] == [{"type": "text", "text": "what is it?"},
                                      {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG}"}}]
    calls = messages[1]["tool_calls"]
    assert [c["function"]["name"] for c in calls] == ["lookup", "weather"]
    assert json.loads(calls[0]["function"]["arguments"]) == {"q": "cat"}
    # Each tool answer is matched to the call of the same name, whatever the order.
    assert messages[2]["tool_call_id"] == calls[1]["id"] and messages[2]["name"] == "weather"
    assert messages[3]["tool_call_id"] == calls[0]["id"]
    assert "images" not in messages[0] and "tool_name" not in messages[2]


def test_chat_request_always_streams_from_the_worker_with_usage() -> None:
    body = chat_request({"model": "x:latest", "messages": [{"role": "user", "content": "hi"}], "stream": False,
                         "format": "json", "think": False, "options": {"num_predict": 5},
                         "tools": [{"type": "function", "function": {"name": "f"}}]}, "x")
    assert body["model"] == "x" and body["stream"] is True and body["stream_options"] == {"include_usage": True}
    assert body["max_tokens"] == 5 and body["response_format"] == {"type": "json_object"}
    assert body["chat_template_kwargs"] == {"enable_thinking": False}
    assert body["tools"][0]["function"]["name"] == "f"
    assert "keep_alive" not in body and "options" not in body and "format" not in body


def test_generate_is_a_templated_chat_unless_raw() -> None:
    path, body = generate_request({"prompt": "hi", "system": "be brief", "images": [PNG]}, "m")
    assert path == CHAT_PATH
    assert body["messages"][0] == {"role": "system", "content": "be brief"}
    assert body["messages"][1]["content"][0] == {"type": "text", "text": "hi"}
    path, body = generate_request({"prompt": "<s>[INST] hi [/INST]", "raw": True}, "m")
    assert path == COMPLETIONS_PATH and body["prompt"] == "<s>[INST] hi [/INST]" and "messages" not in body


@pytest.mark.parametrize("field", ["template", "suffix", "context"])
def test_generate_refuses_what_it_cannot_honour(field: str) -> None:
    with pytest.raises(APIError) as info:
        generate_request({"prompt": "x", field: [1, 2] if field == "context" else "y"}, "m")
    assert info.value.status == 400 and info.value.param == field


def test_format_think_and_stream_flags() -> None:
    schema = {"type": "object", "properties": {"age": {"type": "integer"}}}
    assert response_format(schema) == {"type": "json_schema", "json_schema": {"name": "response", "schema": schema}}
    assert response_format("") is None
    assert think_fields("high") == {"chat_template_kwargs": {"enable_thinking": True, "reasoning_effort": "high"}}
    assert stream_flag({}) is True and stream_flag({"stream": False}) is False
    for bad in (lambda: response_format("yaml"), lambda: think_fields("max"), lambda: stream_flag({"stream": "no"})):
        with pytest.raises(APIError):
            bad()


def _chunk(delta: dict[str, Any] | None = None, finish: str | None = None, usage: dict[str, int] | None = None,
           text: str | None = None) -> dict[str, Any]:
    choice: dict[str, Any] = {"index": 0, "finish_reason": finish}
    if delta is not None:
        choice["delta"] = delta
    if text is not None:
        choice["text"] = text
    return {"choices": [] if usage else [choice], **({"usage": usage} if usage else {})}


def test_reply_turns_chat_chunks_into_ollama_messages() -> None:
    reply = Reply(chat=True)
    assert reply.feed(_chunk({"role": "assistant", "reasoning": "hmm"}), 10) == {
        "message": {"role": "assistant", "content": "", "thinking": "hmm"}}
    assert reply.feed(_chunk({"role": "assistant", "content": "Hi"}), 20) == {
        "message": {"role": "assistant", "content": "Hi"}}
    assert reply.feed(_chunk({"tool_calls": [{"index": 0, "function": {"name": "f", "arguments": '{"a"'}}]})) is None
    reply.feed(_chunk({"tool_calls": [{"index": 0, "function": {"arguments": ": 1}"}}]}, finish="tool_calls"))
    reply.feed(_chunk(usage={"prompt_tokens": 9, "completion_tokens": 4}))
    assert reply.first_token_ns == 10
    assert reply.tool_calls() == [{"function": {"name": "f", "arguments": {"a": 1}}}]
    assert reply.done_reason == "stop"  # Ollama has no "tool_calls" reason
    assert reply.counts() == {"prompt_eval_count": 9, "eval_count": 4}
    assert "".join(reply.content) == "Hi" and "".join(reply.thinking) == "hmm"


def test_reply_answers_generate_with_response_text() -> None:
    completions = Reply(chat=False, message=False)
    assert completions.feed(_chunk(text="once"), 1) == {"response": "once"}
    completions.feed(_chunk(text="", finish="length"))
    assert completions.done_reason == "length" and completions.counts() == {}
    templated = Reply(chat=True, message=False)  # /api/generate served by the chat endpoint
    assert templated.feed(_chunk({"content": "hi"}), 1) == {"response": "hi"}


def test_timings_are_nanoseconds_split_at_the_first_token() -> None:
    assert timings(started_ns=0, leased_ns=100, sent_ns=110, first_token_ns=400, end_ns=1000) == {
        "total_duration": 1000, "load_duration": 100, "prompt_eval_duration": 290, "eval_duration": 600}
    assert timings(0, 100, 110, None, 1000)["eval_duration"] == 0


def test_sse_parser_skips_comments_and_joins_data_lines() -> None:
    async def lines() -> AsyncIterator[str]:
        for line in [": keepalive 1/2", "", "data: {\"a\": 1}", "", "data: x", "data: y", "", "data:[DONE]"]:
            yield line

    async def collect() -> list[str]:
        return [d async for d in sse_data(lines())]

    assert asyncio.run(collect()) == ['{"a": 1}', "x\ny", "[DONE]"]


@pytest.mark.parametrize(("raw", "message"), [
    (b'{"error": {"message": "bad temperature", "type": "invalid_request_error"}}', "bad temperature"),
    (b'{"error": "max_tokens must be at least 1"}', "max_tokens must be at least 1"),
    (b'{"detail": "Not Found"}', "Not Found"),
    (b"plain text", "plain text"),
    (b"", "HTTP 502"),
])
def test_worker_error_messages_of_every_shape(raw: bytes, message: str) -> None:
    assert error_message(raw, 502) == message


def _safetensors(path: Path, tensors: dict[str, tuple[str, list[int]]]) -> None:
    header = {name: {"dtype": dtype, "shape": shape, "data_offsets": [0, 0]}
              for name, (dtype, shape) in tensors.items()}
    raw = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(raw)) + raw)


def test_parameter_count_unpacks_quantised_weights(tmp_path: Path) -> None:
    _safetensors(tmp_path / "model.safetensors", {
        "layer.weight": ("U32", [64, 8]),  # 64 x 64 parameters packed 8 per uint32 at 4 bits
        "layer.scales": ("F16", [64, 1]), "layer.biases": ("F16", [64, 1]), "norm.weight": ("F16", [64])})
    config = {"quantization": {"bits": 4, "group_size": 64}}
    assert parameter_count(tmp_path, config) == (64 * 64 + 64, "U32")
    assert quantization(config) == "Q4"
    assert quantization({"torch_dtype": "bfloat16"}) == "BF16" and quantization({}, "F32") == "F32"
    assert [format_parameters(n) for n in (8_030_261_248, 135_000, 512)] == ["8.0B", "135K", "512"]


def test_models_in_the_hub_cache_are_found_offline(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    repo = tmp_path / "models--org--name"
    (repo / "snapshots" / "abc").mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("abc")
    (repo / "snapshots" / "abc" / "config.json").write_text('{"model_type": "llama"}')
    (repo / "snapshots" / "abc" / "chat_template.jinja").write_text("{% if tools %}...{% endif %}")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    assert snapshot_dir("org/name") == repo / "snapshots" / "abc"
    assert snapshot_dir("org/other") is None
    model = ModelConfig(name="m", type="text", path="org/name")
    found = facts(model, None)
    assert found.config["model_type"] == "llama" and found.size == 0
    assert capabilities(model, found) == ["completion", "tools"]
