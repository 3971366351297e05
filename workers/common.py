"""What every worker program shares: its command line, the pipes to the router, memory figures.

The worker protocol (the router side is ``mlx_serve.worker``):

* The router starts ``python -m mlx_serve_workers.<kind> --socket PATH --model-path DIR
  --name NAME --options JSON --status-fd FD`` in a new session (its own process group).
* **stdin** is a pipe from the router. The worker never reads requests from it; end of file
  means the router is gone, and the worker exits at once (so a SIGKILLed router leaves no
  worker behind). On Linux the kernel's parent-death signal backs this up.
* **status fd** carries JSON lines from the worker to the router: ``{"event": "ready", ...}``
  once the model is loaded *and* the socket accepts requests (with the measured memory and
  timings), or ``{"event": "failed", "error": ...}``. The router waits on this pipe instead of
  polling, so a start costs no polling interval.
* The worker serves HTTP on the Unix socket only (never TCP), with ``GET /health`` answering
  ``{"status": "ok", "memory": {...}}`` and its kind's OpenAI endpoints.

Nothing here imports MLX at module level: ``hide_torch()`` must run before the model library.
"""

from __future__ import annotations

import argparse
import asyncio
import ctypes
import json
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

STARTED_AT = time.monotonic()


def hide_torch() -> None:
    """Make torch unimportable before transformers is imported.

    transformers imports torch whenever it is installed, which costs each worker about
    1.4 s and 490 MB and is never used by MLX (see shared notes, "Hiding torch").
    """
    if os.environ.get("MLX_SERVE_KEEP_TORCH") == "1":
        return
    for name in ("torch", "torchvision", "torchaudio"):
        sys.modules.setdefault(name, None)  # type: ignore[arg-type]
    _tolerate_hidden_torch_in_scipy()


def _tolerate_hidden_torch_in_scipy() -> None:
    """Let scipy work while torch is hidden.

    scipy's vendored array-api-compat looks modules up with ``sys.modules[name]`` and then
    ``getattr(module, "Tensor")``, which raises on the None that hides torch: ``import
    scipy.stats`` (pulled in by ``scipy.signal``, which mlx-audio and mlx-whisper import) fails.
    Treat a hidden module like an absent one. Nothing happens where scipy is not installed.
    """
    try:
        from scipy._lib.array_api_compat.common import _helpers
    except Exception:  # no scipy, or a layout this patch does not know: nothing to do
        return
    original = getattr(_helpers, "_issubclass_fast", None)
    if original is None or getattr(original, "_mlx_serve_patched", False):
        return

    def _issubclass_fast(cls: type, modname: str, clsname: str) -> bool:
        if modname in sys.modules and sys.modules[modname] is None:
            return False
        return original(cls, modname, clsname)

    _issubclass_fast._mlx_serve_patched = True  # type: ignore[attr-defined]
    _helpers._issubclass_fast = _issubclass_fast


@dataclass
class WorkerArgs:
    kind: str
    socket: str
    model_path: str
    name: str
    options: dict[str, Any] = field(default_factory=dict)
    status_fd: int | None = None


# What a spare worker imports ahead of time: the slow part of every start (0.2-1 s each).
PREIMPORTS: dict[str, tuple[str, ...]] = {
    "text": ("mlx_lm.server",),
    "vision": ("mlx_vlm.server",),
    "embedding": ("mlx_embeddings",),
    "tts": ("mlx_audio.tts.utils",),
    "stt": ("mlx_whisper",),
    "rerank": ("mlx_lm",),
}


def parse_args(kind: str, argv: list[str] | None = None) -> WorkerArgs:
    """The worker's command line; with ``--spare``, first wait for the router to assign a model.

    A spare worker does its imports, says ``{"event": "spare"}`` on the status pipe and then
    reads one JSON line on stdin: ``{"socket", "model_path", "name", "options", "log_path"}``.
    From there it starts like any worker, with its imports already done, so the router's swap
    costs only the weight load.
    """
    parser = argparse.ArgumentParser(prog=f"mlx_serve_workers.{kind}")
    parser.add_argument("--socket", help="Unix socket path to serve on")
    parser.add_argument("--model-path", help="local model directory")
    parser.add_argument("--name", default=None, help="model name clients use")
    parser.add_argument("--options", default="{}", help="per-model options, as JSON")
    parser.add_argument("--status-fd", type=int, default=None, help="pipe for status lines")
    parser.add_argument("--spare", action="store_true", help="import, then wait for a model on stdin")
    ns = parser.parse_args(argv)
    if ns.spare:
        _wait_as_spare(kind, ns)
    if not ns.socket or not ns.model_path:
        parser.error("--socket and --model-path are required (unless --spare)")
    options = json.loads(ns.options)
    if not isinstance(options, dict):
        parser.error("--options must be a JSON object")
    return WorkerArgs(
        kind=kind,
        socket=ns.socket,
        model_path=ns.model_path,
        name=ns.name or Path(ns.model_path).name,
        options=options,
        status_fd=ns.status_fd,
    )


def _wait_as_spare(kind: str, ns: argparse.Namespace) -> None:
    _set_parent_death_signal()
    started = time.monotonic()
    hide_torch()
    import importlib

    for module in PREIMPORTS.get(kind, ()):
        importlib.import_module(module)
    line = json.dumps({"event": "spare", "pid": os.getpid(), "import_s": round(time.monotonic() - started, 3)})
    if ns.status_fd is not None:
        os.write(ns.status_fd, (line + "\n").encode())
    # Read the assignment byte by byte: nothing after its newline may be consumed here, since
    # the parent-watch thread reads the rest of stdin for end of file.
    data = b""
    while not data.endswith(b"\n"):
        chunk = os.read(0, 1)
        if not chunk:  # the router is gone before it needed us
            os._exit(0)
        data += chunk
    assignment = json.loads(data)
    log_path = assignment.get("log_path")
    if log_path:  # from here on, this worker's output goes to its model's log
        fd = os.open(log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        sys.stdout.flush()
        sys.stderr.flush()
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        os.close(fd)
    ns.socket = assignment["socket"]
    ns.model_path = assignment["model_path"]
    ns.name = assignment.get("name")
    ns.options = json.dumps(assignment.get("options") or {})


class StatusChannel:
    """JSON lines to the router (or to stderr when run by hand without --status-fd)."""

    def __init__(self, fd: int | None) -> None:
        self._file = os.fdopen(fd, "w", buffering=1) if fd is not None else None
        self._lock = threading.Lock()

    def send(self, event: str, **fields: Any) -> None:
        line = json.dumps({"event": event, **fields})
        with self._lock:
            if self._file is None:
                print(f"[status] {line}", file=sys.stderr, flush=True)
                return
            try:
                self._file.write(line + "\n")
                self._file.flush()
            except (BrokenPipeError, ValueError, OSError):
                pass

    def ready(self, timings: dict[str, float] | None = None) -> None:
        self.send("ready", pid=os.getpid(), memory=memory_report(), timings=timings or {})

    def failed(self, error: str) -> None:
        self.send("failed", error=error)


def _set_parent_death_signal() -> None:
    # Linux only: the kernel sends SIGKILL when the parent dies. macOS has no equivalent,
    # so the stdin watcher below is the portable mechanism and this is a second line.
    if not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        PR_SET_PDEATHSIG = 1
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    except OSError:
        pass


def watch_parent(on_exit: Callable[[], None] | None = None) -> None:
    """Exit as soon as the router's end of stdin closes (the router died or let us go)."""
    _set_parent_death_signal()

    def _watch() -> None:
        try:
            while True:
                chunk = os.read(0, 4096)
                if not chunk:
                    break
        except OSError:
            pass
        if on_exit is not None:
            try:
                on_exit()
            except Exception:
                pass
        os._exit(0)

    if os.isatty(0):  # started by hand from a terminal: nothing to watch
        return
    threading.Thread(target=_watch, name="parent-watch", daemon=True).start()


def memory_report() -> dict[str, int]:
    """What this worker holds: MLX active/cache memory where MLX is loaded, and process RSS."""
    report: dict[str, int] = {"rss_bytes": _rss_bytes()}
    mx = sys.modules.get("mlx.core")
    if mx is not None:
        for key, fn in (("mlx_active_bytes", "get_active_memory"), ("mlx_cache_bytes", "get_cache_memory"),
                        ("mlx_peak_bytes", "get_peak_memory")):
            getter = getattr(mx, fn, None)
            if getter is not None:
                try:
                    report[key] = int(getter())
                except Exception:
                    pass
    return report


def _rss_bytes() -> int:
    """Current resident memory of this process (Linux and macOS alike, through psutil)."""
    try:
        import psutil

        return int(psutil.Process().memory_info().rss)
    except Exception:  # psutil missing: /proc on Linux; the peak figure is the best stdlib has on macOS
        try:
            with open("/proc/self/statm") as f:
                return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
        except OSError:
            import resource

            usage = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
            return int(usage if sys.platform == "darwin" else usage * 1024)


def unlink_stale_socket(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def error_body(message: str, type_: str = "invalid_request_error", param: str | None = None,
               code: str | None = None) -> dict[str, Any]:
    """The OpenAI error shape."""
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


def error_response(status: int, message: str, type_: str = "invalid_request_error", param: str | None = None,
                   code: str | None = None) -> Any:
    """A Starlette JSON response with the OpenAI error body."""
    from starlette.responses import JSONResponse

    return JSONResponse(error_body(message, type_, param, code), status_code=status)


def run_asgi_on_socket(app: Any, args: WorkerArgs, status: StatusChannel,
                       timings: dict[str, float], graceful_timeout: float = 5.0) -> None:
    """Serve an ASGI app on the worker's Unix socket; report ready once it accepts connections."""
    import uvicorn

    unlink_stale_socket(args.socket)
    config = uvicorn.Config(app, uds=args.socket, log_level="warning", lifespan="off",
                            timeout_graceful_shutdown=int(graceful_timeout), access_log=False,
                            backlog=1024)
    server = uvicorn.Server(config)

    async def _report_when_started() -> None:
        while not server.started:
            if server.should_exit:
                return
            await asyncio.sleep(0.002)
        timings["total_s"] = time.monotonic() - STARTED_AT
        status.ready(timings)

    async def _main() -> None:
        reporter = asyncio.create_task(_report_when_started())
        await server.serve()
        reporter.cancel()

    try:
        asyncio.run(_main())
    finally:
        unlink_stale_socket(args.socket)


def fail_and_exit(status: StatusChannel, error: BaseException | str) -> None:
    message = error if isinstance(error, str) else f"{type(error).__name__}: {error}"
    print(f"worker failed: {message}", file=sys.stderr, flush=True)
    status.failed(message)
    sys.stderr.flush()
    os._exit(1)
