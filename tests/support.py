"""Helpers shared by the tests: build demo models, start a worker by hand, talk over its socket."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx

TEST_ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}


def build_demo_models(out: Path, only: list[str] | None = None) -> dict[str, Any]:
    """Run the demo builder (a subprocess: the test process never imports MLX)."""
    cmd = [sys.executable, "-m", "mlx_serve_workers.demo", str(out)]
    for name in only or []:
        cmd += ["--only", name]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=TEST_ENV, timeout=600)
    if proc.returncode != 0:
        raise RuntimeError(f"demo build failed:\n{proc.stderr}")
    return json.loads(proc.stdout)


@contextlib.contextmanager
def run_worker(kind: str, model_path: str | Path, options: dict[str, Any] | None = None,
               timeout: float = 120.0) -> Iterator[tuple[httpx.Client, subprocess.Popen, Path]]:
    """Start ``python -m mlx_serve_workers.<kind>`` on a private socket, wait for its ready line.

    Yields an httpx client bound to the worker's Unix socket, the process, and its log file.
    """
    rundir = Path(tempfile.mkdtemp(prefix="mlxw-"))
    os.chmod(rundir, 0o700)
    sock = rundir / "w.sock"
    log = rundir / "worker.log"
    read_fd, write_fd = os.pipe()
    cmd = [sys.executable, "-m", f"mlx_serve_workers.{kind}", "--socket", str(sock),
           "--model-path", str(model_path), "--name", f"test-{kind}",
           "--options", json.dumps(options or {}), "--status-fd", str(write_fd)]
    with open(log, "wb") as logf:
        proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=logf, stderr=subprocess.STDOUT,
                                pass_fds=(write_fd,), env=TEST_ENV, start_new_session=True)
    os.close(write_fd)
    status = os.fdopen(read_fd)
    try:
        deadline = time.monotonic() + timeout
        ready = None
        for line in status:
            event = json.loads(line)
            if event["event"] == "ready":
                ready = event
                break
            if event["event"] == "failed" or time.monotonic() > deadline:
                break
        if ready is None:
            proc.kill()
            raise RuntimeError(f"worker {kind} did not become ready:\n{log.read_text()[-3000:]}")
        client = httpx.Client(transport=httpx.HTTPTransport(uds=str(sock)), base_url="http://worker",
                              timeout=60)
        try:
            yield client, proc, log
        finally:
            client.close()
    finally:
        status.close()
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        shutil.rmtree(rundir, ignore_errors=True)


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Router:
    """A real ``mlx-serve start`` subprocess on a free port, with its own state and runtime dirs."""

    def __init__(self, tmp: Path, models: list[dict[str, Any]], server: dict[str, Any] | None = None,
                 env: dict[str, str] | None = None, name: str = "router") -> None:
        import yaml

        self.dir = tmp / name
        self.dir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.runtime_dir = Path(tempfile.mkdtemp(prefix="mlxs-"))  # short: Unix socket paths are limited
        self.server = {"port": self.port, "state_dir": str(self.dir / "state"),
                       "runtime_dir": str(self.runtime_dir / "run"), "memory_budget": "8GB", **(server or {})}
        self.config_path = self.dir / "models.yaml"
        self.config_path.write_text(yaml.safe_dump({"server": self.server, "models": models}, sort_keys=False))
        self.env = {**TEST_ENV, **(env or {})}
        self.proc: subprocess.Popen | None = None
        self.log_path = self.dir / "router.log"
        self.base_url = f"http://127.0.0.1:{self.port}"
        api_key = self.server.get("api_key")
        self.headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}

    def start(self, timeout: float = 30.0) -> "Router":
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "mlx_serve.cli", "start", "--config", str(self.config_path)],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=self.env,
                start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"router exited ({self.proc.returncode}):\n{self.log()}")
            try:
                if httpx.get(f"{self.base_url}/health", timeout=1).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.05)
        raise RuntimeError(f"router did not come up:\n{self.log()}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-5000:] if self.log_path.exists() else ""

    def client(self, **kwargs: Any) -> httpx.Client:
        return httpx.Client(base_url=self.base_url, headers=self.headers, timeout=kwargs.pop("timeout", 120),
                            **kwargs)

    def openai(self, **kwargs: Any) -> Any:
        import openai

        return openai.OpenAI(base_url=f"{self.base_url}/v1", api_key=self.server.get("api_key") or "x",
                             max_retries=0, timeout=kwargs.pop("timeout", 120), **kwargs)

    def ps(self) -> list[dict[str, Any]]:
        with self.client() as c:
            return c.get("/api/ps").json()["models"]

    def worker_pids(self) -> list[int]:
        import psutil

        if self.proc is None:
            return []
        try:
            return [p.pid for p in psutil.Process(self.proc.pid).children(recursive=True)]
        except psutil.NoSuchProcess:
            return []

    def stop(self, timeout: float = 30.0) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        import signal as _signal

        self.proc.send_signal(_signal.SIGTERM)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, _signal.SIGKILL)
            self.proc.wait()

    def __enter__(self) -> "Router":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()
