"""Audio encode/decode helpers shared by the ``tts`` and ``stt`` workers.

* Encoding (TTS): WAV and raw PCM are written in-process (stdlib ``wave`` + numpy); MP3,
  FLAC, Opus and AAC go through the ``ffmpeg`` CLI, fed raw samples on stdin.
* Decoding (STT): uploads go to ``ffmpeg`` on stdin (never a path the client chose), with the
  container sniffed from its magic bytes and forced with ``-f`` so that ffmpeg never probes
  playlist or concat demuxers that could open other files or URLs. Without ffmpeg, only WAV
  is decoded (stdlib ``wave``).

Nothing here imports MLX; numpy is imported at module level, scipy lazily.
"""

from __future__ import annotations

import io
import os
import shutil
import subprocess
import tempfile
import wave
from dataclasses import dataclass

import numpy as np

from mlx_serve_workers.options import OPTIONS, resolve


class AudioError(ValueError):
    """Client-side audio problem (undecodable, unsupported, too long): answer 400 with the message."""


def find_ffmpeg() -> str | None:
    """Path of the ffmpeg CLI, or None when it is not installed."""
    return shutil.which("ffmpeg")


def ffmpeg_encoders(ffmpeg: str | None) -> set[str]:
    """Names of the audio encoders this ffmpeg build has (empty when there is no ffmpeg)."""
    if ffmpeg is None:
        return set()
    try:
        proc = subprocess.run([ffmpeg, "-hide_banner", "-nostdin", "-encoders"], capture_output=True,
                              text=True, timeout=30, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return set()
    names: set[str] = set()
    for line in proc.stdout.splitlines():
        # " A....D libmp3lame    libmp3lame MP3 ..." (flags column, then the name)
        parts = line.split()
        if len(parts) >= 2 and len(parts[0]) == 6 and parts[0].startswith("A"):
            names.add(parts[1])
    return names


# ---------------------------------------------------------------------------------------------
# Encoding (text-to-speech output)


@dataclass(frozen=True)
class OutputFormat:
    """How to produce one OpenAI ``response_format``."""

    content_type: str
    encoders: tuple[str, ...] = ()  # ffmpeg encoders, first available wins; () = in-process
    muxer: str = ""
    sample_rates: tuple[int, ...] = ()  # rates the encoder accepts; () = any
    extra_args: tuple[str, ...] = ()


# OpenAI's formats. opus is Ogg/Opus, aac is ADTS (streamable, no seeking back), as OpenAI sends.
OUTPUT_FORMATS: dict[str, OutputFormat] = {
    "wav": OutputFormat("audio/wav"),
    "pcm": OutputFormat("audio/pcm"),
    "mp3": OutputFormat("audio/mpeg", ("libmp3lame", "libshine"), "mp3", extra_args=("-b:a", "128k")),
    "flac": OutputFormat("audio/flac", ("flac",), "flac"),
    "opus": OutputFormat("audio/opus", ("libopus",), "ogg", (48000, 24000, 16000, 12000, 8000),
                         ("-b:a", "64k")),
    "aac": OutputFormat("audio/aac", ("aac", "libfdk_aac"), "adts", extra_args=("-b:a", "128k")),
}
PCM_SAMPLE_RATE = 24000  # OpenAI's pcm is 24 kHz, 16-bit signed little-endian, mono


def missing_encoder(fmt: str, ffmpeg: str | None, encoders: set[str]) -> str | None:
    """Why ``fmt`` cannot be produced here (a message naming what is missing), or None."""
    spec = OUTPUT_FORMATS[fmt]
    if not spec.encoders:
        return None
    if ffmpeg is None:
        return (f"response_format '{fmt}' needs the ffmpeg CLI, which is not installed on the server; "
                "use 'wav' or 'pcm', or install ffmpeg")
    if not any(name in encoders for name in spec.encoders):
        return (f"response_format '{fmt}' needs the ffmpeg encoder {' or '.join(spec.encoders)}, which "
                "this ffmpeg build lacks; use 'wav' or 'pcm'")
    return None


def to_int16(samples: np.ndarray) -> np.ndarray:
    """Float samples in [-1, 1] to int16, clipping (random-weight models overshoot)."""
    clipped = np.clip(np.nan_to_num(np.asarray(samples, dtype=np.float32)), -1.0, 1.0)
    return (clipped * 32767.0).astype("<i2")


def encode_wav(samples: np.ndarray, sample_rate: int) -> bytes:
    """Mono 16-bit PCM WAV, in-process."""
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(int(sample_rate))
        w.writeframes(to_int16(samples).tobytes())
    return buf.getvalue()


def resample(samples: np.ndarray, from_rate: int, to_rate: int) -> np.ndarray:
    """Resample mono float32 audio: scipy's polyphase filter when available, else linear."""
    samples = np.asarray(samples, dtype=np.float32)
    if from_rate == to_rate or samples.size == 0:
        return samples
    try:
        from math import gcd

        from scipy.signal import resample_poly
    except ImportError:
        n_out = int(round(samples.size * to_rate / from_rate))
        positions = np.arange(n_out, dtype=np.float64) * (from_rate / to_rate)
        return np.interp(positions, np.arange(samples.size), samples).astype(np.float32)
    g = gcd(int(from_rate), int(to_rate))
    return resample_poly(samples, to_rate // g, from_rate // g).astype(np.float32)


def encode_audio(samples: np.ndarray, sample_rate: int, fmt: str, ffmpeg: str | None,
                 encoders: set[str], atempo: float = 1.0, timeout: float = 120.0) -> bytes:
    """Encode mono float samples as OpenAI ``response_format`` ``fmt``.

    ``atempo`` != 1 changes the tempo without changing the pitch (ffmpeg's atempo filter),
    for models that have no speed control of their own; it needs ffmpeg whatever ``fmt`` is.
    Raises AudioError when the format cannot be produced here.
    """
    spec = OUTPUT_FORMATS[fmt]
    if atempo == 1.0 and not spec.encoders:
        if fmt == "wav":
            return encode_wav(samples, sample_rate)
        return to_int16(resample(samples, sample_rate, PCM_SAMPLE_RATE)).tobytes()
    if atempo != 1.0 and ffmpeg is None:
        raise AudioError("speed other than 1.0 needs the ffmpeg CLI for this model, which is not installed")
    problem = missing_encoder(fmt, ffmpeg, encoders)
    if problem:
        raise AudioError(problem)
    assert ffmpeg is not None
    cmd = [ffmpeg, "-hide_banner", "-nostdin", "-loglevel", "error",
           "-f", "s16le", "-ar", str(int(sample_rate)), "-ac", "1", "-i", "pipe:0"]
    if atempo != 1.0:
        cmd += ["-filter:a", _atempo_chain(atempo)]
    if fmt == "wav":
        cmd += ["-c:a", "pcm_s16le", "-f", "wav", "-bitexact"]
    elif fmt == "pcm":
        cmd += ["-c:a", "pcm_s16le", "-ar", str(PCM_SAMPLE_RATE), "-f", "s16le"]
    else:
        encoder = next(name for name in spec.encoders if name in encoders)
        cmd += ["-c:a", encoder, *spec.extra_args]
        if spec.sample_rates and int(sample_rate) not in spec.sample_rates:
            cmd += ["-ar", str(spec.sample_rates[0])]
        cmd += ["-f", spec.muxer]
    cmd.append("pipe:1")
    out = _run_ffmpeg(cmd, to_int16(samples).tobytes(), timeout)
    if fmt == "wav":
        out = _fix_streamed_wav_sizes(out)
    return out


def _atempo_chain(speed: float) -> str:
    # One atempo instance takes 0.5..100 (ffmpeg 5); chain halves for slower speeds.
    parts: list[str] = []
    while speed < 0.5:
        parts.append("atempo=0.5")
        speed /= 0.5
    parts.append(f"atempo={speed:.6f}")
    return ",".join(parts)


def _fix_streamed_wav_sizes(data: bytes) -> bytes:
    # ffmpeg cannot seek back on a pipe, so the RIFF and data sizes are left at 0xFFFFFFFF
    # or 0; patch them so that strict readers (stdlib wave) accept the file.
    if len(data) < 44 or data[:4] != b"RIFF" or data[8:12] != b"WAVE":
        return data
    buf = bytearray(data)
    buf[4:8] = (len(buf) - 8).to_bytes(4, "little")
    pos = 12
    while pos + 8 <= len(buf):
        chunk_id = bytes(buf[pos:pos + 4])
        size = int.from_bytes(buf[pos + 4:pos + 8], "little")
        if chunk_id == b"data":
            buf[pos + 4:pos + 8] = (len(buf) - pos - 8).to_bytes(4, "little")
            break
        pos += 8 + size + (size & 1)
    return bytes(buf)


def _run_ffmpeg(cmd: list[str], stdin: bytes, timeout: float) -> bytes:
    try:
        proc = subprocess.run(cmd, input=stdin, capture_output=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired as exc:
        raise AudioError(f"ffmpeg took longer than {timeout:.0f} s") from exc
    if proc.returncode != 0:
        detail = proc.stderr.decode("utf-8", "replace").strip().splitlines()
        raise AudioError("ffmpeg failed: " + (detail[-1] if detail else f"exit status {proc.returncode}"))
    return proc.stdout


# ---------------------------------------------------------------------------------------------
# Decoding (speech-to-text input)

# container name -> the ffmpeg demuxer forced with -f
_DEMUXERS = {"wav": "wav", "mp3": "mp3", "aac": "aac", "flac": "flac", "ogg": "ogg", "mp4": "mov",
             "webm": "matroska", "aiff": "aiff", "caf": "caf"}
# ISO-BMFF (mp4/m4a/mov) keeps its index ("moov") anywhere, often at the end: it needs a
# seekable input, so it goes through a private temporary file instead of the pipe.
_NEEDS_SEEK = {"mp4", "caf"}


def sniff_container(data: bytes) -> str | None:
    """The audio container of ``data`` from its magic bytes, or None when it is not one we know."""
    head = data[:16]
    if head[:4] in (b"RIFF", b"RF64") and head[8:12] == b"WAVE":
        return "wav"
    if head[:4] == b"fLaC":
        return "flac"
    if head[:4] == b"OggS":
        return "ogg"
    if head[:3] == b"ID3":
        return _after_id3(data)
    if head[4:8] == b"ftyp":
        return "mp4"
    if head[:4] == b"\x1a\x45\xdf\xa3":
        return "webm"
    if head[:4] == b"FORM" and head[8:12] in (b"AIFF", b"AIFC"):
        return "aiff"
    if head[:4] == b"caff":
        return "caf"
    if len(head) >= 2 and head[0] == 0xFF and head[1] & 0xE0 == 0xE0:
        # MPEG audio sync word; ADTS AAC has the same sync with layer bits 00
        return "aac" if head[1] & 0x06 == 0 else "mp3"
    return None


def _after_id3(data: bytes) -> str:
    # An ID3v2 tag can precede MP3, AAC (ADTS) or FLAC; look past it.
    if len(data) >= 10:
        size = ((data[6] & 0x7F) << 21) | ((data[7] & 0x7F) << 14) | ((data[8] & 0x7F) << 7) | (data[9] & 0x7F)
        inner = sniff_container(data[10 + size:10 + size + 16]) if 10 + size < len(data) else None
        if inner in ("aac", "flac"):
            return inner
    return "mp3"


def decode_audio(data: bytes, ffmpeg: str | None, sample_rate: int = 16000, max_seconds: float = 1800.0,
                 timeout: float = 120.0) -> np.ndarray:
    """Decode an uploaded audio file to mono float32 at ``sample_rate``.

    Raises AudioError (for a 400) when the bytes are not audio we can decode, or when the
    audio is longer than ``max_seconds``.
    """
    if not data:
        raise AudioError("the uploaded file is empty")
    container = sniff_container(data)
    if container is None:
        raise AudioError("the uploaded file is not a recognised audio format "
                         "(supported: wav, mp3, flac, ogg/opus, m4a/mp4, webm, aac, aiff)")
    if ffmpeg is None:
        if container != "wav":
            raise AudioError(f"decoding {container} needs the ffmpeg CLI, which is not installed on the "
                             "server; upload a PCM WAV file or install ffmpeg")
        samples, rate = decode_wav(data)
        samples = resample(samples, rate, sample_rate)
    else:
        samples = _ffmpeg_decode(data, container, ffmpeg, sample_rate, max_seconds, timeout)
    if samples.size == 0:
        raise AudioError("the uploaded file contains no audio samples")
    if samples.size > max_seconds * sample_rate:
        raise AudioError(f"the audio is longer than the {max_seconds:g} s this model accepts")
    return samples


def decode_wav(data: bytes) -> tuple[np.ndarray, int]:
    """PCM WAV (8/16/24/32-bit integer) -> (mono float32 in [-1, 1], sample rate), stdlib only."""
    try:
        with wave.open(io.BytesIO(data), "rb") as w:
            channels, width, rate = w.getnchannels(), w.getsampwidth(), w.getframerate()
            frames = w.readframes(w.getnframes())
    except (wave.Error, EOFError) as exc:
        raise AudioError(f"cannot decode the WAV file without ffmpeg (only integer PCM WAV is supported "
                         f"then): {exc}") from exc
    if rate <= 0 or channels <= 0:
        raise AudioError("cannot decode the WAV file: bad header")
    frames = frames[: len(frames) - len(frames) % (width * channels)]
    if width == 1:
        pcm = (np.frombuffer(frames, np.uint8).astype(np.float32) - 128.0) / 128.0
    elif width == 2:
        pcm = np.frombuffer(frames, "<i2").astype(np.float32) / 32768.0
    elif width == 3:
        raw = np.frombuffer(frames, np.uint8).reshape(-1, 3)
        ints = (raw[:, 0].astype(np.int32) | (raw[:, 1].astype(np.int32) << 8)
                | (raw[:, 2].astype(np.int32) << 16))
        pcm = (np.where(ints >= 1 << 23, ints - (1 << 24), ints)).astype(np.float32) / float(1 << 23)
    elif width == 4:
        pcm = np.frombuffer(frames, "<i4").astype(np.float32) / float(1 << 31)
    else:
        raise AudioError(f"cannot decode the WAV file: {width * 8}-bit samples")
    return pcm.reshape(-1, channels).mean(axis=1).astype(np.float32), rate


def _ffmpeg_decode(data: bytes, container: str, ffmpeg: str, sample_rate: int, max_seconds: float,
                   timeout: float) -> np.ndarray:
    # -t caps the decoded length just past the limit so that a tiny file that expands to hours
    # of audio cannot fill memory; decode_audio then refuses it.
    tail = ["-vn", "-sn", "-dn", "-t", f"{max_seconds + 1:.3f}", "-ac", "1", "-ar", str(sample_rate),
            "-f", "f32le", "-c:a", "pcm_f32le", "pipe:1"]
    base = [ffmpeg, "-hide_banner", "-nostdin", "-loglevel", "error", "-threads", "1"]
    demuxer = _DEMUXERS[container]
    if container in _NEEDS_SEEK:
        with tempfile.TemporaryDirectory(prefix="mlx-serve-stt-") as tmp:
            path = os.path.join(tmp, "upload")
            with open(path, "wb") as f:
                f.write(data)
            cmd = [*base, "-protocol_whitelist", "file", "-f", demuxer, "-i", path, *tail]
            out = _run_decoder(cmd, b"", timeout)
    else:
        cmd = [*base, "-protocol_whitelist", "pipe", "-f", demuxer, "-i", "pipe:0", *tail]
        out = _run_decoder(cmd, data, timeout)
    usable = len(out) - len(out) % 4
    return np.frombuffer(out[:usable], "<f4").astype(np.float32)


def _run_decoder(cmd: list[str], stdin: bytes, timeout: float) -> bytes:
    try:
        return _run_ffmpeg(cmd, stdin, timeout)
    except AudioError as exc:
        raise AudioError(f"cannot decode the uploaded audio ({exc})") from exc


# ---------------------------------------------------------------------------------------------
# Worker plumbing shared by the two audio workers (options, bounded bodies, error answers)


class ClientError(Exception):
    """A request problem answered with an OpenAI error body."""

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code


def resolve_options(kind: str, raw: dict) -> dict:
    """Options with defaults filled in; an unknown key, a wrong type or a number <= 0 raises ValueError."""
    numbers = tuple(k for k, (t, _d, _doc) in OPTIONS[kind].items() if t in (int, float))
    return resolve(kind, raw, positive=numbers)


async def read_body(receive, limit: int, drain_limit: int = 256 * 1024 * 1024) -> bytes:
    """The whole request body, or ClientError 413 once it passes ``limit`` bytes.

    The rest of an oversized body is read and dropped (up to ``drain_limit``) so that the
    client, which is still sending, reads the 413 instead of a reset connection.
    """
    chunks: list[bytes] = []
    size = 0
    too_big = False
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientError(400, "the client disconnected before the request body was complete")
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            too_big = True
            chunks = []
        elif not too_big:
            chunks.append(chunk)
        if not message.get("more_body", False) or size > limit + drain_limit:
            break
    if too_big:
        raise ClientError(413, f"the request body is larger than the {limit} bytes this model accepts",
                          code="request_too_large")
    return b"".join(chunks)


def error_response(exc: ClientError):
    """Starlette JSONResponse with the OpenAI error body for ``exc``."""
    from starlette.responses import JSONResponse

    from mlx_serve_workers.common import error_body

    return JSONResponse(error_body(exc.message, "invalid_request_error", exc.param, exc.code),
                        status_code=exc.status)


def http_exception_handlers() -> dict:
    """Starlette exception handlers answering 404/405 and ClientError with OpenAI error bodies."""
    from starlette.exceptions import HTTPException
    from starlette.responses import JSONResponse

    from mlx_serve_workers.common import error_body

    async def on_http(request, exc: HTTPException):
        return JSONResponse(error_body(str(exc.detail), "invalid_request_error", None, None),
                            status_code=exc.status_code)

    async def on_client(request, exc: ClientError):
        return error_response(exc)

    async def on_crash(request, exc: Exception):
        return JSONResponse(error_body(f"internal error: {type(exc).__name__}: {exc}", "server_error"),
                            status_code=500)

    return {HTTPException: on_http, ClientError: on_client, Exception: on_crash}
