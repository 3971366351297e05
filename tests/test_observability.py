"""Metrics, events, request log, log files and the operator's CLI, against a real router with real workers.

One router for the module: two text models of 1 GB each (the `memory:` override) under a 1.5 GB
budget, so that serving one after the other swaps them.
"""

from __future__ import annotations

import json
import re
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from support import TEST_ENV, Router

GB = 1000**3
CHAT = "/v1/chat/completions"

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


@pytest.fixture(scope="module")
def router(tmp_path_factory: pytest.TempPathFactory, demo_model: Any) -> Iterator[Router]:
    path = demo_model("demo-chat")["path"]
    models = [{"name": n, "type": "text", "path": path, "memory": "1GB"} for n in ("a", "b")]
    server = {"memory_budget": "1.5GB", "min_residency": "0s"}
    with Router(tmp_path_factory.mktemp("obs"), models, server) as r:
        yield r


def scrape(router: Router) -> Samples:
    with router.client() as c:
        r = c.get("/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(r.text) for s in family.samples}


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def events(router: Router, kind: str | None = None, model: str | None = None) -> list[dict[str, Any]]:
    with router.client() as c:
        found = c.get("/api/events", params={"limit": 1000}).json()["events"]
    return [e for e in found if (kind is None or e["event"] == kind) and (model is None or e["model"] == model)]


def chat(c: httpx.Client, model: str) -> int:
    """A non-streaming chat; returns the completion tokens it reports."""
    r = c.post(CHAT, json={"model": model, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 6})
    assert r.status_code == 200, r.text
    return r.json()["usage"]["completion_tokens"]


def stream(c: httpx.Client, model: str, usage: bool) -> int:
    """A streaming chat; returns the tokens the router should count for it."""
    body: dict[str, Any] = {"model": model, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 6,
                            "stream": True}
    if usage:
        body["stream_options"] = {"include_usage": True}
    with c.stream("POST", CHAT, json=body) as r:
        assert r.status_code == 200
        data = [line[6:] for line in r.iter_lines() if line.startswith("data: ")]
    assert data[-1] == "[DONE]"
    if usage:
        return json.loads(data[-2])["usage"]["completion_tokens"]
    return len(data) - 1  # without usage the router counts the events before [DONE]


def test_metrics_after_requests_and_a_swap(router: Router) -> None:
    with router.client() as c:
        assert c.post("/api/unload").status_code == 200  # start from nothing loaded
        before = scrape(router)
        tokens = {"a": 0, "b": 0}
        tokens["a"] += chat(c, "a") + chat(c, "a") + stream(c, "a", usage=True) + stream(c, "a", usage=False)
        tokens["b"] += chat(c, "b") + stream(c, "b", usage=False)  # evicts a
        tokens["a"] += chat(c, "a")  # evicts b
        recent = c.get("/api/requests", params={"limit": 7}).json()["requests"]
    after = scrape(router)

    def delta(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    for model, sent, streamed in (("a", 5, 2), ("b", 2, 1)):
        per_endpoint = {"model": model, "endpoint": CHAT}
        assert delta("mlx_serve_requests_total", status="200", **per_endpoint) == sent
        assert delta("mlx_serve_request_duration_seconds_count", **per_endpoint) == sent
        assert delta("mlx_serve_time_to_first_token_seconds_count", **per_endpoint) == streamed
        assert delta("mlx_serve_queue_wait_seconds_count", model=model) == sent
        assert delta("mlx_serve_generated_tokens_total", **per_endpoint) == tokens[model]
        assert delta("mlx_serve_tokens_per_second_count", **per_endpoint) == sent
    assert delta("mlx_serve_model_loads_total", model="a") == 2
    assert delta("mlx_serve_model_loads_total", model="b") == 1
    assert delta("mlx_serve_model_load_seconds_count", model="a") == 2
    assert delta("mlx_serve_model_load_seconds_sum", model="a") > 0
    assert delta("mlx_serve_model_evictions_total", model="a", reason="memory") == 1
    assert delta("mlx_serve_model_evictions_total", model="b", reason="memory") == 1
    # The requests that waited for a load waited measurably; the others did not wait at all.
    assert delta("mlx_serve_queue_wait_seconds_sum", model="b") > 0.05
    # Gauges, read at scrape time: a is loaded, b is not.
    assert value(after, "mlx_serve_memory_budget_bytes") == 1.5 * GB
    assert value(after, "mlx_serve_memory_used_bytes") == 1 * GB
    assert value(after, "mlx_serve_model_memory_bytes", model="a") == 1 * GB
    assert value(after, "mlx_serve_model_resident_bytes", model="a") > 10_000_000
    assert ("mlx_serve_model_memory_bytes", (("model", "b"),)) not in after
    assert value(after, "mlx_serve_model_loaded", model="a", type="text") == 1
    assert value(after, "mlx_serve_model_loaded", model="b", type="text") == 0
    assert value(after, "mlx_serve_model_state", model="a", state="ready") == 1
    assert value(after, "mlx_serve_model_state", model="b", state="stopped") == 1
    assert value(after, "mlx_serve_requests_in_flight", model="a") == 0
    assert value(after, "mlx_serve_queue_depth", model="a") == 0
    assert value(after, "process_resident_memory_bytes") > 0

    assert [(r["model"], r["stream"]) for r in recent] == [
        ("a", False), ("a", False), ("a", True), ("a", True), ("b", False), ("b", True), ("a", False)]
    assert all(r["status"] == 200 and r["endpoint"] == CHAT for r in recent)
    assert all((r["ttft_s"] is not None) == r["stream"] for r in recent)
    assert recent[0]["queue_s"] > recent[1]["queue_s"]  # the first one waited for the load
    assert sum(r["completion_tokens"] for r in recent) == tokens["a"] + tokens["b"]


def test_events_carry_pid_reason_and_durations_and_reach_the_jsonl_file(router: Router) -> None:
    with router.client() as c:
        chat(c, "a")
        chat(c, "b")  # a is evicted for b
    ready = events(router, "ready", "b")[-1]
    assert ready["pid"] > 0 and ready["duration_s"] > 0
    evict = events(router, "evict", "a")[-1]
    assert evict["reason"] == "make room for b" and evict["pid"] > 0
    unload = events(router, "unload", "a")[-1]
    assert unload["pid"] == evict["pid"] and unload["reason"] == "evicted for b"
    assert unload["duration_s"] >= 0 and unload["loaded_for_s"] > 0
    on_disk = [json.loads(line) for line in (Path(router.server["state_dir"]) / "events.jsonl").read_text()
               .splitlines()]
    in_memory = events(router)
    assert on_disk[-len(in_memory):] == in_memory


def test_a_crash_is_counted_and_the_next_request_restarts_the_model(router: Router) -> None:
    with router.client() as c:
        chat(c, "a")
        before = scrape(router)
        pid = next(m["pid"] for m in router.ps() if m["name"] == "a")
        os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while not [e for e in events(router, "crash", "a") if e["pid"] == pid] and time.monotonic() < deadline:
            time.sleep(0.05)
        crash = [e for e in events(router, "crash", "a") if e["pid"] == pid][-1]
        assert "SIGKILL" in crash["reason"]
        chat(c, "a")
    restart = events(router, "restart", "a")[-1]
    assert restart["seq"] > crash["seq"] and "SIGKILL" in restart["reason"]
    assert events(router, "ready", "a")[-1]["seq"] > restart["seq"]
    after = scrape(router)
    for name in ("mlx_serve_model_crashes_total", "mlx_serve_model_restarts_total", "mlx_serve_model_loads_total"):
        assert value(after, name, model="a") - value(before, name, model="a") == 1, name


def test_a_large_worker_log_is_rotated_when_the_worker_starts(router: Router) -> None:
    log = Path(router.server["state_dir"]) / "logs" / "worker-b.log"
    with router.client() as c:
        chat(c, "b")
        assert c.post("/api/unload", json={"model": "b"}).status_code == 200
        with open(log, "ab") as f:
            f.truncate(11 * 1000**2)  # past the 10 MB limit (sparse: instant)
        chat(c, "b")
    rotated = log.with_name("worker-b.log.1")
    assert rotated.stat().st_size >= 11 * 1000**2
    assert log.stat().st_size < 1000**2
    assert "starting b" in log.read_text()


def test_status_prints_a_table_of_models_against_the_budget(router: Router) -> None:
    with router.client() as c:
        chat(c, "a")
    out = mlx_serve("status", "--config", str(router.config_path))
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert "is up" in lines[0]
    assert "1.0 GB of 1.5 GB budget (67%)" in out.stdout
    header = next(i for i, line in enumerate(lines) if line.startswith("MODEL"))
    assert lines[header + 1].split()[:3] == ["a", "text", "ready"]
    assert lines[header + 2].split()[:3] == ["b", "text", "stopped"]
    assert re.search(r"in (9m|10m00s)", lines[header + 1])  # the default keep_alive, 10 minutes, counting down


def test_logs_prints_and_follows_a_worker_log(router: Router) -> None:
    config = str(router.config_path)
    printed = mlx_serve("logs", "--model", "a", "-n", "5", "--config", config)
    assert printed.returncode == 0 and len(printed.stdout.splitlines()) == 5
    unknown = mlx_serve("logs", "--model", "nope", "--config", config)
    assert unknown.returncode != 0 and "configured: a, b" in unknown.stderr
    router_log = mlx_serve("logs", "--config", config)  # a foreground router writes no router.log
    assert router_log.returncode != 0 and "--detach" in router_log.stderr

    with router.client() as c:
        assert c.post("/api/unload", json={"model": "b"}).status_code == 200
        follower = subprocess.Popen([sys.executable, "-m", "mlx_serve.cli", "logs", "-f", "-n", "0", "--model", "b",
                                     "--config", config], stdout=subprocess.PIPE, text=True, env=TEST_ENV)
        lines: list[str] = []
        reader = threading.Thread(target=lambda: lines.extend(follower.stdout), daemon=True)  # type: ignore[arg-type]
        reader.start()
        try:
            time.sleep(0.5)
            chat(c, "b")  # starting b appends to its log
            deadline = time.monotonic() + 10
            while not any("starting b" in line for line in lines) and time.monotonic() < deadline:
                time.sleep(0.05)
        finally:
            follower.terminate()
            follower.wait(10)
    assert any("starting b" in line for line in lines)


def mlx_serve(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mlx_serve.cli", *args], capture_output=True, text=True,
                          env=TEST_ENV, timeout=60)
