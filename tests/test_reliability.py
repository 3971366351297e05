"""Faults with real workers: a worker killed mid-stream, a crash loop, a hung worker, shutdown phases."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from support import Router


def _chat(c: httpx.Client, model: str, **body: Any) -> httpx.Response:
    return c.post("/v1/chat/completions", json={"model": model, "messages": [{"role": "user", "content": "hi"}],
                                                "max_tokens": body.pop("max_tokens", 4), **body})


def _pid(router: Router, model: str) -> int:
    return next(m["pid"] for m in router.ps() if m["name"] == model)


def test_worker_killed_mid_stream_gives_an_error_event_then_a_new_worker(tmp_path: Path, demo_model: Any) -> None:
    path = demo_model("demo-chat")["path"]
    with Router(tmp_path, [{"name": "chat", "type": "text", "path": path}]) as router:
        client = router.openai()
        first = client.chat.completions.create(model="chat", messages=[{"role": "user", "content": "x"}],
                                               max_tokens=2)
        assert first.choices[0].message.content is not None
        pid = _pid(router, "chat")
        stream = client.chat.completions.create(model="chat", messages=[{"role": "user", "content": "x"}],
                                                max_tokens=5000, stream=True)
        received = 0
        with pytest.raises(openai.APIError) as err:
            for _chunk in stream:
                received += 1
                if received == 3:
                    os.kill(pid, signal.SIGKILL)
        assert received >= 3
        assert "died" in str(err.value) and "SIGKILL" in str(err.value)
        # the router noticed at once: the model is no longer loaded in its books
        assert all(m["name"] != "chat" for m in router.ps())
        again = client.chat.completions.create(model="chat", messages=[{"role": "user", "content": "x"}],
                                               max_tokens=2)
        assert again.choices[0].message.content is not None
        assert _pid(router, "chat") != pid


def test_non_streaming_request_to_a_dying_worker_is_a_502_quoting_its_log(tmp_path: Path, demo_model: Any) -> None:
    path = demo_model("demo-chat")["path"]
    with Router(tmp_path, [{"name": "chat", "type": "text", "path": path}]) as router:
        with router.client() as c:
            assert _chat(c, "chat").status_code == 200
            pid = _pid(router, "chat")
            threading.Timer(0.3, os.kill, (pid, signal.SIGKILL)).start()
            r = _chat(c, "chat", max_tokens=20000)
            assert r.status_code == 502
            error = r.json()["error"]
            assert "died" in error["message"] and "log" in error["message"]
            assert error["code"] == "worker_died"


def test_crash_loop_is_held_back_instead_of_a_fourth_spawn(tmp_path: Path) -> None:
    broken = tmp_path / "broken-model"
    broken.mkdir()
    (broken / "config.json").write_text(json.dumps({"model_type": "qwen3"}))  # loads, then fails
    server = {"restart_limit": 3, "restart_window": "60s", "restart_backoff": "30s"}
    with Router(tmp_path, [{"name": "bad", "type": "text", "path": str(broken)}], server) as router:
        with router.client() as c:
            statuses = [_chat(c, "bad").status_code for _ in range(3)]
            assert statuses == [502, 502, 502]
            started = time.monotonic()
            r = _chat(c, "bad")
            assert time.monotonic() - started < 1.0  # no spawn this time
            assert r.status_code == 503
            assert int(r.headers["retry-after"]) > 10
            assert "held back" in r.json()["error"]["message"]
            loads = [e for e in c.get("/api/events").json()["events"] if e["event"] == "load"]
            assert len(loads) == 3
            backoff = [e for e in c.get("/api/events").json()["events"] if e["event"] == "backoff"]
            assert backoff and backoff[-1]["model"] == "bad"


def test_hung_worker_is_replaced_by_the_liveness_probe(tmp_path: Path, demo_model: Any) -> None:
    path = demo_model("demo-chat")["path"]
    server = {"health_interval": "0.5s", "health_timeout": "0.5s"}
    with Router(tmp_path, [{"name": "chat", "type": "text", "path": path}], server) as router:
        with router.client() as c:
            assert _chat(c, "chat").status_code == 200
            pid = _pid(router, "chat")
            os.kill(pid, signal.SIGSTOP)
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline and any(m["name"] == "chat" for m in router.ps()):
                time.sleep(0.1)
            assert not any(m["name"] == "chat" for m in router.ps()), "the hung worker was not replaced"
            crash = [e for e in c.get("/api/events").json()["events"] if e["event"] == "crash"]
            assert "health probe" in crash[-1]["reason"]
            assert _chat(c, "chat").status_code == 200
            assert _pid(router, "chat") != pid


def test_stop_fails_queued_requests_and_lets_streams_finish(tmp_path: Path, demo_model: Any) -> None:
    path = demo_model("demo-chat")["path"]
    models = [{"name": "a", "type": "text", "path": path, "memory": "1GB"},
              {"name": "b", "type": "text", "path": path, "memory": "1GB"}]
    router = Router(tmp_path, models, {"memory_budget": "1.5GB", "min_residency": "60s"}).start()
    results: dict[str, Any] = {}
    try:
        with router.client() as c:
            assert _chat(c, "a").status_code == 200

            def stream_a() -> None:
                with router.client() as c2, c2.stream("POST", "/v1/chat/completions", json={
                        "model": "a", "messages": [{"role": "user", "content": "x"}], "max_tokens": 300,
                        "stream": True}) as s:
                    lines = []
                    for line in s.iter_lines():
                        lines.append(line)
                        time.sleep(0.005)
                    results["stream"] = lines

            def queued_b() -> None:
                with router.client() as c3:
                    results["queued"] = _chat(c3, "b")

            ts = [threading.Thread(target=stream_a), threading.Thread(target=queued_b)]
            for t in ts:
                t.start()
                time.sleep(0.3)
            router.proc.send_signal(signal.SIGTERM)
            for t in ts:
                t.join(30)
        router.proc.wait(30)
    finally:
        router.stop()
    assert results["queued"].status_code == 503
    assert results["queued"].json()["error"]["code"] == "shutting_down"
    assert "data: [DONE]" in results["stream"]
    assert router.proc.returncode == 0
