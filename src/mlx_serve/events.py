"""Lifecycle events (load, ready, evict, unload, crash, ...): kept in memory, bounded, and in a JSON-lines file."""

from __future__ import annotations

import json
import logging
import time
from collections import deque
from pathlib import Path
from typing import Any

log = logging.getLogger("mlx_serve.events")


class EventLog:
    def __init__(self, path: Path | None = None, keep: int = 1000, max_file_bytes: int = 5 * 1000**2,
                 backups: int = 3) -> None:
        self._events: deque[dict[str, Any]] = deque(maxlen=keep)
        self._path = path
        self._max_file_bytes = max_file_bytes
        self._backups = backups
        self._seq = 0

    def __call__(self, kind: str, model: str, **fields: Any) -> None:
        self._seq += 1
        event = {"seq": self._seq, "time": time.time(), "event": kind, "model": model, **fields}
        self._events.append(event)
        if self._path is not None:
            self._append(event)

    def recent(self, limit: int = 100, model: str | None = None) -> list[dict[str, Any]]:
        events = [e for e in self._events if model is None or e["model"] == model]
        return events[-limit:]

    def _append(self, event: dict[str, Any]) -> None:
        assert self._path is not None
        try:
            if self._path.exists() and self._path.stat().st_size > self._max_file_bytes:
                self._rotate()
            with open(self._path, "a") as f:
                f.write(json.dumps(event, default=str) + "\n")
        except OSError as e:
            log.warning("cannot write event log %s: %s", self._path, e)

    def _rotate(self) -> None:
        assert self._path is not None
        for i in range(self._backups - 1, 0, -1):
            older = self._path.with_name(f"{self._path.name}.{i}")
            if older.exists():
                older.replace(self._path.with_name(f"{self._path.name}.{i + 1}"))
        self._path.replace(self._path.with_name(f"{self._path.name}.1"))
