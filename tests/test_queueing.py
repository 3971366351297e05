"""Requests that wait for a model: queue limits, timeouts, disconnects; preload and remembered footprints."""

from __future__ import annotations

import json
import socket
import threading
import time
from pathlib import Path
from typing import Any

import httpx

from support import Router


def _models(path: str, names: list[str], **extra: Any) -> list[dict[str, Any]]:
    return [{"name": n, "type": "text", "path": path, "memory": "1GB", **extra} for n in names]


def _hold_a_stream(router: Router, model: str, tokens: int = 3000) -> tuple[threading.Thread, threading.Event]:
    """Keep ``model`` busy with a slowly read stream until the returned event is set."""
    release = threading.Event()
    started = threading.Event()

    def run() -> None:
        with router.client() as c, c.stream("POST", "/v1/chat/completions", json={
                "model": model, "max_tokens": tokens, "stream": True,
                "messages": [{"role": "user", "content": "x"}]}) as s:
            for _ in s.iter_lines():
                started.set()
                if release.wait(0.01):
                    break

    t = threading.Thread(target=run)
    t.start()
    assert started.wait(30)
    return t, release


def test_queue_timeout_and_full_queue_are_503_with_retry_after(tmp_path: Path, demo_model: Any) -> None:
    path = demo_model("demo-chat")["path"]
    server = {"memory_budget": "1.5GB", "queue_size": 1, "queue_timeout": "1s", "min_residency": "60s"}
    with Router(tmp_path, _models(path, ["a", "b"]), server) as router:
        t, release = _hold_a_stream(router, "a")
        try:
            results: dict[str, httpx.Response] = {}

            def ask(key: str) -> None:
                with router.client() as c:
                    results[key] = c.post("/v1/chat/completions", json={
                        "model": "b", "max_tokens": 2, "messages": [{"role": "user", "content": "x"}]})

            waiting = threading.Thread(target=ask, args=("queued",))
            waiting.start()
            time.sleep(0.3)
            ask("overflow")  # the queue (size 1) is full
            waiting.join(10)
        finally:
            release.set()
            t.join(30)
        full, timed_out = results["overflow"], results["queued"]
        assert full.status_code == 503 and full.json()["error"]["code"] == "queue_full"
        assert int(full.headers["retry-after"]) >= 1
        assert timed_out.status_code == 503 and timed_out.json()["error"]["code"] == "queue_timeout"
        assert int(timed_out.headers["retry-after"]) >= 1
        assert [m["name"] for m in router.ps()] == ["a"]  # a was never cut to make room


def test_a_client_that_disconnects_while_queued_leaves_the_queue(tmp_path: Path, demo_model: Any) -> None:
    path = demo_model("demo-chat")["path"]
    server = {"memory_budget": "1.5GB", "queue_timeout": "60s", "min_residency": "60s"}
    with Router(tmp_path, _models(path, ["a", "b"]), server) as router:
        t, release = _hold_a_stream(router, "a")
        try:
            body = json.dumps({"model": "b", "max_tokens": 2, "messages": [{"role": "user", "content": "x"}]})
            raw = (f"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                   f"Content-Length: {len(body)}\r\n\r\n{body}").encode()
            sock = socket.create_connection(("127.0.0.1", router.port))
            sock.sendall(raw)
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline and not _queue(router)["by_model"].get("b"):
                time.sleep(0.05)
            assert _queue(router)["by_model"] == {"b": 1}, "b's request should be queued"
            sock.close()  # the client goes away
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline and _queue(router)["waiting"]:
                time.sleep(0.05)
            assert _queue(router)["waiting"] == 0
        finally:
            release.set()
            t.join(30)
        # b's load was abandoned with its only request: nothing evicted a for it
        assert [m["name"] for m in router.ps()] == ["a"]


def _queue(router: Router) -> dict[str, Any]:
    with router.client() as c:
        return c.get("/api/ps").json()["queue"]


def test_preload_loads_at_start(tmp_path: Path, demo_model: Any) -> None:
    path = demo_model("demo-chat")["path"]
    models = [{"name": "p", "type": "text", "path": path, "preload": True},
              {"name": "q", "type": "text", "path": path}]
    with Router(tmp_path, models) as router:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not router.ps():
            time.sleep(0.05)
        assert [m["name"] for m in router.ps()] == ["p"]


def test_measured_footprint_is_remembered_across_restarts(tmp_path: Path, demo_model: Any) -> None:
    path = demo_model("demo-chat")["path"]
    models = [{"name": "m", "type": "text", "path": path}]
    router = Router(tmp_path, models)
    with router:
        with router.client() as c:
            assert c.post("/api/load", json={"model": "m"}).status_code == 200
        measured = router.ps()[0]["size"]
    store = json.loads((Path(router.server["state_dir"]) / "footprints.json").read_text())
    assert store["m"]["bytes"] == measured and store["m"]["path"] == path
    assert 20 * 1000**2 < measured < 2000 * 1000**2  # an RSS-like figure, not the weights' few MB
    with router:  # same state dir: the plan starts from the measured figure, before any load
        with router.client() as c:
            card = c.get("/v1/models/m").json()
        assert card["state"] == "stopped"
        assert card["expected_memory"] == measured
