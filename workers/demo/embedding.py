"""Tiny random-weight BERT sentence-embedding model for the embedding worker (mlx-embeddings).

A 2-layer, 32-wide ``bert`` model with a WordPiece tokenizer trained here on a few sentences
(lower-cased, every ASCII letter, digit and punctuation mark in the vocabulary, so ordinary
English text never becomes ``[UNK]``). It is laid out like a sentence-transformers model:
``modules.json`` and ``1_Pooling/config.json`` say "mean pooling, then normalise", which is
what the worker's ``pooling: auto`` reads. ``max_position_embeddings`` is 128, so tests can
exceed the per-input token limit with a short string.

See shared notes, "A1. Tiny random BERT": the weight names come from
``mlx_embeddings.models.bert.Model`` itself, so they always match what ``load`` expects.
"""

from __future__ import annotations

import json
import string
from pathlib import Path

CORPUS = [
    "The quick brown fox jumps over the lazy dog.",
    "Embeddings turn sentences into vectors that can be compared.",
    "A small model answers quickly, a large model answers well.",
    "Hello! How are you today? I am a tiny embedding model.",
    "Numbers like 12, 345 and 6789 appear in receipts and tables.",
    "Search engines rank documents by their similarity to a query.",
]
SPECIAL_TOKENS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]

CONFIG = {
    "architectures": ["BertModel"],
    "model_type": "bert",
    "hidden_size": 32,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "intermediate_size": 64,
    "max_position_embeddings": 128,
    "type_vocab_size": 2,
    "layer_norm_eps": 1e-12,
    "hidden_act": "gelu",
    "pad_token_id": 0,
}


def _build_tokenizer(out: Path) -> int:
    """Train a WordPiece tokenizer offline and save it the way a real BERT checkpoint ships it."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import BertTokenizerFast

    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece()
    alphabet = list(string.ascii_lowercase + string.digits + string.punctuation)
    trainer = trainers.WordPieceTrainer(vocab_size=400, special_tokens=SPECIAL_TOKENS,
                                        initial_alphabet=alphabet, show_progress=False)
    # The alphabet is part of the corpus too: WordPiece only learns "##x" continuations it sees.
    tok.train_from_iterator(CORPUS * 10 + [" ".join(alphabet), "".join(alphabet)], trainer=trainer)
    cls_id, sep_id = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", cls_id), ("[SEP]", sep_id)])
    fast = BertTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]",
                             cls_token="[CLS]", sep_token="[SEP]", mask_token="[MASK]",
                             do_lower_case=True, model_max_length=CONFIG["max_position_embeddings"])
    fast.save_pretrained(str(out))
    return tok.get_vocab_size()


def _write_sentence_transformers_files(out: Path, hidden: int) -> None:
    """The files sentence-transformers writes: they tell the worker which pooling the model wants."""
    modules = [
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
        {"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"},
    ]
    (out / "modules.json").write_text(json.dumps(modules, indent=2))
    (out / "1_Pooling").mkdir(exist_ok=True)
    pooling = {"word_embedding_dimension": hidden, "pooling_mode_cls_token": False,
               "pooling_mode_mean_tokens": True, "pooling_mode_max_tokens": False,
               "pooling_mode_mean_sqrt_len_tokens": False, "pooling_mode_weightedmean_tokens": False,
               "pooling_mode_lasttoken": False, "include_prompt": True}
    (out / "1_Pooling" / "config.json").write_text(json.dumps(pooling, indent=2))
    (out / "sentence_bert_config.json").write_text(
        json.dumps({"max_seq_length": CONFIG["max_position_embeddings"], "do_lower_case": False}))


def build(out: Path, seed: int = 0) -> dict:
    """Write the tiny BERT into ``out``; the worker needs no extra options for it."""
    import mlx.core as mx
    from mlx.utils import tree_flatten
    from mlx_embeddings.models import bert

    out.mkdir(parents=True, exist_ok=True)
    vocab_size = _build_tokenizer(out)
    config = {**CONFIG, "vocab_size": vocab_size}
    (out / "config.json").write_text(json.dumps(config, indent=2))

    mx.random.seed(seed)
    model = bert.Model(bert.ModelArgs.from_dict(config))
    weights = dict(tree_flatten(model.parameters()))
    mx.save_safetensors(str(out / "model.safetensors"), weights, metadata={"format": "mlx"})
    _write_sentence_transformers_files(out, config["hidden_size"])
    return {}
