"""Tiny random-weight Qwen2-VL model for the vision worker (mlx-vlm), built offline.

A 2-layer, 64-wide qwen2_vl language model with a 2-block vision tower and a 500-odd token
byte-level BPE tokenizer trained here on a few sentences. It loads in a few hundredths of a
second and turns any image into 1-4 image tokens (min/max_pixels keep images tiny).

Choices that matter (see shared notes, "Tiny VLM for mlx-vlm"):
* weights are redrawn with std 0.3: mlx's default init makes greedy decoding print only newlines;
* the lm_head rows of the special and image tokens are zeroed and the head is untied, so greedy
  decoding never emits EOS and ``max_tokens`` always runs to the end (useful for benchmarks);
* ``vision_config.mlp_ratio`` is an int (transformers 5 validates it strictly) and
  ``mrope_section`` sums to head_dim / 2;
* ``video_preprocessor_config.json`` is written, otherwise mlx-vlm asks the Hugging Face Hub for it.
"""

from __future__ import annotations

import json
from pathlib import Path

from mlx_serve_workers.demo import text

SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>",
                  "<|vision_end|>", "<|image_pad|>", "<|video_pad|>"]

# Qwen2-VL's ChatML template, reduced: string content or lists of text/image/video parts.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% elif message['content'] is not none %}{% for part in message['content'] %}"
    "{% if part['type'] in ('image', 'image_url', 'input_image') or 'image' in part %}"
    "<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif part['type'] in ('video', 'video_url', 'input_video') %}"
    "<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif 'text' in part %}{{ part['text'] }}{% endif %}"
    "{% endfor %}{% endif %}<|im_end|>\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

CORPUS = [
    "The quick brown fox jumps over the lazy dog.",
    "Describe this image in one short sentence, please.",
    "A small red square sits on a white background near a blue circle.",
    "Hello! How are you today? I am a tiny vision language model.",
    "Numbers like 12, 345 and 6789 appear in receipts, charts and photos.",
    "Cats, dogs, trees, cars and houses are common things in pictures.",
]

HIDDEN = 64
HEAD_DIM = 16  # hidden / heads; mrope_section below must sum to HEAD_DIM / 2


def _build_tokenizer(out: Path) -> object:
    # The chat model's recipe, with the vision special tokens and the image-aware template.
    return text.build_tokenizer(out, corpus=CORPUS, special_tokens=SPECIAL_TOKENS,
                                additional_special=SPECIAL_TOKENS[1:2] + SPECIAL_TOKENS[3:],
                                chat_template=CHAT_TEMPLATE)


def _config(ids: dict[str, int], vocab_size: int) -> dict:
    return {
        "architectures": ["Qwen2VLForConditionalGeneration"],
        "model_type": "qwen2_vl",
        "hidden_size": HIDDEN,
        "num_hidden_layers": 2,
        "intermediate_size": 128,
        "num_attention_heads": HIDDEN // HEAD_DIM,
        "num_key_value_heads": 2,
        "rms_norm_eps": 1e-6,
        "vocab_size": vocab_size,
        "max_position_embeddings": 2048,
        "rope_theta": 10000.0,
        "rope_scaling": {"type": "mrope", "mrope_section": [2, 3, 3]},
        "tie_word_embeddings": False,
        "hidden_act": "silu",
        "torch_dtype": "float32",
        "bos_token_id": None,
        "eos_token_id": [ids["<|im_end|>"], ids["<|endoftext|>"]],
        "image_token_id": ids["<|image_pad|>"],
        "video_token_id": ids["<|video_pad|>"],
        "vision_start_token_id": ids["<|vision_start|>"],
        "vision_end_token_id": ids["<|vision_end|>"],
        "vision_config": {
            "model_type": "qwen2_vl", "depth": 2, "embed_dim": 32, "hidden_size": HIDDEN,
            "num_heads": 2, "mlp_ratio": 2, "in_channels": 3, "patch_size": 14,
            "spatial_patch_size": 14, "spatial_merge_size": 2, "temporal_patch_size": 2,
        },
    }


def _image_processor_config() -> dict:
    return {
        "image_processor_type": "Qwen2VLImageProcessor",
        "processor_class": "Qwen2VLProcessor",
        "patch_size": 14, "temporal_patch_size": 2, "merge_size": 2,
        # 784 = one merged 28x28 token, 3136 = four: any image costs 1-4 tokens.
        "min_pixels": 784, "max_pixels": 3136,
        "image_mean": [0.48145466, 0.4578275, 0.40821073],
        "image_std": [0.26862954, 0.26130258, 0.27577711],
        "do_rescale": True, "rescale_factor": 1 / 255, "do_normalize": True,
        "do_convert_rgb": True, "do_resize": True,
    }


def build(out: Path, seed: int = 0) -> dict:
    """Write the tiny qwen2_vl model into ``out``; no extra models.yaml fields are needed."""
    import mlx.core as mx
    from mlx.utils import tree_flatten
    from mlx_vlm.utils import get_model_and_args, update_module_configs

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = _build_tokenizer(out)
    vocab = tokenizer.get_vocab()
    ids = {t: vocab[t] for t in SPECIAL_TOKENS}
    config = _config(ids, len(tokenizer))

    (out / "config.json").write_text(json.dumps(config, indent=2))
    (out / "generation_config.json").write_text(json.dumps(
        {"eos_token_id": config["eos_token_id"], "do_sample": False}, indent=2))
    (out / "preprocessor_config.json").write_text(json.dumps(_image_processor_config(), indent=2))
    video = {**_image_processor_config(), "video_processor_type": "Qwen2VLVideoProcessor"}
    (out / "video_preprocessor_config.json").write_text(json.dumps(video, indent=2))
    (out / "processor_config.json").write_text(json.dumps(
        {"processor_class": "Qwen2VLProcessor"}, indent=2))

    # Build the mlx-vlm model class itself so parameter names and shapes always match the loader.
    cfg = json.loads(json.dumps(config))
    model_class, _ = get_model_and_args(cfg)
    model_config = model_class.ModelConfig.from_dict(cfg)
    model_config = update_module_configs(model_config, model_class, cfg, ["text", "vision"])
    model = model_class.Model(model_config)

    mx.random.seed(seed)
    weights = {}
    for name, value in tree_flatten(model.parameters()):
        if value.ndim >= 2:
            value = mx.random.normal(value.shape) * 0.3
        weights[name] = value.astype(mx.float32)
    head = "language_model.lm_head.weight"
    silent = mx.array(sorted(ids.values()))
    weights[head] = weights[head].at[silent].multiply(0.0)  # never generate EOS or image tokens
    mx.save_safetensors(str(out / "model.safetensors"), weights, metadata={"format": "mlx"})
    return {}
