"""Per-kind worker options: the ``options:`` mapping of a model in models.yaml.

One table per worker kind, ``{name: (type or types, default, description)}``. It is the single
source for the workers' defaults, for the router's validation of models.yaml at start (an unknown
option or a wrong type stops the start) and for docs/configuration.md. Plain Python with no
imports beyond typing, so the router may read it without touching MLX.
"""

from __future__ import annotations

from typing import Any

Table = dict[str, tuple[Any, Any, str]]

TEXT: Table = {
    "max_tokens": (int, 512, "Tokens generated when a request sets no max_tokens; when set here it also caps requests."),
    "temperature": ((int, float), 0.0, "Default sampling temperature."),
    "top_p": ((int, float), 1.0, "Default nucleus sampling top-p."),
    "top_k": (int, 0, "Default top-k sampling (0 disables it)."),
    "min_p": ((int, float), 0.0, "Default min-p sampling (0 disables it)."),
    "chat_template": (str, "", "A Jinja chat template that replaces the tokenizer's."),
    "chat_template_args": (dict, {}, "Arguments for apply_chat_template, e.g. {enable_thinking: false}."),
    "decode_concurrency": (int, 32, "Requests decoded together in one batch."),
    "prompt_concurrency": (int, 8, "Prompts processed together in one batch."),
    "prefill_step_size": (int, 2048, "Prompt tokens processed per step."),
    "prompt_cache_size": (int, 10, "Distinct KV caches kept for prompt reuse."),
    "prompt_cache_bytes": (int, None, "Upper bound in bytes of the prompt KV caches (none by default)."),
    "kv_bits": (int, None, "Quantise the KV cache to this many bits (disables batching)."),
    "kv_group_size": (int, 64, "Group size of the KV cache quantisation."),
    "quantized_kv_start": (int, 5000, "Token position where KV cache quantisation starts."),
    "trust_remote_code": (bool, False, "Let the tokenizer run code from the model repository."),
    "adapter_path": (str, None, "A LoRA adapter directory loaded with the model."),
    "draft_model": (str, None, "A draft model directory for speculative decoding (disables batching)."),
    "num_draft_tokens": (int, 3, "Tokens drafted per step with draft_model."),
}


VISION: Table = {
    "max_tokens": (int, 512, "max_tokens when a request sets neither max_tokens nor max_completion_tokens"),
    "temperature": (float, 0.0, "sampling temperature used when a request gives none"),
    "max_images": (int, 10, "most images accepted in one request"),
    "max_image_bytes": (int, 20 * 1024 * 1024, "largest accepted image file, in bytes (decoded or fetched)"),
    "max_image_pixels": (int, 50_000_000, "largest accepted image area (width x height) before resizing"),
    "fetch_remote_images": (bool, True, "fetch http(s) image URLs (false: refuse them with a 400)"),
    "image_fetch_timeout": (float, 10.0, "seconds allowed for fetching one http(s) image, in total"),
    "max_request_bytes": (int, 64 * 1024 * 1024, "largest accepted request body"),
    "min_pixels": (int, 0, "image processor's minimum image area in pixels (0: the model's own setting)"),
    "max_pixels": (int, 0, "image processor's maximum image area in pixels (0: the model's own setting)"),
    "max_num_seqs": (int, 0, "most sequences decoded together in one batch (0: unbounded)"),
    "prefill_step_size": (int, 2048, "prompt tokens processed per prefill step"),
    "vision_cache_size": (int, 20, "number of encoded images kept for reuse across requests"),
}


EMBEDDING: Table = {
    "pooling": (str, "auto", "auto | mean | cls | last | pooler | model (see the module docstring)"),
    "normalize": (bool, True, "L2-normalise each embedding (and re-normalise after `dimensions`)"),
    "max_batch_size": (int, 32, "most sequences in one forward pass; 1 disables batching"),
    "batch_wait_ms": (float, 3.0, "how long the batcher waits after the first sequence for more"),
    "max_batch_tokens": (int, 16384, "most padded tokens (rows x longest) in one forward pass"),
    "max_inputs": (int, 2048, "most inputs in one request (400 beyond)"),
    "max_tokens_per_input": (int, None, "most tokens per input, special tokens included (400 beyond); "
                                        "default: the model's max_position_embeddings / tokenizer limit"),
}


TTS: Table = {
    "max_tokens": (int, 300, "most audio tokens generated per sentence (Soprano: 64 ms of audio each); "
                             "bounds models that never emit their stop token"),
    "max_input_chars": (int, 4096, "longest accepted input text, in characters (OpenAI's limit is 4096)"),
    "max_audio_seconds": (float, 600.0, "most audio returned by one request (checked between input lines)"),
    "temperature": (float, 0.3, "sampling temperature of the speech-token model"),
    "top_p": (float, 0.95, "nucleus sampling top-p of the speech-token model"),
    "voice": (str, None, "voice used when a request names none (for models that have voices)"),
    "max_request_bytes": (int, 1024 * 1024, "largest accepted request body"),
}


STT: Table = {
    "max_upload_bytes": (int, 25 * 1024 * 1024, "largest accepted audio file (OpenAI's limit is 25 MB); "
                                                "larger uploads get a 413"),
    "max_audio_seconds": (float, 1800.0, "longest accepted audio, after decoding"),
    "sample_len": (int, 64, "most tokens decoded per 30-second window (bounds a model that never stops)"),
    "fp16": (bool, None, "compute in float16 (default: on a GPU only; float32 is faster on CPU)"),
    "language": (str, None, "language assumed when a request gives none (default: detect it; "
                            "English-only models always use English)"),
    "decode_timeout": (float, 120.0, "seconds allowed to ffmpeg for decoding one upload"),
}

RERANK: Table = {
    "instruction": (str, "Given a web search query, retrieve relevant passages that answer the query",
                    "the <Instruct> line of the prompt when a request sends no `instruction`"),
    "max_documents": (int, 1000, "most documents in one request (400 beyond)"),
    "max_tokens_per_document": (int, None, "most tokens per document (400 beyond, or cut with `truncate`); "
                                           "default: 4096, or the model's max_position_embeddings if smaller"),
    "truncate": (bool, False, "cut documents longer than max_tokens_per_document instead of answering 400 "
                              "(a request's `truncate` field overrides it)"),
    "batch_size": (int, 16, "most query-document pairs in one forward pass; 1 disables batching"),
    "max_batch_tokens": (int, 16384, "most padded tokens (pairs x longest) in one forward pass"),
    "yes_token": (str, "yes", "the answer token whose probability is the relevance score"),
    "no_token": (str, "no", "the other answer token (score = softmax over the yes and no logits)"),
}

OPTIONS: dict[str, Table] = {"text": TEXT, "vision": VISION, "embedding": EMBEDDING, "tts": TTS, "stt": STT,
                             "rerank": RERANK}


def check_options(kind: str, options: dict[str, Any]) -> list[str]:
    """Problems with a model's options, one message each (empty when they are fine)."""
    table = OPTIONS.get(kind, {})
    problems = []
    for name, value in options.items():
        if name not in table:
            known = ", ".join(table) or "none"
            article = "an" if kind[0] in "aeiou" else "a"
            problems.append(f"unknown option {name!r} for {article} {kind} model; known options: {known}")
            continue
        expected = table[name][0]
        types = expected if isinstance(expected, tuple) else (expected,)
        if float in types and int not in types:
            types = (*types, int)  # 10 is a fine value for a float option
        if value is None or (isinstance(value, bool) and bool not in types):
            ok = value is None
        else:
            ok = isinstance(value, types)
        if not ok:
            names = " or ".join(t.__name__ for t in types)
            problems.append(f"option {name!r} expects {names}, got {type(value).__name__} {value!r}")
    return problems


def defaults(kind: str) -> dict[str, Any]:
    return {name: default for name, (_type, default, _doc) in OPTIONS.get(kind, {}).items()}


def resolve(kind: str, raw: dict[str, Any], *, at_least: dict[str, float] | None = None,
            positive: tuple[str, ...] = ()) -> dict[str, Any]:
    """A worker's options with defaults filled in; ValueError names an unknown key, a wrong type
    or a value out of range (``at_least``: inclusive minimums; ``positive``: must be above 0).

    A default of None means "unset" and is accepted as a value too.
    """
    problems = check_options(kind, raw)
    if problems:
        raise ValueError(problems[0])
    resolved: dict[str, Any] = {}
    for name, (expected, default, _doc) in OPTIONS[kind].items():
        value = raw.get(name, default)
        if expected is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        resolved[name] = value
    for name, low in (at_least or {}).items():
        if resolved[name] is not None and resolved[name] < low:
            raise ValueError(f"option {name!r} of a {kind} model must be at least {low:g}, got {resolved[name]!r}")
    for name in positive:
        if resolved[name] is not None and resolved[name] <= 0:
            raise ValueError(f"option {name!r} of a {kind} model must be above 0, got {resolved[name]!r}")
    return resolved
