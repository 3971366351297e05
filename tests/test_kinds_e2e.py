"""Every model kind end to end: the OpenAI Python SDK, through the router, to real workers."""

from __future__ import annotations

import base64
import io
import wave
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from PIL import Image

from support import Router

KINDS = {"chat": "demo-chat", "vision": "demo-vision", "embed": "demo-embed", "tts": "demo-tts", "stt": "demo-stt"}


@pytest.fixture(scope="module")
def router(tmp_path_factory: pytest.TempPathFactory, demo_model: Any) -> Iterator[Router]:
    models = []
    for name, demo in KINDS.items():
        entry = demo_model(demo)
        models.append({"name": name, "type": entry["type"], "path": entry["path"],
                       "options": {**entry.get("options", {}), **({"batch_wait_ms": 20} if name == "embed" else {})}})
    with Router(tmp_path_factory.mktemp("kinds"), models, {"memory_budget": "16GB"}) as r:
        yield r


def _png() -> str:
    image = Image.new("RGB", (64, 48), (200, 30, 30))
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def _wav(seconds: float = 1.5, rate: int = 22050) -> bytes:
    t = np.arange(int(seconds * rate)) / rate
    samples = (0.3 * np.sin(2 * np.pi * 440 * t) * 32767).astype("<i2")
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(samples.tobytes())
    return buf.getvalue()


def test_vision_chat_with_a_base64_png(router: Router) -> None:
    client = router.openai()
    messages = [{"role": "user", "content": [{"type": "text", "text": "What is in this image?"},
                                             {"type": "image_url", "image_url": {"url": _png()}}]}]
    reply = client.chat.completions.create(model="vision", messages=messages, max_tokens=8)
    assert reply.choices[0].message.content
    assert reply.model == "vision"
    assert reply.usage.prompt_tokens > 10  # the image tokens are in the prompt
    chunks = list(client.chat.completions.create(model="vision", messages=messages, max_tokens=8, stream=True))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)


def test_vision_refuses_a_local_file_image(router: Router) -> None:
    with router.client() as c:
        r = c.post("/v1/chat/completions", json={"model": "vision", "messages": [{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": "/etc/passwd"}}]}]})
    assert r.status_code == 400
    assert r.json()["error"]["code"] == "invalid_image_url"


def test_embeddings_float_and_base64_decode_to_the_same_vector(router: Router) -> None:
    client = router.openai()
    texts = ["the quick brown fox", "jumps over the lazy dog"]
    sdk = client.embeddings.create(model="embed", input=texts)  # the SDK asks for base64 and decodes it
    assert [d.index for d in sdk.data] == [0, 1]
    assert sdk.model == "embed"
    assert sdk.usage.prompt_tokens > 4
    with router.client() as c:
        as_float = c.post("/v1/embeddings", json={"model": "embed", "input": texts, "encoding_format": "float"}).json()
        as_b64 = c.post("/v1/embeddings", json={"model": "embed", "input": texts, "encoding_format": "base64"}).json()
    for i in range(2):
        floats = np.array(as_float["data"][i]["embedding"], dtype=np.float32)
        decoded = np.frombuffer(base64.b64decode(as_b64["data"][i]["embedding"]), dtype="<f4")
        assert decoded.shape == floats.shape and floats.size > 8
        assert np.allclose(decoded, floats, atol=1e-6)
        assert np.allclose(np.array(sdk.data[i].embedding), floats, atol=1e-6)
        assert abs(np.linalg.norm(floats) - 1.0) < 1e-4


def test_concurrent_embedding_requests_share_batches(router: Router) -> None:
    client = router.openai()
    client.embeddings.create(model="embed", input="warm")  # loaded before the burst
    with ThreadPoolExecutor(16) as pool:
        results = list(pool.map(lambda i: client.embeddings.create(model="embed", input=f"text number {i}"),
                                range(32)))
    assert all(len(r.data) == 1 for r in results)
    # The worker's own batch counters, read on its socket (the test runs as the router's user).
    index = list(KINDS).index("embed")
    sock = Path(router.server["runtime_dir"]) / f"w{index}.sock"
    with httpx.Client(transport=httpx.HTTPTransport(uds=str(sock)), base_url="http://worker") as worker:
        stats = worker.get("/stats").json()["batching"]
    assert stats["max_batch_size_seen"] > 1
    assert stats["batches"] < stats["inputs"]


def test_speech_returns_audio_bytes(router: Router) -> None:
    client = router.openai()
    audio = client.audio.speech.create(model="tts", voice="alloy", input="Hello from mlx-serve.",
                                       response_format="wav")
    data = audio.read()
    assert data[:4] == b"RIFF" and data[8:12] == b"WAVE"
    with wave.open(io.BytesIO(data)) as w:
        assert w.getnchannels() == 1 and w.getnframes() > 1000
    pcm = client.audio.speech.create(model="tts", voice="alloy", input="Hi.", response_format="pcm").read()
    assert len(pcm) % 2 == 0 and len(pcm) > 100


def test_transcription_of_a_wav_upload(router: Router) -> None:
    client = router.openai()
    result = client.audio.transcriptions.create(model="stt", file=("clip.wav", _wav(), "audio/wav"))
    assert isinstance(result.text, str)
    verbose = client.audio.transcriptions.create(model="stt", file=("clip.wav", _wav(), "audio/wav"),
                                                 response_format="verbose_json")
    assert abs(verbose.duration - 1.5) < 0.2
    assert isinstance(verbose.segments, list)


def test_transcription_keep_alive_form_field(router: Router) -> None:
    with router.client() as c:
        bad = c.post("/v1/audio/transcriptions", data={"model": "stt", "keep_alive": "banana"},
                     files={"file": ("a.wav", _wav(0.5), "audio/wav")})
        assert bad.status_code == 400 and "banana" in bad.json()["error"]["message"]
        ok = c.post("/v1/audio/transcriptions", data={"model": "stt", "keep_alive": "-1"},
                    files={"file": ("a.wav", _wav(0.5), "audio/wav")})
        assert ok.status_code == 200, ok.text
    assert next(m for m in router.ps() if m["name"] == "stt")["pinned"] is True


def test_a_chat_request_to_an_embedding_model_is_a_400(router: Router) -> None:
    with router.client() as c:
        r = c.post("/v1/chat/completions", json={"model": "embed", "messages": [{"role": "user", "content": "x"}]})
    assert r.status_code == 400
    assert r.json()["error"]["code"] == "wrong_model_type"
