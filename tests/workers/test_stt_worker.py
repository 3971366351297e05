"""The speech-to-text worker (mlx-whisper) on the tiny random demo Whisper, over its Unix socket.

The random model transcribes anything as "!!!": these tests check the API's shapes, bounds
and error answers, not the words. The test process never imports MLX; ``audio_codec``'s
decoder (numpy + the ffmpeg CLI) is also checked in-process, with and without ffmpeg.
"""

from __future__ import annotations

import io
import re
import shutil
import subprocess
import wave
from pathlib import Path

import numpy as np
import pytest

from support import run_worker

from mlx_serve_workers.audio_codec import AudioError, decode_audio, sniff_container

MAX_UPLOAD = 200_000
CLIP_SECONDS = 2.0
FFMPEG = shutil.which("ffmpeg")
needs_ffmpeg = pytest.mark.skipif(FFMPEG is None, reason="ffmpeg CLI not installed")


def make_wav(seconds: float = CLIP_SECONDS, rate: int = 22050, seed: int = 0) -> bytes:
    """A 16-bit mono WAV at 22.05 kHz (so the worker must resample): a tone plus noise."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * rate)) / rate
    x = 0.3 * np.sin(2 * np.pi * 440 * t) + 0.05 * rng.standard_normal(t.size)
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes((x * 32767).astype("<i2").tobytes())
    return buf.getvalue()


@pytest.fixture(scope="module")
def stt_path(demo_model) -> Path:
    return Path(demo_model("demo-stt")["path"])


@pytest.fixture(scope="module")
def worker(stt_path):
    with run_worker("stt", stt_path, options={"max_upload_bytes": MAX_UPLOAD}) as (client, proc, log):
        yield client, proc, log


@pytest.fixture(scope="module")
def client(worker):
    return worker[0]


@pytest.fixture(scope="module")
def clip() -> bytes:
    return make_wav()


def transcribe(client, data: bytes, filename: str = "clip.wav", path: str = "/v1/audio/transcriptions",
               **fields):
    form = {"model": "whisper-1", **fields}
    return client.post(path, files={"file": (filename, data, "application/octet-stream")}, data=form)


def test_health(client):
    body = client.get("/health").json()
    assert body["status"] == "ok"
    assert body["multilingual"] is False  # the demo model is English-only (n_vocab 51864)
    assert body["fp16"] is False          # float32 compute on CPU
    assert body["memory"]["rss_bytes"] > 0


def test_json(client, clip):
    resp = transcribe(client, clip)
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert isinstance(body["text"], str) and body["text"]
    assert body["usage"] == {"type": "duration", "seconds": 2}


def test_text(client, clip):
    resp = transcribe(client, clip, response_format="text")
    assert resp.status_code == 200, resp.text
    assert resp.headers["content-type"].startswith("text/plain")
    assert resp.text.strip() and not resp.text.lstrip().startswith("{")


def test_srt(client, clip):
    resp = transcribe(client, clip, response_format="srt")
    assert resp.status_code == 200, resp.text
    lines = resp.text.splitlines()
    assert lines[0] == "1"
    assert re.fullmatch(r"\d\d:\d\d:\d\d,\d\d\d --> \d\d:\d\d:\d\d,\d\d\d", lines[1])


def test_vtt(client, clip):
    resp = transcribe(client, clip, response_format="vtt")
    assert resp.status_code == 200, resp.text
    assert resp.headers["content-type"].startswith("text/vtt")
    assert resp.text.startswith("WEBVTT")
    assert re.search(r"^\d\d:\d\d\.\d\d\d --> \d\d:\d\d\.\d\d\d$", resp.text, re.M)


def test_verbose_json(client, clip):
    resp = transcribe(client, clip, response_format="verbose_json", temperature="0.2", prompt="Hello.")
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert body["task"] == "transcribe"
    assert body["language"] == "english"
    assert abs(body["duration"] - CLIP_SECONDS) < 0.05
    assert isinstance(body["segments"], list) and body["segments"]
    for seg in body["segments"]:
        assert {"id", "start", "end", "text", "tokens", "avg_logprob", "no_speech_prob"} <= set(seg)
        assert 0 <= seg["start"] <= seg["end"] <= body["duration"]
    assert "words" not in body


def test_word_timestamps(client, clip):
    resp = transcribe(client, clip, response_format="verbose_json", **{"timestamp_granularities[]": "word"})
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert body["words"], body
    assert all(0 <= w["start"] <= w["end"] <= body["duration"] for w in body["words"])
    assert "segments" not in body  # only the granularity asked for


def test_translation_endpoint(client, clip):
    resp = transcribe(client, clip, path="/v1/audio/translations")
    assert resp.status_code == 200, resp.text
    assert isinstance(resp.json()["text"], str)


@needs_ffmpeg
@pytest.mark.parametrize("ext", ["mp3", "flac", "ogg", "m4a"])
def test_other_containers(client, tmp_path, ext):
    src = tmp_path / "in.wav"
    src.write_bytes(make_wav(seconds=1.0))
    out = tmp_path / f"out.{ext}"
    subprocess.run([FFMPEG, "-loglevel", "error", "-y", "-i", str(src), str(out)], check=True, timeout=60)
    resp = transcribe(client, out.read_bytes(), filename=out.name, response_format="verbose_json")
    assert resp.status_code == 200, resp.text
    assert abs(resp.json()["duration"] - 1.0) < 0.1


@pytest.mark.parametrize("data, what", [
    (b"hello, this is plain text and not audio at all", "not a recognised audio format"),
    (b"RIFF\x24\x00\x00\x00WAVEjunkjunkjunkjunk", "decode"),
    (b"", "empty"),
])
def test_not_audio_gets_400(client, data, what):
    resp = transcribe(client, data)
    assert resp.status_code == 400, resp.text
    error = resp.json()["error"]
    assert what in error["message"]
    assert error["param"] == "file"


def test_missing_file_gets_400(client):
    resp = client.post("/v1/audio/transcriptions", files={"model": (None, "whisper-1")})
    assert resp.status_code == 400
    assert resp.json()["error"]["param"] == "file"
    resp = client.post("/v1/audio/transcriptions", json={"file": "clip.wav"})
    assert resp.status_code == 400


def test_upload_over_limit_gets_413(client):
    resp = transcribe(client, b"RIFF" + b"\x00" * (MAX_UPLOAD + 10))
    assert resp.status_code == 413
    assert resp.json()["error"]["code"] == "file_too_large"
    resp = transcribe(client, b"\x00" * (3 * 1024 * 1024))  # past the whole-body limit too
    assert resp.status_code == 413


@pytest.mark.parametrize("fields, param", [
    ({"temperature": "1.5"}, "temperature"),
    ({"temperature": "warm"}, "temperature"),
    ({"response_format": "xml"}, "response_format"),
    ({"language": "fr"}, "language"),         # the demo model is English-only
    ({"language": "klingon"}, "language"),
    ({"timestamp_granularities[]": "word"}, "timestamp_granularities"),  # needs verbose_json
    ({"response_format": "verbose_json", "timestamp_granularities[]": "char"}, "timestamp_granularities"),
])
def test_bad_fields_get_400(client, clip, fields, param):
    resp = transcribe(client, clip, **fields)
    assert resp.status_code == 400, resp.text
    assert resp.json()["error"]["param"] == param


def test_healthy_after_bad_input(worker, clip):
    client, proc, _ = worker
    assert proc.poll() is None
    assert client.get("/health").json()["status"] == "ok"
    assert transcribe(client, clip, language="english").status_code == 200


def test_unknown_option_fails_start(stt_path):
    with pytest.raises(RuntimeError, match="bogus_option"):
        with run_worker("stt", stt_path, options={"bogus_option": 1}, timeout=60):
            pass


# --- audio_codec in-process (no MLX) ---------------------------------------------------------

def test_decode_without_ffmpeg_resamples_wav_and_refuses_others():
    audio = decode_audio(make_wav(seconds=1.0), None)
    assert audio.dtype == np.float32
    assert abs(audio.size - 16000) <= 1
    assert 0.2 < float(np.abs(audio).max()) <= 1.0
    with pytest.raises(AudioError, match="ffmpeg"):
        decode_audio(b"ID3\x04\x00\x00\x00\x00\x00\x00" + b"\xff\xfb" + b"\x00" * 100, None)
    assert sniff_container(b"fLaC\x00\x00") == "flac"
    assert sniff_container(b"#EXTM3U\nfile:///etc/passwd\n") is None  # playlists never reach ffmpeg
