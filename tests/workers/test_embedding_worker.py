"""The embedding worker (mlx-embeddings) on the tiny demo BERT, over its Unix socket.

The test process never imports MLX: workers are real subprocesses; the batcher and request
parsing are also exercised in-process with a fake embedding function (they need only numpy).
"""

from __future__ import annotations

import asyncio
import base64
import shutil
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from support import run_worker

from mlx_serve_workers.batching import Batcher
from mlx_serve_workers.embedding import RequestError, parse_embedding_request

HIDDEN = 32          # the demo model's hidden size
MAX_POSITIONS = 128  # its max_position_embeddings, the default max_tokens_per_input


@pytest.fixture(scope="module")
def embed_path(demo_model) -> Path:
    return Path(demo_model("demo-embed")["path"])


@pytest.fixture(scope="module")
def worker(embed_path):
    # A longer batch window than the default makes "concurrent requests share a batch" certain
    # even on a loaded 2-core machine.
    with run_worker("embedding", embed_path, options={"batch_wait_ms": 20}) as (client, proc, log):
        yield client, proc, log


@pytest.fixture(scope="module")
def cls_unbatched_worker(embed_path):
    with run_worker("embedding", embed_path, options={"pooling": "cls", "max_batch_size": 1}) as w:
        yield w[0]


def embed(client, payload: dict) -> dict:
    resp = client.post("/v1/embeddings", json=payload)
    assert resp.status_code == 200, resp.text
    return resp.json()


def vectors(body: dict) -> np.ndarray:
    return np.array([d["embedding"] for d in sorted(body["data"], key=lambda d: d["index"])])


def tokenizer(embed_path: Path):
    from tokenizers import Tokenizer  # Rust tokenizer only, no MLX

    return Tokenizer.from_file(str(embed_path / "tokenizer.json"))


def error_of(resp) -> dict:
    assert resp.status_code == 400, resp.text
    return resp.json()["error"]


# ---------------------------------------------------------------------------- happy paths

def test_single_string_openai_shape(worker):
    client, _, _ = worker
    body = embed(client, {"input": "hello world", "model": "my-embedder"})
    assert body["object"] == "list"
    assert body["model"] == "my-embedder"
    assert len(body["data"]) == 1
    item = body["data"][0]
    assert item["object"] == "embedding" and item["index"] == 0
    vec = np.array(item["embedding"])
    assert vec.shape == (HIDDEN,)
    assert np.isclose(np.linalg.norm(vec), 1.0, atol=1e-5)
    # "[CLS] hello w ##o ##r ##l ##d [SEP]" in the demo vocabulary
    assert body["usage"] == {"prompt_tokens": 8, "total_tokens": 8}


def test_list_matches_single_requests_and_usage_is_summed(worker):
    client, _, _ = worker
    texts = ["hello world", "the quick brown fox jumps over the lazy dog", "a"]
    together = embed(client, {"input": texts})
    assert [d["index"] for d in together["data"]] == [0, 1, 2]
    alone = [embed(client, {"input": t}) for t in texts]
    # Padding inside a batch must not change any vector (mask-aware attention and pooling).
    assert np.allclose(vectors(together), np.vstack([vectors(b) for b in alone]), atol=1e-5)
    assert together["usage"]["prompt_tokens"] == sum(b["usage"]["prompt_tokens"] for b in alone)
    assert together["usage"]["total_tokens"] == together["usage"]["prompt_tokens"]
    assert not np.allclose(vectors(together)[0], vectors(together)[1])


def test_token_id_inputs_match_text(worker, embed_path):
    client, _, _ = worker
    tok = tokenizer(embed_path)
    ids_a = tok.encode("hello world").ids
    ids_b = tok.encode("numbers in tables").ids
    from_text = vectors(embed(client, {"input": ["hello world", "numbers in tables"]}))
    one = embed(client, {"input": ids_a})
    assert one["usage"]["prompt_tokens"] == len(ids_a)
    assert np.allclose(vectors(one)[0], from_text[0], atol=1e-5)
    many = embed(client, {"input": [ids_a, ids_b]})
    assert np.allclose(vectors(many), from_text, atol=1e-5)
    assert many["usage"]["prompt_tokens"] == len(ids_a) + len(ids_b)


def test_base64_decodes_like_the_openai_sdk(worker):
    client, _, _ = worker
    texts = ["base64 please", "and another one"]
    floats = vectors(embed(client, {"input": texts, "encoding_format": "float"}))
    b64 = embed(client, {"input": texts, "encoding_format": "base64"})
    decoded = np.vstack([np.frombuffer(base64.b64decode(d["embedding"]), dtype="float32")
                         for d in b64["data"]])
    assert decoded.shape == (2, HIDDEN)
    assert np.allclose(decoded, floats, atol=1e-7)


def test_dimensions_truncates_and_renormalises(worker):
    client, _, _ = worker
    full = vectors(embed(client, {"input": "matryoshka"}))[0]
    short = vectors(embed(client, {"input": "matryoshka", "dimensions": 8}))[0]
    assert short.shape == (8,)
    assert np.isclose(np.linalg.norm(short), 1.0, atol=1e-5)
    assert np.allclose(short, full[:8] / np.linalg.norm(full[:8]), atol=1e-5)
    same = vectors(embed(client, {"input": "matryoshka", "dimensions": HIDDEN}))[0]
    assert np.allclose(same, full, atol=1e-6)


def test_cls_pooling_differs_from_mean(worker, cls_unbatched_worker):
    client, _, _ = worker
    texts = ["pooling matters", "for every model"]
    mean = vectors(embed(client, {"input": texts}))
    cls = vectors(embed(cls_unbatched_worker, {"input": texts}))
    assert cls.shape == mean.shape
    assert np.allclose(np.linalg.norm(cls, axis=1), 1.0, atol=1e-5)
    assert not np.allclose(cls, mean, atol=1e-3)
    assert client.get("/health").json()["pooling"] == "mean"   # from the demo's 1_Pooling config
    assert cls_unbatched_worker.get("/health").json()["pooling"] == "cls"


# ---------------------------------------------------------------------------- batching

def _concurrent(client, n: int) -> list[np.ndarray]:
    texts = [f"concurrent request number {i}" for i in range(n)]
    with ThreadPoolExecutor(max_workers=n) as pool:
        bodies = list(pool.map(lambda t: embed(client, {"input": t}), texts))
    return [vectors(b)[0] for b in bodies]


def test_concurrent_requests_share_batches(worker):
    client, _, _ = worker
    before = client.get("/health").json()["batching"]
    results = _concurrent(client, 32)
    after = client.get("/stats").json()["batching"]
    assert after["inputs"] - before["inputs"] == 32
    assert after["requests"] - before["requests"] == 32
    assert after["batches"] - before["batches"] < 32          # some forward passes were shared
    assert after["max_batch_size_seen"] > 1
    assert max(after["recent_batch_sizes"]) > 1
    assert sum(int(k) * v for k, v in after["batch_size_histogram"].items()) == after["inputs"]
    # Each request got its own row back, not a neighbour's.
    alone = vectors(embed(client, {"input": "concurrent request number 7"}))[0]
    assert np.allclose(results[7], alone, atol=1e-5)


def test_max_batch_size_one_disables_batching(cls_unbatched_worker):
    _concurrent(cls_unbatched_worker, 16)
    embed(cls_unbatched_worker, {"input": ["one request", "with three", "inputs"]})
    stats = cls_unbatched_worker.get("/stats").json()["batching"]
    assert stats["inputs"] >= 19
    assert stats["max_batch_size_seen"] == 1
    assert stats["batches"] == stats["inputs"]


# ---------------------------------------------------------------------------- limits and bad input

def test_too_many_inputs(worker):
    client, _, _ = worker
    err = error_of(client.post("/v1/embeddings", json={"input": ["a"] * 2049}))
    assert "max_inputs=2048" in err["message"] and "input[2048]" in err["message"]
    assert err["param"] == "input"


def test_too_many_tokens_names_limit_and_index(worker):
    client, _, _ = worker
    long_text = "word " * 100  # 4 WordPiece tokens per "word" in the demo vocabulary
    err = error_of(client.post("/v1/embeddings", json={"input": ["short", long_text]}))
    assert f"max_tokens_per_input={MAX_POSITIONS}" in err["message"]
    assert "input[1]" in err["message"]
    assert err["param"] == "input"
    err = error_of(client.post("/v1/embeddings", json={"input": [[2] * (MAX_POSITIONS + 1)]}))
    assert "input[0]" in err["message"] and f"max_tokens_per_input={MAX_POSITIONS}" in err["message"]
    # exactly at the limit is fine
    assert embed(client, {"input": [[2] * MAX_POSITIONS]})["usage"]["prompt_tokens"] == MAX_POSITIONS


@pytest.mark.parametrize("payload, param", [
    ({"input": []}, "input"),
    ({"input": ""}, "input"),
    ({"input": ["fine", ""]}, "input"),
    ({"input": 42}, "input"),
    ({"input": [1, "mixed"]}, "input"),
    ({"input": [[1, 2], []]}, "input"),
    ({"input": [[1, 2.5]]}, "input"),
    ({"input": [True, False]}, "input"),
    ({"input": None}, "input"),
    ({"model": "no input"}, "input"),
    ({"input": [[2, 99999]]}, "input"),
    ({"input": [-1]}, "input"),
    ({"input": "x", "encoding_format": "double"}, "encoding_format"),
    ({"input": "x", "dimensions": 0}, "dimensions"),
    ({"input": "x", "dimensions": HIDDEN + 1}, "dimensions"),
    ({"input": "x", "dimensions": "8"}, "dimensions"),
])
def test_bad_requests_are_400(worker, payload, param):
    client, _, _ = worker
    err = error_of(client.post("/v1/embeddings", json=payload))
    assert err["param"] == param
    assert err["type"] == "invalid_request_error" and err["message"]


def test_invalid_json_and_health_after_bad_input(worker):
    client, proc, _ = worker
    assert client.post("/v1/embeddings", content=b"{not json").status_code == 400
    assert client.post("/v1/embeddings", content=b"[1, 2]").status_code == 400
    health = client.get("/health")
    assert health.status_code == 200 and health.json()["status"] == "ok"
    assert health.json()["batching"]["failed_batches"] == 0
    assert health.json()["memory"]["rss_bytes"] > 0
    assert proc.poll() is None
    assert len(embed(client, {"input": "still alive"})["data"]) == 1


# ---------------------------------------------------------------------------- start failures

def test_refuses_model_without_tokenizer_files(embed_path, tmp_path):
    broken = tmp_path / "no-tokenizer"
    shutil.copytree(embed_path, broken)
    for name in ("tokenizer.json", "tokenizer_config.json", "vocab.txt"):
        (broken / name).unlink(missing_ok=True)
    with pytest.raises(RuntimeError) as info:
        with run_worker("embedding", broken, timeout=60):
            pass
    message = str(info.value)
    assert "no tokenizer files" in message and str(broken) in message
    assert "tokenizer.json" in message


def test_refuses_tokenizer_that_maps_every_word_to_unk(embed_path, tmp_path):
    broken = tmp_path / "wrong-tokenizer"
    shutil.copytree(embed_path, broken)
    (broken / "tokenizer.json").unlink()
    (broken / "vocab.txt").write_text("[PAD]\n[UNK]\n[CLS]\n[SEP]\n[MASK]\n")  # no words at all
    with pytest.raises(RuntimeError, match=r"maps every word to its unknown token \('\[UNK\]'\)"):
        with run_worker("embedding", broken, timeout=60):
            pass


def test_refuses_unknown_option(embed_path):
    with pytest.raises(RuntimeError, match="unknown option.*max_batchsize"):
        with run_worker("embedding", embed_path, options={"max_batchsize": 8}, timeout=60):
            pass


# ---------------------------------------------------------------------------- in-process, no MLX

def test_parse_request_counts_and_types():
    assert parse_embedding_request({"input": "a"}, 4, HIDDEN).texts == ["a"]
    assert parse_embedding_request({"input": [1, 2]}, 4, HIDDEN).token_ids == [[1, 2]]
    with pytest.raises(RequestError, match="max_inputs=4"):
        parse_embedding_request({"input": ["a"] * 5}, 4, HIDDEN)


def _fake_embed(seqs: list[list[int]]) -> np.ndarray:
    if any(666 in s for s in seqs):
        raise ValueError("poisoned batch")
    return np.array([[float(s[0]), float(len(s))] for s in seqs], dtype=np.float32)


def test_batcher_splits_results_and_isolates_failures():
    batcher = Batcher(_fake_embed, max_batch_size=4, batch_wait_s=0.05, max_batch_tokens=1000)
    assert batcher.start().wait(5)

    async def scenario():
        good = [batcher.submit([[i, 0, 0]]) for i in range(3)]
        bad = batcher.submit([[666]])            # same window: shares the batch with `good`
        outcomes = await asyncio.gather(*good, bad, return_exceptions=True)
        later = await batcher.submit([[7], [8, 8]])  # a new window after the failure
        return outcomes, later

    outcomes, later = asyncio.run(scenario())
    assert isinstance(outcomes[3], RuntimeError) and "poisoned" in str(outcomes[3])
    # the three good requests were in the poisoned batch of 4, so they failed too...
    assert all(isinstance(o, RuntimeError) for o in outcomes[:3])
    # ...but the thread lives on and serves the next batch, rows in request order.
    assert batcher.alive
    assert later.tolist() == [[7.0, 1.0], [8.0, 2.0]]
    stats = batcher.stats()
    assert stats["failed_batches"] == 1 and stats["batches"] == 1
    batcher.stop()


def test_batcher_chunks_round_robin_within_both_limits():
    calls: list[list[int]] = []
    first_pass = threading.Event()
    small_submitted = threading.Event()

    def recording_embed(seqs):
        calls.append([len(s) for s in seqs])
        if not first_pass.is_set():  # hold the first pass until the small request is queued
            first_pass.set()
            small_submitted.wait(5)
        return _fake_embed(seqs)

    batcher = Batcher(recording_embed, max_batch_size=4, batch_wait_s=0.05, max_batch_tokens=20)
    assert batcher.start().wait(5)
    big = [[1] * n for n in (9, 1, 5, 2, 3, 8, 4, 2, 2)]

    async def scenario():
        first = batcher.submit(big)
        await asyncio.get_running_loop().run_in_executor(None, first_pass.wait, 5)
        small = batcher.submit([[2] * 6])  # queued (synchronously) while the first pass is held
        small_submitted.set()
        return await asyncio.gather(first, small)

    big_rows, small_rows = asyncio.run(scenario())
    batcher.stop()
    # rows come back in request order whatever the forward-pass order was
    assert big_rows[:, 1].tolist() == [len(s) for s in big]
    assert small_rows.tolist() == [[2.0, 6.0]]
    assert sorted(n for c in calls for n in c) == sorted([len(s) for s in big] + [6])
    assert len(calls) >= 3
    assert calls[0] == [1, 2, 2, 2]  # the big request's rows go shortest first
    # the small request rides in the very next pass instead of waiting behind the big one
    assert 6 in calls[1]
    for lengths in calls:
        assert len(lengths) <= 4
        assert len(lengths) == 1 or len(lengths) * max(lengths) <= 20
