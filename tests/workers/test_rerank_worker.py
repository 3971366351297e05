"""The rerank worker (mlx-lm, yes/no scoring) on the tiny demo reranker, over its Unix socket.

The test process never imports MLX: the worker is a real subprocess; request parsing and
ranking are also exercised in-process (they need only numpy).
"""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from support import run_worker

from mlx_serve_workers.embedding import RequestError
from mlx_serve_workers.rerank import parse_rerank_request, rank

MAX_DOCUMENTS = 8
MAX_DOC_TOKENS = 32
QUERY = "what is the capital of France?"
DOCS = [
    "Paris is the capital and largest city of France.",
    "The quick brown fox jumps over the lazy dog.",
    "Numbers like 12, 345 and 6789 appear in tables.",
    "Bonjour!",
    "def add(a, b): return a + b",
    "Write a short poem about the sea, the wind and the stars at night.",
]
LONG = "lorem ipsum dolor sit amet " * 20  # far more than MAX_DOC_TOKENS tokens


@pytest.fixture(scope="module")
def rerank_path(demo_model) -> Path:
    return Path(demo_model("demo-rerank")["path"])


@pytest.fixture(scope="module")
def worker(rerank_path):
    # batch_size 4: six documents take two padded passes of different lengths.
    options = {"max_documents": MAX_DOCUMENTS, "max_tokens_per_document": MAX_DOC_TOKENS, "batch_size": 4}
    with run_worker("rerank", rerank_path, options=options) as w:
        yield w


def rerank(client, path: str = "/v1/rerank", **payload) -> dict:
    resp = client.post(path, json={"model": "my-reranker", "query": QUERY, **payload})
    assert resp.status_code == 200, resp.text
    return resp.json()


def scores_by_index(body: dict) -> dict[int, float]:
    return {r["index"]: r["relevance_score"] for r in body["results"]}


def error_of(resp, status: int = 400) -> dict:
    assert resp.status_code == status, resp.text
    error = resp.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    return error


# ---------------------------------------------------------------------------- happy paths

def test_shape_and_order(worker):
    client, _, _ = worker
    body = rerank(client, documents=DOCS)
    assert body["model"] == "my-reranker"
    assert body["id"].startswith("rerank-")
    results = body["results"]
    assert sorted(r["index"] for r in results) == list(range(len(DOCS)))
    scores = [r["relevance_score"] for r in results]
    assert scores == sorted(scores, reverse=True)
    assert all(0.0 < s < 1.0 for s in scores)
    assert len(set(scores)) == len(scores)  # the documents really are scored differently
    assert all("document" not in r for r in results)  # Cohere's default: no documents back
    assert body["usage"]["total_tokens"] == body["usage"]["prompt_tokens"] > 40 * len(DOCS)


def test_top_n_is_the_head_of_the_full_ranking(worker):
    client, _, _ = worker
    full = rerank(client, documents=DOCS)["results"]
    top = rerank(client, documents=DOCS, top_n=2)["results"]
    assert [r["index"] for r in top] == [r["index"] for r in full[:2]]
    assert len(rerank(client, documents=DOCS, top_n=100)["results"]) == len(DOCS)


def test_return_documents_and_text_objects(worker):
    client, _, _ = worker
    plain = rerank(client, documents=DOCS)
    objects = rerank(client, documents=[{"text": d} for d in DOCS], return_documents=True)
    assert scores_by_index(objects) == pytest.approx(scores_by_index(plain), abs=1e-6)
    for r in objects["results"]:
        assert r["document"] == {"text": DOCS[r["index"]]}


def test_batched_scores_equal_scores_alone(worker):
    client, _, _ = worker
    batched = scores_by_index(rerank(client, documents=DOCS))
    alone = {i: rerank(client, documents=[doc])["results"][0]["relevance_score"] for i, doc in enumerate(DOCS)}
    assert batched == pytest.approx(alone, abs=1e-4)
    stats = client.get("/stats").json()["batching"]
    assert stats["max_batch_size_seen"] == 4  # the six documents really shared padded passes
    assert stats["padded_tokens"] > stats["tokens"]


def test_concurrent_requests_score_as_alone(worker):
    client, _, _ = worker
    alone = [rerank(client, documents=[doc])["results"][0]["relevance_score"] for doc in DOCS[:4]]
    with ThreadPoolExecutor(4) as pool:
        together = list(pool.map(lambda d: rerank(client, documents=[d])["results"][0]["relevance_score"],
                                 DOCS[:4]))
    assert together == pytest.approx(alone, abs=1e-4)


def test_rerank_alias_and_instruction(worker):
    client, _, _ = worker
    v1 = scores_by_index(rerank(client, documents=DOCS[:3]))
    alias = scores_by_index(rerank(client, "/rerank", documents=DOCS[:3]))
    assert alias == pytest.approx(v1, abs=1e-6)
    other = scores_by_index(rerank(client, documents=DOCS[:3], instruction="Find French words"))
    assert other != pytest.approx(v1, abs=1e-4)  # the instruction is part of the prompt


def test_truncate_cuts_documents_to_the_limit(worker):
    client, _, _ = worker
    # Same first MAX_DOC_TOKENS tokens, different endings: cut to the limit, they score the same.
    body = rerank(client, documents=[LONG + "Paris", LONG + "a fox and a dog", "short"], truncate=True)
    scores = scores_by_index(body)
    assert scores[0] == pytest.approx(scores[1], abs=1e-6)
    assert scores[2] != pytest.approx(scores[0], abs=1e-4)


# ---------------------------------------------------------------------------- limits and bad input

def test_too_many_documents_names_the_limit(worker):
    client, _, _ = worker
    error = error_of(client.post("/v1/rerank", json={"query": QUERY, "documents": ["d"] * (MAX_DOCUMENTS + 1)}))
    assert f"max_documents={MAX_DOCUMENTS}" in error["message"]
    assert error["param"] == "documents" and error["code"] == "too_many_documents"


def test_long_document_names_the_limit(worker):
    client, _, _ = worker
    error = error_of(client.post("/v1/rerank", json={"query": QUERY, "documents": ["ok", LONG]}))
    assert f"max_tokens_per_document={MAX_DOC_TOKENS}" in error["message"]
    assert "documents[1]" in error["message"] and "truncate" in error["message"]
    assert error["code"] == "context_length_exceeded"


def test_query_beyond_the_context_is_a_400(worker):
    client, _, _ = worker
    error = error_of(client.post("/v1/rerank", json={"query": "x " * 2100, "documents": ["d"]}))
    assert "context of 2048 tokens" in error["message"]
    assert error["param"] == "query"


@pytest.mark.parametrize("payload, param", [
    ({"query": "", "documents": ["d"]}, "query"),
    ({"query": "   ", "documents": ["d"]}, "query"),
    ({"documents": ["d"]}, "query"),
    ({"query": "q", "documents": []}, "documents"),
    ({"query": "q"}, "documents"),
    ({"query": "q", "documents": "not a list"}, "documents"),
    ({"query": "q", "documents": ["ok", 3]}, "documents"),
    ({"query": "q", "documents": [{"content": "no text key"}]}, "documents"),
    ({"query": "q", "documents": ["d"], "top_n": 0}, "top_n"),
    ({"query": "q", "documents": ["d"], "top_n": True}, "top_n"),
    ({"query": "q", "documents": ["d"], "return_documents": "yes"}, "return_documents"),
    ({"query": "q", "documents": ["d"], "truncate": 1}, "truncate"),
    ({"query": "q", "documents": ["d"], "instruction": ""}, "instruction"),
])
def test_bad_requests_are_400_naming_the_field(worker, payload, param):
    client, _, _ = worker
    assert error_of(client.post("/v1/rerank", json=payload))["param"] == param


def test_invalid_json_is_400(worker):
    client, _, _ = worker
    resp = client.post("/v1/rerank", content=b"{not json", headers={"content-type": "application/json"})
    assert error_of(resp)["code"] == "invalid_json"


def test_healthy_after_bad_input(worker):
    client, proc, _ = worker
    for payload in ({"query": "", "documents": []}, {"query": QUERY, "documents": [LONG] * 20}, [1, 2]):
        assert client.post("/v1/rerank", json=payload).status_code == 400
    health = client.get("/health").json()
    assert health["status"] == "ok" and health["memory"]["rss_bytes"] > 0
    assert health["max_documents"] == MAX_DOCUMENTS and health["scoring"] == "last-hidden"
    assert health["yes_token"]["id"] != health["no_token"]["id"]
    assert proc.poll() is None
    assert len(rerank(client, documents=DOCS[:2])["results"]) == 2


# ---------------------------------------------------------------------------- start-time checks

def test_bad_options_fail_the_start_naming_the_key(rerank_path):
    with pytest.raises(RuntimeError, match="not_an_option"):
        with run_worker("rerank", rerank_path, options={"not_an_option": 1}):
            pass
    with pytest.raises(RuntimeError, match="yes_token"):
        with run_worker("rerank", rerank_path, options={"yes_token": "definitely not one token"}):
            pass


# ---------------------------------------------------------------------------- in-process

def test_parse_and_rank_without_mlx():
    parsed = parse_rerank_request({"query": "q", "documents": ["a", {"text": "b"}], "top_n": 1,
                                   "return_documents": True, "model": "m"}, max_documents=2)
    assert parsed.documents == ["a", "b"] and parsed.top_n == 1 and parsed.model == "m"
    with pytest.raises(RequestError, match="max_documents=1"):
        parse_rerank_request({"query": "q", "documents": ["a", "b"]}, max_documents=1)
    import numpy as np

    # ties keep the request order
    assert [r["index"] for r in rank(np.array([0.2, 0.9, 0.2]), ["a", "b", "c"], None, False)] == [1, 0, 2]
    assert json.dumps(rank(np.array([0.5]), ["a"], 5, True)) == \
        '[{"index": 0, "relevance_score": 0.5, "document": {"text": "a"}}]'
