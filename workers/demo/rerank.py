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
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = text.build_tokenizer(out, corpus=text.CORPUS + RERANK_CORPUS)
    answers = []
    for word in ("yes", "no"):
        ids = tokenizer.encode(word, add_special_tokens=False)
        if len(ids) != 1:  # a corpus change must not silently break the demo
            raise RuntimeError(f"demo reranker tokenizer splits {word!r} into {ids}")
        answers.append(ids[0])
    text.write_random_qwen3(out, tokenizer, seed, {i: ANSWER_ROW_SCALE / 0.3 for i in answers})
    return {}
