"""Lifecycle events (load, ready, evict, unload, crash, restart, backoff, ...), bounded in memory and on disk.

The scheduler reports each event once, as ``events(kind, model, **fields)``. An :class:`EventLog`
stamps it (``seq``, ``time``), keeps the last ``keep`` in memory for ``GET /api/events``, appends
it as one JSON line to ``events.jsonl`` (rotated by size, so the file stays bounded), and hands
it to its listeners (the Prometheus metrics). Event kinds and their fields are listed in
docs/api.md.
"""

from __future__ import annotations

import json
import logging
import time
from collections import deque
from collections.abc import Callable, Iterable
from logging.handlers import RotatingFileHandler
from pathlib import Path
from typing import Any

from mlx_serve.logfiles import EVENTS_BACKUPS, EVENTS_MAX_BYTES

log = logging.getLogger("mlx_serve.events")

Event = dict[str, Any]
Listener = Callable[[Event], None]


class EventLog:
    def __init__(self, path: Path | None = None, keep: int = 1000, max_file_bytes: int = EVENTS_MAX_BYTES,
                 backups: int = EVENTS_BACKUPS, listeners: Iterable[Listener] = ()) -> None:
        self._events: deque[Event] = deque(maxlen=keep)
        self._listeners = list(listeners)
        self._seq = 0
        self._file: RotatingFileHandler | None = None
        self.path = path
        if path is not None:
            # delay=True: the file (and its directory, made by the runtime at start) is only
            # touched at the first event, so building an app has no side effect on disk.
            self._file = RotatingFileHandler(path, maxBytes=max_file_bytes, backupCount=max(1, backups),
                                             encoding="utf-8", delay=True)
            self._file.setFormatter(logging.Formatter("%(message)s"))

    def __call__(self, kind: str, model: str, **fields: Any) -> None:
        self._seq += 1
        event = {"seq": self._seq, "time": round(time.time(), 3), "event": kind, "model": model, **fields}
        self._events.append(event)
        if self._file is not None:
            self._append(event)
        for listener in self._listeners:
            try:
                listener(event)
            except Exception:  # an observer must never break the scheduler that reports to it
                log.exception("event listener failed on %s", kind)

    def recent(self, limit: int = 100, model: str | None = None) -> list[Event]:
        """The last ``limit`` events (of ``model``, if given), oldest first."""
        events = [e for e in self._events if model is None or e["model"] == model]
        return events[-limit:] if limit > 0 else []

    def close(self) -> None:
        if self._file is not None:
            self._file.close()

    def _append(self, event: Event) -> None:
        assert self._file is not None
        record = logging.makeLogRecord({"msg": json.dumps(event, default=str), "levelno": logging.INFO,
                                        "levelname": "INFO"})
        self._file.handle(record)  # rolls the file over first when this line would take it past the limit
