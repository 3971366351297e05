"""Per-kind worker options (the ``options:`` mapping of a model in models.yaml).

Each worker kind accepts a fixed set of options; this table is the one source for the router's
validation at start, for the workers' own defaults and for docs/configuration.md. It is plain
Python with no MLX import, so the router may read it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Option:
    name: str
    type: type | tuple[type, ...]
    default: Any
    doc: str


def _opts(*options: Option) -> dict[str, Option]:
    return {o.name: o for o in options}


_GENERATION = (
    Option("max_tokens", int, 512, "Default and upper bound of tokens generated per request."),
    Option("temperature", (int, float), 0.0, "Default sampling temperature."),
    Option("top_p", (int, float), 1.0, "Default nucleus sampling top-p."),
)

OPTIONS: dict[str, dict[str, Option]] = {
    "text": _opts(
        *_GENERATION,
        Option("top_k", int, 0, "Default top-k sampling (0 disables it)."),
        Option("min_p", (int, float), 0.0, "Default min-p sampling (0 disables it)."),
        Option("chat_template", str, "", "A chat template that replaces the tokenizer's."),
        Option("chat_template_args", dict, {}, "Arguments for apply_chat_template, e.g. {enable_thinking: false}."),
        Option("decode_concurrency", int, 32, "Requests decoded together in one batch."),
        Option("prompt_concurrency", int, 8, "Prompts processed together in one batch."),
        Option("prefill_step_size", int, 2048, "Prompt tokens processed per step."),
        Option("prompt_cache_size", int, 10, "Distinct KV caches kept for prompt reuse."),
        Option("kv_bits", int, None, "Quantise the KV cache to this many bits (disables batching)."),
        Option("trust_remote_code", bool, False, "Let the tokenizer run code from the model repository."),
    ),
    "vision": _opts(*_GENERATION),
    "embedding": _opts(),
    "tts": _opts(),
    "stt": _opts(),
}


def check_options(kind: str, options: dict[str, Any]) -> list[str]:
    """Problems with a model's options, one message each (empty when they are fine)."""
    table = OPTIONS.get(kind, {})
    problems = []
    for name, value in options.items():
        option = table.get(name)
        if option is None:
            known = ", ".join(table) or "none"
            problems.append(f"unknown option {name!r} for a {kind} model; known options: {known}")
            continue
        types = option.type if isinstance(option.type, tuple) else (option.type,)
        if value is not None and (not isinstance(value, types) or (isinstance(value, bool) and bool not in types)):
            names = " or ".join(t.__name__ for t in types)
            problems.append(f"option {name!r} expects {names}, got {type(value).__name__} {value!r}")
    return problems


def defaults(kind: str) -> dict[str, Any]:
    return {name: o.default for name, o in OPTIONS.get(kind, {}).items()}
