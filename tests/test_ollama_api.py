"""The Ollama-compatible API, driven by the real ``ollama`` Python client against a real router and workers."""

from __future__ import annotations

import base64
import io
import json
import math
import os
import signal
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import ollama
import pytest
from PIL import Image

from support import Router

MISSING_REPO = "mlx-community/mlx-serve-test-never-downloaded"
CACHED_REPO = "mlx-serve-test/cached-repo"


def _fake_hub_cache(root: Path) -> Path:
    """A Hub cache holding one downloaded repo (what snapshot_download leaves behind)."""
    repo = root / ("models--" + CACHED_REPO.replace("/", "--"))
    snapshot = repo / "snapshots" / "0123456789abcdef"
    snapshot.mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0123456789abcdef")
    (snapshot / "config.json").write_text('{"model_type": "llama", "max_position_embeddings": 4096}')
    return root


@pytest.fixture(scope="module")
def router(tmp_path_factory: pytest.TempPathFactory, demo_model: Any) -> Iterator[Router]:
    tmp = tmp_path_factory.mktemp("ollama-api")
    models = [
        {"name": "chat", "type": "text", "path": demo_model("demo-chat")["path"]},
        {"name": "embed", "type": "embedding", "path": demo_model("demo-embed")["path"]},
        {"name": "vision", "type": "vision", "path": demo_model("demo-vision")["path"]},
        {"name": "remote", "type": "text", "path": MISSING_REPO},
        {"name": "cached", "type": "text", "path": CACHED_REPO},
    ]
    env = {"HF_HUB_CACHE": str(_fake_hub_cache(tmp / "hub"))}
    with Router(tmp, models, env=env) as r:
        yield r


@pytest.fixture(scope="module")
def client(router: Router) -> ollama.Client:
    return ollama.Client(host=router.base_url, timeout=120)


def _png_base64() -> str:
    buffer = io.BytesIO()
    Image.new("RGB", (64, 48), (30, 90, 200)).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def _loaded(router: Router) -> set[str]:
    return {m["name"] for m in router.ps()}


def _wait_unloaded(router: Router, name: str, timeout: float = 20.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if name not in _loaded(router):
            return True
        time.sleep(0.05)
    return False


# --- catalog ------------------------------------------------------------------------------------

def test_version(router: Router) -> None:
    with router.client() as c:
        body = c.get("/api/version").json()
    major, minor, _ = (int(p) for p in body["version"].split("."))
    assert (major, minor) >= (0, 5)  # clients gate structured outputs and tools on the version
    assert body["mlx_serve_version"]


def test_list_shows_servable_models_with_details(client: ollama.Client) -> None:
    models = {m.model: m for m in client.list().models}
    assert {"chat", "embed", "vision", "remote", "cached"} <= set(models)
    chat = models["chat"]
    assert chat.size and chat.size > 1000  # the weight files on disk
    assert chat.details.format == "mlx" and chat.details.family == "qwen3"
    assert chat.details.parameter_size.endswith("K")  # the demo model has ~135K parameters
    assert chat.modified_at is not None and len(chat.digest) == 64
    assert models["remote"].size == 0  # configured but not downloaded


def test_show_reports_capabilities_and_model_info(client: ollama.Client) -> None:
    chat = client.show("chat:latest")  # Ollama's default tag names the configured model
    assert chat.capabilities == ["completion"]
    assert chat.modelinfo["qwen3.context_length"] == 2048
    assert "<|im_start|>" in chat.template
    assert "vision" in client.show("vision").capabilities
    embed = client.show("embed")
    assert embed.capabilities == ["embedding"]
    assert embed.modelinfo["bert.embedding_length"] == 32
    cached = client.show("cached")  # found in the Hub cache, read without downloading anything
    assert cached.modelinfo["llama.context_length"] == 4096


def test_unknown_model_is_404_in_ollama_shape(client: ollama.Client, router: Router) -> None:
    with pytest.raises(ollama.ResponseError) as info:
        client.chat("nope", messages=[{"role": "user", "content": "hi"}])
    assert info.value.status_code == 404
    assert "nope" in info.value.error and "chat" in info.value.error  # names the model and what exists
    with router.client() as c:
        response = c.post("/api/show", json={"model": "nope"})
    assert response.status_code == 404 and isinstance(response.json()["error"], str)


# --- chat and generate --------------------------------------------------------------------------

def test_chat_non_streaming_counts_num_predict_tokens(client: ollama.Client) -> None:
    reply = client.chat("chat", messages=[{"role": "user", "content": "hello"}], options={"num_predict": 7})
    assert reply.done and reply.done_reason == "length"
    assert reply.message.role == "assistant" and reply.message.content
    assert reply.eval_count == 7
    assert reply.prompt_eval_count and reply.prompt_eval_count > 0
    assert reply.model == "chat"
    assert reply.total_duration >= reply.eval_duration > 0
    assert reply.total_duration >= reply.load_duration >= 0


def test_chat_streams_chunks_then_a_final_object(client: ollama.Client) -> None:
    parts = list(client.chat("chat:latest", messages=[{"role": "user", "content": "hello"}], stream=True,
                             options={"num_predict": 12}))
    *chunks, final = parts
    assert len(chunks) >= 3
    assert all(not c.done and c.message.role == "assistant" for c in chunks)
    assert "".join(c.message.content or "" for c in chunks)
    assert final.done and final.done_reason == "length" and final.eval_count == 12
    assert final.message.content == ""
    assert final.model == "chat:latest"  # the name as the client sent it, as Ollama echoes it
    assert final.total_duration and final.prompt_eval_duration is not None


def test_chat_stream_is_ndjson_by_default(router: Router) -> None:
    # Ollama streams unless told not to: no "stream" field means NDJSON.
    with router.client() as c:
        response = c.post("/api/chat", json={"model": "chat", "messages": [{"role": "user", "content": "x"}],
                                             "options": {"num_predict": 4}})
    assert response.headers["content-type"].startswith("application/x-ndjson")
    lines = [line for line in response.text.splitlines() if line]
    assert len(lines) >= 2 and json.loads(lines[-1])["done"] is True and json.loads(lines[0])["done"] is False


def test_generate_both_ways_and_raw(client: ollama.Client) -> None:
    reply = client.generate("chat", prompt="once upon a time", system="be brief", options={"num_predict": 6})
    assert reply.done and reply.response and reply.eval_count == 6
    parts = list(client.generate("chat", prompt="once upon a time", stream=True, options={"num_predict": 5}))
    assert parts[-1].done and parts[-1].eval_count == 5 and parts[-1].done_reason == "length"
    assert "".join(p.response for p in parts[:-1])
    raw = client.generate("chat", prompt="<|im_start|>user\nhi<|im_end|>\n", raw=True, options={"num_predict": 4})
    assert raw.eval_count == 4 and raw.response


def test_tools_format_and_think_reach_the_worker_without_error(client: ollama.Client) -> None:
    def get_weather(city: str) -> str:
        """Get the weather.

        Args:
          city: The city
        """
        return "sunny"

    messages = [{"role": "user", "content": "weather in Paris?"},
                {"role": "assistant", "content": "", "tool_calls": [
                    {"function": {"name": "get_weather", "arguments": {"city": "Paris"}}}]},
                {"role": "tool", "content": "sunny", "tool_name": "get_weather"}]
    reply = client.chat("chat", messages=messages, tools=[get_weather], format="json", think=False,
                        options={"num_predict": 3})
    assert reply.done and reply.eval_count == 3
    # The vision engine enforces `format` with a Metal kernel: on Apple silicon the answer is
    # constrained, elsewhere the request fails with an error that says why.
    schema = {"type": "object", "properties": {"age": {"type": "integer"}}}
    if sys.platform == "darwin":
        reply = client.generate("vision", prompt="x", format=schema, options={"num_predict": 30})
        assert reply.done and reply.response
    else:
        with pytest.raises(ollama.ResponseError) as info:
            list(client.generate("vision", prompt="x", format=schema, stream=True, options={"num_predict": 3}))
        assert "'format'" in info.value.error and "Metal" in info.value.error


def test_options_reach_the_sampler(client: ollama.Client) -> None:
    def sample(seed: int) -> str:
        reply = client.generate("chat", prompt="tell me", options={"num_predict": 10, "temperature": 1.5,
                                                                   "seed": seed, "top_k": 0, "top_p": 1.0})
        return reply.response

    # The same seed reproduces the sample; different seeds give different ones, so neither the
    # temperature nor the seed was dropped (greedy decoding would give one answer for all seeds).
    assert sample(11) == sample(11)
    assert len({sample(s) for s in (1, 2, 3, 4)}) > 1


def test_option_errors_name_the_ollama_option(client: ollama.Client) -> None:
    with pytest.raises(ollama.ResponseError) as info:
        client.chat("chat", messages=[{"role": "user", "content": "x"}], options={"repeat_penalty": 50})
    assert info.value.status_code == 400 and "options.repeat_penalty" in info.value.error
    with pytest.raises(ollama.ResponseError) as info:
        client.chat("chat", messages=[{"role": "user", "content": "x"}], options={"num_predict": "many"})
    assert info.value.status_code == 400 and "options.num_predict" in info.value.error


def test_bad_requests_are_400_with_an_error_string(router: Router) -> None:
    with router.client() as c:
        bad_json = c.post("/api/chat", content=b"{not json", headers={"content-type": "application/json"})
        bad_keep = c.post("/api/chat", json={"model": "chat", "messages": [{"role": "user", "content": "x"}],
                                             "keep_alive": "forever-ish"})
        wrong_kind = c.post("/api/chat", json={"model": "embed", "messages": [{"role": "user", "content": "x"}]})
        images_to_text = c.post("/api/chat", json={"model": "chat", "messages": [
            {"role": "user", "content": "x", "images": [_png_base64()]}]})
        template = c.post("/api/generate", json={"model": "chat", "prompt": "x", "template": "{{ .Prompt }}"})
    assert bad_json.status_code == 400 and "JSON" in bad_json.json()["error"]
    assert bad_keep.status_code == 400 and "forever-ish" in bad_keep.json()["error"]
    assert wrong_kind.status_code == 400 and "embedding model" in wrong_kind.json()["error"]
    assert images_to_text.status_code == 400 and "vision" in images_to_text.json()["error"]
    assert template.status_code == 400 and "template" in template.json()["error"]


def test_vision_chat_with_base64_image(client: ollama.Client, router: Router) -> None:
    reply = client.chat("vision", messages=[{"role": "user", "content": "what is this?",
                                             "images": [_png_base64()]}], options={"num_predict": 5})
    assert reply.done and reply.eval_count == 5 and reply.message.content
    parts = list(client.generate("vision", prompt="describe", images=[_png_base64()], stream=True,
                                 options={"num_predict": 4}))
    assert parts[-1].done and parts[-1].eval_count == 4
    with router.client() as c:  # the client library refuses bad base64 itself: send it by hand
        response = c.post("/api/chat", json={"model": "vision", "messages": [
            {"role": "user", "content": "x", "images": ["@@not base64@@"]}]})
    assert response.status_code == 400 and "messages[0].images[0]" in response.json()["error"]


# --- embeddings ---------------------------------------------------------------------------------

def test_embed_list_input(client: ollama.Client) -> None:
    reply = client.embed("embed", input=["the sky is blue", "grass is green", "why?"])
    assert len(reply.embeddings) == 3
    assert {len(v) for v in reply.embeddings} == {32}  # the demo model's hidden size
    assert all(math.isclose(math.fsum(x * x for x in v), 1.0, rel_tol=1e-3) for v in reply.embeddings)
    assert reply.prompt_eval_count and reply.prompt_eval_count > 3
    assert reply.total_duration and reply.total_duration >= reply.load_duration
    truncated = client.embed("embed:latest", input="one", dimensions=8)
    assert len(truncated.embeddings) == 1 and len(truncated.embeddings[0]) == 8


def test_legacy_embeddings(client: ollama.Client) -> None:
    one = client.embeddings("embed", prompt="the sky is blue")
    both = client.embed("embed", input="the sky is blue")
    assert len(one.embedding) == 32
    assert max(abs(a - b) for a, b in zip(one.embedding, both.embeddings[0])) < 1e-5


# --- load, unload, ps -----------------------------------------------------------------------------

def test_load_with_empty_chat_then_unload_with_empty_generate(client: ollama.Client, router: Router) -> None:
    loaded = client.chat("chat", keep_alive="7m")  # no messages: load only
    assert loaded.done and loaded.done_reason == "load" and loaded.message.content == ""
    rows = {m.model: m for m in client.ps().models}
    assert "chat" in rows
    assert rows["chat"].size and rows["chat"].expires_at is not None  # parsed as a datetime by the client
    assert 5 * 60 < rows["chat"].expires_at.timestamp() - time.time() <= 7 * 60 + 5
    unloaded = client.generate("chat", keep_alive=0)  # no prompt, keep_alive 0: unload
    assert unloaded.done and unloaded.done_reason == "unload" and unloaded.response == ""
    assert "chat" not in _loaded(router)


def test_keep_alive_zero_on_a_request_unloads_after_it(client: ollama.Client, router: Router) -> None:
    reply = client.generate("chat", prompt="hi", keep_alive=0, options={"num_predict": 3})
    assert reply.eval_count == 3
    assert _wait_unloaded(router, "chat")


def test_empty_embed_loads_the_embedding_model(client: ollama.Client, router: Router) -> None:
    reply = client.embed("embed", input=[], keep_alive="2m")
    assert reply.embeddings == []
    assert "embed" in _loaded(router)


# --- pull and delete ----------------------------------------------------------------------------

def test_pull_offline_is_a_clean_error_and_the_server_stays_up(client: ollama.Client, router: Router) -> None:
    started = time.monotonic()
    with pytest.raises(ollama.ResponseError) as info:
        client.pull("remote")
    assert info.value.status_code == 503
    assert MISSING_REPO in info.value.error and "offline" in info.value.error.lower()
    with pytest.raises(ollama.ResponseError) as info:  # streamed: the error arrives as a line
        list(client.pull("remote", stream=True))
    assert MISSING_REPO in info.value.error
    assert time.monotonic() - started < 20  # offline fails at once, it does not wait on the network
    with router.client() as c:
        assert c.get("/health").status_code == 200


def test_pull_of_cached_and_local_models_succeeds(client: ollama.Client) -> None:
    assert client.pull("cached").status == "success"  # already in the Hub cache: nothing to fetch offline
    statuses = [p.status for p in client.pull("chat", stream=True)]
    assert statuses[-1] == "success" and "nothing to download" in statuses[0]
    with pytest.raises(ollama.ResponseError) as info:
        client.pull("llama3.2")
    assert info.value.status_code == 404 and "models.yaml" in info.value.error


def test_delete_is_refused_honestly(client: ollama.Client) -> None:
    with pytest.raises(ollama.ResponseError) as info:
        client.delete("remote")
    assert info.value.status_code == 501
    assert "models.yaml" in info.value.error and f"hf cache rm model/{MISSING_REPO}" in info.value.error
    with pytest.raises(ollama.ResponseError) as info:
        client.delete("nope")
    assert info.value.status_code == 404


def test_ollama_requests_are_in_the_request_log(router: Router, client: ollama.Client) -> None:
    client.chat("chat", messages=[{"role": "user", "content": "hi"}], options={"num_predict": 4})
    with router.client() as c:
        response = c.get("/api/requests", params={"model": "chat"})
    records = [r for r in response.json()["requests"] if r["endpoint"] == "/api/chat"]
    assert records and records[-1]["status"] == 200 and records[-1]["completion_tokens"] == 4


def test_client_disconnect_mid_stream_stops_the_generation(router: Router) -> None:
    with httpx.Client(base_url=router.base_url, timeout=60) as c:
        with c.stream("POST", "/api/chat", json={"model": "chat", "messages": [{"role": "user", "content": "x"}],
                                                 "options": {"num_predict": 4000}}) as response:
            for _ in zip(range(3), response.iter_lines()):
                pass  # read a few chunks, then hang up
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        row = next((m for m in router.ps() if m["name"] == "chat"), None)
        if row is None or row["requests_in_flight"] == 0:
            break
        time.sleep(0.05)
    assert row is None or row["requests_in_flight"] == 0  # the lease was released
    with router.client() as c:
        records = [r for r in c.get("/api/requests", params={"model": "chat"}).json()["requests"]
                   if r["endpoint"] == "/api/chat"]
    # The router stopped reading before the worker's final usage event: the generation was cut
    # short, not run to its 4000 tokens for nobody.
    assert records[-1]["completion_tokens"] is None


def test_a_worker_dying_mid_stream_ends_the_stream_with_an_error(client: ollama.Client, router: Router) -> None:
    stream = client.chat("chat", messages=[{"role": "user", "content": "x"}], stream=True,
                         options={"num_predict": 4000})
    first = next(stream)
    assert not first.done
    pid = next(m["pid"] for m in router.ps() if m["name"] == "chat")
    os.kill(pid, signal.SIGKILL)
    with pytest.raises(ollama.ResponseError) as info:
        for part in stream:
            assert not part.done  # no clean end: the client must not take a cut answer for a whole one
    assert "died" in info.value.error and "chat" in info.value.error
    # The next request starts a new worker.
    assert client.generate("chat", prompt="again", options={"num_predict": 2}).eval_count == 2
