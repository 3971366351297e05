"""The vision worker (mlx-vlm) on the tiny demo Qwen2-VL model, over its Unix socket."""

from __future__ import annotations

import base64
import io
import json
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest

from support import run_worker

PIL = pytest.importorskip("PIL")
from PIL import Image, ImageDraw  # noqa: E402

NAME = "test-vision"  # run_worker passes --name test-<kind>
MAX_IMAGE_BYTES = 200_000
FETCH_TIMEOUT = 1.0


def png_bytes(size: tuple[int, int] = (64, 48), color: tuple[int, int, int] = (30, 90, 200)) -> bytes:
    image = Image.new("RGB", size, color)
    ImageDraw.Draw(image).rectangle((4, 4, size[0] // 2, size[1] // 2), fill=(220, 20, 20))
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def data_url(data: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(data).decode()


def image_message(url: str, text: str = "Describe this image.") -> list[dict[str, Any]]:
    return [{"role": "user", "content": [{"type": "text", "text": text},
                                         {"type": "image_url", "image_url": {"url": url}}]}]


def chat(client: httpx.Client, messages: list[dict[str, Any]], **extra: Any) -> httpx.Response:
    return client.post("/v1/chat/completions",
                       json={"model": NAME, "messages": messages, "max_tokens": 6, **extra})


def assert_openai_error(response: httpx.Response, status: int, param_part: str | None = None) -> dict:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) >= {"message", "type", "param", "code"} and error["message"]
    if param_part is not None:
        assert param_part in (error["param"] or ""), error
    return error


class _ImageHandler(BaseHTTPRequestHandler):
    """Serves /ok.png, /big.png (over the worker's cap), /slow.png (past its timeout), 404 else."""

    def do_GET(self) -> None:  # noqa: N802 - http.server API
        if self.path == "/ok.png":
            body = png_bytes((80, 60), (10, 200, 10))
        elif self.path == "/big.png":
            body = b"\x89PNG" + b"\0" * (MAX_IMAGE_BYTES * 2)
        elif self.path == "/slow.png":
            time.sleep(FETCH_TIMEOUT + 1.0)
            body = png_bytes()
        else:
            self.send_error(404)
            return
        self.send_response(200)
        self.send_header("Content-Type", "image/png")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        try:
            self.wfile.write(body)
        except OSError:
            pass

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture(scope="module")
def image_server() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _ImageHandler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


@pytest.fixture(scope="module")
def worker(demo_model) -> Iterator[tuple[httpx.Client, Any, Any]]:
    path = demo_model("demo-vision")["path"]
    options = {"max_image_bytes": MAX_IMAGE_BYTES, "image_fetch_timeout": FETCH_TIMEOUT,
               "max_tokens": 5}
    with run_worker("vision", path, options=options) as started:
        yield started


@pytest.fixture(scope="module")
def client(worker) -> httpx.Client:
    return worker[0]


def test_health_reports_ok_and_memory(client: httpx.Client) -> None:
    body = client.get("/health").json()
    assert body["status"] == "ok" and body["engine_ok"] is True
    assert body["memory"]["rss_bytes"] > 10_000_000
    assert body["model"] == NAME


def test_models_lists_the_served_name(client: httpx.Client) -> None:
    assert [m["id"] for m in client.get("/v1/models").json()["data"]] == [NAME]


def test_chat_with_base64_png(client: httpx.Client) -> None:
    url = data_url(png_bytes())
    response = chat(client, image_message(url))
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["object"] == "chat.completion" and body["model"] == NAME
    choice = body["choices"][0]
    assert choice["message"]["role"] == "assistant" and choice["message"]["content"]
    # The demo model never emits EOS, so generation runs to max_tokens.
    assert choice["finish_reason"] == "length" and body["usage"]["completion_tokens"] == 6
    # The image really reached the model: it adds vision tokens to the prompt.
    text_only = chat(client, [{"role": "user", "content": "Describe this image."}]).json()
    assert body["usage"]["prompt_tokens"] > text_only["usage"]["prompt_tokens"] + 2


def test_chat_with_base64_png_streaming(client: httpx.Client) -> None:
    payload = {"model": NAME, "stream": True, "max_tokens": 6,
               "stream_options": {"include_usage": True},
               "messages": image_message(data_url(png_bytes(color=(250, 250, 0))))}
    with client.stream("POST", "/v1/chat/completions", json=payload) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        events = [line[len("data: "):] for line in response.iter_lines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert all(c["model"] == NAME for c in chunks)
    deltas = [c for c in chunks if c["choices"]]
    assert all(c["object"] == "chat.completion.chunk" for c in deltas)
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in deltas)
    assert text
    assert deltas[-1]["choices"][0]["finish_reason"] == "length"
    assert chunks[-1]["usage"]["completion_tokens"] == 6


def test_input_image_part_and_images_outside_user_messages(client: httpx.Client) -> None:
    url = data_url(png_bytes())
    response = chat(client, [{"role": "user", "content": [{"type": "input_text", "text": "What?"},
                                                          {"type": "input_image", "image_url": url}]}])
    assert response.status_code == 200, response.text
    assistant_image = [{"role": "user", "content": "hi"},
                       {"role": "assistant", "content": [{"type": "image_url", "image_url": {"url": url}}]},
                       {"role": "user", "content": "and?"}]
    assert_openai_error(chat(client, assistant_image), 400, "messages[1].content[0]")


def test_text_only_chat_string_and_parts(client: httpx.Client) -> None:
    plain = chat(client, [{"role": "system", "content": "Be brief."},
                          {"role": "user", "content": "Hello there"}])
    parts = chat(client, [{"role": "user", "content": [{"type": "text", "text": "Hello there"}]}])
    for response in (plain, parts):
        assert response.status_code == 200, response.text
        assert response.json()["choices"][0]["message"]["content"]


def test_default_max_tokens_comes_from_options(client: httpx.Client) -> None:
    response = client.post("/v1/chat/completions",
                           json={"model": NAME, "messages": [{"role": "user", "content": "Hi"}]})
    assert response.json()["usage"]["completion_tokens"] == 5
    capped = chat(client, [{"role": "user", "content": "Hi"}], max_tokens=None, max_completion_tokens=3)
    assert capped.json()["usage"]["completion_tokens"] == 3


@pytest.mark.parametrize("url", ["/etc/passwd", "relative/image.png", "file:///etc/passwd",
                                 "FILE:/etc/hosts", "ftp://example.com/a.png"])
def test_local_paths_and_other_schemes_are_refused(client: httpx.Client, url: str) -> None:
    error = assert_openai_error(chat(client, image_message(url)), 400,
                                "messages[0].content[1].image_url.url")
    assert error["code"] == "invalid_image_url"


def test_invalid_base64_is_refused(client: httpx.Client) -> None:
    response = chat(client, image_message("data:image/png;base64,@@not*base64@@"))
    assert assert_openai_error(response, 400, "image_url")["code"] == "invalid_base64"


def test_base64_that_is_not_an_image_is_refused(client: httpx.Client) -> None:
    bogus = "data:image/png;base64," + base64.b64encode(b"definitely not a png").decode()
    error = assert_openai_error(chat(client, image_message(bogus)), 400, "image_url")
    assert error["code"] == "invalid_image"


def test_oversized_base64_image_is_refused(client: httpx.Client) -> None:
    big = "data:image/png;base64," + base64.b64encode(b"\0" * (MAX_IMAGE_BYTES + 10)).decode()
    assert assert_openai_error(chat(client, image_message(big)), 400)["code"] == "image_too_large"


def test_unsupported_part_and_bad_body_are_400(client: httpx.Client) -> None:
    audio = [{"role": "user", "content": [{"type": "input_audio", "input_audio": {"data": "x"}}]}]
    assert_openai_error(chat(client, audio), 400, "messages[0].content[0]")
    assert_openai_error(client.post("/v1/chat/completions", content=b"{not json"), 400)
    assert_openai_error(client.post("/v1/chat/completions", json={"model": NAME, "messages": []}), 400,
                        "messages")
    assert_openai_error(chat(client, [{"role": "wizard", "content": "hi"}]), 400, "role")
    assert_openai_error(chat(client, [{"role": "user", "content": "hi"}], max_tokens=0), 400, "max_tokens")


def test_http_image_url_is_fetched(client: httpx.Client, image_server: str) -> None:
    response = chat(client, image_message(f"{image_server}/ok.png"))
    assert response.status_code == 200, response.text
    assert response.json()["usage"]["prompt_tokens"] > 10


@pytest.mark.parametrize(("path", "code"), [("/missing.png", "image_fetch_failed"),
                                            ("/big.png", "image_too_large"),
                                            ("/slow.png", "image_fetch_timeout")])
def test_http_image_fetch_is_bounded(client: httpx.Client, image_server: str, path: str,
                                     code: str) -> None:
    started = time.monotonic()
    error = assert_openai_error(chat(client, image_message(image_server + path)), 400, "image_url")
    assert error["code"] == code
    assert time.monotonic() - started < FETCH_TIMEOUT + 2.0


def test_other_model_string_is_served_by_the_loaded_model(client: httpx.Client) -> None:
    before = client.get("/health").json()
    messages = [{"role": "user", "content": "Hello there"}]
    reference = chat(client, messages).json()["choices"][0]["message"]["content"]
    for model in ("some/other-model", "/tmp/does-not-exist", "default_model"):
        response = client.post("/v1/chat/completions", json={
            "model": model, "messages": messages, "max_tokens": 6,
            "adapter_path": "/tmp/no-adapter", "draft_model": "/tmp/no-draft"})
        assert response.status_code == 200, response.text
        assert response.json()["model"] == NAME
        assert response.json()["choices"][0]["message"]["content"] == reference
    # Upstream would have unloaded our engine to load another model (offline: and failed);
    # engine_ok says the engine started with the worker is still the one serving.
    after = client.get("/health").json()
    assert after["engine_ok"] is True
    assert after["requests_served"] == before["requests_served"] + 4


@pytest.mark.parametrize(("method", "path"), [
    ("POST", "/v1/embeddings"), ("POST", "/v1/audio/speech"), ("POST", "/v1/audio/transcriptions"),
    ("POST", "/v1/rerank"), ("POST", "/unload"), ("PATCH", "/v1/settings"), ("GET", "/v1/settings"),
    ("POST", "/v1/images/generations"), ("POST", "/v1/responses"), ("POST", "/v1/messages"),
    ("GET", "/metrics"), ("POST", "/v1/cache/reset"), ("GET", "/docs"), ("POST", "/v1/completions"),
])
def test_upstream_routes_are_unreachable(client: httpx.Client, method: str, path: str) -> None:
    response = client.request(method, path, json={"model": "/tmp/x", "input": "hi", "prompt": "hi"})
    assert_openai_error(response, 404)


def test_concurrent_image_requests(client: httpx.Client) -> None:
    def one(i: int) -> httpx.Response:
        return chat(client, image_message(data_url(png_bytes(color=(i * 40, 50, 90)))), max_tokens=8)

    with ThreadPoolExecutor(4) as pool:
        responses = list(pool.map(one, range(4)))
    assert [r.status_code for r in responses] == [200] * 4
    assert all(r.json()["usage"]["completion_tokens"] == 8 for r in responses)


def test_still_healthy_after_bad_inputs(worker) -> None:
    client, proc, _log = worker
    assert proc.poll() is None
    body = client.get("/health").json()
    assert body["status"] == "ok" and body["engine_ok"] is True and body["active_requests"] == 0
    response = chat(client, image_message(data_url(png_bytes())))
    assert response.status_code == 200


def test_unknown_option_fails_start_naming_it(demo_model) -> None:
    path = demo_model("demo-vision")["path"]
    with pytest.raises(RuntimeError, match="bogus_option"):
        with run_worker("vision", path, options={"bogus_option": 1}, timeout=30):
            pass


def test_missing_model_directory_fails_start(tmp_path) -> None:
    with pytest.raises(RuntimeError, match="no config.json"):
        with run_worker("vision", tmp_path / "nothing-here", timeout=30):
            pass
