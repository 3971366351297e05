"""Warm spare workers: per kind, one process that has done its imports and waits for a model.

Most of a worker's start is importing its libraries (0.2–1 s), not loading a small model. A
spare pays that ahead of time: when the scheduler loads a model of its kind, it hands the spare
the model (one JSON line on its stdin) and the swap costs only the weight load. The pool then
starts a new spare in the background. Spares hold memory (a worker's baseline), so the scheduler
counts them against the budget and evicts them first when room is needed.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

log = logging.getLogger("mlx_serve.spares")


@dataclass
class Spare:
    """A started worker process that has not been given a model yet."""

    kind: str
    proc: asyncio.subprocess.Process
    reader: asyncio.StreamReader
    transport: asyncio.BaseTransport
    import_s: float = 0.0
    ready_at: float = field(default_factory=time.monotonic)

    @property
    def alive(self) -> bool:
        return self.proc.returncode is None

    def kill(self) -> None:
        self.transport.close()
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)


async def open_status_reader(read_fd: int) -> tuple[asyncio.StreamReader, asyncio.BaseTransport]:
    """An asyncio reader on the read end of a worker's status pipe."""
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    transport, _ = await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader),
                                                os.fdopen(read_fd, "rb"))
    return reader, transport


async def start_spare(kind: str, env: dict[str, str], log_path: Path, timeout: float) -> Spare:
    """Start a spare worker of ``kind`` and wait until it has done its imports."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    read_fd, write_fd = os.pipe()
    try:
        with open(log_path, "ab") as log_file:
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", f"mlx_serve_workers.{kind}", "--spare", "--status-fd", str(write_fd),
                stdin=asyncio.subprocess.PIPE, stdout=log_file, stderr=asyncio.subprocess.STDOUT,
                pass_fds=(write_fd,), env=env, start_new_session=True)
    except OSError:
        os.close(read_fd)
        raise
    finally:
        os.close(write_fd)
    reader, transport = await open_status_reader(read_fd)
    spare = Spare(kind, proc, reader, transport)
    try:
        line = await asyncio.wait_for(reader.readline(), timeout=timeout)
        event = json.loads(line) if line else {}
    except (asyncio.TimeoutError, ValueError, asyncio.CancelledError):
        spare.kill()
        raise
    if event.get("event") != "spare":
        spare.kill()
        raise RuntimeError(f"spare {kind} worker did not start (see {log_path})")
    spare.import_s = float(event.get("import_s", 0.0))
    spare.ready_at = time.monotonic()
    return spare


class SparePool:
    """At most one spare per configured kind; the scheduler takes them and asks for refills."""

    def __init__(self, kinds: tuple[str, ...], env: dict[str, str], log_dir: Path, timeout: float = 60.0) -> None:
        self.kinds = kinds
        self._env = env
        self._log_dir = log_dir
        self._timeout = timeout
        self._spares: dict[str, Spare] = {}
        self._starting: dict[str, asyncio.Task[None]] = {}

    def ready(self) -> dict[str, Spare]:
        self._spares = {k: s for k, s in self._spares.items() if s.alive}
        return dict(self._spares)

    def starting(self) -> tuple[str, ...]:
        return tuple(self._starting)

    def take(self, kind: str) -> Spare | None:
        spare = self._spares.pop(kind, None)
        return spare if spare is not None and spare.alive else None

    def refill(self, kind: str, on_done: "asyncio.Future[None] | None" = None) -> None:
        """Start a spare of ``kind`` in the background unless there is one (or one is starting)."""
        if kind not in self.kinds or kind in self._starting or kind in self.ready():
            return
        self._starting[kind] = asyncio.create_task(self._start(kind), name=f"spare-{kind}")

    async def _start(self, kind: str) -> None:
        try:
            spare = await start_spare(kind, self._env, self._log_dir / f"spare-{kind}.log", self._timeout)
            self._spares[kind] = spare
            log.info("spare %s worker ready (pid %s, imports %.2fs)", kind, spare.proc.pid, spare.import_s)
        except Exception as e:  # a spare is an optimisation: log it, loads fall back to a fresh process
            log.warning("could not start a spare %s worker: %s", kind, e)
        finally:
            self._starting.pop(kind, None)

    def evict(self, kind: str) -> None:
        spare = self._spares.pop(kind, None)
        if spare is not None:
            spare.kill()

    async def close(self) -> None:
        for task in self._starting.values():
            task.cancel()
        for spare in self._spares.values():
            spare.kill()
        await asyncio.gather(*(s.proc.wait() for s in self._spares.values()), return_exceptions=True)
        self._spares.clear()
