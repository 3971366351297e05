"""Tiny random-weight Qwen3 chat model for the text worker (mlx-lm), built offline.

A 2-layer, 64-wide qwen3 model with a ~480-token byte-level BPE tokenizer trained here on a
few sentences and a ChatML chat template. It loads in about 0.01 s and generates ~1000 tok/s
on one CPU core, which is what tests and a first try of the server need.

Choices that matter (see shared notes, "Tiny LM directory for mlx-lm"):
* weights are redrawn with std 0.3: mlx's default init makes greedy decoding print only newlines;
* the head is untied and its rows for the special tokens are zeroed (their logit is 0 while the
  largest random logit is positive), so greedy decoding never emits EOS and every request runs
  to ``max_tokens`` (``finish_reason: "length"``), which keeps benchmarks and tests exact;
* ``vocab_size == len(tokenizer)``: padded ids would be unknown to the detokenizer;
* the byte-level alphabet makes any text encodable and lets generation produce partial UTF-8,
  which exercises the streaming detokenizer.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]

# ChatML; content may be a string or a list of {"type": "text"} parts.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% elif message['content'] is not none %}{% for part in message['content'] %}"
    "{% if 'text' in part %}{{ part['text'] }}{% endif %}{% endfor %}{% endif %}"
    "<|im_end|>\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

CORPUS = [
    "The quick brown fox jumps over the lazy dog.",
    "Hello! How are you today? I am a tiny language model running on MLX.",
    "Write a short poem about the sea, the wind and the stars at night.",
    "Numbers like 12, 345 and 6789 appear in tables, receipts and reports.",
    "def add(a, b):\n    return a + b  # Python code is text too",
    "Bonjour, ça va? Grüße aus München! 日本語も少し。",
]


def build_tokenizer(out: Path, corpus: list[str] = CORPUS, special_tokens: list[str] = SPECIAL_TOKENS,
                    additional_special: list[str] | None = None, chat_template: str = CHAT_TEMPLATE) -> object:
    """A byte-level BPE tokenizer trained offline on ``corpus``, ChatML template, saved into ``out``.

    ``special_tokens`` start with <|endoftext|> (pad), <|im_start|>, <|im_end|> (eos); the
    additional special tokens default to <|im_start|>.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(vocab_size=512, special_tokens=special_tokens,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    tok.train_from_iterator(corpus * 20, trainer=trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>",
                                   pad_token="<|endoftext|>",
                                   additional_special_tokens=additional_special or special_tokens[1:2])
    fast.chat_template = chat_template
    fast.save_pretrained(str(out))
    # transformers 5 writes "TokenizersBackend"; the explicit class also loads in older versions.
    cfg_path = out / "tokenizer_config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["tokenizer_class"] = "PreTrainedTokenizerFast"
    cfg["chat_template"] = chat_template
    cfg_path.write_text(json.dumps(cfg, indent=2))
    return fast


def _config(vocab_size: int, eos_ids: list[int]) -> dict:
    return {
        "architectures": ["Qwen3ForCausalLM"],
        "model_type": "qwen3",
        "hidden_size": 64,
        "num_hidden_layers": 2,
        "intermediate_size": 128,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "head_dim": 16,
        "rms_norm_eps": 1e-6,
        "vocab_size": vocab_size,
        "max_position_embeddings": 2048,
        "rope_theta": 10000.0,  # qwen3 refuses a config without it
        "tie_word_embeddings": False,
        "hidden_act": "silu",
        "torch_dtype": "float32",
        "bos_token_id": None,
        "eos_token_id": eos_ids,
    }


def write_random_qwen3(out: Path, tokenizer: Any, seed: int, head_row_scale: dict[int, float]) -> None:
    """config.json, generation_config.json and random weights of a tiny qwen3 for ``tokenizer``.

    Every >=2-D tensor is drawn normal*0.3 (mlx's small default init makes greedy decoding
    repeat one token); the lm_head rows in ``head_row_scale`` are multiplied by their factor.
    """
    import mlx.core as mx
    from mlx.utils import tree_flatten
    from mlx_lm.utils import _get_classes

    eos_ids = [tokenizer.convert_tokens_to_ids("<|im_end|>"), tokenizer.convert_tokens_to_ids("<|endoftext|>")]
    config = _config(len(tokenizer), eos_ids)
    (out / "config.json").write_text(json.dumps(config, indent=2))
    (out / "generation_config.json").write_text(
        json.dumps({"bos_token_id": None, "eos_token_id": eos_ids, "do_sample": False}, indent=2))

    # The model class gives the exact parameter names and shapes mlx_lm expects.
    model_class, args_class = _get_classes(config)
    model = model_class(args_class.from_dict(config))
    mx.random.seed(seed)
    weights: dict[str, mx.array] = {}
    for name, value in tree_flatten(model.parameters()):
        if value.ndim >= 2:
            value = mx.random.normal(value.shape, dtype=mx.float32) * 0.3
        weights[name] = value
    head = weights["lm_head.weight"]
    scale = mx.ones((head.shape[0], 1), dtype=head.dtype)
    for row, factor in head_row_scale.items():
        scale[row] = factor
    weights["lm_head.weight"] = head * scale
    mx.eval(weights)
    mx.save_safetensors(str(out / "model.safetensors"), weights, metadata={"format": "mlx"})


def build(out: Path, seed: int = 0) -> dict:
    """Write the tiny qwen3 model directory into ``out``; returns no extra models.yaml fields."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = build_tokenizer(out)
    special_ids = [tokenizer.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS]
    write_random_qwen3(out, tokenizer, seed, {i: 0.0 for i in special_ids})
    return {}
