"""Text-to-speech worker: OpenAI ``POST /v1/audio/speech`` served by mlx-audio on a Unix socket.

The model is loaded with ``mlx_audio.tts.utils.load_model`` (not ``mlx_audio.server``, whose
inference thread asks for a GPU stream and hangs every request on CPU-only MLX, nor
``mlx_audio.tts.generate``, which imports sounddevice/PortAudio). ``model.generate`` runs on
one dedicated thread (a single-thread executor: requests are serialised and MLX always sees
the same thread), off the event loop. Encoding runs outside that thread.

Request (JSON): ``input`` (required), ``voice``, ``speed`` (0.25-4.0), ``response_format``
(mp3 default, wav, flac, opus, aac, pcm), ``stream_format`` ("audio" only); ``model`` and
``instructions`` are ignored. Output formats:

* wav: 16-bit mono at the model's sample rate, written in-process (stdlib ``wave``).
* pcm: raw 16-bit signed little-endian mono **resampled to 24 kHz** like OpenAI's pcm
  (scipy polyphase filter, in-process); the ``X-Sample-Rate`` header says the rate.
* mp3 / flac / opus (Ogg) / aac (ADTS): the ffmpeg CLI; when ffmpeg or its encoder is
  missing the request gets a 400 naming what is missing (checked once at start).

Speed: passed to models whose ``generate`` takes ``speed``; otherwise applied with ffmpeg's
pitch-preserving ``atempo`` filter (Soprano has no speed control), which needs ffmpeg.

Bounds: random or unlucky weights may never emit the stop token, so every sentence is capped
at ``max_tokens`` generated tokens, the input at ``max_input_chars`` and the response at
``max_audio_seconds`` of audio (checked between the text's lines).
"""

from __future__ import annotations

import asyncio
import inspect
import json
import os
import re
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from mlx_serve_workers.audio_codec import (
    OUTPUT_FORMATS,
    PCM_SAMPLE_RATE,
    AudioError,
    ClientError,
    encode_audio,
    error_response,
    ffmpeg_encoders,
    find_ffmpeg,
    http_exception_handlers,
    missing_encoder,
    read_body,
    resolve_options,
)
from mlx_serve_workers.common import (
    StatusChannel,
    WorkerArgs,
    error_body,
    fail_and_exit,
    hide_torch,
    memory_report,
    parse_args,
    run_asgi_on_socket,
    watch_parent,
)


SPEECH_PATHS = ("/v1/audio/speech", "/audio/speech")
MIN_SPEED, MAX_SPEED = 0.25, 4.0
# A voice is a name, never a path: models resolve it to files in their own directory or repo.
VOICE_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}$")
WARMUP_TEXT = "Hello."


class SpeechEngine:
    """The loaded model and the one thread that runs it."""

    def __init__(self, model: Any, options: dict[str, Any], executor: ThreadPoolExecutor) -> None:
        self.model = model
        self.options = options
        self.sample_rate = int(getattr(model, "sample_rate", 24000))
        params = inspect.signature(model.generate).parameters
        takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
        self.accepts_voice = "voice" in params
        # speed only when named: a **kwargs catch-all (Soprano) silently ignores it
        self.native_speed = "speed" in params
        self._sampling = {k: options[k] for k in ("temperature", "top_p") if k in params or takes_any}
        self.executor = executor
        self.requests = 0
        self.busy_s = 0.0

    def synthesize(self, text: str, voice: str | None, speed: float, max_tokens: int | None = None):
        """Generate audio for ``text`` (run this on ``self.executor``). Returns (samples, sample_rate)."""
        import mlx.core as mx
        import numpy as np

        started = time.monotonic()
        kwargs: dict[str, Any] = {"max_tokens": max_tokens or self.options["max_tokens"], **self._sampling}
        if voice and self.accepts_voice:
            kwargs["voice"] = voice
        if self.native_speed:
            kwargs["speed"] = speed
        limit = int(self.options["max_audio_seconds"] * self.sample_rate)
        parts: list[np.ndarray] = []
        total = 0
        rate = self.sample_rate
        results = self.model.generate(text, **kwargs)
        try:
            for result in results:
                audio = np.array(result.audio, dtype=np.float32).reshape(-1)
                rate = int(getattr(result, "sample_rate", rate) or rate)
                parts.append(audio)
                total += audio.size
                if total >= limit:
                    break
        finally:
            close = getattr(results, "close", None)
            if close is not None:
                close()
            mx.clear_cache()
        samples = np.concatenate(parts)[:limit] if parts else np.zeros(0, dtype=np.float32)
        self.requests += 1
        self.busy_s += time.monotonic() - started
        return samples, rate


class TTSApp:
    """Starlette app: /health and the OpenAI speech endpoint."""

    def __init__(self, engine: SpeechEngine, name: str, options: dict[str, Any]) -> None:
        from starlette.applications import Starlette
        from starlette.routing import Route

        self.engine = engine
        self.name = name
        self.options = options
        self.ffmpeg = find_ffmpeg()
        self.encoders = ffmpeg_encoders(self.ffmpeg)
        routes = [Route("/health", self.health, methods=["GET"])]
        routes += [Route(path, self.speech, methods=["POST"]) for path in SPEECH_PATHS]
        self.app = Starlette(routes=routes, exception_handlers=http_exception_handlers())

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        await self.app(scope, receive, send)

    def available_formats(self) -> list[str]:
        return [fmt for fmt in OUTPUT_FORMATS if missing_encoder(fmt, self.ffmpeg, self.encoders) is None]

    async def health(self, request: Any) -> Any:
        from starlette.responses import JSONResponse

        return JSONResponse({
            "status": "ok", "memory": memory_report(), "model": self.name,
            "sample_rate": self.engine.sample_rate, "requests": self.engine.requests,
            "busy_s": round(self.engine.busy_s, 3), "ffmpeg": self.ffmpeg is not None,
            "response_formats": self.available_formats(),
        })

    async def speech(self, request: Any) -> Any:
        from starlette.responses import JSONResponse, Response

        try:
            text, voice, speed, fmt = self.parse(await read_body(request.receive, self.options["max_request_bytes"]))
            atempo = 1.0 if self.engine.native_speed else speed
            problem = missing_encoder(fmt, self.ffmpeg, self.encoders)
            if problem:
                raise ClientError(400, problem, "response_format", "unsupported_response_format")
            if atempo != 1.0 and self.ffmpeg is None:
                raise ClientError(400, "speed other than 1.0 needs the ffmpeg CLI for this model, which is "
                                       "not installed on the server", "speed")
        except ClientError as exc:
            return error_response(exc)
        loop = asyncio.get_running_loop()
        try:
            samples, rate = await loop.run_in_executor(self.engine.executor, self.engine.synthesize,
                                                       text, voice, speed)
        except Exception as exc:  # noqa: BLE001 - a failed generation must not take the worker down
            print(f"tts: generation failed: {type(exc).__name__}: {exc}", file=sys.stderr, flush=True)
            return JSONResponse(error_body(f"speech generation failed: {type(exc).__name__}: {exc}",
                                           "server_error"), status_code=500)
        try:
            data = await asyncio.to_thread(encode_audio, samples, rate, fmt, self.ffmpeg, self.encoders, atempo)
        except AudioError as exc:
            return JSONResponse(error_body(str(exc), "server_error"), status_code=500)
        headers = {"X-Sample-Rate": str(PCM_SAMPLE_RATE if fmt == "pcm" else rate)}
        return Response(data, media_type=OUTPUT_FORMATS[fmt].content_type, headers=headers)

    def parse(self, body: bytes) -> tuple[str, str | None, float, str]:
        """Validate a speech request body: (input, voice, speed, response_format) or ClientError 400."""
        try:
            payload = json.loads(body)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise ClientError(400, f"the request body is not valid JSON: {exc}") from exc
        if not isinstance(payload, dict):
            raise ClientError(400, "the request body must be a JSON object")
        text = payload.get("input")
        if not isinstance(text, str) or not text.strip():
            raise ClientError(400, "'input' is required and must be a non-empty string", "input")
        if len(text) > self.options["max_input_chars"]:
            raise ClientError(400, f"'input' is {len(text)} characters long; this model accepts at most "
                                   f"{self.options['max_input_chars']}", "input", "string_above_max_length")
        voice = payload.get("voice", None)
        if isinstance(voice, dict):  # newer OpenAI clients may send {"id": "..."} for custom voices
            voice = voice.get("id")
        if voice is not None and (not isinstance(voice, str) or not VOICE_RE.match(voice)):
            raise ClientError(400, "'voice' must be a voice name (letters, digits, '_', '-', '.')", "voice")
        voice = voice or self.options["voice"]
        speed = payload.get("speed", 1.0)
        if speed is None:
            speed = 1.0
        if isinstance(speed, bool) or not isinstance(speed, (int, float)) or not MIN_SPEED <= speed <= MAX_SPEED:
            raise ClientError(400, f"'speed' must be a number from {MIN_SPEED} to {MAX_SPEED}", "speed")
        fmt = payload.get("response_format", None) or "mp3"
        if fmt not in OUTPUT_FORMATS:
            raise ClientError(400, f"'response_format' must be one of {', '.join(OUTPUT_FORMATS)}",
                              "response_format")
        stream_format = payload.get("stream_format", None)
        if stream_format not in (None, "audio"):
            raise ClientError(400, "only stream_format 'audio' is supported", "stream_format")
        return text, voice, float(speed), fmt


def load(args: WorkerArgs, options: dict[str, Any], timings: dict[str, float]) -> TTSApp:
    """Import mlx-audio, load the model and warm it up."""
    t0 = time.monotonic()
    from mlx_audio.tts.utils import load_model

    timings["import_s"] = round(time.monotonic() - t0, 3)
    # MLX streams are per thread, and models may keep lazy arrays tied to the thread that
    # built them: load, warm up and generate all on one thread.
    executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="tts-model")
    t0 = time.monotonic()
    model = executor.submit(load_model, Path(args.model_path)).result()
    timings["load_s"] = round(time.monotonic() - t0, 3)
    engine = SpeechEngine(model, options, executor)
    t0 = time.monotonic()
    # The first generate is slow (kernels, lazy init); a few tokens are enough to pay for it.
    engine.executor.submit(engine.synthesize, WARMUP_TEXT, options["voice"], 1.0,
                           min(8, options["max_tokens"])).result()
    engine.requests, engine.busy_s = 0, 0.0
    timings["warmup_s"] = round(time.monotonic() - t0, 3)
    return TTSApp(engine, args.name, options)


def main() -> None:
    args = parse_args("tts")
    status = StatusChannel(args.status_fd)
    watch_parent()
    timings: dict[str, float] = {}
    try:
        options = resolve_options("tts", args.options)
        # Soprano's tokenizer load goes through transformers, which imports torch (~200 MB more
        # RSS, ~1 s) unless hidden; mlx-audio then imports scipy.signal, which needs the patch.
        hide_torch()
        app = load(args, options, timings)
    except BaseException as exc:  # noqa: BLE001 - any start failure is reported, then exit
        fail_and_exit(status, exc)
        return
    run_asgi_on_socket(app, args, status, timings)
    # A generation still running on the model thread would hold up interpreter exit.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


if __name__ == "__main__":
    main()
