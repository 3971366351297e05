"""Speech-to-text worker: OpenAI ``POST /v1/audio/transcriptions`` (and ``/translations``) with mlx-whisper.

The Whisper model is loaded once at start with ``mlx_whisper.load_models.load_model`` and
installed in ``mlx_whisper.transcribe.ModelHolder`` under the model directory, so that
``mlx_whisper.transcribe`` reuses it and never loads anything else (a request's ``model``
field is ignored). Inference runs on one dedicated thread, off the event loop.

Uploads (multipart ``file``) are decoded to 16 kHz mono float32 by the ffmpeg CLI reading
stdin, with the container sniffed from its magic bytes and forced (see ``audio_codec``);
without ffmpeg only WAV is accepted. Over ``max_upload_bytes`` -> **413**; undecodable or not
audio -> 400.

Decoding is bounded so that a bad or random model cannot loop: one temperature (no fallback
ladder), no compression-ratio / log-prob / no-speech thresholds, no conditioning on previous
text, and at most ``sample_len`` tokens per 30-second window. Compute is float32 on CPU
(several times faster than float16 there) and float16 on a GPU, unless ``fp16`` says otherwise.

Response formats: json (default) ``{"text", "usage"}``, text, srt, vtt, verbose_json
(``task, language, duration, text, segments`` and ``words`` with
``timestamp_granularities[]=word``). Subtitles come from mlx-whisper's own writers.
"""

from __future__ import annotations

import asyncio
import io
import math
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from mlx_serve_workers.audio_codec import (
    AudioError,
    ClientError,
    decode_audio,
    error_response,
    find_ffmpeg,
    http_exception_handlers,
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


TRANSCRIBE_PATHS = ("/v1/audio/transcriptions", "/audio/transcriptions")
TRANSLATE_PATHS = ("/v1/audio/translations", "/audio/translations")
RESPONSE_FORMATS = ("json", "text", "srt", "vtt", "verbose_json")
SAMPLE_RATE = 16000
MAX_PROMPT_CHARS = 4096
# Multipart overhead allowed on top of the file itself (boundaries, other fields).
FORM_SLACK_BYTES = 1024 * 1024


class Transcriber:
    """The loaded Whisper model and the one thread that runs it."""

    def __init__(self, model_key: str, model: Any, options: dict[str, Any], fp16: bool,
                 executor: ThreadPoolExecutor) -> None:
        self.model_key = model_key
        self.model = model
        self.options = options
        self.fp16 = fp16
        self.multilingual = bool(model.is_multilingual)
        self.executor = executor
        self.requests = 0
        self.audio_s = 0.0
        self.busy_s = 0.0

    def transcribe(self, audio: Any, *, language: str | None, task: str, prompt: str | None,
                   temperature: float, words: bool) -> dict[str, Any]:
        """Run mlx-whisper's transcribe with bounded decoding (call on ``self.executor``)."""
        import mlx.core as mx
        import mlx_whisper

        started = time.monotonic()
        try:
            result = mlx_whisper.transcribe(
                audio, path_or_hf_repo=self.model_key, verbose=None,
                temperature=temperature, compression_ratio_threshold=None, logprob_threshold=None,
                no_speech_threshold=None, condition_on_previous_text=False,
                initial_prompt=prompt or None, word_timestamps=words,
                language=language, task=task, fp16=self.fp16, sample_len=self.options["sample_len"],
            )
        finally:
            mx.clear_cache()
        self.requests += 1
        self.audio_s += len(audio) / SAMPLE_RATE
        self.busy_s += time.monotonic() - started
        return result


def load(args: WorkerArgs, options: dict[str, Any], timings: dict[str, float]) -> Transcriber:
    """Import mlx-whisper, load the model into its ModelHolder and warm it up."""
    t0 = time.monotonic()
    import mlx.core as mx
    from mlx_whisper.load_models import load_model
    from mlx_whisper.transcribe import ModelHolder

    timings["import_s"] = round(time.monotonic() - t0, 3)
    fp16 = options["fp16"]
    if fp16 is None:
        fp16 = mx.default_device() == mx.gpu
    dtype = mx.float16 if fp16 else mx.float32

    def load_on_model_thread() -> Any:
        model = load_model(args.model_path, dtype=dtype)
        # Checkpoints store their own dtype (mlx-community whisper is float16); the decoder
        # insists that activations match the compute dtype, so cast every floating parameter.
        model.set_dtype(dtype)
        mx.eval(model.parameters())
        return model

    # MLX streams are per thread and the model holds lazy arrays (positional embeddings)
    # tied to the thread that built it: build, warm up and run it all on one thread.
    executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="stt-model")
    t0 = time.monotonic()
    model = executor.submit(load_on_model_thread).result()
    # transcribe() looks the model up by path: pin ours there so it never loads another.
    ModelHolder.model, ModelHolder.model_path = model, args.model_path
    timings["load_s"] = round(time.monotonic() - t0, 3)
    engine = Transcriber(args.model_path, model, options, fp16, executor)
    if options["language"] is not None:
        options["language"] = normalise_language(options["language"], engine.multilingual)
    t0 = time.monotonic()
    import numpy as np

    silence = np.zeros(SAMPLE_RATE, dtype=np.float32)
    engine.executor.submit(engine.transcribe, silence, language=options["language"] or "en",
                           task="transcribe", prompt=None, temperature=0.0, words=False).result()
    engine.requests, engine.audio_s, engine.busy_s = 0, 0.0, 0.0
    timings["warmup_s"] = round(time.monotonic() - t0, 3)
    return engine


def normalise_language(value: str, multilingual: bool) -> str:
    """An ISO code or English name -> Whisper's language code; ValueError when unknown."""
    from mlx_whisper.tokenizer import LANGUAGES, TO_LANGUAGE_CODE

    code = value.strip().lower()
    if code not in LANGUAGES:
        code = TO_LANGUAGE_CODE.get(code, "")
    if not code:
        raise ValueError(f"unsupported language {value!r}; use an ISO-639-1 code such as 'en' or 'fr'")
    if not multilingual and code != "en":
        raise ValueError(f"this model is English-only; language {value!r} is not available")
    return code


class STTApp:
    """Starlette app: /health and the OpenAI transcription/translation endpoints."""

    def __init__(self, engine: Transcriber, name: str, options: dict[str, Any]) -> None:
        from starlette.applications import Starlette
        from starlette.routing import Route

        self.engine = engine
        self.name = name
        self.options = options
        self.ffmpeg = find_ffmpeg()
        routes = [Route("/health", self.health, methods=["GET"])]
        routes += [Route(p, self.transcriptions, methods=["POST"]) for p in TRANSCRIBE_PATHS]
        routes += [Route(p, self.translations, methods=["POST"]) for p in TRANSLATE_PATHS]
        self.app = Starlette(routes=routes, exception_handlers=http_exception_handlers())

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        await self.app(scope, receive, send)

    async def health(self, request: Any) -> Any:
        from starlette.responses import JSONResponse

        e = self.engine
        return JSONResponse({
            "status": "ok", "memory": memory_report(), "model": self.name, "requests": e.requests,
            "audio_s": round(e.audio_s, 3), "busy_s": round(e.busy_s, 3),
            "multilingual": e.multilingual, "fp16": e.fp16, "ffmpeg": self.ffmpeg is not None,
        })

    async def transcriptions(self, request: Any) -> Any:
        return await self._handle(request, "transcribe")

    async def translations(self, request: Any) -> Any:
        return await self._handle(request, "translate")

    async def _handle(self, request: Any, task: str) -> Any:
        from starlette.responses import JSONResponse

        try:
            form = await self._read_form(request)
            params = self._parse(form, task)
            data = form["file"]
            audio = await asyncio.to_thread(decode_audio, data, self.ffmpeg, SAMPLE_RATE,
                                            self.options["max_audio_seconds"], self.options["decode_timeout"])
        except ClientError as exc:
            return error_response(exc)
        except AudioError as exc:
            return error_response(ClientError(400, str(exc), "file", "invalid_audio"))
        loop = asyncio.get_running_loop()
        try:
            result = await loop.run_in_executor(
                self.engine.executor,
                lambda: self.engine.transcribe(audio, task=task, **params["decode"]))
        except Exception as exc:  # noqa: BLE001 - a failed transcription must not take the worker down
            print(f"stt: transcription failed: {type(exc).__name__}: {exc}", file=sys.stderr, flush=True)
            return JSONResponse(error_body(f"transcription failed: {type(exc).__name__}: {exc}", "server_error"),
                                status_code=500)
        return render(result, params["response_format"], task, len(audio) / SAMPLE_RATE,
                      params["decode"]["words"], params["segments"])

    async def _read_form(self, request: Any) -> dict[str, Any]:
        """Parse the multipart form from a size-bounded body: {"file": bytes, field: str | [str]}."""
        from starlette.requests import Request

        content_type = request.headers.get("content-type", "")
        if not content_type.startswith("multipart/form-data"):
            raise ClientError(400, "the request must be multipart/form-data with the audio in 'file'")
        limit = self.options["max_upload_bytes"]
        try:
            body = await read_body(request.receive, limit + FORM_SLACK_BYTES)
        except ClientError as exc:
            if exc.status == 413:
                raise ClientError(413, f"the upload is larger than the {limit} bytes this model accepts "
                                       "for an audio file", "file", "file_too_large") from None
            raise
        sent = False

        async def replay() -> dict[str, Any]:
            nonlocal sent
            if sent:
                return {"type": "http.disconnect"}
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}

        try:
            form = await Request(request.scope, replay).form(max_files=1, max_fields=50)
        except Exception as exc:  # noqa: BLE001 - malformed multipart of any kind is a client error
            raise ClientError(400, f"malformed multipart form: {exc}") from exc
        fields: dict[str, Any] = {}
        try:
            for key, value in form.multi_items():
                if hasattr(value, "read"):  # an UploadFile
                    if key != "file":
                        raise ClientError(400, f"unexpected file field {key!r}; send the audio as 'file'", key)
                    fields["file"] = await value.read()
                elif key in fields and isinstance(fields[key], list):
                    fields[key].append(value)
                elif key in fields:
                    fields[key] = [fields[key], value]
                else:
                    fields[key] = value
        finally:
            await form.close()
        if "file" not in fields:
            raise ClientError(400, "'file' is required: upload the audio as a multipart file field", "file")
        if len(fields["file"]) > limit:
            raise ClientError(413, f"the audio file is {len(fields['file'])} bytes; this model accepts at "
                                   f"most {limit}", "file", "file_too_large")
        return fields

    def _parse(self, form: dict[str, Any], task: str) -> dict[str, Any]:
        """Validate the form fields other than ``file``."""

        def text_field(name: str) -> str | None:
            value = form.get(name)
            if isinstance(value, list):
                raise ClientError(400, f"'{name}' was given more than once", name)
            return value if value not in (None, "") else None

        if (text_field("stream") or "false").lower() not in ("false", "0"):
            raise ClientError(400, "streaming transcription is not supported", "stream")
        fmt = text_field("response_format") or "json"
        if fmt not in RESPONSE_FORMATS:
            raise ClientError(400, f"'response_format' must be one of {', '.join(RESPONSE_FORMATS)}",
                              "response_format")
        language = text_field("language") if task == "transcribe" else None
        if language is not None:
            try:
                language = normalise_language(language, self.engine.multilingual)
            except ValueError as exc:
                raise ClientError(400, str(exc), "language") from exc
        else:
            language = self.options["language"]
        if task == "translate" and self.engine.multilingual is False:
            language = "en"
        prompt = text_field("prompt")
        if prompt is not None and len(prompt) > MAX_PROMPT_CHARS:
            raise ClientError(400, f"'prompt' is longer than {MAX_PROMPT_CHARS} characters", "prompt")
        raw_temperature = text_field("temperature") or "0"
        try:
            temperature = float(raw_temperature)
        except ValueError:
            raise ClientError(400, "'temperature' must be a number from 0 to 1", "temperature") from None
        if not 0.0 <= temperature <= 1.0:
            raise ClientError(400, "'temperature' must be a number from 0 to 1", "temperature")
        granularities: list[str] = []
        for key in ("timestamp_granularities[]", "timestamp_granularities"):
            value = form.get(key)
            if value is not None:
                granularities += value if isinstance(value, list) else [value]
        unknown = sorted(set(granularities) - {"word", "segment"})
        if unknown:
            raise ClientError(400, f"unknown timestamp granularity {unknown[0]!r}; use 'word' or 'segment'",
                              "timestamp_granularities")
        if granularities and fmt != "verbose_json":
            raise ClientError(400, "timestamp_granularities needs response_format 'verbose_json'",
                              "timestamp_granularities")
        words = "word" in granularities
        return {
            "response_format": fmt,
            "segments": not granularities or "segment" in granularities,
            "decode": {"language": language, "prompt": prompt, "temperature": temperature, "words": words},
        }


def _num(value: Any, digits: int = 3) -> float | None:
    """A JSON-safe float (random or failing models give NaN log-probs)."""
    try:
        value = float(value)
    except (TypeError, ValueError):
        return None
    return round(value, digits) if math.isfinite(value) else None


def usage_seconds(duration: float) -> int:
    """Billed-style whole seconds, rounded up, ignoring decoder padding (mp3 adds a few ms)."""
    return max(1, math.ceil(round(duration, 1)))


def _clamp(t: float, duration: float) -> float:
    return round(min(max(float(t), 0.0), duration), 3)


def render(result: dict[str, Any], fmt: str, task: str, duration: float, words: bool,
           with_segments: bool) -> Any:
    """The OpenAI response for an mlx-whisper result in response format ``fmt``."""
    from mlx_whisper.tokenizer import LANGUAGES
    from starlette.responses import JSONResponse, PlainTextResponse, Response

    text = result.get("text", "").strip()
    segments = []
    for seg in result.get("segments", []):
        start, end = _clamp(seg["start"], duration), _clamp(seg["end"], duration)
        segments.append({**seg, "start": start, "end": max(start, end)})
    if fmt == "json":
        return JSONResponse({"text": text, "usage": {"type": "duration", "seconds": usage_seconds(duration)}})
    if fmt == "text":
        return PlainTextResponse(text + "\n" if text else "")
    if fmt in ("srt", "vtt"):
        from mlx_whisper.writers import WriteSRT, WriteVTT

        # Subtitle cues per segment (the writers switch to word cues when "words" is present
        # in the first segment, and mlx-whisper adds it to emptied segments too).
        cues = [{k: v for k, v in seg.items() if k != "words"} for seg in segments if seg["text"].strip()]
        out = io.StringIO()
        writer = WriteSRT("") if fmt == "srt" else WriteVTT("")
        writer.write_result({"segments": cues}, file=out)
        media = "text/plain; charset=utf-8" if fmt == "srt" else "text/vtt; charset=utf-8"
        return Response(out.getvalue(), media_type=media)
    language = result.get("language") or "en"
    body: dict[str, Any] = {
        "task": task,
        "language": LANGUAGES.get(language, language),
        "duration": round(duration, 3),
        "text": text,
    }
    if with_segments:
        body["segments"] = [{
            "id": seg["id"], "seek": seg["seek"], "start": seg["start"], "end": seg["end"],
            "text": seg["text"], "tokens": [int(t) for t in seg["tokens"]],
            "temperature": _num(seg.get("temperature")), "avg_logprob": _num(seg.get("avg_logprob"), 6),
            "compression_ratio": _num(seg.get("compression_ratio"), 6),
            "no_speech_prob": _num(seg.get("no_speech_prob"), 6),
        } for seg in segments]
    if words:
        body["words"] = [{"word": w["word"].strip(), "start": _clamp(w["start"], duration),
                          "end": _clamp(w["end"], duration)}
                         for seg in segments for w in seg.get("words", [])]
    body["usage"] = {"type": "duration", "seconds": usage_seconds(duration)}
    return JSONResponse(body)


def main() -> None:
    args = parse_args("stt")
    status = StatusChannel(args.status_fd)
    watch_parent()
    timings: dict[str, float] = {}
    try:
        options = resolve_options("stt", args.options)
        # mlx-whisper never needs torch; its timing module imports scipy.signal, which needs
        # the patch once torch is hidden.
        hide_torch()
        engine = load(args, options, timings)
        app = STTApp(engine, args.name, options)
    except BaseException as exc:  # noqa: BLE001 - any start failure is reported, then exit
        fail_and_exit(status, exc)
        return
    run_asgi_on_socket(app, args, status, timings)
    # A transcription still running on the model thread would hold up interpreter exit.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


if __name__ == "__main__":
    main()
