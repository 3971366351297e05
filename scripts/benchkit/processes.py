"""The processes the benchmark runs and watches: routers, relays, baselines, and their memory."""

from __future__ import annotations

import contextlib
import json
import math
import os
import platform
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import psutil

from benchkit.clients import chat_body
from benchkit.results import BenchError
from mlx_serve.runtime import worker_environment  # the router package: no MLX
from support import TEST_ENV, Router, free_port


def rss(pid: int) -> int:
    try:
        return psutil.Process(pid).memory_info().rss
    except psutil.Error:
        return 0


def tree(pid: int) -> list[psutil.Process]:
    """``pid`` and its living descendants (zombies excluded: they hold no memory)."""
    try:
        root = psutil.Process(pid)
        procs = [root, *root.children(recursive=True)]
    except psutil.Error:
        return []
    alive = []
    for p in procs:
        with contextlib.suppress(psutil.Error):
            if p.status() != psutil.STATUS_ZOMBIE:
                alive.append(p)
    return alive


def tree_rss(pid: int) -> int:
    total = 0
    for p in tree(pid):
        with contextlib.suppress(psutil.Error):
            total += p.memory_info().rss
    return total


class PeakRSS:
    """Samples one process's RSS in a thread while active (``with peak: ...``); keeps the maximum."""

    def __init__(self, pid: int, interval: float = 0.02) -> None:
        self.pid = pid
        self.interval = interval
        self.peak = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> "PeakRSS":
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        assert self._thread is not None
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, rss(self.pid))
            self._stop.wait(self.interval)


def _die_with_parent() -> None:
    """In a router child: on Linux, get SIGTERM when the benchmark dies, even by SIGKILL (no leftovers)."""
    if sys.platform.startswith("linux"):
        import ctypes

        with contextlib.suppress(OSError):
            ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


class BenchRouter(Router):
    """The tests' Router, stopped (gracefully, workers included) if the benchmark itself is killed."""

    def start(self, timeout: float = 60.0) -> "BenchRouter":
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "mlx_serve.cli", "start", "--config", str(self.config_path)],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=self.env,
                start_new_session=True, preexec_fn=_die_with_parent)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise BenchError(f"router exited ({self.proc.returncode}):\n{self.log()}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{self.base_url}/health", timeout=1).status_code == 200:
                    return self
            time.sleep(0.05)
        raise BenchError(f"router did not come up:\n{self.log()}")


def cpu_seconds(pid: int) -> float:
    try:
        times = psutil.Process(pid).cpu_times()
    except psutil.Error:
        return 0.0
    return times.user + times.system


def _not_zombie(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


BASE_EMBEDDER_SCRIPT = r"""
# The demo BERT builder at all-MiniLM-L6-v2's size (6 layers, 384 wide): random weights, real compute.
import sys
from pathlib import Path
from mlx_serve_workers.common import hide_torch
hide_torch()
import mlx_serve_workers.demo.embedding as demo
demo.CONFIG.update(hidden_size=384, num_hidden_layers=6, num_attention_heads=12, intermediate_size=1536,
                   max_position_embeddings=512)
demo.build(Path(sys.argv[1]))
"""


def build_base_embedder(out: Path) -> dict[str, Any]:
    proc = subprocess.run([sys.executable, "-c", BASE_EMBEDDER_SCRIPT, str(out)], capture_output=True, text=True,
                          env=TEST_ENV, timeout=600)
    if proc.returncode != 0:
        raise BenchError(f"building the MiniLM-sized embedding model failed:\n{proc.stderr[-2000:]}")
    return {"name": "embed-base", "type": "embedding", "path": str(out)}


def stock_mlx_lm_server(model_path: str) -> tuple[float, int]:
    """Stock ``python -m mlx_lm.server``: seconds until /health answers, and RSS after one request."""
    port = free_port()
    started = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "mlx_lm.server", "--model", model_path, "--port", str(port),
                             "--host", "127.0.0.1"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env=TEST_ENV, start_new_session=True)
    try:
        health = math.nan
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=120) as c:
            while time.perf_counter() - started < 120:
                if proc.poll() is not None:
                    raise BenchError(f"stock mlx_lm.server exited with {proc.returncode}")
                with contextlib.suppress(httpx.HTTPError):
                    if c.get("/health", timeout=1).status_code == 200:
                        health = time.perf_counter() - started
                        break
                time.sleep(0.01)
            r = c.post("/v1/chat/completions", json=chat_body("default_model", "Hi", 4, False))
            if r.status_code != 200:
                raise BenchError(f"stock mlx_lm.server answered {r.status_code}: {r.text[:300]}")
        return health, rss(proc.pid)
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


RELAY_SCRIPT = r"""
# Copies bytes between TCP connections on 127.0.0.1:PORT and the Unix socket SOCK, nothing else.
import asyncio, sys

async def pipe(reader, writer):
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except OSError:
        pass
    finally:
        writer.close()

async def handle(client_reader, client_writer):
    upstream_reader, upstream_writer = await asyncio.open_unix_connection(sys.argv[1])
    await asyncio.gather(pipe(client_reader, upstream_writer), pipe(upstream_reader, client_writer))

async def main():
    server = await asyncio.start_server(handle, "127.0.0.1", int(sys.argv[2]))
    print("ready", flush=True)
    await server.serve_forever()

asyncio.run(main())
"""


class ByteRelay:
    """A subprocess relaying a TCP port to a Unix socket byte for byte (the control of section 1)."""

    def __init__(self, socket_path: Path) -> None:
        self.socket_path = socket_path
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None

    def __enter__(self) -> "ByteRelay":
        self.proc = subprocess.Popen([sys.executable, "-c", RELAY_SCRIPT, str(self.socket_path), str(self.port)],
                                     stdout=subprocess.PIPE, text=True, preexec_fn=_die_with_parent)
        assert self.proc.stdout is not None
        if self.proc.stdout.readline().strip() != "ready":
            raise BenchError("the byte relay did not start")
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()


INPROC_SCRIPT = r"""
# The embedding worker's own code, in-process: same pooling, same tokenizer calls, torch hidden.
import json, sys, time
from pathlib import Path
from mlx_serve_workers.common import hide_torch
hide_torch()
from mlx_serve_workers.embedding import Embedder, check_model_dir, check_options

model_dir = Path(sys.argv[1]).resolve()
texts = json.loads(sys.stdin.readline())
embedder = Embedder(model_dir, check_model_dir(model_dir), check_options({}))
embedder.load()
print(json.dumps({"pooling": embedder.pooling}), flush=True)
for line in sys.stdin:
    count, batch = (int(x) for x in line.split())
    started = time.perf_counter()
    for i in range(0, count, batch):
        embedder.embed(embedder.tokenize([texts[j % len(texts)] for j in range(i, min(count, i + batch))]))
    print(json.dumps({"seconds": time.perf_counter() - started}), flush=True)
"""


class InProcessEmbedder:
    """A subprocess running the embedding worker's Embedder on request, outside any server (``run``)."""

    def __init__(self, model_path: str, texts: list[str], env: dict[str, str] | None = None) -> None:
        self.model_path = model_path
        self.texts = texts
        env = env if env is not None else worker_environment(True)  # what the router gives its workers
        self.env = {**env, **{k: v for k, v in TEST_ENV.items() if k not in env}}
        self.proc: subprocess.Popen | None = None

    def __enter__(self) -> "InProcessEmbedder":
        self.proc = subprocess.Popen([sys.executable, "-c", INPROC_SCRIPT, self.model_path], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=self.env)
        assert self.proc.stdin and self.proc.stdout
        self.proc.stdin.write(json.dumps(self.texts) + "\n")
        self.proc.stdin.flush()
        if not self.proc.stdout.readline():
            raise BenchError(f"the in-process embedding baseline for {self.model_path} did not start")
        return self

    def run(self, count: int, batch: int) -> float:
        """Inputs per second embedding ``count`` texts in batches of ``batch`` (tokenizing included)."""
        assert self.proc and self.proc.stdin and self.proc.stdout
        self.proc.stdin.write(f"{count} {batch}\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise BenchError("the in-process embedding baseline exited")
        return count / json.loads(line)["seconds"]

    def __exit__(self, *exc: Any) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()


def machine() -> str:
    """One line: CPU, cores, memory, OS, Python, mlx, and the load average (how busy the machine was)."""
    cpu = platform.processor() or platform.machine() or "unknown CPU"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    try:
        import importlib.metadata as md

        mlx = md.version("mlx")
    except Exception:
        mlx = "not installed"
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    return (f"{cpu}, {os.cpu_count()} cores, {psutil.virtual_memory().total / 1e9:.0f} GB, "
            f"{platform.system()} {platform.release()}, Python {sys.version.split()[0]}, mlx {mlx}; "
            f"load average at the end {load}")
