"""The text-to-speech worker (mlx-audio Soprano) on the tiny random demo model, over its Unix socket.

The test process never imports MLX: the worker is a real subprocess. The encoders of
``audio_codec`` (numpy + the ffmpeg CLI only) are also checked in-process, including the
answers given when ffmpeg or one of its encoders is missing.
"""

from __future__ import annotations

import io
import shutil
import wave
from pathlib import Path

import numpy as np
import pytest

from support import run_worker

from mlx_serve_workers.audio_codec import AudioError, encode_audio, missing_encoder

MAX_TOKENS = 12          # per sentence; random weights rarely stop on their own
TOKEN_SAMPLES = 2048     # Soprano: samples per audio token
SAMPLE_RATE = 32000      # the demo model's rate
MAX_INPUT_CHARS = 200
MAGIC = {
    "mp3": (b"ID3", b"\xff\xfb", b"\xff\xf3", b"\xff\xf2"),
    "flac": (b"fLaC",),
    "opus": (b"OggS",),
    "aac": (b"\xff\xf1", b"\xff\xf9"),
}
CONTENT_TYPES = {"mp3": "audio/mpeg", "flac": "audio/flac", "opus": "audio/opus", "aac": "audio/aac"}


@pytest.fixture(scope="module")
def tts_path(demo_model) -> Path:
    return Path(demo_model("demo-tts")["path"])


@pytest.fixture(scope="module")
def worker(tts_path):
    options = {"max_tokens": MAX_TOKENS, "max_input_chars": MAX_INPUT_CHARS}
    with run_worker("tts", tts_path, options=options) as (client, proc, log):
        yield client, proc, log


@pytest.fixture(scope="module")
def client(worker):
    return worker[0]


@pytest.fixture(scope="module")
def formats(client) -> list[str]:
    """The response formats this worker can produce (depends on the ffmpeg build)."""
    return client.get("/health").json()["response_formats"]


def speak(client, **payload):
    return client.post("/v1/audio/speech", json={"model": "ignored", "input": "Hello there.", **payload})


def read_wav(data: bytes) -> tuple[int, int, int, int]:
    with wave.open(io.BytesIO(data), "rb") as w:
        return w.getnchannels(), w.getsampwidth(), w.getframerate(), w.getnframes()


def test_health_reports_model_and_formats(client, formats):
    body = client.get("/health").json()
    assert body["status"] == "ok"
    assert body["sample_rate"] == SAMPLE_RATE
    assert body["memory"]["rss_bytes"] > 0
    assert {"wav", "pcm"} <= set(formats)  # in-process, always there
    assert body["ffmpeg"] == (shutil.which("ffmpeg") is not None)


def test_wav_is_valid_16bit_mono(client):
    resp = speak(client, response_format="wav", voice="alloy")
    assert resp.status_code == 200, resp.text
    assert resp.headers["content-type"] == "audio/wav"
    channels, width, rate, frames = read_wav(resp.content)
    assert (channels, width, rate) == (1, 2, SAMPLE_RATE)
    assert 0 < frames <= MAX_TOKENS * TOKEN_SAMPLES
    samples = np.frombuffer(resp.content[44:], "<i2")
    assert np.any(samples != 0)


@pytest.mark.parametrize("fmt", ["mp3", "flac", "opus", "aac"])
def test_ffmpeg_formats_or_a_clear_400(client, formats, fmt):
    resp = speak(client, response_format=fmt)
    if fmt in formats:
        assert resp.status_code == 200, resp.text
        assert resp.headers["content-type"] == CONTENT_TYPES[fmt]
        assert resp.content.startswith(MAGIC[fmt]), resp.content[:8]
    else:
        assert resp.status_code == 400
        assert "ffmpeg" in resp.json()["error"]["message"]


def test_default_format_is_mp3(client, formats):
    resp = client.post("/v1/audio/speech", json={"input": "Hi."})
    if "mp3" not in formats:
        assert resp.status_code == 400
        return
    assert resp.status_code == 200
    assert resp.headers["content-type"] == "audio/mpeg"


def test_pcm_is_raw_24khz_s16le(client):
    resp = speak(client, response_format="pcm")
    assert resp.status_code == 200, resp.text
    assert resp.headers["content-type"] == "audio/pcm"
    assert resp.headers["x-sample-rate"] == "24000"
    assert len(resp.content) % 2 == 0 and len(resp.content) > 0
    assert not resp.content.startswith(b"RIFF")
    # resampled 32 kHz -> 24 kHz: at most 3/4 of the longest possible clip
    assert len(resp.content) // 2 <= MAX_TOKENS * TOKEN_SAMPLES * 3 // 4 + 16


def test_speed_changes_duration(client, formats):
    resp = speak(client, response_format="wav", speed=2.0)
    if not shutil.which("ffmpeg"):  # Soprano has no speed of its own: ffmpeg's atempo does it
        assert resp.status_code == 400 and "ffmpeg" in resp.json()["error"]["message"]
        return
    assert resp.status_code == 200, resp.text
    channels, _, rate, frames = read_wav(resp.content)
    assert (channels, rate) == (1, SAMPLE_RATE)
    assert 0 < frames <= MAX_TOKENS * TOKEN_SAMPLES // 2 + 2048


@pytest.mark.parametrize("payload, param", [
    ({"input": ""}, "input"),
    ({"input": "   \n "}, "input"),
    ({}, "input"),
    ({"input": 42}, "input"),
    ({"input": "x" * (MAX_INPUT_CHARS + 1)}, "input"),
    ({"input": "hi", "speed": 5}, "speed"),
    ({"input": "hi", "speed": 0.1}, "speed"),
    ({"input": "hi", "speed": "fast"}, "speed"),
    ({"input": "hi", "speed": True}, "speed"),
    ({"input": "hi", "response_format": "ogg"}, "response_format"),
    ({"input": "hi", "voice": "../../etc/passwd"}, "voice"),
    ({"input": "hi", "stream_format": "sse"}, "stream_format"),
])
def test_bad_requests_get_400(client, payload, param):
    resp = client.post("/v1/audio/speech", json=payload)
    assert resp.status_code == 400, resp.text
    error = resp.json()["error"]
    assert error["type"] == "invalid_request_error"
    assert error["param"] == param


def test_not_json_and_unknown_route(client):
    resp = client.post("/v1/audio/speech", content=b"{not json")
    assert resp.status_code == 400
    assert "JSON" in resp.json()["error"]["message"]
    resp = client.get("/v1/audio/voices")
    assert resp.status_code == 404
    assert "error" in resp.json()


def test_healthy_after_bad_input(worker):
    client, proc, _ = worker
    assert proc.poll() is None
    assert client.get("/health").json()["status"] == "ok"
    assert speak(client, response_format="wav").status_code == 200


def test_unknown_option_fails_start(tts_path):
    with pytest.raises(RuntimeError, match="bogus_option"):
        with run_worker("tts", tts_path, options={"bogus_option": 1}, timeout=60):
            pass


# --- audio_codec in-process (no MLX) ---------------------------------------------------------

def test_encoders_without_ffmpeg_name_what_is_missing():
    tone = np.sin(np.linspace(0, 200, 8000)).astype(np.float32)
    wav = encode_audio(tone, 16000, "wav", None, set())
    assert read_wav(wav) == (1, 2, 16000, 8000)
    pcm = encode_audio(tone, 16000, "pcm", None, set())
    assert len(pcm) == 2 * 12000  # resampled to 24 kHz
    with pytest.raises(AudioError, match="ffmpeg"):
        encode_audio(tone, 16000, "mp3", None, set())
    assert "libmp3lame" in missing_encoder("mp3", "/usr/bin/ffmpeg", {"aac"})
    assert missing_encoder("wav", None, set()) is None
