"""Dynamic batching for workers whose model takes a batch of token sequences at once.

Concurrent requests put their sequences on one queue; a single inference thread collects them
into padded forward passes (bounded in rows and in padded tokens, waiting at most a few ms for
company) and hands each request its rows back on its event loop. Used by the embedding and the
rerank workers.
"""

from __future__ import annotations

import asyncio
import queue
import sys
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

RECENT_BATCHES = 64


@dataclass
class _Job:
    """One request's sequences; resolved on its event loop when every row is embedded."""
    seqs: list[list[int]]
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future
    results: list[np.ndarray | None] = field(default_factory=list)
    order: list[int] = field(default_factory=list)  # row indices, shortest first
    cursor: int = 0                                  # rows of `order` already scheduled
    remaining: int = 0
    failed: bool = False

    def __post_init__(self) -> None:
        self.results = [None] * len(self.seqs)
        self.order = sorted(range(len(self.seqs)), key=lambda i: len(self.seqs[i]))
        self.remaining = len(self.seqs)

    @property
    def exhausted(self) -> bool:
        return self.failed or self.cursor >= len(self.order)


def _settle(future: asyncio.Future, value: Any, error: BaseException | None) -> None:
    if future.done():  # the client went away and the handler was cancelled
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(value)


@dataclass
class BatchStats:
    """Counters a test (or an operator) can read to see that requests really shared batches."""
    batches: int = 0
    inputs: int = 0
    tokens: int = 0
    padded_tokens: int = 0
    requests: int = 0
    failed_batches: int = 0
    max_batch_size_seen: int = 0
    last_batch_size: int = 0
    busy_s: float = 0.0
    recent: deque = field(default_factory=lambda: deque(maxlen=RECENT_BATCHES))
    histogram: Counter = field(default_factory=Counter)

    def as_dict(self) -> dict[str, Any]:
        return {
            "batches": self.batches, "inputs": self.inputs, "requests": self.requests,
            "tokens": self.tokens, "padded_tokens": self.padded_tokens,
            "failed_batches": self.failed_batches, "max_batch_size_seen": self.max_batch_size_seen,
            "last_batch_size": self.last_batch_size, "busy_s": round(self.busy_s, 4),
            "recent_batch_sizes": list(self.recent),
            "batch_size_histogram": {str(k): v for k, v in sorted(self.histogram.items())},
        }


class Batcher:
    """Collects sequences from concurrent requests into padded forward passes on one thread.

    ``embed(seqs) -> float32 array (len(seqs), dim)`` runs on the batcher's thread only, so all
    MLX work (load, warm-up and inference, when ``setup`` is used) stays on one thread.
    """

    def __init__(self, embed: Callable[[list[list[int]]], np.ndarray], max_batch_size: int,
                 batch_wait_s: float, max_batch_tokens: int, label: str = "embedding") -> None:
        self._embed = embed
        self._label = label  # what a failed batch was doing, for its error message
        self.max_batch_size = max_batch_size
        self.batch_wait_s = batch_wait_s
        self.max_batch_tokens = max_batch_tokens
        self._queue: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._stats = BatchStats()
        self._thread: threading.Thread | None = None
        self.error: BaseException | None = None

    # -- event-loop side ---------------------------------------------------------------------
    def submit(self, seqs: list[list[int]]) -> asyncio.Future:
        """Queue a request's sequences; await the returned future for its (n, dim) array."""
        loop = asyncio.get_running_loop()
        job = _Job(seqs=seqs, loop=loop, future=loop.create_future())
        if not self.alive:
            raise RuntimeError(f"the inference thread is not running: {self.error!r}")
        self._queue.put(job)
        return job.future

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def stats(self) -> dict[str, Any]:
        with self._lock:
            snapshot = self._stats.as_dict()
        snapshot.update(queued_requests=self._queue.qsize(), max_batch_size=self.max_batch_size,
                        batch_wait_ms=self.batch_wait_s * 1000, max_batch_tokens=self.max_batch_tokens)
        return snapshot

    # -- thread side -------------------------------------------------------------------------
    def start(self, setup: Callable[[], None] | None = None) -> threading.Event:
        """Start the thread; it runs ``setup`` first (model load) and sets the event after it."""
        started = threading.Event()

        def _run() -> None:
            try:
                if setup is not None:
                    setup()
            except BaseException as exc:  # reported by the caller, which fails the start
                self.error = exc
                started.set()
                return
            started.set()
            self._loop()

        self._thread = threading.Thread(target=_run, name="embed-batcher", daemon=True)
        self._thread.start()
        return started

    def stop(self) -> None:
        self._queue.put(None)

    def _collect(self, first: _Job) -> tuple[list[_Job], bool]:
        """Gather jobs until max_batch_size sequences or batch_wait after the first one."""
        jobs, count, stop = [first], len(first.seqs), False
        if self.max_batch_size <= 1:
            return jobs, stop
        deadline = time.monotonic() + self.batch_wait_s
        while count < self.max_batch_size:
            timeout = deadline - time.monotonic()
            try:
                job = self._queue.get(timeout=timeout) if timeout > 0 else self._queue.get_nowait()
            except queue.Empty:
                break
            if job is None:
                stop = True
                break
            jobs.append(job)
            count += len(job.seqs)
        return jobs, stop

    def take_chunk(self, pending: Sequence[_Job]) -> list[tuple[_Job, int]]:
        """The next forward pass: rows taken round-robin across waiting requests, each request's
        rows shortest first, within max_batch_size rows and max_batch_tokens padded tokens.

        Round-robin keeps a small request from waiting behind every chunk of a 2048-input one;
        taking each request's rows by length keeps padding low inside a big request.
        """
        chunk: list[tuple[_Job, int]] = []
        longest = 0
        progress = True
        while progress and len(chunk) < self.max_batch_size:
            progress = False
            for job in pending:
                if len(chunk) >= self.max_batch_size:
                    break
                if job.exhausted:
                    continue
                if job.future.done():  # cancelled: its client is gone, skip the rest of it
                    job.failed = True
                    continue
                row = job.order[job.cursor]
                length = len(job.seqs[row])
                # One row always fits, however long: the per-input limit already bounds it.
                if chunk and (len(chunk) + 1) * max(longest, length) > self.max_batch_tokens:
                    continue
                chunk.append((job, row))
                job.cursor += 1
                longest = max(longest, length)
                progress = True
        return chunk

    def _loop(self) -> None:
        pending: list[_Job] = []
        stop = False
        try:
            while True:
                if not pending:
                    if stop:
                        return
                    first = self._queue.get()
                    if first is None:
                        return
                    new, stop = self._collect(first)
                else:
                    # Busy with earlier work: whatever arrived meanwhile joins without waiting.
                    new = []
                    while True:
                        try:
                            job = self._queue.get_nowait()
                        except queue.Empty:
                            break
                        if job is None:
                            stop = True
                            break
                        new.append(job)
                if new:
                    with self._lock:
                        self._stats.requests += len(new)
                    pending.extend(new)
                chunk = self.take_chunk(pending)
                if chunk:
                    self._run_chunk(chunk)
                pending = [job for job in pending if not job.exhausted]
        except BaseException as exc:  # a bug here must not leave requests waiting forever
            self.error = exc
            print(f"embedding batcher stopped: {exc!r}", file=sys.stderr, flush=True)
            failure = RuntimeError(f"the inference thread stopped: {exc!r}")
            for job in pending:
                job.loop.call_soon_threadsafe(_settle, job.future, None, failure)
            self._fail_queued(exc)

    def _run_chunk(self, chunk: list[tuple[_Job, int]]) -> None:
        seqs = [job.seqs[i] for job, i in chunk]
        started = time.monotonic()
        try:
            vectors = self._embed(seqs)
            if len(vectors) != len(seqs):
                raise ValueError(f"{len(vectors)} embeddings for {len(seqs)} inputs")
        except Exception as exc:
            print(f"{self._label} batch of {len(seqs)} failed: {exc!r}", file=sys.stderr, flush=True)
            with self._lock:
                self._stats.failed_batches += 1
            error = RuntimeError(f"{self._label} failed: {type(exc).__name__}: {exc}")
            for job in {id(job): job for job, _ in chunk}.values():
                job.failed = True
                job.loop.call_soon_threadsafe(_settle, job.future, None, error)
            return
        elapsed = time.monotonic() - started
        size = len(seqs)
        with self._lock:
            s = self._stats
            s.batches += 1
            s.inputs += size
            s.tokens += sum(len(q) for q in seqs)
            s.padded_tokens += size * max(len(q) for q in seqs)
            s.max_batch_size_seen = max(s.max_batch_size_seen, size)
            s.last_batch_size = size
            s.busy_s += elapsed
            s.recent.append(size)
            s.histogram[size] += 1
        for row, (job, i) in enumerate(chunk):
            job.results[i] = vectors[row]
            job.remaining -= 1
            if job.remaining == 0:
                job.loop.call_soon_threadsafe(_settle, job.future, np.stack(job.results), None)

    def _fail_queued(self, exc: BaseException) -> None:
        error = RuntimeError(f"the inference thread stopped: {exc!r}")
        while True:
            try:
                job = self._queue.get_nowait()
            except queue.Empty:
                return
            if job is not None:
                job.loop.call_soon_threadsafe(_settle, job.future, None, error)
