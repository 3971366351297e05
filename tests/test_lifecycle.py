"""Worker supervision across processes: the router's death, stops, bad configs, no MLX in the router."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import psutil
import pytest

from support import TEST_ENV, Router


def _wait_gone(pids: list[int], timeout: float) -> list[int]:
    deadline = time.monotonic() + timeout
    alive = pids
    while time.monotonic() < deadline:
        alive = [p for p in pids if psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE]
        if not alive:
            return []
        time.sleep(0.05)
    return alive


def test_sigkill_of_the_router_leaves_no_worker_alive_after_2s(tmp_path: Path, demo_model: Any) -> None:
    chat = demo_model("demo-chat")
    router = Router(tmp_path, [{"name": "chat", "type": "text", "path": chat["path"]}]).start()
    try:
        with router.client() as c:
            assert c.post("/api/load", json={"model": "chat"}).status_code == 200
        workers = router.worker_pids()
        assert workers, "a worker process should be running"
        os.kill(router.proc.pid, signal.SIGKILL)
        router.proc.wait()
        assert _wait_gone(workers, 2.0) == [], "workers outlived the router by more than 2 s"
    finally:
        router.stop()


def test_sigterm_stops_workers_and_removes_the_runtime_dir(tmp_path: Path, demo_model: Any) -> None:
    chat = demo_model("demo-chat")
    router = Router(tmp_path, [{"name": "chat", "type": "text", "path": chat["path"]}]).start()
    with router.client() as c:
        assert c.post("/api/load", json={"model": "chat"}).status_code == 200
    workers = router.worker_pids()
    runtime_dir = Path(router.server["runtime_dir"])
    assert runtime_dir.is_dir() and (runtime_dir.stat().st_mode & 0o777) == 0o700
    router.stop()
    assert router.proc.returncode == 0
    assert _wait_gone(workers, 1.0) == []
    assert not runtime_dir.exists()


def test_running_router_has_no_mlx_library_mapped(tmp_path: Path, demo_model: Any) -> None:
    chat = demo_model("demo-chat")
    with Router(tmp_path, [{"name": "chat", "type": "text", "path": chat["path"]}]) as router:
        with router.client() as c:
            assert c.post("/v1/chat/completions", json={"model": "chat", "max_tokens": 2,
                                                        "messages": [{"role": "user", "content": "x"}]}).status_code == 200
        router_maps = {m.path for m in psutil.Process(router.proc.pid).memory_maps()}
        worker_maps = {m.path for pid in router.worker_pids() for m in psutil.Process(pid).memory_maps()}
    assert any("libmlx" in p for p in worker_maps), "sanity: the worker does map MLX"
    assert not any("libmlx" in p or "/mlx/" in p for p in router_maps)


def test_worker_that_fails_to_load_gives_502_with_its_log(tmp_path: Path) -> None:
    empty = tmp_path / "not-a-model"
    empty.mkdir()
    with Router(tmp_path, [{"name": "broken", "type": "text", "path": str(empty)}]) as router:
        with router.client() as c:
            r = c.post("/v1/chat/completions", json={"model": "broken", "messages": [{"role": "user", "content": "x"}]})
            assert r.status_code == 502
            message = r.json()["error"]["message"]
            assert "broken" in message and "log" in message
            assert c.get("/health").status_code == 200
        assert router.worker_pids() == []


def _start_with(tmp_path: Path, text: str) -> subprocess.CompletedProcess:
    config = tmp_path / "models.yaml"
    config.write_text(text)
    return subprocess.run([sys.executable, "-m", "mlx_serve.cli", "start", "--config", str(config)],
                          capture_output=True, text=True, env=TEST_ENV, timeout=60)


@pytest.mark.parametrize("text, expected", [
    ("models:\n  - name: a\n    type: text\n    path: /x\n    pathh: /y\n", ["models[0]", "'a'", "'pathh'", "did you mean 'path'"]),
    ("models:\n  - name: a\n    type: text\n    path: /x\n  - name: a\n    type: text\n    path: /y\n",
     ["models[1]", "'a'", "'name'", "duplicate"]),
    ("models:\n  - name: a\n    type: llm\n    path: /x\n", ["models[0]", "'a'", "'type'", "llm"]),
    ("models:\n  - name: a\n    type: text\n", ["models[0]", "'a'", "'path'", "missing"]),
    ("server:\n  port: abc\nmodels: []\n", ["server", "'port'", "abc"]),
], ids=["unknown-key", "duplicate-name", "bad-type", "missing-path", "bad-port"])
def test_bad_models_yaml_stops_the_start_naming_file_model_and_key(tmp_path: Path, text: str,
                                                                     expected: list[str]) -> None:
    proc = _start_with(tmp_path, text)
    assert proc.returncode != 0
    output = proc.stderr + proc.stdout
    assert str(tmp_path / "models.yaml") in output
    for fragment in expected:
        assert fragment in output, f"{fragment!r} missing from:\n{output}"


def test_a_model_that_is_not_on_this_machine_is_a_clear_503(tmp_path: Path) -> None:
    models = [{"name": "remote", "type": "text", "path": "mlx-community/not-downloaded-here"},
              {"name": "gone", "type": "text", "path": str(tmp_path / "no-such-dir")}]
    env = {"HF_HUB_CACHE": str(tmp_path / "empty-cache")}
    with Router(tmp_path, models, env=env) as router, router.client() as c:
        for name, fragment in (("remote", "mlx-serve pull remote"), ("gone", "does not exist")):
            r = c.post("/v1/chat/completions", json={"model": name, "messages": [{"role": "user", "content": "x"}]})
            assert r.status_code == 503
            assert fragment in r.json()["error"]["message"]
        assert router.worker_pids() == []


def test_a_start_over_start_timeout_is_killed_and_quotes_the_log(tmp_path: Path, demo_model: Any) -> None:
    chat = demo_model("demo-chat")
    models = [{"name": "slow", "type": "text", "path": chat["path"], "start_timeout": "0.2s"}]
    with Router(tmp_path, models) as router, router.client() as c:
        r = c.post("/v1/chat/completions", json={"model": "slow", "messages": [{"role": "user", "content": "x"}]})
        assert r.status_code == 502
        message = r.json()["error"]["message"]
        assert "start_timeout" in message and "starting slow" in message  # the log's header line is quoted
        assert _wait_gone(router.worker_pids(), 2.0) == []
