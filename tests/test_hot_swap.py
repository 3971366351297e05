"""Hot-swap under a memory budget, with real workers: admission, eviction, keep_alive, one load per model."""

from __future__ import annotations

import random
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx

from support import Router

GB = 1000**3


def _models(path: str, names: list[str], **extra: Any) -> list[dict[str, Any]]:
    # The footprint is set in models.yaml so the budget arithmetic is exact whatever RSS says.
    return [{"name": n, "type": "text", "path": path, "memory": "1GB", **extra} for n in names]


def _chat(client: httpx.Client, model: str, **body: Any) -> httpx.Response:
    return client.post("/v1/chat/completions", json={
        "model": model, "messages": [{"role": "user", "content": "hi"}], "max_tokens": body.pop("max_tokens", 4),
        **body})


def _events(router: Router, kind: str, model: str | None = None) -> list[dict[str, Any]]:
    with router.client() as c:
        events = c.get("/api/events", params={"limit": 1000}).json()["events"]
    return [e for e in events if e["event"] == kind and (model is None or e["model"] == model)]


def test_one_fits_60_requests_over_three_models_never_two_loaded(tmp_path: Path, demo_model: Any) -> None:
    path = demo_model("demo-chat")["path"]
    server = {"memory_budget": "1.5GB", "min_residency": "0.3s", "queue_timeout": "120s"}
    with Router(tmp_path, _models(path, ["a", "b", "c"]), server) as router:
        stop = threading.Event()
        most_loaded = 0

        def sample() -> None:
            nonlocal most_loaded
            with router.client() as c:
                while not stop.is_set():
                    loaded = [m for m in c.get("/api/ps").json()["models"]]
                    most_loaded = max(most_loaded, len(loaded))
                    time.sleep(0.02)

        sampler = threading.Thread(target=sample)
        sampler.start()
        rng = random.Random(7)
        plan = [rng.choice("abc") for _ in range(60)]

        def client(i: int) -> list[tuple[str, int, str]]:
            with router.client() as c:
                return [(m, r.status_code, r.text) for m in plan[i::8] for r in [_chat(c, m)]]

        try:
            with ThreadPoolExecutor(8) as pool:
                results = [row for batch in pool.map(client, range(8)) for row in batch]
        finally:
            stop.set()
            sampler.join()
        failures = [row for row in results if row[1] != 200]
        assert len(results) == 60 and failures == [], failures
        assert most_loaded == 1
        assert len(_events(router, "evict")) >= 2  # it really swapped


def test_two_fit_both_stay_loaded_without_swaps(tmp_path: Path, demo_model: Any) -> None:
    path = demo_model("demo-chat")["path"]
    with Router(tmp_path, _models(path, ["a", "b"]), {"memory_budget": "2.5GB"}) as router:
        with router.client() as c, ThreadPoolExecutor(4) as pool:
            statuses = list(pool.map(lambda m: _chat(c, m).status_code, ["a", "b"] * 10))
        assert statuses == [200] * 20
        assert sorted(m["name"] for m in router.ps()) == ["a", "b"]
        assert _events(router, "evict") == []
        assert len(_events(router, "load")) == 2


def test_ten_concurrent_first_requests_start_exactly_one_worker(tmp_path: Path, demo_model: Any) -> None:
    path = demo_model("demo-chat")["path"]
    with Router(tmp_path, _models(path, ["a"])) as router:
        with router.client() as c, ThreadPoolExecutor(10) as pool:
            statuses = list(pool.map(lambda _: _chat(c, "a").status_code, range(10)))
        assert statuses == [200] * 10
        assert len(_events(router, "load", "a")) == 1
        assert len(router.worker_pids()) == 1


def test_keep_alive_zero_unloads_after_the_response(tmp_path: Path, demo_model: Any) -> None:
    path = demo_model("demo-chat")["path"]
    with Router(tmp_path, _models(path, ["a"])) as router:
        with router.client() as c:
            assert _chat(c, "a", keep_alive=0).status_code == 200
        deadline = time.monotonic() + 5
        while router.ps() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert router.ps() == []
        assert router.worker_pids() == []


def test_keep_alive_duration_unloads_about_then(tmp_path: Path, demo_model: Any) -> None:
    path = demo_model("demo-chat")["path"]
    with Router(tmp_path, _models(path, ["a"])) as router:
        with router.client() as c:
            assert _chat(c, "a", keep_alive="2s").status_code == 200
            done = time.monotonic()
        time.sleep(1.0)
        assert [m["name"] for m in router.ps()] == ["a"], "unloaded too early"
        while router.ps() and time.monotonic() < done + 6:
            time.sleep(0.05)
        gone_after = time.monotonic() - done
        assert router.ps() == []
        assert 1.8 <= gone_after <= 4.0


def test_pinned_model_stays_and_the_other_gets_503_naming_it(tmp_path: Path, demo_model: Any) -> None:
    path = demo_model("demo-chat")["path"]
    with Router(tmp_path, _models(path, ["a", "b"]), {"memory_budget": "1.5GB"}) as router:
        with router.client() as c:
            assert _chat(c, "a", keep_alive=-1).status_code == 200
            r = _chat(c, "b")
            assert r.status_code == 503
            assert "'a'" in r.json()["error"]["message"] and "pinned" in r.json()["error"]["message"]
            assert [m["name"] for m in router.ps()] == ["a"]
            assert router.ps()[0]["pinned"] is True
            # an explicit unload frees it, and then b loads
            assert c.post("/api/unload", json={"model": "a"}).json()["models"] == ["a"]
            assert _chat(c, "b").status_code == 200


def test_model_too_big_for_the_budget_is_refused_at_once(tmp_path: Path, demo_model: Any) -> None:
    path = demo_model("demo-chat")["path"]
    models = [{"name": "huge", "type": "text", "path": path, "memory": "3GB"}]
    with Router(tmp_path, models, {"memory_budget": "1GB"}) as router, router.client() as c:
        started = time.monotonic()
        r = _chat(c, "huge")
        assert time.monotonic() - started < 2
        assert r.status_code == 503
        message = r.json()["error"]["message"]
        assert "3.0 GB" in message and "1.0 GB" in message
        assert router.worker_pids() == []


def test_streaming_model_is_not_stopped_for_another(tmp_path: Path, demo_model: Any) -> None:
    path = demo_model("demo-chat")["path"]
    server = {"memory_budget": "1.5GB", "min_residency": "0s"}
    with Router(tmp_path, _models(path, ["a", "b"]), server) as router:
        lines: list[str] = []
        other: dict[str, Any] = {}
        with router.client() as c:
            with c.stream("POST", "/v1/chat/completions", json={
                    "model": "a", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 400,
                    "stream": True}) as stream:
                it = stream.iter_lines()
                lines.append(next(it))

                def ask_b() -> None:
                    with router.client() as c2:
                        other["response"] = _chat(c2, "b")
                        other["at"] = time.monotonic()

                t = threading.Thread(target=ask_b)
                t.start()
                for line in it:
                    lines.append(line)
                    time.sleep(0.002)  # a slow reader keeps the stream in flight
                stream_done = time.monotonic()
            t.join(60)
        assert lines[-1] == "data: [DONE]" or "data: [DONE]" in lines
        assert other["response"].status_code == 200
        assert other["at"] >= stream_done - 0.05
        assert not any('"error"' in line for line in lines)


def test_loads_of_models_that_fit_together_run_at_the_same_time(tmp_path: Path, demo_model: Any) -> None:
    path = demo_model("demo-chat")["path"]
    with Router(tmp_path, _models(path, ["a", "b"]), {"memory_budget": "2.5GB"}) as router:
        with router.client() as c, ThreadPoolExecutor(2) as pool:
            statuses = list(pool.map(lambda m: _chat(c, m).status_code, ["a", "b"]))
        assert statuses == [200, 200]
        with router.client() as c:
            events = c.get("/api/events").json()["events"]
        order = [(e["event"], e["model"]) for e in events if e["event"] in ("load", "ready")]
        # both loads began before either finished: they overlapped
        assert [kind for kind, _ in order[:2]] == ["load", "load"], order
