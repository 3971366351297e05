"""Tiny random-weight Qwen3 reranker for the rerank worker (mlx-lm), built offline.

The same 2-layer, 64-wide qwen3 model as the demo chat model (``demo/text.py``), with its
tokenizer trained on a corpus that also holds the reranking prompt's words and the answers
``yes`` and ``no``, so that both are single tokens (the worker refuses a model where they are
not). Unlike the chat demo, no lm_head row is zeroed: the score is the softmax of the ``yes``
and ``no`` logits, so both rows must be live. The weights are random, so the scores are
arbitrary but deterministic, differ from document to document, and stay away from 0 and 1.

``max_position_embeddings`` is 2048 (the worker's default ``max_tokens_per_document`` follows
from it); tests set lower limits through options.
"""

from __future__ import annotations

import json
from pathlib import Path

from mlx_serve_workers.demo import text

# The reranking prompt's own words, and the answers, each on its own line: BPE merges "yes"
# and "no" (without a leading space, as they follow "\n\n" in the prompt) into single tokens.
RERANK_CORPUS = [
    "yes\nno\nyes\nno\n",
    "Judge whether the Document meets the requirements based on the Query and the Instruct provided.",
    "<Instruct>: Given a web search query, retrieve relevant passages that answer the query",
    "<Query>: what is the capital of France?\n<Document>: Paris is the capital of France.",
    "<think>\n\n</think>\n\n",
]

# Scale of the yes/no lm_head rows: at the chat demo's 0.3 their logit difference is several
# units wide, which pushes most P(yes) to within 1e-3 of 0 or 1 and makes ties likely.
ANSWER_ROW_SCALE = 0.1


def build(out: Path, seed: int = 0) -> dict:
    """Write the tiny reranker directory into ``out``; returns no extra models.yaml fields."""
    import mlx.core as mx
    from mlx.utils import tree_flatten
    from mlx_lm.utils import _get_classes

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = text.build_tokenizer(out, corpus=text.CORPUS + RERANK_CORPUS)
    answers = []
    for word in ("yes", "no"):
        ids = tokenizer.encode(word, add_special_tokens=False)
        if len(ids) != 1:  # a corpus change must not silently break the demo
            raise RuntimeError(f"demo reranker tokenizer splits {word!r} into {ids}")
        answers.append(ids[0])
    eos_ids = [tokenizer.convert_tokens_to_ids("<|im_end|>"), tokenizer.convert_tokens_to_ids("<|endoftext|>")]
    config = text._config(len(tokenizer), eos_ids)
    (out / "config.json").write_text(json.dumps(config, indent=2))
    (out / "generation_config.json").write_text(
        json.dumps({"bos_token_id": None, "eos_token_id": eos_ids, "do_sample": False}, indent=2))

    model_class, args_class = _get_classes(config)
    model = model_class(args_class.from_dict(config))
    mx.random.seed(seed)
    weights: dict[str, mx.array] = {}
    for name, value in tree_flatten(model.parameters()):
        if value.ndim >= 2:
            value = mx.random.normal(value.shape, dtype=mx.float32) * 0.3
        weights[name] = value
    scale = mx.ones((weights["lm_head.weight"].shape[0], 1), dtype=mx.float32)
    scale[mx.array(answers)] = ANSWER_ROW_SCALE / 0.3
    weights["lm_head.weight"] = weights["lm_head.weight"] * scale
    mx.eval(weights)
    mx.save_safetensors(str(out / "model.safetensors"), weights, metadata={"format": "mlx"})
    return {}
