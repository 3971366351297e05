"""Authentication, binding and isolation."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest

from support import TEST_ENV, Router

KEY = "s3cret-key"

# Every route the router serves, with a body that would be valid with the key.
ROUTES = [
    ("POST", "/v1/chat/completions", {"model": "chat", "messages": [{"role": "user", "content": "x"}]}),
    ("POST", "/v1/completions", {"model": "chat", "prompt": "x"}),
    ("POST", "/v1/embeddings", {"model": "chat", "input": "x"}),
    ("POST", "/v1/audio/speech", {"model": "chat", "input": "x"}),
    ("POST", "/v1/rerank", {"model": "chat", "query": "q", "documents": ["d"]}),
    ("POST", "/rerank", {"model": "chat", "query": "q", "documents": ["d"]}),
    ("POST", "/v1/audio/transcriptions", None),
    ("POST", "/v1/audio/translations", None),
    ("GET", "/v1/models", None),
    ("GET", "/v1/models/chat", None),
    ("GET", "/api/ps", None),
    ("POST", "/api/load", {"model": "chat"}),
    ("POST", "/api/unload", {}),
    ("GET", "/api/events", None),
    ("GET", "/metrics", None),
    ("GET", "/api/requests", None),
    ("GET", "/dashboard", None),
    ("GET", "/api/version", None),
    ("GET", "/api/tags", None),
    ("POST", "/api/show", {"model": "chat"}),
    ("POST", "/api/chat", {"model": "chat", "messages": [{"role": "user", "content": "x"}]}),
    ("POST", "/api/generate", {"model": "chat", "prompt": "x"}),
    ("POST", "/api/embed", {"model": "chat", "input": "x"}),
    ("POST", "/api/embeddings", {"model": "chat", "prompt": "x"}),
    ("POST", "/api/pull", {"model": "chat"}),
    ("DELETE", "/api/delete", {"model": "chat"}),
    ("POST", "/api/create", {"model": "chat"}),
    ("POST", "/api/copy", {"source": "chat", "destination": "x"}),
    ("POST", "/api/push", {"model": "chat"}),
]


@pytest.fixture(scope="module")
def secured(tmp_path_factory: pytest.TempPathFactory, demo_model: Any) -> Any:
    path = demo_model("demo-chat")["path"]
    with Router(tmp_path_factory.mktemp("auth"), [{"name": "chat", "type": "text", "path": path}],
                {"api_key": KEY}) as router:
        yield router


def _routes_of_the_app() -> set[tuple[str, str]]:
    from mlx_serve.app import create_app
    from mlx_serve.config import parse_config

    app = create_app(parse_config({"models": []}))
    found = set()
    for route in app.routes:
        for method in sorted(getattr(route, "methods", None) or []):
            if method != "HEAD":
                found.add((method, route.path.replace("{model:path}", "chat")))
    return found


def test_the_route_table_covers_every_route() -> None:
    covered = {(m, p) for m, p, _ in ROUTES} | {("GET", "/health")}
    assert _routes_of_the_app() <= covered, "a new route needs an auth test"


@pytest.mark.parametrize("method, path, body", ROUTES, ids=[f"{m} {p}" for m, p, _ in ROUTES])
@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer wrong"}, {"x-api-key": "wrong"},
                                     {"Authorization": "Basic " + KEY}], ids=["none", "bearer-wrong",
                                                                            "x-api-key-wrong", "basic"])
def test_every_route_but_health_refuses_a_missing_or_wrong_key(secured: Router, method: str, path: str,
                                                              body: Any, headers: dict[str, str]) -> None:
    r = httpx.request(method, secured.base_url + path, json=body, headers=headers, timeout=30)
    assert r.status_code == 401
    assert r.json()["error"]["type"] == "authentication_error"


def test_health_is_open_and_the_right_key_works_both_ways(secured: Router) -> None:
    assert httpx.get(secured.base_url + "/health").status_code == 200
    for headers in ({"Authorization": f"Bearer {KEY}"}, {"x-api-key": KEY}):
        assert httpx.get(secured.base_url + "/v1/models", headers=headers).status_code == 200
    reply = secured.openai().chat.completions.create(model="chat", messages=[{"role": "user", "content": "x"}],
                                                     max_tokens=2)
    assert reply.choices[0].message.content is not None


def test_non_loopback_bind_without_a_key_refuses_to_start(tmp_path: Path) -> None:
    config = tmp_path / "models.yaml"
    config.write_text("server:\n  host: 0.0.0.0\nmodels: []\n")
    proc = subprocess.run([sys.executable, "-m", "mlx_serve.cli", "start", "--config", str(config)],
                          capture_output=True, text=True, env=TEST_ENV, timeout=30)
    assert proc.returncode != 0
    assert "api_key" in proc.stderr and "MLX_SERVE_API_KEY" in proc.stderr and "--allow-insecure" in proc.stderr


def test_workers_listen_only_on_private_unix_sockets(secured: Router) -> None:
    with secured.client() as c:
        assert c.post("/api/load", json={"model": "chat"}).status_code == 200
    pids = secured.worker_pids()
    assert pids
    for pid in pids:
        inet = [conn for conn in psutil.Process(pid).net_connections(kind="inet") if conn.status == "LISTEN"]
        assert inet == [], f"worker {pid} listens on TCP: {inet}"
    runtime_dir = Path(secured.server["runtime_dir"])
    assert (runtime_dir.stat().st_mode & 0o777) == 0o700
    sockets = list(runtime_dir.glob("*.sock"))
    assert sockets


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to act as another user")
def test_another_local_user_cannot_connect_to_a_worker(secured: Router) -> None:
    with secured.client() as c:
        assert c.post("/api/load", json={"model": "chat"}).status_code == 200
    sock = next(Path(secured.server["runtime_dir"]).glob("*.sock"))
    assert _connect_as(65534, sock) == "PermissionError"  # user nobody
    assert _connect_as(os.geteuid(), sock) == "connected"  # the same probe works for the router's user


def _connect_as(uid: int, sock: Path) -> str:
    """Try to connect to a Unix socket from a forked child running as ``uid``; return what happened."""
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: drop to uid, try, report, exit without running any Python cleanup
        try:
            os.close(read_fd)
            if uid != os.geteuid():
                os.setgroups([])
                os.setgid(uid)
                os.setuid(uid)
            s = socket.socket(socket.AF_UNIX)
            try:
                s.connect(str(sock))
                outcome = "connected"
            except OSError as e:
                outcome = type(e).__name__
            os.write(write_fd, outcome.encode())
        finally:
            os._exit(0)
    os.close(write_fd)
    with os.fdopen(read_fd) as f:
        outcome = f.read()
    os.waitpid(pid, 0)
    return outcome
