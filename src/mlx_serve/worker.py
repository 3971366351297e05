"""One worker process for one model: spawn it, wait until it is ready, watch it, stop it.

A :class:`Worker` is the single owner of its :class:`~mlx_serve.state.WorkerState`. It knows
nothing about budgets or requests: the scheduler decides *when* to start and stop workers, the
worker knows *how*. The protocol with the worker program is described in ``workers/common.py``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import ssl
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpcore  # noqa: F401  (httpx imports it at the first transport: 60+ ms on the event loop, mid-load)
import httpx

from mlx_serve.config import ModelConfig
from mlx_serve.logfiles import WORKER_LOG_BACKUPS, WORKER_LOG_MAX_BYTES, rotate_if_larger
from mlx_serve.spares import Spare, open_status_reader
from mlx_serve.state import WorkerState, check_transition

log = logging.getLogger("mlx_serve.worker")

# No TLS ever runs over a worker's Unix socket. A bare context (it would refuse any certificate)
# spares httpx loading the CA bundle for each worker's client: 20-90 ms of the event loop per load.
_UNIX_SOCKET_TLS = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)


class WorkerStartError(RuntimeError):
    """The worker did not become ready; the message quotes the tail of its log."""

    def __init__(self, model: str, reason: str, log_tail: str) -> None:
        self.model = model
        self.reason = reason
        self.log_tail = log_tail
        tail = f"\n--- last lines of its log ---\n{log_tail}" if log_tail else ""
        super().__init__(f"model {model!r} failed to start: {reason}{tail}")


@dataclass
class LaunchSpec:
    """Everything needed to run a worker for one model."""

    model: ModelConfig
    model_path: str
    socket_path: Path
    log_path: Path
    env: dict[str, str]
    start_timeout: float
    stop_timeout: float
    extra_args: list[str] = field(default_factory=list)

    def command(self, status_fd: int) -> list[str]:
        return [sys.executable, "-m", f"mlx_serve_workers.{self.model.type}",
                "--socket", str(self.socket_path), "--model-path", self.model_path,
                "--name", self.model.name, "--options", json.dumps(self.model.options),
                "--status-fd", str(status_fd), *self.extra_args]


ExitCallback = Callable[["Worker", int], None]


class Worker:
    def __init__(self, spec: LaunchSpec, on_unexpected_exit: ExitCallback | None = None) -> None:
        self.spec = spec
        self.name = spec.model.name
        self._state = WorkerState.STOPPED
        self._proc: asyncio.subprocess.Process | None = None
        self._on_unexpected_exit = on_unexpected_exit
        self._exit_task: asyncio.Task[None] | None = None
        self._exited = asyncio.Event()
        self._client: httpx.AsyncClient | None = None
        self.ready_info: dict[str, Any] = {}
        self.started_at: float | None = None
        self.ready_at: float | None = None
        self.returncode: int | None = None
        self._abort_reason: str | None = None

    # -- state ---------------------------------------------------------------------------------

    @property
    def state(self) -> WorkerState:
        return self._state

    def _set_state(self, new: WorkerState) -> None:
        self._state = check_transition(self._state, new)
        log.debug("worker %s (pid %s) -> %s", self.name, self.pid, new.value)

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    @property
    def memory_bytes(self) -> int | None:
        """What the worker reported holding once ready: MLX memory or RSS, whichever is larger."""
        memory = self.ready_info.get("memory") or {}
        mlx = memory.get("mlx_active_bytes", 0) + memory.get("mlx_cache_bytes", 0)
        value = max(memory.get("rss_bytes", 0), mlx)
        return value or None

    @property
    def client(self) -> httpx.AsyncClient:
        """An HTTP client bound to the worker's Unix socket (timeouts are set per request)."""
        if self._client is None:
            # The limits belong to the transport (a client ignores its own when given one). An idle
            # connection is dropped after 2 s, before the worker's server closes it at 5 s (uvicorn's
            # keep-alive timeout): reusing one the worker is closing fails the request with a 502.
            limits = httpx.Limits(max_connections=None, max_keepalive_connections=64, keepalive_expiry=2.0)
            transport = httpx.AsyncHTTPTransport(uds=str(self.spec.socket_path), verify=_UNIX_SOCKET_TLS,
                                                 limits=limits)
            self._client = httpx.AsyncClient(transport=transport, base_url="http://worker", timeout=None)
        return self._client

    # -- start ---------------------------------------------------------------------------------

    async def start(self, spare: Spare | None = None) -> None:
        """Start the worker (in a fresh process, or in ``spare``) and return once its model is loaded
        and it answers; raise WorkerStartError if not."""
        self._set_state(WorkerState.STARTING)
        self.started_at = time.monotonic()
        spec = self.spec
        with contextlib.suppress(FileNotFoundError):
            spec.socket_path.unlink()
        spec.log_path.parent.mkdir(parents=True, exist_ok=True)
        # The worker appends to its log for as long as it runs; between runs is when it can be rotated.
        rotate_if_larger(spec.log_path, WORKER_LOG_MAX_BYTES, WORKER_LOG_BACKUPS)
        with open(spec.log_path, "ab") as log_file:
            how = f"in spare pid {spare.proc.pid}" if spare else "in a new process"
            log_file.write(f"\n=== {time.strftime('%Y-%m-%d %H:%M:%S')} starting {self.name} "
                           f"({spec.model.type}) from {spec.model_path} {how} ===\n".encode())
        try:
            if spare is not None:
                reader, transport = self._adopt(spare)
            else:
                reader, transport = await self._spawn()
        except OSError as e:
            self._set_state(WorkerState.FAILED)
            self._set_state(WorkerState.STOPPED)
            raise WorkerStartError(self.name, f"could not start the worker: {e}", "") from e
        self._exit_task = asyncio.create_task(self._watch_exit(), name=f"watch-{self.name}")
        try:
            event = await asyncio.wait_for(self._read_ready(reader), timeout=spec.start_timeout)
        except asyncio.TimeoutError:
            await self._fail_start(f"not ready after {spec.start_timeout:g}s (start_timeout)")
        except asyncio.CancelledError:
            await self._fail_start("start cancelled")
            raise
        finally:
            transport.close()
        if event.get("event") != "ready":
            reason = event.get("error") or self._exit_reason() or "exited during start"
            await self._fail_start(reason)
        self.ready_info = event
        if spare is not None:
            self.ready_info.setdefault("timings", {})["spare_import_s"] = spare.import_s
        self.ready_at = time.monotonic()
        if self._state is WorkerState.STARTING:  # a crash right after "ready" already moved it on
            self._set_state(WorkerState.READY)
            log.info("worker %s ready (pid %s) in %.2fs", self.name, self.pid, self.ready_at - self.started_at)
        else:
            raise WorkerStartError(self.name, self._exit_reason() or "exited right after start", self.log_tail())

    async def _spawn(self) -> tuple[asyncio.StreamReader, asyncio.BaseTransport]:
        spec = self.spec
        read_fd, write_fd = os.pipe()
        try:
            with open(spec.log_path, "ab") as log_file:
                self._proc = await asyncio.create_subprocess_exec(
                    *spec.command(write_fd), stdin=asyncio.subprocess.PIPE, stdout=log_file,
                    stderr=asyncio.subprocess.STDOUT, pass_fds=(write_fd,), env=spec.env,
                    start_new_session=True)  # its own process group, so a stop reaches its children too
        except OSError:
            os.close(read_fd)
            raise
        finally:
            os.close(write_fd)
        return await open_status_reader(read_fd)

    def _adopt(self, spare: Spare) -> tuple[asyncio.StreamReader, asyncio.BaseTransport]:
        """Give a spare process this worker's model: one JSON line on its stdin."""
        spec = self.spec
        self._proc = spare.proc
        assignment = {"socket": str(spec.socket_path), "model_path": spec.model_path, "name": self.name,
                      "options": spec.model.options, "log_path": str(spec.log_path)}
        assert spare.proc.stdin is not None
        spare.proc.stdin.write((json.dumps(assignment) + "\n").encode())
        return spare.reader, spare.transport

    async def _read_ready(self, reader: asyncio.StreamReader) -> dict[str, Any]:
        while True:
            line = await reader.readline()
            if not line:  # the pipe closed: the worker exited before saying ready
                await self._exited.wait()
                return {"event": "exited"}
            try:
                event = json.loads(line)
            except json.JSONDecodeError:
                continue
            if event.get("event") in ("ready", "failed"):
                return event

    async def _fail_start(self, reason: str) -> None:
        if self._state is WorkerState.STARTING:
            self._set_state(WorkerState.FAILED)
        await self._kill_group(grace=0.5)
        if self._state is WorkerState.FAILED:
            self._set_state(WorkerState.STOPPED)
        await self._close_client()
        raise WorkerStartError(self.name, reason, self.log_tail())

    # -- stop ----------------------------------------------------------------------------------

    async def stop(self) -> None:
        """SIGTERM, a bounded grace period, then SIGKILL of the whole process group."""
        if self._state in (WorkerState.STOPPED, WorkerState.STOPPING):
            if self._state is WorkerState.STOPPING:
                await self._exited.wait()
            return
        if self._state is WorkerState.FAILED:
            await self._exited.wait()
            return
        self._set_state(WorkerState.STOPPING)
        await self._kill_group(grace=self.spec.stop_timeout)
        await self._close_client()
        self._set_state(WorkerState.STOPPED)
        log.info("worker %s stopped (pid %s, rc %s)", self.name, self.pid, self.returncode)

    async def _kill_group(self, grace: float) -> None:
        if self._proc is None:
            return
        if self._proc.returncode is None:
            self._signal_group(signal.SIGTERM)
            try:
                await asyncio.wait_for(asyncio.shield(self._exited.wait()), timeout=grace)
            except asyncio.TimeoutError:
                log.warning("worker %s (pid %s) ignored SIGTERM for %.1fs; killing it", self.name, self.pid, grace)
        # Whatever the main process did, nothing of its group may outlive the stop.
        self._signal_group(signal.SIGKILL)
        await self._exited.wait()
        with contextlib.suppress(FileNotFoundError):
            self.spec.socket_path.unlink()

    def _signal_group(self, sig: signal.Signals) -> None:
        assert self._proc is not None
        try:
            os.killpg(self._proc.pid, sig)
        except (ProcessLookupError, PermissionError):
            pass

    async def _close_client(self) -> None:
        if self._client is not None:
            client, self._client = self._client, None
            await client.aclose()

    async def abort(self, reason: str) -> None:
        """Kill a ready worker that stopped answering; it is then handled like a crash."""
        if self._state is not WorkerState.READY or self._proc is None:
            return
        self._abort_reason = reason
        log.error("worker %s (pid %s) %s; killing it", self.name, self.pid, reason)
        self._signal_group(signal.SIGKILL)
        await self._exited.wait()

    # -- watching ------------------------------------------------------------------------------

    async def _watch_exit(self) -> None:
        assert self._proc is not None
        self.returncode = await self._proc.wait()
        self._exited.set()
        if self._state is WorkerState.READY:  # nobody asked it to go: a crash
            log.error("worker %s (pid %s) exited unexpectedly: %s", self.name, self.pid, self._exit_reason())
            self._set_state(WorkerState.FAILED)
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self._proc.pid, signal.SIGKILL)  # its children, if any
            await self._close_client()
            self._set_state(WorkerState.STOPPED)
            if self._on_unexpected_exit is not None:
                self._on_unexpected_exit(self, self.returncode)

    def _exit_reason(self) -> str | None:
        rc = self.returncode
        if rc is None:
            return None
        if self._abort_reason:
            return f"{self._abort_reason}, so the router killed it"
        if rc < 0:
            try:
                return f"killed by {signal.Signals(-rc).name}"
            except ValueError:
                return f"killed by signal {-rc}"
        return f"exited with status {rc}"

    def exit_reason(self) -> str:
        return self._exit_reason() or "still running"

    def log_tail(self, lines: int = 15, max_chars: int = 2000) -> str:
        """The last lines of this worker's log, for error messages."""
        try:
            with open(self.spec.log_path, "rb") as f:
                f.seek(0, os.SEEK_END)
                size = f.tell()
                f.seek(max(0, size - 16384))
                text = f.read().decode("utf-8", "replace")
        except OSError:
            return ""
        marker = text.rfind("\n=== ")
        if marker >= 0:
            text = text[marker + 1:]
        tail = "\n".join(text.strip().splitlines()[-lines:])
        return tail[-max_chars:]
