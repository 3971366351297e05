"""The mlx-serve command line, run as a user runs it: init --demo, start --detach, status, load, ps, unload, stop."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest
import yaml

from support import TEST_ENV, free_port


def mlx_serve(*args: str, env: dict[str, str] | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mlx_serve.cli", *args], capture_output=True, text=True,
                          env={**TEST_ENV, **(env or {})}, timeout=timeout)


def test_init_writes_the_commented_example(tmp_path: Path) -> None:
    target = tmp_path / "models.yaml"
    proc = mlx_serve("init", "--config", str(target))
    assert proc.returncode == 0, proc.stderr
    text = target.read_text()
    assert text.startswith("#") and "keep_alive" in text
    again = mlx_serve("init", "--config", str(target))
    assert again.returncode != 0 and "--force" in again.stderr


@pytest.fixture(scope="module")
def demo_config(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, subprocess.CompletedProcess]:
    """`mlx-serve init --demo` into a fresh directory, with a free port and private dirs."""
    tmp = tmp_path_factory.mktemp("cli-demo")
    config = tmp / "models.yaml"
    proc = mlx_serve("init", "--demo", str(tmp / "models"), "--config", str(config), timeout=600)
    assert proc.returncode == 0, proc.stderr
    data = yaml.safe_load(config.read_text())
    data["server"].update({"port": free_port(), "state_dir": str(tmp / "state"),
                           "runtime_dir": f"/tmp/mlxcli-{os.getpid()}"})
    config.write_text(yaml.safe_dump(data))
    return config, proc


def test_init_demo_builds_every_kind_and_says_it_is_gibberish(demo_config: tuple[Path, Any]) -> None:
    config, proc = demo_config
    names = [m["name"] for m in yaml.safe_load(config.read_text())["models"]]
    assert {"demo-chat", "demo-vision", "demo-embed", "demo-tts", "demo-stt"} <= set(names)
    assert "gibberish" in proc.stdout and "random weights" in proc.stdout


def test_detached_start_status_load_ps_unload_stop(demo_config: tuple[Path, Any]) -> None:
    config, _ = demo_config
    port = yaml.safe_load(config.read_text())["server"]["port"]
    started = mlx_serve("start", "--detach", "--config", str(config))
    assert started.returncode == 0, started.stderr + started.stdout
    try:
        pidfile = Path(yaml.safe_load(config.read_text())["server"]["state_dir"]) / f"router-{port}.pid"
        router_pid = json.loads(pidfile.read_text())["pid"]
        assert psutil.pid_exists(router_pid)
        assert "already running" in mlx_serve("start", "--detach", "--config", str(config)).stderr

        status = mlx_serve("status", "--config", str(config))
        assert status.returncode == 0 and "is up" in status.stdout and "no models loaded" in status.stdout

        loaded = mlx_serve("load", "demo-chat", "--keep-alive", "-1", "--config", str(config))
        assert loaded.returncode == 0 and "loaded demo-chat" in loaded.stdout, loaded.stderr
        ps = mlx_serve("ps", "--config", str(config))
        assert "demo-chat" in ps.stdout and "pinned" in ps.stdout

        client = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=60)
        assert client.post("/v1/chat/completions", json={
            "model": "demo-chat", "max_tokens": 2, "messages": [{"role": "user", "content": "x"}]}).status_code == 200

        unloaded = mlx_serve("unload", "demo-chat", "--config", str(config))
        assert unloaded.returncode == 0 and "unloaded demo-chat" in unloaded.stdout
        assert client.get("/api/ps").json()["models"] == []
        assert "unknown" not in mlx_serve("load", "nope", "--config", str(config)).stdout
        assert "not found" in mlx_serve("load", "nope", "--config", str(config)).stderr
    finally:
        stopped = mlx_serve("stop", "--config", str(config))
    assert stopped.returncode == 0 and "stopped" in stopped.stdout
    assert not psutil.pid_exists(router_pid) or psutil.Process(router_pid).status() == psutil.STATUS_ZOMBIE
    assert not pidfile.exists()
    assert "not running" in mlx_serve("status", "--config", str(config)).stderr


def test_start_cleans_a_stale_pidfile(tmp_path: Path) -> None:
    port = free_port()
    state = tmp_path / "state"
    state.mkdir()
    (state / f"router-{port}.pid").write_text(json.dumps({"pid": 999999, "port": port}))
    config = tmp_path / "models.yaml"
    config.write_text(yaml.safe_dump({"server": {"port": port, "state_dir": str(state),
                                                 "runtime_dir": str(tmp_path / "run")}, "models": []}))
    started = mlx_serve("start", "--detach", "--config", str(config))
    try:
        assert started.returncode == 0, started.stderr
        assert json.loads((state / f"router-{port}.pid").read_text())["pid"] != 999999
    finally:
        mlx_serve("stop", "--config", str(config))
