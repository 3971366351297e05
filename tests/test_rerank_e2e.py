"""End to end: the router starts a real rerank worker and proxies /v1/rerank and /rerank to it."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from support import Router

QUERY = "what is the capital of France?"
DOCS = ["Paris is the capital of France.", "The quick brown fox.", {"text": "Bonjour!"}, "12, 345 and 6789"]
MAX_DOCUMENTS = 5


@pytest.fixture(scope="module")
def router(tmp_path_factory: pytest.TempPathFactory, demo_model: Any) -> Iterator[Router]:
    entry = demo_model("demo-rerank")
    models = [{"name": "reranker", "type": "rerank", "path": entry["path"],
               "options": {"max_documents": MAX_DOCUMENTS}}]
    with Router(tmp_path_factory.mktemp("rerank-e2e"), models) as r:
        yield r


def test_v1_rerank_through_the_router(router: Router) -> None:
    with router.client() as c:
        r = c.post("/v1/rerank", json={"model": "reranker", "query": QUERY, "documents": DOCS, "top_n": 3,
                                       "return_documents": True, "keep_alive": "5m"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["model"] == "reranker"
    results = body["results"]
    assert len(results) == 3
    scores = [x["relevance_score"] for x in results]
    assert scores == sorted(scores, reverse=True) and all(0 < s < 1 for s in scores)
    for x in results:
        doc = DOCS[x["index"]]
        assert x["document"]["text"] == (doc if isinstance(doc, str) else doc["text"])
    assert body["usage"]["total_tokens"] > 0


def test_rerank_alias_gives_the_same_ranking(router: Router) -> None:
    with router.client() as c:
        v1 = c.post("/v1/rerank", json={"model": "reranker", "query": QUERY, "documents": DOCS}).json()
        alias = c.post("/rerank", json={"model": "reranker", "query": QUERY, "documents": DOCS})
    assert alias.status_code == 200, alias.text
    assert [(x["index"], round(x["relevance_score"], 5)) for x in alias.json()["results"]] == \
        [(x["index"], round(x["relevance_score"], 5)) for x in v1["results"]]


def test_chat_to_the_reranker_is_wrong_model_type(router: Router) -> None:
    with router.client() as c:
        r = c.post("/v1/chat/completions", json={"model": "reranker", "messages": [{"role": "user", "content": "hi"}]})
    assert r.status_code == 400
    error = r.json()["error"]
    assert error["code"] == "wrong_model_type" and error["param"] == "model"
    assert "rerank" in error["message"]


@pytest.mark.parametrize("payload, param", [
    ({"query": "", "documents": ["d"]}, "query"),
    ({"query": "q", "documents": []}, "documents"),
    ({"query": "q", "documents": [{"content": "x"}]}, "documents"),
    ({"query": "q", "documents": ["d"], "top_n": 0}, "top_n"),
])
def test_router_checks_the_shape(router: Router, payload: dict, param: str) -> None:
    with router.client() as c:
        r = c.post("/rerank", json={"model": "reranker", **payload})
    assert r.status_code == 400, r.text
    assert r.json()["error"]["param"] == param


def test_worker_limits_reach_the_client(router: Router) -> None:
    with router.client() as c:
        r = c.post("/v1/rerank", json={"model": "reranker", "query": QUERY, "documents": ["d"] * (MAX_DOCUMENTS + 1)})
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert error["code"] == "too_many_documents" and f"max_documents={MAX_DOCUMENTS}" in error["message"]


def test_unknown_model_lists_the_rerankers(router: Router) -> None:
    with router.client() as c:
        r = c.post("/v1/rerank", json={"model": "nope", "query": QUERY, "documents": ["d"]})
    assert r.status_code == 404
    assert "reranker" in r.json()["error"]["message"]


def test_models_list_shows_the_rerank_type(router: Router) -> None:
    with router.client() as c:
        data = c.get("/v1/models").json()["data"]
    assert [(m["id"], m["type"]) for m in data] == [("reranker", "rerank")]


def test_litellm_jina_client(router: Router, monkeypatch: pytest.MonkeyPatch) -> None:
    # A real client library speaking the Jina rerank API (no model-cost download: offline).
    monkeypatch.setenv("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    litellm = pytest.importorskip("litellm")
    reply = litellm.rerank(model="jina_ai/reranker", query=QUERY, documents=["Paris", "a fox", "a dog"], top_n=2,
                           return_documents=True, api_base=router.base_url, api_key="unused")
    assert len(reply.results) == 2
    assert reply.results[0]["relevance_score"] >= reply.results[1]["relevance_score"]
    assert reply.results[0]["document"]["text"] in ("Paris", "a fox", "a dog")
