"""Bad input on every endpoint: the right 4xx, an OpenAI error body, and a server that stays healthy.

One router serves all five demo kinds with small limits. Every case of the table is sent to it
over real HTTP and must get its status and an error body with exactly the OpenAI keys
(``message``, ``type``, ``param``, ``code``). The tests after the table prove the server still
answers a normal request of each kind and that no worker died or was replaced on the way.
pytest runs the tests of a module in file order: the pids are taken before the table and
compared after it.
"""

from __future__ import annotations

import base64
import io
import json
import wave
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest

from support import Router

KINDS = {"chat": "demo-chat", "vision": "demo-vision", "embed": "demo-embed", "tts": "demo-tts", "stt": "demo-stt",
         "rerank": "demo-rerank"}
MAX_BODY = 2_000_000  # server.max_body_bytes "2MB"
MAX_UPLOAD = 100_000  # the stt worker's max_upload_bytes
MAX_INPUTS = 8  # the embedding worker's max_inputs
MAX_IMAGES = 2  # the vision worker's max_images
MAX_DOCUMENTS = 4  # the rerank worker's max_documents
OPTIONS = {"embed": {"max_inputs": MAX_INPUTS}, "stt": {"max_upload_bytes": MAX_UPLOAD},
           "vision": {"max_images": MAX_IMAGES}, "rerank": {"max_documents": MAX_DOCUMENTS}}
ERROR_TYPES = {400: "invalid_request_error", 404: "not_found_error", 405: "invalid_request_error",
               413: "invalid_request_error", 415: "invalid_request_error"}

_ANY = object()  # "do not check this field"
_UNSET = object()  # no JSON body


@pytest.fixture(scope="module")
def router(tmp_path_factory: pytest.TempPathFactory, demo_model: Any) -> Iterator[Router]:
    models = []
    for name, demo in KINDS.items():
        entry = demo_model(demo)
        models.append({"name": name, "type": entry["type"], "path": entry["path"], "keep_alive": -1,
                       "options": {**entry.get("options", {}), **OPTIONS.get(name, {})}})
    server = {"memory_budget": "16GB", "max_body_bytes": "2MB"}
    with Router(tmp_path_factory.mktemp("bad-input"), models, server) as r:
        yield r


# --- payloads ---------------------------------------------------------------------------------

USER = [{"role": "user", "content": "hi"}]


def _wav(seconds: float = 1.0, rate: int = 16000) -> bytes:
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        # a square wave: any audible signal will do, and it needs no numpy
        w.writeframes(b"".join((8000 if (i // 20) % 2 else -8000).to_bytes(2, "little", signed=True)
                               for i in range(int(seconds * rate))))
    return buf.getvalue()


def _png() -> str:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (32, 24), (10, 200, 30)).save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def _image(url: Any) -> list[dict[str, Any]]:
    return [{"role": "user", "content": [{"type": "text", "text": "what is this?"},
                                         {"type": "image_url", "image_url": {"url": url}}]}]


def _stt(model: str | None = "stt", file: tuple[str, bytes, str] | None = ("a.wav", b"", "audio/wav"),
         **fields: str) -> dict[str, Any]:
    """The multipart pieces of a transcription request (``file=None``: no file field at all)."""
    data = {**({"model": model} if model is not None else {}), **fields}
    if file is None:  # plain fields sent as (None, value) parts keep the body multipart
        return {"data": {}, "files": {k: (None, v) for k, v in data.items()}}
    return {"data": data, "files": {"file": file}}


# --- the table --------------------------------------------------------------------------------

@dataclass(frozen=True)
class Case:
    """One bad request and what must come back. ``param``/``code`` left as _ANY are not checked."""

    id: str
    path: str
    status: int
    param: Any = _ANY
    code: Any = _ANY
    message: str = ""  # a fragment the message must contain (case-insensitive)
    method: str = "POST"
    json: Any = _UNSET
    content: bytes | None = None
    content_type: str | None = None
    multipart: dict[str, Any] = field(default_factory=dict)

    def send(self, client: httpx.Client) -> httpx.Response:
        if self.multipart:
            return client.request(self.method, self.path, data=self.multipart["data"],
                                  files=self.multipart["files"])
        headers = {"content-type": self.content_type} if self.content_type else {}
        if self.json is not _UNSET:
            return client.request(self.method, self.path, json=self.json, headers=headers)
        return client.request(self.method, self.path, content=self.content, headers=headers)


CHAT, COMPLETIONS, EMBEDDINGS = "/v1/chat/completions", "/v1/completions", "/v1/embeddings"
SPEECH, TRANSCRIPTIONS, TRANSLATIONS = "/v1/audio/speech", "/v1/audio/transcriptions", "/v1/audio/translations"
RERANK = "/v1/rerank"
NOT_AUDIO = ("notes.txt", b"this is plain text, not audio at all\n" * 20, "text/plain")
WAV_HEADER_ONLY = ("silent.wav", _wav(0.0), "audio/wav")  # a valid RIFF header and not one sample


def _chunks(total: int) -> Iterator[bytes]:
    """A body sent without Content-Length (chunked), so the router must count it as it reads."""
    yield b'{"model": "chat", "messages": [{"role": "user", "content": "'
    for _ in range(total // 65536 + 1):
        yield b"x" * 65536
    yield b'"}]}'


CASES: list[Case] = [
    # --- the body itself
    Case("invalid-json", CHAT, 400, None, "invalid_json", "not valid JSON",
         content=b'{"model": "chat", "messages": [', content_type="application/json"),
    Case("empty-body", CHAT, 400, None, "invalid_json", "empty", content=b"", content_type="application/json"),
    Case("json-array-body", CHAT, 400, None, "invalid_json", "JSON object", json=[{"model": "chat"}]),
    Case("json-string-body", EMBEDDINGS, 400, None, "invalid_json", "JSON object", json="hello"),
    Case("json-null-body", COMPLETIONS, 400, None, "invalid_json", "JSON object", json=None),
    Case("invalid-utf8-body", CHAT, 400, None, "invalid_json", "not valid JSON",
         content=b'{"model": "\xff\xfe"}', content_type="application/json"),
    Case("deeply-nested-json", CHAT, 400, None, "invalid_json", "",
         content=b'{"model": "chat", "x": ' + b"[" * 100_000 + b"]" * 100_000 + b"}",
         content_type="application/json"),
    Case("body-over-limit", CHAT, 413, None, "request_too_large", "max_body_bytes",
         json={"model": "chat", "messages": [{"role": "user", "content": "x" * (MAX_BODY + 10)}]}),
    Case("chunked-body-over-limit", CHAT, 413, None, "request_too_large", "max_body_bytes",
         content=b"".join(_chunks(MAX_BODY)), content_type="application/json"),
    Case("text-plain-content-type", CHAT, 415, None, "unsupported_media_type", "application/json",
         content=json.dumps({"model": "chat", "messages": USER}).encode(), content_type="text/plain"),
    Case("form-content-type-on-json-endpoint", EMBEDDINGS, 415, None, "unsupported_media_type", "",
         content=b"model=embed&input=hi", content_type="application/x-www-form-urlencoded"),
    # --- model
    Case("missing-model", CHAT, 400, "model", "missing_required_parameter", "model", json={"messages": USER}),
    Case("model-not-a-string", CHAT, 400, "model", _ANY, "model", json={"model": 42, "messages": USER}),
    Case("unknown-model", CHAT, 404, "model", "model_not_found", "not found",
         json={"model": "gpt-9", "messages": USER}),
    Case("chat-to-embedding-model", CHAT, 400, "model", "wrong_model_type", "embedding",
         json={"model": "embed", "messages": USER}),
    Case("completion-to-vision-model", COMPLETIONS, 400, "model", "wrong_model_type", "vision",
         json={"model": "vision", "prompt": "hi"}),
    Case("embeddings-to-chat-model", EMBEDDINGS, 400, "model", "wrong_model_type", "text",
         json={"model": "chat", "input": "hi"}),
    Case("speech-to-stt-model", SPEECH, 400, "model", "wrong_model_type", "stt",
         json={"model": "stt", "input": "hi", "voice": "alloy"}),
    # --- chat fields
    Case("missing-messages", CHAT, 400, "messages", "missing_required_parameter", "messages", json={"model": "chat"}),
    Case("messages-not-a-list", CHAT, 400, "messages", _ANY, "list", json={"model": "chat", "messages": "hi"}),
    Case("messages-empty", CHAT, 400, "messages", _ANY, "non-empty", json={"model": "chat", "messages": []}),
    Case("message-not-an-object", CHAT, 400, "messages[0]", _ANY, "object", json={"model": "chat", "messages": ["hi"]}),
    Case("message-bad-role", CHAT, 400, "messages[0].role", _ANY, "role",
         json={"model": "chat", "messages": [{"role": "robot", "content": "hi"}]}),
    Case("message-content-a-number", CHAT, 400, "messages[0].content", _ANY, "content",
         json={"model": "chat", "messages": [{"role": "user", "content": 5}]}),
    Case("text-part-text-not-a-string", CHAT, 400, "messages[0].content[0].text", _ANY, "string",
         json={"model": "chat", "messages": [{"role": "user", "content": [{"type": "text", "text": 7}]}]}),
    Case("image-to-text-model", CHAT, 400, "messages[0].content[1]", "unsupported_content", "vision model",
         json={"model": "chat", "messages": _image("data:image/png;base64,iVBORw0KGgo=")}),
    # --- sampling parameters
    Case("temperature-too-high", CHAT, 400, "temperature", _ANY, "between",
         json={"model": "chat", "messages": USER, "temperature": 3.5}),
    Case("temperature-a-string", CHAT, 400, "temperature", "invalid_type", "number",
         json={"model": "chat", "messages": USER, "temperature": "hot"}),
    Case("temperature-nan", CHAT, 400, "temperature", "invalid_type", "number",
         content=b'{"model": "chat", "messages": [{"role": "user", "content": "hi"}], "temperature": NaN}',
         content_type="application/json"),
    Case("top-p-negative", CHAT, 400, "top_p", _ANY, "between",
         json={"model": "chat", "messages": USER, "top_p": -0.1}),
    Case("presence-penalty-too-high", CHAT, 400, "presence_penalty", _ANY, "between",
         json={"model": "chat", "messages": USER, "presence_penalty": 5}),
    Case("max-tokens-zero", CHAT, 400, "max_tokens", _ANY, "at least 1",
         json={"model": "chat", "messages": USER, "max_tokens": 0}),
    Case("max-tokens-a-string", COMPLETIONS, 400, "max_tokens", "invalid_type", "integer",
         json={"model": "chat", "prompt": "hi", "max_tokens": "10"}),
    Case("top-k-negative", CHAT, 400, "top_k", _ANY, "non-negative",
         json={"model": "vision", "messages": USER, "top_k": -1}),
    Case("min-p-too-high", COMPLETIONS, 400, "min_p", _ANY, "between",
         json={"model": "chat", "prompt": "hi", "min_p": 2}),
    Case("n-two", CHAT, 400, "n", _ANY, "n=1", json={"model": "chat", "messages": USER, "n": 2}),
    Case("stream-options-a-number", CHAT, 400, "stream_options", "invalid_type", "stream_options",
         json={"model": "chat", "messages": USER, "stream": True, "stream_options": 5}),
    Case("stream-a-string", CHAT, 400, "stream", "invalid_type", "true or false",
         json={"model": "chat", "messages": USER, "stream": "yes"}),
    Case("stop-a-number", CHAT, 400, "stop", "invalid_type", "stop",
         json={"model": "chat", "messages": USER, "stop": 5}),
    Case("seed-a-float", COMPLETIONS, 400, "seed", "invalid_type", "integer",
         json={"model": "chat", "prompt": "hi", "seed": 1.5}),
    # --- keep_alive
    Case("keep-alive-banana", CHAT, 400, "keep_alive", _ANY, "keep_alive",
         json={"model": "chat", "messages": USER, "keep_alive": "banana"}),
    Case("keep-alive-a-bool", EMBEDDINGS, 400, "keep_alive", _ANY, "keep_alive",
         json={"model": "embed", "input": "hi", "keep_alive": True}),
    Case("keep-alive-an-object", SPEECH, 400, "keep_alive", _ANY, "keep_alive",
         json={"model": "tts", "input": "hi", "keep_alive": {"minutes": 5}}),
    Case("keep-alive-beyond-any-float", CHAT, 400, "keep_alive", _ANY, "too large",
         json={"model": "chat", "messages": USER, "keep_alive": 10**400}),
    Case("keep-alive-longer-than-292-years", CHAT, 400, "keep_alive", _ANY, "longest keep_alive",
         json={"model": "chat", "messages": USER, "keep_alive": "99999999999999999999h"}),
    Case("keep-alive-bad-unit", COMPLETIONS, 400, "keep_alive", _ANY, "keep_alive",
         json={"model": "chat", "prompt": "hi", "keep_alive": "5 fortnights"}),
    # --- completions
    Case("completion-missing-prompt", COMPLETIONS, 400, "prompt", "missing_required_parameter", "prompt",
         json={"model": "chat"}),
    Case("completion-empty-prompt", COMPLETIONS, 400, _ANY, _ANY, "empty",  # used to kill the text worker
         json={"model": "chat", "prompt": "", "max_tokens": 2}),
    Case("completion-prompt-an-object", COMPLETIONS, 400, "prompt", "invalid_type", "prompt",
         json={"model": "chat", "prompt": {"text": "hi"}}),
    # --- vision images
    Case("image-invalid-base64", CHAT, 400, "messages[0].content[1].image_url", "invalid_image", "base64",
         json={"model": "vision", "messages": _image("data:image/png;base64,!!!not*base64!!!")}),
    Case("image-data-url-not-an-image", CHAT, 400, "messages[0].content[1].image_url", "invalid_image", "data URL",
         json={"model": "vision", "messages": _image("data:text/plain;base64,aGVsbG8=")}),
    Case("image-base64-of-garbage", CHAT, 400, _ANY, _ANY, "image",  # valid base64, not an image: the worker
         json={"model": "vision", "messages": _image("data:image/png;base64,aGVsbG8gd29ybGQsIG5vdCBhbiBpbWFnZQ==")}),
    Case("image-local-path", CHAT, 400, "messages[0].content[1].image_url", "invalid_image_url", "local paths",
         json={"model": "vision", "messages": _image("/etc/passwd")}),
    Case("image-file-url", CHAT, 400, "messages[0].content[1].image_url", "invalid_image_url", "file:",
         json={"model": "vision", "messages": _image("file:///etc/passwd")}),
    Case("image-relative-path", CHAT, 400, "messages[0].content[1].image_url", "invalid_image_url", "",
         json={"model": "vision", "messages": _image("../../models.yaml")}),
    Case("image-unreachable-http-url", CHAT, 400, "messages[0].content[1].image_url.url", "image_fetch_failed", "",
         json={"model": "vision", "messages": _image("http://127.0.0.1:1/cat.png")}),
    Case("vision-too-many-images", CHAT, 400, "messages", _ANY, f"at most {MAX_IMAGES}",
         json={"model": "vision", "messages": [{"role": "user", "content": [
             {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}}] * (MAX_IMAGES + 1)}]}),
    Case("vision-empty-content", CHAT, 400, _ANY, _ANY, "non-empty",
         json={"model": "vision", "messages": [{"role": "user", "content": []}]}),
    Case("image-url-missing", CHAT, 400, "messages[0].content[0].image_url", _ANY, "image URL",
         json={"model": "vision", "messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}]}),
    Case("image-url-a-number", CHAT, 400, "messages[0].content[0].image_url", _ANY, "image URL",
         json={"model": "vision", "messages": [{"role": "user", "content": [{"type": "image_url", "image_url": 5}]}]}),
    # --- embeddings
    Case("embeddings-missing-input", EMBEDDINGS, 400, "input", "missing_required_parameter", "input",
         json={"model": "embed"}),
    Case("embeddings-empty-string", EMBEDDINGS, 400, "input", _ANY, "empty", json={"model": "embed", "input": ""}),
    Case("embeddings-empty-list", EMBEDDINGS, 400, "input", _ANY, "empty", json={"model": "embed", "input": []}),
    Case("embeddings-input-a-number", EMBEDDINGS, 400, "input", "invalid_type", "input",
         json={"model": "embed", "input": 5}),
    Case("embeddings-empty-string-in-list", EMBEDDINGS, 400, "input", _ANY, "empty",
         json={"model": "embed", "input": ["fine", ""]}),
    Case("embeddings-mixed-list", EMBEDDINGS, 400, "input", _ANY, "input",
         json={"model": "embed", "input": ["text", 5, {"a": 1}]}),
    Case("embeddings-too-many-inputs", EMBEDDINGS, 400, "input", "max_inputs_exceeded", "max_inputs",
         json={"model": "embed", "input": [f"text {i}" for i in range(MAX_INPUTS + 1)]}),
    Case("embeddings-token-id-out-of-range", EMBEDDINGS, 400, _ANY, _ANY, "",
         json={"model": "embed", "input": [[1, 2, 999_999_999]]}),
    Case("embeddings-negative-token-id", EMBEDDINGS, 400, _ANY, _ANY, "",
         json={"model": "embed", "input": [[-5, 2]]}),
    Case("embeddings-bad-encoding-format", EMBEDDINGS, 400, "encoding_format", _ANY, "encoding_format",
         json={"model": "embed", "input": "hi", "encoding_format": "hex"}),
    Case("embeddings-dimensions-zero", EMBEDDINGS, 400, "dimensions", _ANY, "dimensions",
         json={"model": "embed", "input": "hi", "dimensions": 0}),
    # --- speech
    Case("speech-missing-input", SPEECH, 400, "input", _ANY, "input", json={"model": "tts", "voice": "alloy"}),
    Case("speech-empty-input", SPEECH, 400, "input", _ANY, "non-empty", json={"model": "tts", "input": "   "}),
    Case("speech-input-a-list", SPEECH, 400, "input", _ANY, "string", json={"model": "tts", "input": ["a", "b"]}),
    Case("speech-input-too-long", SPEECH, 400, "input", _ANY, "characters",
         json={"model": "tts", "input": "word " * 1000}),
    Case("speech-speed-out-of-range", SPEECH, 400, "speed", _ANY, "speed",
         json={"model": "tts", "input": "hi", "speed": 10}),
    Case("speech-speed-a-string", SPEECH, 400, "speed", _ANY, "speed",
         json={"model": "tts", "input": "hi", "speed": "fast"}),
    Case("speech-unknown-format", SPEECH, 400, "response_format", _ANY, "response_format",
         json={"model": "tts", "input": "hi", "response_format": "midi"}),
    Case("speech-voice-a-path", SPEECH, 400, "voice", _ANY, "voice",
         json={"model": "tts", "input": "hi", "voice": "../../etc/passwd"}),
    # --- transcriptions and translations (multipart)
    Case("transcription-as-json", TRANSCRIPTIONS, 415, None, "unsupported_media_type", "multipart/form-data",
         json={"model": "stt", "file": "aGVsbG8="}),
    Case("transcription-missing-file", TRANSCRIPTIONS, 400, "file", "missing_required_parameter", "file",
         multipart=_stt(file=None, language="en")),
    Case("transcription-missing-model", TRANSCRIPTIONS, 400, "model", "missing_required_parameter", "model",
         multipart=_stt(model=None, file=("a.wav", _wav(0.2), "audio/wav"))),
    Case("transcription-unknown-model", TRANSCRIPTIONS, 404, "model", "model_not_found", "not found",
         multipart=_stt(model="whisper-1", file=("a.wav", _wav(0.2), "audio/wav"))),
    Case("transcription-to-tts-model", TRANSCRIPTIONS, 400, "model", "wrong_model_type", "tts",
         multipart=_stt(model="tts", file=("a.wav", _wav(0.2), "audio/wav"))),
    Case("transcription-keep-alive-banana", TRANSCRIPTIONS, 400, "keep_alive", _ANY, "banana",
         multipart=_stt(file=("a.wav", _wav(0.2), "audio/wav"), keep_alive="banana")),
    Case("transcription-not-audio", TRANSCRIPTIONS, 400, "file", "invalid_audio", "",
         multipart=_stt(file=NOT_AUDIO)),
    Case("transcription-wav-without-samples", TRANSCRIPTIONS, 400, "file", "invalid_audio", "",
         multipart=_stt(file=WAV_HEADER_ONLY)),
    Case("transcription-empty-file", TRANSCRIPTIONS, 400, "file", _ANY, "",
         multipart=_stt(file=("empty.wav", b"", "audio/wav"))),
    Case("transcription-upload-over-worker-limit", TRANSCRIPTIONS, 413, "file", "file_too_large", str(MAX_UPLOAD),
         multipart=_stt(file=("big.wav", _wav(4.0), "audio/wav"))),  # 128 kB: under max_body_bytes
    Case("transcription-upload-over-body-limit", TRANSCRIPTIONS, 413, None, "request_too_large", "max_body_bytes",
         multipart=_stt(file=("huge.wav", b"\0" * (MAX_BODY + 1000), "audio/wav"))),
    Case("transcription-bad-response-format", TRANSCRIPTIONS, 400, "response_format", _ANY, "response_format",
         multipart=_stt(file=("a.wav", _wav(0.2), "audio/wav"), response_format="xml")),
    Case("transcription-temperature-out-of-range", TRANSCRIPTIONS, 400, "temperature", _ANY, "temperature",
         multipart=_stt(file=("a.wav", _wav(0.2), "audio/wav"), temperature="5")),
    Case("transcription-two-files", TRANSCRIPTIONS, 400, _ANY, _ANY, "files",
         multipart={"data": {"model": "stt"}, "files": [("file", ("a.wav", _wav(0.2), "audio/wav")),
                                                        ("file", ("b.wav", _wav(0.2), "audio/wav"))]}),
    Case("transcription-multipart-without-boundary", TRANSCRIPTIONS, 400, None, "invalid_multipart", "boundary",
         content=b"model=stt", content_type="multipart/form-data"),
    Case("transcription-malformed-multipart", TRANSCRIPTIONS, 400, _ANY, _ANY, "",
         content=b"--xyz\r\nContent-Disposition: form-data; name=\"model\"\r\n\r\nstt\r\n--xyz\r\ngarbage",
         content_type="multipart/form-data; boundary=xyz"),
    Case("translation-not-audio", TRANSLATIONS, 400, "file", "invalid_audio", "", multipart=_stt(file=NOT_AUDIO)),
    Case("translation-missing-file", TRANSLATIONS, 400, "file", "missing_required_parameter", "file",
         multipart=_stt(file=None)),
    Case("translation-to-chat-model", TRANSLATIONS, 400, "model", "wrong_model_type", "text",
         multipart=_stt(model="chat", file=("a.wav", _wav(0.2), "audio/wav"))),
    # --- rerank
    Case("rerank-missing-query", RERANK, 400, "query", _ANY, "query", json={"model": "rerank", "documents": ["a"]}),
    Case("rerank-empty-query", RERANK, 400, "query", _ANY, "non-empty",
         json={"model": "rerank", "query": " ", "documents": ["a"]}),
    Case("rerank-empty-documents", RERANK, 400, "documents", _ANY, "non-empty",
         json={"model": "rerank", "query": "q", "documents": []}),
    Case("rerank-document-a-number", RERANK, 400, "documents", _ANY, "documents[1]",
         json={"model": "rerank", "query": "q", "documents": ["a", 5]}),
    Case("rerank-top-n-zero", RERANK, 400, "top_n", _ANY, "top_n",
         json={"model": "rerank", "query": "q", "documents": ["a"], "top_n": 0}),
    Case("rerank-too-many-documents", RERANK, 400, "documents", _ANY, f"max_documents={MAX_DOCUMENTS}",
         json={"model": "rerank", "query": "q", "documents": ["d"] * (MAX_DOCUMENTS + 1)}),
    Case("rerank-return-documents-a-string", RERANK, 400, "return_documents", _ANY, "return_documents",
         json={"model": "rerank", "query": "q", "documents": ["a"], "return_documents": "yes"}),
    Case("rerank-to-embedding-model", "/rerank", 400, "model", "wrong_model_type", "embedding",
         json={"model": "embed", "query": "q", "documents": ["a"]}),
    Case("rerank-alias-invalid-json", "/rerank", 400, None, "invalid_json", "JSON", content=b"{'query': 1}",
         content_type="application/json"),
    Case("embeddings-to-rerank-model", EMBEDDINGS, 400, "model", "wrong_model_type", "rerank",
         json={"model": "rerank", "input": "hi"}),
    # --- management
    Case("load-invalid-json", "/api/load", 400, None, "invalid_json", "JSON", content=b"{model: chat}",
         content_type="application/json"),
    Case("load-array-body", "/api/load", 400, None, "invalid_json", "JSON object", json=["chat"]),
    Case("load-missing-model", "/api/load", 400, "model", "missing_required_parameter", "model", json={}),
    Case("load-unknown-model", "/api/load", 404, "model", "model_not_found", "not found", json={"model": "nope"}),
    Case("load-keep-alive-banana", "/api/load", 400, "keep_alive", _ANY, "banana",
         json={"model": "chat", "keep_alive": "banana"}),
    Case("load-wrong-content-type", "/api/load", 415, None, "unsupported_media_type", "",
         content=b"model=chat", content_type="application/x-www-form-urlencoded"),
    Case("load-body-over-limit", "/api/load", 413, None, "request_too_large", "",
         json={"model": "chat", "pad": "x" * (2 << 20)}),
    Case("unload-model-a-number", "/api/unload", 400, "model", _ANY, "model", json={"model": 5}),
    Case("unload-unknown-model", "/api/unload", 404, "model", "model_not_found", "not found", json={"model": "nope"}),
    Case("unload-invalid-json", "/api/unload", 400, None, "invalid_json", "JSON", content=b"{",
         content_type="application/json"),
    Case("events-limit-not-a-number", "/api/events?limit=many", 400, "limit", _ANY, "limit", method="GET"),
    # --- routes
    Case("unknown-model-card", "/v1/models/gpt-9", 404, "model", "model_not_found", "gpt-9", method="GET"),
    Case("unknown-route", "/v1/engines", 404, None, "not_found", "no route", method="GET"),
    Case("unknown-post-route", "/v1/fine_tuning/jobs", 404, None, "not_found", "no route", json={}),
    Case("wrong-method-get-chat", CHAT, 405, None, _ANY, "not allowed", method="GET"),
    Case("wrong-method-delete-load", "/api/load", 405, None, _ANY, "not allowed", method="DELETE"),
    Case("wrong-method-post-models", "/v1/models", 405, None, _ANY, "not allowed", json={}),
]

BEFORE: dict[str, int] = {}  # model -> worker pid, taken before the table


def _normal_requests(c: httpx.Client) -> dict[str, httpx.Response]:
    return {
        "chat": c.post(CHAT, json={"model": "chat", "messages": USER, "max_tokens": 3}),
        "completion": c.post(COMPLETIONS, json={"model": "chat", "prompt": "once upon", "max_tokens": 3}),
        # stream_options without include_usage is valid OpenAI; the engine used to cut such a stream short
        "stream": c.post(CHAT, json={"model": "chat", "messages": USER, "max_tokens": 3, "stream": True,
                                     "stream_options": {}}),
        "vision": c.post(CHAT, json={"model": "vision", "messages": _image(_png()), "max_tokens": 3}),
        "embed": c.post(EMBEDDINGS, json={"model": "embed", "input": ["a", "b"]}),
        "tts": c.post(SPEECH, json={"model": "tts", "input": "Hello.", "voice": "alloy", "response_format": "wav"}),
        "stt": c.post(TRANSCRIPTIONS, data={"model": "stt"}, files={"file": ("a.wav", _wav(), "audio/wav")}),
        "translation": c.post(TRANSLATIONS, data={"model": "stt"}, files={"file": ("a.wav", _wav(), "audio/wav")}),
        "rerank": c.post(RERANK, json={"model": "rerank", "query": "capital of France?",
                                       "documents": ["Paris is the capital of France.", "A fox."]}),
    }


def _check_normal(responses: dict[str, httpx.Response]) -> None:
    for name, r in responses.items():
        assert r.status_code == 200, f"{name}: {r.status_code} {r.text[:500]}"
    assert responses["chat"].json()["choices"][0]["message"]["content"] is not None
    assert isinstance(responses["completion"].json()["choices"][0]["text"], str)
    assert responses["stream"].text.rstrip().endswith("data: [DONE]"), responses["stream"].text[-300:]
    assert responses["vision"].json()["choices"][0]["message"]["content"] is not None
    assert len(responses["embed"].json()["data"]) == 2
    assert responses["tts"].content[:4] == b"RIFF"
    assert isinstance(responses["stt"].json()["text"], str)
    assert isinstance(responses["translation"].json()["text"], str)
    assert sorted(x["index"] for x in responses["rerank"].json()["results"]) == [0, 1]


def test_every_kind_is_loaded_before_the_table(router: Router) -> None:
    with router.client() as c:
        for name in KINDS:
            r = c.post("/api/load", json={"model": name})
            assert r.status_code == 200, r.text
        _check_normal(_normal_requests(c))
    BEFORE.update({m["name"]: m["pid"] for m in router.ps()})
    assert sorted(BEFORE) == sorted(KINDS) and all(BEFORE.values())


def test_the_table_is_large_and_its_ids_unique() -> None:
    assert len(CASES) >= 50
    assert len({c.id for c in CASES}) == len(CASES)
    paths = {c.path.split("?")[0] for c in CASES}
    for path in (CHAT, COMPLETIONS, EMBEDDINGS, SPEECH, TRANSCRIPTIONS, TRANSLATIONS, RERANK, "/rerank", "/api/load",
                 "/api/unload"):
        assert path in paths


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input(router: Router, case: Case) -> None:
    with router.client() as c:
        r = case.send(c)
    assert r.status_code == case.status, f"{case.id}: {r.status_code} {r.text[:600]}"
    assert r.headers["content-type"].startswith("application/json"), r.headers["content-type"]
    body = r.json()
    assert set(body) == {"error"}, body
    error = body["error"]
    assert set(error) == {"message", "type", "param", "code"}, error
    assert isinstance(error["message"], str) and error["message"], error
    assert error["type"] == ERROR_TYPES[case.status], error
    if case.param is not _ANY:
        assert error["param"] == case.param, error
    if case.code is not _ANY:
        assert error["code"] == case.code, error
    assert case.message.lower() in error["message"].lower(), error
    if case.status == 405:
        assert "POST" in r.headers.get("allow", "") or "GET" in r.headers.get("allow", ""), r.headers


def test_the_openai_sdk_raises_its_own_error_classes(router: Router) -> None:
    import openai

    client = router.openai()
    with pytest.raises(openai.BadRequestError) as bad:
        client.chat.completions.create(model="embed", messages=USER)
    assert bad.value.code == "wrong_model_type" and bad.value.param == "model"
    with pytest.raises(openai.NotFoundError) as missing:
        client.embeddings.create(model="text-embedding-3-small", input="hi")
    assert missing.value.code == "model_not_found"
    with pytest.raises(openai.BadRequestError) as too_many:
        client.embeddings.create(model="embed", input=["x"] * (MAX_INPUTS + 1))
    assert too_many.value.code == "max_inputs_exceeded"
    with pytest.raises(openai.APIStatusError) as too_big:
        client.audio.transcriptions.create(model="stt", file=("big.wav", _wav(4.0), "audio/wav"))
    assert too_big.value.status_code == 413


def test_after_the_table_the_server_and_every_worker_are_healthy(router: Router) -> None:
    with router.client() as c:
        health = c.get("/health")
        assert health.status_code == 200 and health.json()["status"] == "ok"
        _check_normal(_normal_requests(c))
        events = c.get("/api/events", params={"limit": 1000}).json()["events"]
    assert [e for e in events if e["event"] in ("crash", "load_failed", "backoff")] == []
    after = {m["name"]: m["pid"] for m in router.ps()}
    assert BEFORE, "the load test before the table did not run"
    assert after == BEFORE  # the same five workers: none died and none was replaced
    assert "Traceback" not in router.log()
