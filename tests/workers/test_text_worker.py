"""The text worker (mlx_lm.server engine on a Unix socket) with the tiny demo-chat model.

The demo model never emits EOS under greedy decoding, so every request runs to max_tokens and
token counts are exact.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest

from support import TEST_ENV, run_worker

MESSAGES = [{"role": "user", "content": "Hello there"}]
MAX_TOKENS_OPTION = 24  # the module worker's models.yaml max_tokens (default and cap)


@pytest.fixture(scope="module")
def chat_path(demo_model) -> str:
    return demo_model("demo-chat")["path"]


@pytest.fixture(scope="module")
def worker(chat_path: str) -> Iterator[tuple[httpx.Client, subprocess.Popen, Path]]:
    with run_worker("text", chat_path, {"max_tokens": MAX_TOKENS_OPTION, "temperature": 0.0}) as w:
        yield w


@pytest.fixture(scope="module")
def client(worker) -> httpx.Client:
    return worker[0]


def sse_events(lines: Iterator[str]) -> list[str]:
    """The ``data:`` payloads of an SSE stream (comment lines such as keepalives skipped)."""
    return [line[len("data:"):].strip() for line in lines if line.startswith("data:")]


def stream_chat(client: httpx.Client, **body: Any) -> list[str]:
    with client.stream("POST", "/v1/chat/completions",
                       json={"messages": MESSAGES, "stream": True, **body}) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        return sse_events(response.iter_lines())


def test_chat_non_streaming(client: httpx.Client) -> None:
    r = client.post("/v1/chat/completions", json={"messages": MESSAGES, "max_tokens": 7})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["object"] == "chat.completion"
    assert body["model"] == "test-text"  # the served name, whatever the request said
    choice = body["choices"][0]
    assert choice["finish_reason"] == "length"
    assert choice["message"]["role"] == "assistant"
    assert isinstance(choice["message"]["content"], str) and choice["message"]["content"]
    usage = body["usage"]
    assert usage["completion_tokens"] == 7
    assert usage["prompt_tokens"] > 3  # ChatML wrapping around two words
    assert usage["total_tokens"] == usage["prompt_tokens"] + 7


def test_chat_streaming_ends_with_done(client: httpx.Client) -> None:
    events = stream_chat(client, max_tokens=12, stream_options={"include_usage": True})
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    content = [c["choices"][0]["delta"].get("content") for c in chunks if c["choices"]]
    assert sum(1 for piece in content if piece) >= 2
    finals = [c["choices"][0]["finish_reason"] for c in chunks if c["choices"] and c["choices"][0]["finish_reason"]]
    assert finals == ["length"]
    assert chunks[-1]["usage"]["completion_tokens"] == 12
    assert all(c["object"].startswith("chat.completion") for c in chunks)


def test_text_completions(client: httpx.Client) -> None:
    r = client.post("/v1/completions", json={"prompt": "The quick brown fox", "max_tokens": 5})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["object"] == "text_completion"
    assert body["choices"][0]["finish_reason"] == "length"
    assert isinstance(body["choices"][0]["text"], str)
    assert body["usage"]["completion_tokens"] == 5

    with client.stream("POST", "/v1/completions",
                       json={"prompt": "The quick brown fox", "max_tokens": 5, "stream": True}) as response:
        events = sse_events(response.iter_lines())
    assert events[-1] == "[DONE]"
    assert "".join(json.loads(e)["choices"][0]["text"] for e in events[:-1]) == body["choices"][0]["text"]


def test_max_tokens_option_is_default_and_cap(client: httpx.Client) -> None:
    for extra in ({}, {"max_tokens": 1000}, {"max_completion_tokens": 1000}):
        r = client.post("/v1/chat/completions", json={"messages": MESSAGES, **extra})
        assert r.status_code == 200, r.text
        assert r.json()["usage"]["completion_tokens"] == MAX_TOKENS_OPTION, extra


def test_sixteen_concurrent_streams(client: httpx.Client) -> None:
    n = 16
    start = threading.Barrier(n)

    def one(i: int) -> tuple[list[str], float]:
        start.wait()
        began = time.monotonic()
        events = stream_chat(client, max_tokens=16, stream_options={"include_usage": True},
                             messages=[{"role": "user", "content": f"Request number {i}"}])
        return events, time.monotonic() - began

    with ThreadPoolExecutor(n) as pool:
        results = list(pool.map(one, range(n)))  # any connection error raises here
    for events, _ in results:
        assert events[-1] == "[DONE]"
        assert json.loads(events[-2])["usage"]["completion_tokens"] == 16
    # Continuous batching with a 1024 backlog: no request waits ~1 s for a SYN retransmit.
    assert max(elapsed for _, elapsed in results) < 20


def test_foreign_model_adapters_draft_are_ignored(client: httpx.Client, worker) -> None:
    reference = client.post("/v1/chat/completions", json={"messages": MESSAGES, "max_tokens": 6}).json()
    for extra in ({"model": "mlx-community/Qwen3-0.6B-4bit"}, {"model": "/nonexistent/model"},
                  {"adapters": "/nonexistent/adapters"}, {"draft_model": "/nonexistent/draft"},
                  {"model": 42}):
        r = client.post("/v1/chat/completions", json={"messages": MESSAGES, "max_tokens": 6, **extra})
        assert r.status_code == 200, (extra, r.text)
        body = r.json()
        assert body["model"] == "test-text"
        # Greedy decoding by the same weights: the same text.
        assert body["choices"][0]["message"]["content"] == reference["choices"][0]["message"]["content"]
    log = worker[2].read_text()
    assert "nonexistent" not in log and "snapshot" not in log and "Qwen3-0.6B" not in log
    assert client.get("/health").status_code == 200


def test_health_reports_memory(client: httpx.Client) -> None:
    r = client.get("/health")
    assert r.status_code == 200
    body = r.json()
    assert body["status"] == "ok"
    assert body["memory"]["rss_bytes"] > 10_000_000
    assert body["memory"]["mlx_active_bytes"] > 0  # the weights
    assert body["requests_in_flight"] == 0


def test_models_lists_only_the_served_model(client: httpx.Client) -> None:
    r = client.get("/v1/models")
    assert r.status_code == 200
    assert [m["id"] for m in r.json()["data"]] == ["test-text"]


@pytest.mark.parametrize("body, fragment", [
    ({"messages": MESSAGES, "max_tokens": 0}, "max_tokens"),
    ({"messages": MESSAGES, "stop": [1, 2]}, "stop"),
    ({"messages": MESSAGES, "seed": -1}, "seed"),
    ({"messages": MESSAGES, "logit_bias": {"100000": 1}}, "logit_bias"),
    ({"messages": []}, "empty"),
    ({"messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": "file:///etc/passwd"}}]}]}, "data: URL"),
    ({"messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": "http://example.com/cat.png"}}]}]}, "data: URL"),
    ({"prompt": "no messages here"}, "messages"),
])
def test_bad_requests_get_openai_errors(client: httpx.Client, body: dict, fragment: str) -> None:
    r = client.post("/v1/chat/completions", json=body)
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert fragment in error["message"]
    assert error["type"] == "invalid_request_error"
    assert client.get("/health").status_code == 200  # the engine survived


def test_invalid_json_and_unknown_path(client: httpx.Client) -> None:
    r = client.post("/v1/chat/completions", content=b"{not json", headers={"content-type": "application/json"})
    assert r.status_code == 400 and "Invalid JSON" in r.json()["error"]["message"]
    r = client.get("/v1/nothing")
    assert r.status_code == 404 and r.json()["error"]["type"] == "not_found_error"


def test_abandoned_request_is_dropped(chat_path: str) -> None:
    # A non-streaming request whose client gives up must not decode to max_tokens for nobody
    # (a worker without the max_tokens cap).
    with run_worker("text", chat_path) as (client, _, _):
        _check_abandoned_request_is_dropped(client)


def _check_abandoned_request_is_dropped(client: httpx.Client) -> None:
    with pytest.raises(httpx.ReadTimeout):
        client.post("/v1/completions", json={"prompt": "x", "max_tokens": 10**6}, timeout=0.5)
    deadline = time.monotonic() + 10
    while client.get("/health").json()["requests_in_flight"] and time.monotonic() < deadline:
        time.sleep(0.1)
    assert client.get("/health").json()["requests_in_flight"] == 0


def test_generation_error_becomes_openai_error(chat_path: str) -> None:
    # The tiny model's head_dim (16) cannot be KV-quantised with group size 64: the failure
    # comes from inside generation once the cache passes quantized_kv_start, after the
    # 200 was decided (non-streaming) or sent (streaming).
    with run_worker("text", chat_path, {"kv_bits": 4, "quantized_kv_start": 30}) as (client, _, _):
        r = client.post("/v1/chat/completions", json={"messages": MESSAGES, "max_tokens": 50})
        assert r.status_code == 500
        assert r.json()["error"]["type"] == "server_error"
        assert "quantize" in r.json()["error"]["message"]
        events = stream_chat(client, max_tokens=50)
        assert "[DONE]" not in events
        assert "quantize" in json.loads(events[-1])["error"]["message"]
        ok = client.post("/v1/chat/completions", json={"messages": MESSAGES, "max_tokens": 3})
        assert ok.status_code == 200  # short requests still work


def test_sigterm_cuts_stream_without_done_and_exits(chat_path: str) -> None:
    with run_worker("text", chat_path) as (client, proc, log):
        sock = log.parent / "w.sock"
        assert sock.exists()
        events: list[str] = []
        with client.stream("POST", "/v1/chat/completions",
                           json={"messages": MESSAGES, "max_tokens": 10**6, "stream": True}) as response:
            lines = response.iter_lines()
            for line in lines:
                if line.startswith("data:"):
                    events.append(line)
                if len(events) >= 3:
                    break
            sent = time.monotonic()
            proc.send_signal(signal.SIGTERM)
            try:
                events += sse_events(lines)
            except httpx.HTTPError:
                pass  # a reset is as good as EOF: either way no [DONE]
        assert proc.wait(10) == 0
        assert time.monotonic() - sent < 5
        assert "[DONE]" not in events
        assert not sock.exists()


def test_exits_when_stdin_closes(chat_path: str) -> None:
    with run_worker("text", chat_path) as (client, proc, log):
        sock = log.parent / "w.sock"
        proc.stdin.close()  # what the router's death looks like
        assert proc.wait(10) == 0
        assert not sock.exists()


def start_raw(model_path: str | Path, options: dict[str, Any] | None = None) -> tuple[list[dict], int, str]:
    """Run a worker to its end: (status events, exit code, log)."""
    rundir = Path(tempfile.mkdtemp(prefix="mlxw-"))
    read_fd, write_fd = os.pipe()
    cmd = [sys.executable, "-m", "mlx_serve_workers.text", "--socket", str(rundir / "w.sock"),
           "--model-path", str(model_path), "--name", "broken", "--options", json.dumps(options or {}),
           "--status-fd", str(write_fd)]
    proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            pass_fds=(write_fd,), env=TEST_ENV, start_new_session=True)
    os.close(write_fd)
    with os.fdopen(read_fd) as status:
        events = [json.loads(line) for line in status]
    out, _ = proc.communicate(timeout=60)
    assert not (rundir / "w.sock").exists()
    return events, proc.returncode, out.decode(errors="replace")


def test_broken_model_directory_fails(tmp_path: Path) -> None:
    events, rc, log = start_raw(tmp_path)  # an empty directory
    assert rc != 0
    assert [e["event"] for e in events] == ["failed"]
    assert "config.json" in events[0]["error"] or "No such file" in events[0]["error"], events[0]
    assert "worker failed" in log


def test_unknown_option_fails_naming_it(chat_path: str) -> None:
    events, rc, _ = start_raw(chat_path, {"max_tokenz": 5})
    assert rc != 0
    assert events[0]["event"] == "failed" and "max_tokenz" in events[0]["error"]

    events, rc, _ = start_raw(chat_path, {"max_tokens": "many"})
    assert rc != 0 and "max_tokens" in events[0]["error"]
