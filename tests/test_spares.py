"""Warm spare workers: a load takes the spare (imports already done) and a new spare is started."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any


from support import Router


def _wait_for_spare(router: Router, timeout: float = 30.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with router.client() as c:
            spares = c.get("/api/ps").json()["spares"]
        if spares:
            return spares[0]
        time.sleep(0.05)
    raise AssertionError("no spare worker became ready")


def test_a_load_takes_the_spare_and_the_pool_refills(tmp_path: Path, demo_model: Any) -> None:
    path = demo_model("demo-chat")["path"]
    models = [{"name": "a", "type": "text", "path": path}, {"name": "b", "type": "text", "path": path}]
    with Router(tmp_path, models, {"spare_workers": ["text"]}) as router:
        spare = _wait_for_spare(router)
        assert spare["type"] == "text"
        with router.client() as c:
            r = c.post("/v1/chat/completions", json={"model": "a", "max_tokens": 3,
                                                     "messages": [{"role": "user", "content": "x"}]})
            assert r.status_code == 200, r.text
            loaded = next(m for m in c.get("/api/ps").json()["models"] if m["name"] == "a")
            assert loaded["pid"] == spare["pid"], "the model should run in the spare process"
            load_event = [e for e in c.get("/api/events").json()["events"] if e["event"] == "ready"][-1]
            assert load_event["timings"]["spare_import_s"] > 0
            assert load_event["timings"]["import_s"] < 0.2  # the imports were done in advance
        refill = _wait_for_spare(router)
        assert refill["pid"] != spare["pid"]
        # the worker writes to its model's log once adopted, not to the spare log
        log = (Path(router.server["state_dir"]) / "logs" / "worker-a.log").read_text()
        assert "in spare pid" in log


def test_a_spare_is_evicted_first_when_memory_is_needed(tmp_path: Path, demo_model: Any) -> None:
    path = demo_model("demo-embed")["path"]
    models = [{"name": "e", "type": "embedding", "path": path, "memory": "900MB"}]
    # budget: the model fits only if the (text) spare goes
    with Router(tmp_path, models, {"spare_workers": ["text"], "memory_budget": "1GB"}) as router:
        _wait_for_spare(router)
        with router.client() as c:
            r = c.post("/v1/embeddings", json={"model": "e", "input": "hello"})
            assert r.status_code == 200, r.text
            ps = c.get("/api/ps").json()
        assert ps["spares"] == []
        assert ps["memory"]["used"] <= ps["memory"]["budget"]
