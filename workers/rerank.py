"""Rerank worker: ``POST /v1/rerank`` (Jina / Cohere shape) for one causal LM reranker (mlx-lm).

Run as ``python -m mlx_serve_workers.rerank --socket PATH --model-path DIR ...`` (see ``common``).

The model family is the one the Qwen3 rerankers belong to: a causal LM asked whether a document
meets a query, scored on the probability of its answer "yes". Each query-document pair becomes
Qwen3-Reranker's prompt (ChatML, as in the model card)::

    <|im_start|>system
    Judge whether the Document meets the requirements based on the Query and the Instruct
    provided. Note that the answer can only be "yes" or "no".<|im_end|>
    <|im_start|>user
    <Instruct>: {instruction}
    <Query>: {query}
    <Document>: {document}<|im_end|>
    <|im_start|>assistant
    <think>

    </think>

(ending with two newlines), and its score is ``softmax(logit_yes, logit_no)[yes]`` at the last
position, i.e. P(yes) in [0, 1]. The answer tokens are options (``yes_token``/``no_token``) and
must be single tokens of the model's vocabulary; the instruction is an option and a request field.

Batching: requests are validated and tokenized in the handler (bad input never reaches the
model); their pairs go into the embedding worker's :class:`Batcher` (one inference thread does
all MLX work; pairs of concurrent requests share forward passes, taken round-robin and shortest
first, within ``batch_size`` pairs and ``max_batch_tokens`` padded tokens). A batch is padded on
the RIGHT and run with the model's own causal mask: a real token never attends to the padding
after it, so every pair's last real position holds exactly what it would alone; the logits are
taken there. The warm-up checks this (batched scores equal single ones, else batching is turned
off with a note in the log). Where the model is ``body + lm_head`` (checked at warm-up against
the full forward pass) only the last positions go through the head, so a batch never
materialises a (pairs x tokens x vocabulary) logits array.

Limits: at most ``max_documents`` documents per request (400 beyond). A document longer than
``max_tokens_per_document`` tokens is a 400 naming the limit, unless the request sends
``"truncate": true`` (or the model's ``truncate`` option is on): then it is cut to the limit
(the end is dropped, as the model card's reference code does). A pair that does not fit the
model's context (``max_position_embeddings``) is a 400 too.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

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
from mlx_serve_workers.batching import Batcher
from mlx_serve_workers.embedding import RequestError
from mlx_serve_workers.options import resolve

KIND = "rerank"


SYSTEM_PROMPT = ('Judge whether the Document meets the requirements based on the Query and the Instruct '
                 'provided. Note that the answer can only be "yes" or "no".')
PREFIX = f"<|im_start|>system\n{SYSTEM_PROMPT}<|im_end|>\n<|im_start|>user\n"
SUFFIX = "<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n"
DEFAULT_DOCUMENT_LIMIT = 4096  # Cohere's default max_tokens_per_doc; capped by the model's context

# Warm-up self-checks. They look for structural differences (a final logit transform the head-only
# path would skip, a model that is not causal under right padding), which are large; bf16 rounding
# in kernels of different shapes is not, and must not turn the fast paths off.
HEAD_PATH_RTOL = 2e-2     # on the yes/no logits
BATCH_TOLERANCE = 1e-2    # on the scores


# --------------------------------------------------------------------------------------------
# Options (no MLX needed)
# --------------------------------------------------------------------------------------------

def check_options(options: dict[str, Any]) -> dict[str, Any]:
    """Apply defaults and validate types and ranges; raise ValueError naming the bad key."""
    resolved = resolve("rerank", options, at_least={"max_documents": 1, "max_tokens_per_document": 1,
                                                    "batch_size": 1, "max_batch_tokens": 1})
    for key in ("instruction", "yes_token", "no_token"):
        if not resolved[key]:
            raise ValueError(f"option {key!r} must not be empty")
    if resolved["yes_token"] == resolved["no_token"]:
        raise ValueError(f"options 'yes_token' and 'no_token' must differ, both are {resolved['yes_token']!r}")
    return resolved


# --------------------------------------------------------------------------------------------
# Request parsing (no MLX needed: runs in the handler so bad input never reaches the batcher)
# --------------------------------------------------------------------------------------------

@dataclass
class RerankRequest:
    query: str
    documents: list[str]
    top_n: int | None
    return_documents: bool
    instruction: str | None
    truncate: bool | None
    model: str | None


def _is_int(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def parse_rerank_request(body: Any, max_documents: int) -> RerankRequest:
    """Validate the JSON body of POST /v1/rerank; documents may be strings or {"text": str}."""
    if not isinstance(body, dict):
        raise RequestError("the request body must be a JSON object")
    query = body.get("query")
    if query is None:
        raise RequestError("'query' is required", param="query", code="missing_required_parameter")
    if not isinstance(query, str) or not query.strip():
        raise RequestError("'query' must be a non-empty string", param="query")
    raw = body.get("documents")
    if raw is None:
        raise RequestError("'documents' is required", param="documents", code="missing_required_parameter")
    if not isinstance(raw, list) or not raw:
        raise RequestError("'documents' must be a non-empty list of strings or {\"text\": ...} objects",
                           param="documents")
    if len(raw) > max_documents:
        raise RequestError(f"'documents' has {len(raw)} items, more than max_documents={max_documents} per "
                           f"request; send them in several requests", param="documents",
                           code="too_many_documents")
    documents = []
    for i, doc in enumerate(raw):
        if isinstance(doc, dict) and isinstance(doc.get("text"), str):
            doc = doc["text"]
        if not isinstance(doc, str):
            raise RequestError(f"documents[{i}] must be a string or an object with a string 'text', "
                               f"got {json.dumps(doc)[:80]}", param="documents")
        documents.append(doc)

    top_n = body.get("top_n")
    if top_n is not None and (not _is_int(top_n) or top_n < 1):
        raise RequestError(f"'top_n' must be a positive integer, got {top_n!r}", param="top_n")
    return_documents = body.get("return_documents")
    if return_documents is not None and not isinstance(return_documents, bool):
        raise RequestError("'return_documents' must be true or false", param="return_documents")
    instruction = body.get("instruction")
    if instruction is not None and (not isinstance(instruction, str) or not instruction.strip()):
        raise RequestError("'instruction' must be a non-empty string", param="instruction")
    truncate = body.get("truncate")
    if truncate is not None and not isinstance(truncate, bool):
        raise RequestError("'truncate' must be true or false", param="truncate")
    model = body.get("model")
    return RerankRequest(query=query, documents=documents, top_n=top_n,
                         return_documents=bool(return_documents), instruction=instruction,
                         truncate=truncate, model=model if isinstance(model, str) else None)


def rank(scores: np.ndarray, documents: list[str], top_n: int | None,
         return_documents: bool) -> list[dict[str, Any]]:
    """The `results` list: best first (ties keep request order), cut to top_n."""
    order = sorted(range(len(documents)), key=lambda i: (-float(scores[i]), i))
    results = []
    for i in order[:top_n]:
        item: dict[str, Any] = {"index": i, "relevance_score": float(scores[i])}
        if return_documents:
            item["document"] = {"text": documents[i]}
        results.append(item)
    return results


# --------------------------------------------------------------------------------------------
# The model (MLX; load and scoring only ever run on the batcher's thread)
# --------------------------------------------------------------------------------------------

class Reranker:
    """An mlx-lm causal LM, its tokenizer, and the yes/no scoring of prompt token sequences."""

    def __init__(self, model_dir: Path, config: dict[str, Any], options: dict[str, Any]) -> None:
        self.model_dir = model_dir
        self.config = config
        self.options = options
        self.instruction: str = options["instruction"]
        self.model: Any = None
        self.tokenizer: Any = None  # the Hugging Face tokenizer inside mlx-lm's wrapper
        self.yes_id = self.no_id = 0
        self.pad_id = 0
        self.prefix: list[int] = []
        self.suffix: list[int] = []
        positions = config.get("max_position_embeddings")
        self.context: int | None = positions if _is_int(positions) and positions > 0 else None
        self.max_doc_tokens = 0
        self.scoring = "full-logits"
        self.batching_ok = True
        self.split_tokenization_exact = True
        self.timings: dict[str, float] = {}
        self._head: Any = None

    # -- load ---------------------------------------------------------------------------------
    def load(self) -> None:
        """Import mlx-lm, load, resolve the answer tokens and warm up (on the batcher thread)."""
        started = time.monotonic()
        import mlx_lm

        self.timings["import_s"] = round(time.monotonic() - started, 3)
        started = time.monotonic()
        self.model, wrapper = mlx_lm.load(str(self.model_dir))
        self.tokenizer = getattr(wrapper, "_tokenizer", wrapper)
        self.timings["load_s"] = round(time.monotonic() - started, 3)

        started = time.monotonic()
        self.yes_id = self._answer_token(self.options["yes_token"], "yes_token")
        self.no_id = self._answer_token(self.options["no_token"], "no_token")
        if self.yes_id == self.no_id:
            raise ValueError(f"yes_token {self.options['yes_token']!r} and no_token "
                             f"{self.options['no_token']!r} are the same token (id {self.yes_id})")
        pad = getattr(self.tokenizer, "pad_token_id", None)
        self.pad_id = pad if _is_int(pad) and pad >= 0 else 0  # never attended to: any id will do
        self.prefix = self._encode(PREFIX)
        self.suffix = self._encode(SUFFIX)
        wanted = self.options["max_tokens_per_document"]
        if wanted is not None and self.context is not None and wanted > self.context:
            raise ValueError(f"option max_tokens_per_document={wanted} exceeds this model's context "
                             f"(max_position_embeddings={self.context})")
        self.max_doc_tokens = wanted or min(DEFAULT_DOCUMENT_LIMIT, self.context or DEFAULT_DOCUMENT_LIMIT)
        self._warm_up()
        self.timings["warmup_s"] = round(time.monotonic() - started, 3)

    def _encode(self, text: str) -> list[int]:
        return list(self.tokenizer.encode(text, add_special_tokens=False))

    def _answer_token(self, token: str, option: str) -> int:
        """The id of an answer: a vocabulary entry as written, else text that encodes to one token."""
        vocab_size = self._vocab_rows()
        candidate = self.tokenizer.convert_tokens_to_ids(token)
        unk = getattr(self.tokenizer, "unk_token_id", None)
        if not (_is_int(candidate) and candidate >= 0 and candidate != unk):
            ids = self._encode(token)
            if len(ids) != 1:
                raise ValueError(f"option {option}={token!r} is not a single token of this model's tokenizer "
                                 f"(it encodes to {len(ids)} tokens: {ids[:8]}); name a vocabulary entry")
            candidate = ids[0]
        if vocab_size is not None and candidate >= vocab_size:
            raise ValueError(f"option {option}={token!r} is token id {candidate}, outside the model's "
                             f"{vocab_size} output rows")
        return int(candidate)

    def _vocab_rows(self) -> int | None:
        size = self.config.get("vocab_size") or (self.config.get("text_config") or {}).get("vocab_size")
        return size if _is_int(size) else None

    # -- tokenization (handler side, on the tokenizer thread) -----------------------------------
    def build_sequences(self, request: RerankRequest, truncate: bool) -> tuple[list[list[int]], int]:
        """Prompt token ids of each pair, and how many documents were truncated.

        The prompt is tokenized in pieces (prefix, instruction and query, " " + document,
        suffix) so that the document's own tokens can be counted and cut; for byte-level BPE
        tokenizers (Qwen's) the pieces give exactly the tokens of the whole string, because the
        pre-tokenizer always splits after "<Document>:" (checked at warm-up).
        """
        instruction = request.instruction or self.instruction
        head = self._encode(f"<Instruct>: {instruction}\n<Query>: {request.query}\n<Document>:")
        docs = self.tokenizer([" " + d for d in request.documents], add_special_tokens=False,
                              truncation=False, padding=False, verbose=False)["input_ids"]
        seqs, truncated = [], 0
        fixed = len(self.prefix) + len(head) + len(self.suffix)
        for i, doc in enumerate(docs):
            doc = list(doc)
            if len(doc) > self.max_doc_tokens:
                if not truncate:
                    raise RequestError(
                        f"documents[{i}] has {len(doc)} tokens, more than max_tokens_per_document="
                        f"{self.max_doc_tokens}; shorten it, or send \"truncate\": true to cut documents "
                        f"to the limit", param="documents", code="context_length_exceeded")
                doc = doc[:self.max_doc_tokens]
                truncated += 1
            if self.context is not None and fixed + len(doc) > self.context:
                raise RequestError(
                    f"documents[{i}] with the query and the prompt is {fixed + len(doc)} tokens, more than "
                    f"this model's context of {self.context} tokens (the query and instruction take "
                    f"{len(head)}); shorten the query or the document", param="query",
                    code="context_length_exceeded")
            seqs.append(self.prefix + head + doc + self.suffix)
        return seqs, truncated

    # -- scoring --------------------------------------------------------------------------------
    def _last_logits(self, ids: Any, last: Any, path: str) -> Any:
        """Logits at each row's last real position, via the head only there or the full forward."""
        import mlx.core as mx

        rows = mx.arange(ids.shape[0])
        if path == "last-hidden":
            hidden = self.model.model(ids)
            return self._head(hidden[rows, last])
        return self.model(ids)[rows, last]

    def _answer_logits(self, seqs: list[list[int]], path: str) -> Any:
        """(len(seqs), 2) float32 logits of yes and no after each prompt (one forward pass)."""
        import mlx.core as mx

        longest = max(len(s) for s in seqs)
        ids = np.full((len(seqs), longest), self.pad_id, dtype=np.int32)
        for row, seq in enumerate(seqs):
            ids[row, :len(seq)] = seq  # right padding: the causal mask keeps it out of every real token
        last = mx.array([len(s) - 1 for s in seqs])
        logits = self._last_logits(mx.array(ids), last, path)
        return logits[:, mx.array([self.yes_id, self.no_id])].astype(mx.float32)

    def _scores(self, seqs: list[list[int]], path: str) -> np.ndarray:
        import mlx.core as mx

        pair = self._answer_logits(seqs, path)
        return np.array(mx.softmax(pair, axis=-1)[:, 0], dtype=np.float32)

    def score(self, seqs: list[list[int]]) -> np.ndarray:
        """P(yes) of each prompt (one right-padded forward pass); the Batcher calls this."""
        return self._scores(seqs, self.scoring)

    def _warm_up(self) -> None:
        """Score a padded batch; choose the scoring path and check that batching is exact."""
        import mlx.core as mx

        request = RerankRequest(query="what is the capital of France?", instruction=None, top_n=None,
                                return_documents=False, truncate=True, model=None,
                                documents=["Paris is the capital and largest city of France.",
                                           "The quick brown fox jumps over the lazy dog, twice."])
        seqs, _ = self.build_sequences(request, truncate=True)
        whole = self._encode(PREFIX + f"<Instruct>: {self.instruction}\n<Query>: {request.query}\n"
                             f"<Document>: {request.documents[0]}" + SUFFIX)
        self.split_tokenization_exact = whole == seqs[0]
        if not self.split_tokenization_exact:
            print("note: this tokenizer gives slightly different tokens for the prompt in pieces than for the "
                  "whole prompt; scores may differ a little from the model card's reference code",
                  file=sys.stderr, flush=True)
        full = np.array(self._answer_logits(seqs, "full-logits"))
        if not np.isfinite(full).all():
            raise ValueError(f"the model gives non-finite yes/no logits on the warm-up pairs: {full}")
        self._head = self._find_head()
        if self._head is not None:
            try:
                fast = np.array(self._answer_logits(seqs, "last-hidden"))
                if np.allclose(fast, full, rtol=HEAD_PATH_RTOL, atol=HEAD_PATH_RTOL):
                    self.scoring = "last-hidden"
                else:  # e.g. logit soft-capping or scaling after the head
                    print(f"note: scoring through the full forward pass (the head alone gives {fast.tolist()}, "
                          f"the model {full.tolist()})", file=sys.stderr, flush=True)
            except Exception as exc:  # a body that needs more than input ids: keep the full pass
                print(f"note: scoring through the full forward pass ({exc!r})", file=sys.stderr, flush=True)
        batched = self.score(seqs)
        alone = np.array([self.score([s])[0] for s in seqs])
        if not np.allclose(batched, alone, atol=BATCH_TOLERANCE, rtol=0):
            self.batching_ok = False
            print(f"note: batched scores differ from single ones ({batched} vs {alone}): this model is not "
                  "causal under right padding, so batching is off (one pair per forward pass)",
                  file=sys.stderr, flush=True)
        mx.clear_cache()

    def _find_head(self) -> Any:
        """The output projection when the model is ``model.model`` (the body) then a head."""
        body = getattr(self.model, "model", None)
        if body is None or not callable(body):
            return None
        head = getattr(self.model, "lm_head", None)
        if head is not None:
            return head
        embed = getattr(body, "embed_tokens", None)
        return getattr(embed, "as_linear", None)


# --------------------------------------------------------------------------------------------
# HTTP
# --------------------------------------------------------------------------------------------

def build_app(reranker: Reranker, batcher: Batcher, name: str, options: dict[str, Any]) -> Any:
    """The Starlette app: POST /v1/rerank (and /rerank), GET /health, GET /stats."""
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    # One thread for the tokenizer: keeps the event loop free and the HF tokenizer single-threaded.
    tokenizer_pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="tokenize")
    max_documents = options["max_documents"]

    def describe() -> dict[str, Any]:
        return {"model": name, "max_documents": max_documents,
                "max_tokens_per_document": reranker.max_doc_tokens, "context_length": reranker.context,
                "truncate": options["truncate"], "instruction": reranker.instruction,
                "yes_token": {"text": options["yes_token"], "id": reranker.yes_id},
                "no_token": {"text": options["no_token"], "id": reranker.no_id},
                "scoring": reranker.scoring, "split_tokenization_exact": reranker.split_tokenization_exact,
                "batching": batcher.stats()}

    async def health(_: Request) -> JSONResponse:
        ok = batcher.alive
        body = {"status": "ok" if ok else "error", "memory": memory_report(), **describe()}
        if not ok:
            body["error"] = f"inference thread stopped: {batcher.error!r}"
        return JSONResponse(body, status_code=200 if ok else 503)

    async def stats(_: Request) -> JSONResponse:
        return JSONResponse(describe())

    async def rerank(request: Request) -> JSONResponse:
        try:
            body = json.loads(await request.body())
        except ValueError:
            return error_response(400, "the request body is not valid JSON", code="invalid_json")
        try:
            parsed = parse_rerank_request(body, max_documents)
            truncate = options["truncate"] if parsed.truncate is None else parsed.truncate
            seqs, _truncated = await asyncio.get_running_loop().run_in_executor(
                tokenizer_pool, reranker.build_sequences, parsed, truncate)
        except RequestError as exc:
            return error_response(400, exc.message, param=exc.param, code=exc.code)
        try:
            scores = await batcher.submit(seqs)
        except Exception as exc:
            return error_response(500, f"scoring failed: {exc}", type_="server_error")
        tokens = sum(len(s) for s in seqs)
        return JSONResponse({
            "id": f"rerank-{uuid.uuid4().hex}",
            "model": parsed.model or name,
            "results": rank(np.asarray(scores).reshape(-1), parsed.documents, parsed.top_n,
                            parsed.return_documents),
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
        })

    routes = [
        Route("/health", health, methods=["GET"]),
        Route("/stats", stats, methods=["GET"]),
        Route("/v1/rerank", rerank, methods=["POST"]),
        Route("/rerank", rerank, methods=["POST"]),
    ]
    return Starlette(routes=routes)


def check_model_dir(model_dir: Path) -> dict[str, Any]:
    """Refuse a missing directory (mlx-lm would take it for a Hub repo id); return its config.json."""
    if not model_dir.is_dir():
        raise ValueError(f"model directory {model_dir} does not exist")
    config_path = model_dir / "config.json"
    if not config_path.is_file():
        raise ValueError(f"model directory {model_dir} has no config.json")
    return json.loads(config_path.read_text())


def serve(args: WorkerArgs, status: StatusChannel) -> None:
    """Load on the inference thread, then serve on the socket (failures end the process)."""
    try:
        options = check_options(args.options)
        model_dir = Path(args.model_path).expanduser().resolve()
        config = check_model_dir(model_dir)
        hide_torch()  # mlx_lm -> transformers would import torch: ~1.2 s and ~490 MB for nothing
        reranker = Reranker(model_dir, config, options)
        # max_batch_size may only shrink after the load (when batching proves inexact), which the
        # Batcher reads on every pass.
        batcher = Batcher(reranker.score, options["batch_size"], 0.0, options["max_batch_tokens"], label="scoring")
        batcher.start(setup=reranker.load).wait()
        if batcher.error is not None:
            raise batcher.error
        if not reranker.batching_ok:
            batcher.max_batch_size = 1
    except BaseException as exc:  # noqa: BLE001 - every start failure goes to the router
        fail_and_exit(status, exc)
        return
    print(f"rerank worker ready: {model_dir} scoring={reranker.scoring} yes={reranker.yes_id} "
          f"no={reranker.no_id} max_tokens_per_document={reranker.max_doc_tokens} "
          f"batch_size={batcher.max_batch_size}", file=sys.stderr, flush=True)
    app = build_app(reranker, batcher, args.name, options)
    run_asgi_on_socket(app, args, status, dict(reranker.timings))


def main() -> None:
    args = parse_args(KIND)
    status = StatusChannel(args.status_fd)
    watch_parent()
    serve(args, status)


if __name__ == "__main__":
    main()
