"""Tiny random-weight Soprano text-to-speech model (mlx-audio) for tests and demos.

Soprano is the mlx-audio TTS architecture that needs the fewest assets: one config, one
safetensors file and a Hugging Face tokenizer (no phonemizer, voices or codec download).
The language model here is tiny; the Vocos decoder keeps mlx-audio's fixed default size
(about 13.8M parameters), so its weights are stored in float16 to halve the directory
(``Model.sanitize`` casts decoder weights back to float32 at load).

Random weights never emit the stop token, so the entry's ``max_tokens`` option bounds each
sentence to a short clip (each token is 2048 samples, 64 ms at 32 kHz).
"""

from __future__ import annotations

import json
import string
from pathlib import Path

# Soprano's prompt is "[STOP][TEXT]{text}[START]" and its stop id is the pad token.
SPECIAL_TOKENS = ["[STOP]", "[TEXT]", "[START]", "[UNK]"]
DEMO_MAX_TOKENS = 40


def _build_tokenizer(out: Path) -> int:
    """A character-level tokenizer (BPE with no merges), saved with ``save_pretrained``."""
    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast

    chars = sorted(set(string.printable) - set("\x0b\x0c"))
    vocab = {tok: i for i, tok in enumerate(SPECIAL_TOKENS)}
    for ch in chars:
        vocab.setdefault(ch, len(vocab))
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="[UNK]"))
    backend.add_special_tokens(SPECIAL_TOKENS)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="[STOP]", unk_token="[UNK]")
    tokenizer.save_pretrained(str(out))
    return len(vocab)


def build(out: Path, seed: int = 0) -> dict:
    """Write a tiny random Soprano model into ``out``; return its models.yaml extras."""
    import mlx.core as mx
    from mlx.utils import tree_flatten

    from mlx_audio.tts.models.soprano import soprano

    out.mkdir(parents=True, exist_ok=True)
    vocab_size = _build_tokenizer(out)
    # All Qwen3 ModelArgs fields are required. No "decoder_config" key: mlx-audio assigns
    # attributes on it, which a plain dict cannot take. Untied embeddings: generation calls lm_head.
    config = {
        "model_type": "soprano", "hidden_size": 64, "num_hidden_layers": 1, "intermediate_size": 128,
        "num_attention_heads": 2, "num_key_value_heads": 1, "head_dim": 32, "rms_norm_eps": 1e-6,
        "vocab_size": vocab_size, "max_position_embeddings": 1024, "rope_theta": 10000.0,
        "tie_word_embeddings": False, "sample_rate": 32000,
    }
    (out / "config.json").write_text(json.dumps(config, indent=2))

    mx.random.seed(seed)
    # The loader sets model_path, which picks the decoder size; mirror it so the keys match.
    model = soprano.Model(soprano.ModelConfig.from_dict({**config, "model_path": str(out)}))
    weights = {
        key: value.astype(mx.float16) if key.startswith("decoder.") and mx.issubdtype(value.dtype, mx.floating)
        else value
        for key, value in tree_flatten(model.parameters())
    }
    # Sampling from near-uniform random logits would pick [STOP] now and then, ending some
    # answers after a token or two (an empty WAV). Larger random lm_head rows with the special
    # tokens' rows zeroed keep [STOP] far below the best logit: answers run to max_tokens.
    head = "language_model.lm_head.weight"
    rows = mx.random.normal(weights[head].shape) * 0.3
    special = mx.array([i < len(SPECIAL_TOKENS) for i in range(rows.shape[0])])[:, None]
    weights[head] = mx.where(special, 0.0, rows).astype(weights[head].dtype)
    mx.save_safetensors(str(out / "model.safetensors"), weights)
    return {"options": {"max_tokens": DEMO_MAX_TOKENS}}
