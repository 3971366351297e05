"""Embedding worker: ``POST /v1/embeddings`` (OpenAI shape) for one mlx-embeddings model.

Run as ``python -m mlx_serve_workers.embedding --socket PATH --model-path DIR ...`` (see
``common``). Requests are validated and tokenized in the request handler, so bad input never
reaches the model; their token-id sequences then go into ONE queue drained by a single
inference thread (all MLX work happens there, never on the event loop). When idle, that thread
waits up to ``batch_wait_ms`` after the first sequence for more, up to ``max_batch_size``; while
a forward pass runs, new requests queue up and join the next pass without waiting. Each pass
takes rows round-robin across the waiting requests (a small request never waits behind all of
a 2048-input one), each request's rows shortest first (less padding), within ``max_batch_size``
rows and ``max_batch_tokens`` padded tokens. A failing pass fails only the requests that had
rows in it (500); the worker stays up. ``GET /health`` and ``GET /stats`` report the batching
counters (batches run, inputs, max/last batch size, recent sizes, a histogram).
``max_batch_size: 1`` turns batching off (one input per forward pass).

Pooling (option ``pooling``):
* ``mean``: mask-aware mean of the last hidden state (what mlx-embeddings' BERT ``text_embeds`` is);
* ``cls``: the first token's hidden state (bge, gte and other CLS-pooled models);
* ``last``: the last real token's hidden state (decoder-style embedders such as Qwen3-Embedding);
* ``pooler``: BERT's pooler output, tanh(dense(CLS)), only when asked: sentence-transformers
  models do not use it (cosine about 0 with the reference embeddings);
* ``model``: the library's own ``text_embeds`` (adds e.g. EmbeddingGemma's dense layers); it is
  always L2-normalised by the library;
* ``auto`` (default): the sentence-transformers config in the model directory (``modules.json`` ->
  ``1_Pooling/config.json``) when it says CLS or last-token; otherwise ``mean`` when that
  reproduces the library's ``text_embeds`` (checked on the warm-up batch), else ``model``.

Token-id inputs are used exactly as given (OpenAI semantics): no ``[CLS]``/``[SEP]`` is added.
Only ids from this model's own tokenizer make sense; clients that pre-tokenize with tiktoken
(LangChain's ``OpenAIEmbeddings`` does unless ``check_embedding_ctx_length=False``) get
embeddings of unrelated tokens, or a 400 for ids outside the vocabulary.
"""

from __future__ import annotations

import asyncio
import base64
import json
import sys
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mlx_serve_workers.batching import Batcher
from mlx_serve_workers.common import (
    StatusChannel,
    WorkerArgs,
    error_response,
    fail_and_exit,
    hide_torch,
    memory_report,
    parse_args,
    run_asgi_on_socket,
    watch_parent,
)
from mlx_serve_workers.options import resolve

KIND = "embedding"


POOLING_MODES = ("auto", "mean", "cls", "last", "pooler", "model")

# Files any Hugging Face tokenizer directory has at least one of. Without them transformers 5 builds
# an empty BertTokenizer from config.json that maps every word to [UNK] (checked), so refuse.
TOKENIZER_FILES = ("tokenizer.json", "vocab.txt", "vocab.json", "tokenizer.model", "spiece.model",
                   "sentencepiece.bpe.model", "sentencepiece.model")


# --------------------------------------------------------------------------------------------
# Options and model-directory checks (no MLX needed)
# --------------------------------------------------------------------------------------------

def check_options(options: dict[str, Any]) -> dict[str, Any]:
    """Apply defaults and validate types and ranges; raise ValueError naming the bad key."""
    resolved = resolve("embedding", options, at_least={"max_batch_size": 1, "max_batch_tokens": 1, "max_inputs": 1,
                                                       "max_tokens_per_input": 1, "batch_wait_ms": 0})
    if resolved["pooling"] not in POOLING_MODES:
        raise ValueError(f"option 'pooling' must be one of {', '.join(POOLING_MODES)}, "
                         f"got {resolved['pooling']!r}")
    return resolved


def check_model_dir(model_dir: Path) -> dict[str, Any]:
    """Refuse a directory that cannot give correct embeddings; return its config.json."""
    if not model_dir.is_dir():
        raise ValueError(f"model directory {model_dir} does not exist")
    config_path = model_dir / "config.json"
    if not config_path.is_file():
        raise ValueError(f"model directory {model_dir} has no config.json")
    config = json.loads(config_path.read_text())
    if "vision_config" in config:
        raise ValueError(f"model directory {model_dir} holds a vision-text model "
                         f"({config.get('model_type')}); the embedding worker serves text embedding models")
    if not any((model_dir / name).is_file() for name in TOKENIZER_FILES):
        present = sorted(p.name for p in model_dir.iterdir())
        raise ValueError(
            f"model directory {model_dir} has no tokenizer files: expected one of "
            f"{', '.join(TOKENIZER_FILES)} (plus tokenizer_config.json); "
            f"found {', '.join(present) or 'nothing'}. Without them transformers builds an empty "
            "tokenizer that maps every word to [UNK]: copy the tokenizer files from the original model.")
    return config


def sentence_transformers_pooling(model_dir: Path) -> str | None:
    """The pooling a sentence-transformers model directory declares: mean, cls, last, or None."""
    pooling_dir = "1_Pooling"
    modules_path = model_dir / "modules.json"
    if modules_path.is_file():
        try:
            modules = json.loads(modules_path.read_text())
            for module in modules:
                if str(module.get("type", "")).endswith("models.Pooling"):
                    pooling_dir = module.get("path") or pooling_dir
        except (ValueError, AttributeError, TypeError):
            pass
    config_path = model_dir / pooling_dir / "config.json"
    if not config_path.is_file():
        return None
    try:
        cfg = json.loads(config_path.read_text())
    except ValueError:
        return None
    if cfg.get("pooling_mode_cls_token"):
        return "cls"
    if cfg.get("pooling_mode_lasttoken"):
        return "last"
    if cfg.get("pooling_mode_mean_tokens"):
        return "mean"
    return None  # max / weighted-mean / mean-sqrt-len: not supported, let auto decide


def default_token_limit(config: dict[str, Any], tokenizer_limit: int | None) -> int:
    """Longest input the model takes: max_position_embeddings, capped by the tokenizer's limit.

    XLM-R style models declare 514 positions but take 512 tokens (two are offset), which the
    tokenizer's model_max_length says.
    """
    limits = [v for v in (config.get("max_position_embeddings"), tokenizer_limit)
              if isinstance(v, int) and 0 < v < 1_000_000]
    return min(limits) if limits else 512


# --------------------------------------------------------------------------------------------
# Request parsing (no MLX needed: runs in the handler so bad input never reaches the batcher)
# --------------------------------------------------------------------------------------------

class RequestError(Exception):
    """A client error: becomes a 400 with the OpenAI error body."""

    def __init__(self, message: str, param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.message, self.param, self.code = message, param, code


@dataclass
class EmbeddingRequest:
    texts: list[str] | None          # strings to tokenize, or
    token_ids: list[list[int]] | None  # sequences given as ids
    encoding_format: str
    dimensions: int | None
    model: str | None


def _is_int(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def parse_embedding_request(body: Any, max_inputs: int, hidden_size: int) -> EmbeddingRequest:
    """Validate the JSON body of POST /v1/embeddings (types, counts, format, dimensions)."""
    if not isinstance(body, dict):
        raise RequestError("the request body must be a JSON object")
    if "input" not in body:
        raise RequestError("'input' is required", param="input")
    raw = body["input"]
    texts: list[str] | None = None
    token_ids: list[list[int]] | None = None
    if isinstance(raw, str):
        texts = [raw]
    elif isinstance(raw, list):
        if not raw:
            raise RequestError("'input' must not be an empty list", param="input")
        if all(isinstance(x, str) for x in raw):
            texts = raw
        elif all(_is_int(x) for x in raw):
            token_ids = [raw]
        elif all(isinstance(x, list) for x in raw):
            for i, seq in enumerate(raw):
                if not seq:
                    raise RequestError(f"input[{i}] is an empty token list", param="input")
                if not all(_is_int(t) for t in seq):
                    raise RequestError(f"input[{i}] must be a list of integer token ids", param="input")
            token_ids = raw
        else:
            raise RequestError("'input' must be a string, a list of strings, a list of token ids "
                               "or a list of token-id lists (not a mix)", param="input")
    else:
        raise RequestError("'input' must be a string, a list of strings, a list of token ids "
                           "or a list of token-id lists", param="input")
    count = len(texts if texts is not None else token_ids)  # type: ignore[arg-type]
    if count > max_inputs:
        raise RequestError(f"'input' has {count} items, more than max_inputs={max_inputs} per request "
                           f"(input[{max_inputs}] is the first one over the limit)",
                           param="input", code="max_inputs_exceeded")
    if texts is not None:
        for i, text in enumerate(texts):
            if not text:
                raise RequestError(f"input[{i}] is an empty string", param="input")

    encoding_format = body.get("encoding_format")
    if encoding_format is None:
        encoding_format = "float"
    if encoding_format not in ("float", "base64"):
        raise RequestError(f"'encoding_format' must be 'float' or 'base64', got {encoding_format!r}",
                           param="encoding_format")

    dimensions = body.get("dimensions")
    if dimensions is not None:
        if not _is_int(dimensions):
            raise RequestError("'dimensions' must be an integer", param="dimensions")
        if dimensions < 1 or dimensions > hidden_size:
            raise RequestError(f"'dimensions' must be between 1 and {hidden_size} for this model, "
                               f"got {dimensions}", param="dimensions")
    model = body.get("model")
    return EmbeddingRequest(texts=texts, token_ids=token_ids, encoding_format=encoding_format,
                            dimensions=dimensions, model=model if isinstance(model, str) else None)


def check_sequences(seqs: Sequence[Sequence[int]], max_tokens: int, vocab_size: int | None) -> None:
    """Per-input limits: token count and (for id inputs) the id range."""
    for i, seq in enumerate(seqs):
        if len(seq) > max_tokens:
            raise RequestError(f"input[{i}] has {len(seq)} tokens, more than max_tokens_per_input="
                               f"{max_tokens}", param="input", code="context_length_exceeded")
        if vocab_size is not None:
            for tok in seq:
                if tok < 0 or tok >= vocab_size:
                    raise RequestError(f"input[{i}] contains token id {tok}, outside this model's "
                                       f"vocabulary (0..{vocab_size - 1})", param="input")


def format_embeddings(vectors: np.ndarray, dimensions: int | None, normalize: bool,
                      encoding_format: str) -> list[dict[str, Any]]:
    """The `data` list: optional truncation (re-normalised), then floats or base64 float32."""
    if dimensions is not None and dimensions < vectors.shape[1]:
        vectors = vectors[:, :dimensions]
        if normalize:
            norms = np.linalg.norm(vectors, axis=1, keepdims=True)
            vectors = vectors / np.maximum(norms, 1e-12)
    # The OpenAI SDK decodes base64 with np.frombuffer(..., dtype="float32"): little-endian f32.
    vectors = np.ascontiguousarray(vectors, dtype="<f4")
    data = []
    for i, row in enumerate(vectors):
        embedding: Any = (base64.b64encode(row.tobytes()).decode("ascii") if encoding_format == "base64"
                          else row.tolist())
        data.append({"object": "embedding", "index": i, "embedding": embedding})
    return data


# --------------------------------------------------------------------------------------------
# The model (MLX; only ever called on the batcher's thread)
# --------------------------------------------------------------------------------------------

class Embedder:
    """An mlx-embeddings model plus its tokenizer, with the pooling this worker applies."""

    def __init__(self, model_dir: Path, config: dict[str, Any], options: dict[str, Any]) -> None:
        self.model_dir = model_dir
        self.config = config
        self.options = options
        self.model: Any = None
        self.tokenizer: Any = None
        self.pooling = options["pooling"]
        self.pooling_reason = "option"
        self.normalize: bool = options["normalize"]
        self.dim = 0
        self.pad_id = 0
        self.vocab_size: int | None = None
        self.max_tokens = 0
        self.timings: dict[str, float] = {}

    def load(self) -> None:
        """Import, load, check the tokenizer, resolve pooling and warm up (on the batcher thread)."""
        started = time.monotonic()
        import mlx_embeddings

        self.timings["import_s"] = time.monotonic() - started
        started = time.monotonic()
        self.model, self.tokenizer = mlx_embeddings.load(str(self.model_dir))
        self.timings["load_s"] = time.monotonic() - started

        started = time.monotonic()
        self._check_tokenizer()
        self.vocab_size = self._vocab_size()
        pad = getattr(self.tokenizer, "pad_token_id", None)
        self.pad_id = pad if isinstance(pad, int) and pad >= 0 else 0
        tok_limit = getattr(self.tokenizer, "model_max_length", None)
        model_limit = default_token_limit(self.config, tok_limit if isinstance(tok_limit, int) else None)
        wanted = self.options["max_tokens_per_input"]
        positions = self.config.get("max_position_embeddings")
        if wanted is not None and isinstance(positions, int) and wanted > positions:
            raise ValueError(f"option max_tokens_per_input={wanted} exceeds this model's "
                             f"max_position_embeddings={positions}")
        self.max_tokens = wanted or model_limit
        self._warm_up()
        self.timings["warmup_s"] = time.monotonic() - started

    def _check_tokenizer(self) -> None:
        unk = getattr(self.tokenizer, "unk_token_id", None)
        ids = self.tokenize(["the quick brown fox jumps over the lazy dog"])[0]
        special = set(getattr(self.tokenizer, "all_special_ids", []) or [])
        words = [t for t in ids if t not in special or t == unk]
        if unk is not None and words and all(t == unk for t in words):
            raise ValueError(f"the tokenizer in {self.model_dir} maps every word to its unknown token "
                             f"({getattr(self.tokenizer, 'unk_token', unk)!r}): the tokenizer files "
                             "do not belong to this model or are incomplete")

    def _vocab_size(self) -> int | None:
        # The embedding table bounds valid ids; an id beyond it would read out of range.
        params = getattr(self.model, "parameters", None)
        if params is not None:
            from mlx.utils import tree_flatten

            for name, value in tree_flatten(params()):
                if name.endswith(("word_embeddings.weight", "embed_tokens.weight", "tok_embeddings.weight")):
                    return int(value.shape[0])
        size = self.config.get("vocab_size")
        return size if isinstance(size, int) else None

    def tokenize(self, texts: list[str]) -> list[list[int]]:
        """Token ids with the model's special tokens, untruncated (limits are checked after)."""
        encoded = self.tokenizer(list(texts), add_special_tokens=True, truncation=False, padding=False,
                                 verbose=False)
        return [list(ids) for ids in encoded["input_ids"]]

    def _forward(self, seqs: list[list[int]]) -> tuple[Any, Any, Any]:
        import mlx.core as mx

        longest = max(len(s) for s in seqs)
        ids = np.full((len(seqs), longest), self.pad_id, dtype=np.int32)
        mask = np.zeros((len(seqs), longest), dtype=np.int32)
        for row, seq in enumerate(seqs):
            ids[row, :len(seq)] = seq
            mask[row, :len(seq)] = 1
        mask_mx = mx.array(mask)
        out = self.model(mx.array(ids), attention_mask=mask_mx)
        return out, mask_mx, mx.array([len(s) for s in seqs])

    def pool(self, out: Any, mask: Any, lengths: Any, mode: str) -> Any:
        """One vector per row from the model output, in ``mode``; L2-normalised if configured."""
        import mlx.core as mx
        from mlx_embeddings.models.base import mean_pooling, normalize_embeddings

        if mode == "model":
            return out.text_embeds.astype(mx.float32)  # the library normalises it already
        if mode == "pooler":
            if getattr(out, "pooler_output", None) is None:
                raise ValueError("this model has no pooler output")
            pooled = out.pooler_output
        else:
            hidden = out.last_hidden_state.astype(mx.float32)
            if mode == "mean":
                pooled = mean_pooling(hidden, mask)
            elif mode == "cls":
                pooled = hidden[:, 0]
            elif mode == "last":
                pooled = hidden[mx.arange(hidden.shape[0]), lengths - 1]
            else:
                raise ValueError(f"unknown pooling {mode!r}")
        pooled = pooled.astype(mx.float32)
        return normalize_embeddings(pooled) if self.normalize else pooled

    def embed(self, seqs: list[list[int]]) -> np.ndarray:
        """(len(seqs), dim) float32 embeddings of token-id sequences (one padded forward pass)."""
        out, mask, lengths = self._forward(seqs)
        return np.array(self.pool(out, mask, lengths, self.pooling), dtype=np.float32)

    def _warm_up(self) -> None:
        """Run a padded batch of two, resolve ``auto`` pooling, learn the embedding size."""
        import mlx.core as mx

        seqs = self.tokenize(["warm up", "a slightly longer warm-up sentence, to exercise padding"])
        out, mask, lengths = self._forward(seqs)
        if self.pooling == "auto":
            self.pooling, self.pooling_reason = self._resolve_auto(out, mask, lengths)
        if self.pooling == "pooler" and getattr(out, "pooler_output", None) is None:
            raise ValueError("option pooling='pooler' but this model has no pooler output")
        if self.pooling == "model" and not self.normalize:
            print("note: pooling 'model' returns the library's normalised text_embeds; "
                  "normalize=false has no effect", file=sys.stderr, flush=True)
            self.normalize = True  # so that `dimensions` re-normalises, as the vectors are unit length
        vectors = np.array(self.pool(out, mask, lengths, self.pooling), dtype=np.float32)
        if vectors.ndim != 2 or vectors.shape[0] != len(seqs) or not np.isfinite(vectors).all():
            raise ValueError(f"pooling {self.pooling!r} gave unusable output of shape {vectors.shape}")
        self.dim = int(vectors.shape[1])
        mx.clear_cache()

    def _resolve_auto(self, out: Any, mask: Any, lengths: Any) -> tuple[str, str]:
        st_mode = sentence_transformers_pooling(self.model_dir)
        if st_mode in ("cls", "last"):
            return st_mode, "sentence-transformers 1_Pooling config"
        text_embeds = getattr(out, "text_embeds", None)
        if text_embeds is None or text_embeds.ndim != 2:
            return "mean", "default (the model has no pooled text_embeds)"
        import mlx.core as mx
        from mlx_embeddings.models.base import mean_pooling, normalize_embeddings

        hidden = out.last_hidden_state.astype(mx.float32)
        mean = np.array(normalize_embeddings(mean_pooling(hidden, mask)))
        reference = np.array(text_embeds.astype(mx.float32))
        source = "sentence-transformers 1_Pooling config" if st_mode == "mean" else "default"
        if mean.shape == reference.shape and np.allclose(mean, reference, atol=1e-3):
            return "mean", f"{source}; matches the library's text_embeds"
        return "model", "the library's text_embeds differ from plain mean pooling (e.g. extra layers)"


# --------------------------------------------------------------------------------------------
# HTTP
# --------------------------------------------------------------------------------------------

def build_app(embedder: Embedder, batcher: Batcher, name: str, options: dict[str, Any]) -> Any:
    """The Starlette app: POST /v1/embeddings, GET /health, GET /stats."""
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    # One thread for the tokenizer: keeps the event loop free for large inputs and never uses
    # the (not thread-safe to reconfigure) HF tokenizer from two threads at once.
    tokenizer_pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="tokenize")
    max_inputs = options["max_inputs"]

    def describe() -> dict[str, Any]:
        return {"model": name, "pooling": embedder.pooling, "pooling_source": embedder.pooling_reason,
                "normalize": embedder.normalize, "dimensions": embedder.dim,
                "max_tokens_per_input": embedder.max_tokens, "max_inputs": max_inputs,
                "batching": batcher.stats()}

    async def health(_: Request) -> JSONResponse:
        ok = batcher.alive
        body = {"status": "ok" if ok else "error", "memory": memory_report(), **describe()}
        if not ok:
            body["error"] = f"inference thread stopped: {batcher.error!r}"
        return JSONResponse(body, status_code=200 if ok else 503)

    async def stats(_: Request) -> JSONResponse:
        return JSONResponse(describe())

    async def embeddings(request: Request) -> JSONResponse:
        try:
            body = json.loads(await request.body())
        except ValueError:
            return error_response(400, "the request body is not valid JSON")
        try:
            parsed = parse_embedding_request(body, max_inputs, embedder.dim)
            if parsed.texts is not None:
                seqs = await asyncio.get_running_loop().run_in_executor(
                    tokenizer_pool, embedder.tokenize, parsed.texts)
                check_sequences(seqs, embedder.max_tokens, None)
            else:
                seqs = parsed.token_ids  # type: ignore[assignment]
                check_sequences(seqs, embedder.max_tokens, embedder.vocab_size)
        except RequestError as exc:
            return error_response(400, exc.message, param=exc.param, code=exc.code)
        try:
            vectors = await batcher.submit(seqs)
        except Exception as exc:
            return error_response(500, str(exc), type_="server_error")
        data = format_embeddings(vectors, parsed.dimensions, embedder.normalize, parsed.encoding_format)
        prompt_tokens = sum(len(s) for s in seqs)
        return JSONResponse({"object": "list", "data": data, "model": parsed.model or name,
                             "usage": {"prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens}})

    routes = [
        Route("/health", health, methods=["GET"]),
        Route("/stats", stats, methods=["GET"]),
        Route("/v1/embeddings", embeddings, methods=["POST"]),
        Route("/embeddings", embeddings, methods=["POST"]),
    ]
    return Starlette(routes=routes)


def serve(args: WorkerArgs, status: StatusChannel) -> None:
    """Load on the inference thread, then serve on the socket (failures end the process)."""
    try:
        options = check_options(args.options)
        model_dir = Path(args.model_path).expanduser().resolve()
        config = check_model_dir(model_dir)
        hide_torch()  # mlx_embeddings -> mlx_vlm -> transformers would import torch: ~2.4 s, ~300 MB
        embedder = Embedder(model_dir, config, options)
        batcher = Batcher(embedder.embed, options["max_batch_size"], options["batch_wait_ms"] / 1000.0,
                          options["max_batch_tokens"])
        batcher.start(setup=embedder.load).wait()
        if batcher.error is not None:
            raise batcher.error
    except BaseException as exc:  # noqa: BLE001 - every start failure goes to the router
        fail_and_exit(status, exc)
        return
    print(f"embedding worker ready: {model_dir} pooling={embedder.pooling} ({embedder.pooling_reason}), "
          f"dim={embedder.dim}, max_tokens_per_input={embedder.max_tokens}, "
          f"max_batch_size={options['max_batch_size']}", file=sys.stderr, flush=True)
    app = build_app(embedder, batcher, args.name, options)
    run_asgi_on_socket(app, args, status, dict(embedder.timings))


def main() -> None:
    args = parse_args(KIND)
    status = StatusChannel(args.status_fd)
    watch_parent()
    serve(args, status)


if __name__ == "__main__":
    main()
