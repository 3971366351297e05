"""What each proxied request did: timings, status and tokens, measured in the proxy on the way through.

A :class:`RequestMeter` rides along with one ``ProxyResponse``: the proxy tells it when the lease
was granted, what kind of body came back and each chunk it relayed, and at the end it becomes a
:class:`RequestRecord`. The app's :class:`RequestLog` keeps the last records in memory (for
``GET /api/requests`` and the dashboard) and hands each one to its listeners (the metrics).

Measuring must not slow the stream down: per chunk the meter does one ``bytes.count`` and keeps
a short tail. Token counts come from the ``usage`` the worker reports: parsed from a whole JSON
body (kept only when it is JSON and small) or found in the tail of a stream (OpenAI's
``stream_options: {"include_usage": true}``); a stream without it counts its ``data:`` events.
"""

from __future__ import annotations

import json
import logging
import re
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from typing import Any

from starlette.types import Scope

log = logging.getLogger("mlx_serve.requestlog")

MAX_JSON_BODY = 1 << 20  # larger JSON bodies (big embedding batches) are relayed but not parsed
SSE_TAIL = 2048  # enough for the final usage event and [DONE]
CLIENT_CLOSED = 499  # the status recorded for a client that went away before any answer (nginx's)
_COMPLETION_TOKENS = re.compile(rb'"completion_tokens"\s*:\s*(\d+)')
_PROMPT_TOKENS = re.compile(rb'"prompt_tokens"\s*:\s*(\d+)')


@dataclass(frozen=True)
class RequestRecord:
    """One finished request, as ``GET /api/requests`` shows it."""

    time: float  # wall clock when the router had read the request
    model: str
    endpoint: str
    status: int
    duration_s: float  # until the last byte was relayed
    queue_s: float | None  # waiting for the model (load, memory, swaps) before the lease; None if never granted
    ttft_s: float | None  # streams: until the first event from the model
    stream: bool
    completion_tokens: int | None
    prompt_tokens: int | None
    tokens_per_s: float | None  # completion tokens over the time since the lease was granted

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


class RequestMeter:
    """Timings and token counts of one proxied request (see the module docstring)."""

    __slots__ = ("model", "endpoint", "wall", "t0", "leased_at", "first_chunk_at", "stream", "_events",
                 "_tail", "_body", "_body_size")

    def __init__(self, model: str, endpoint: str) -> None:
        self.model = model
        self.endpoint = endpoint
        self.wall = time.time()
        self.t0 = time.monotonic()
        self.leased_at: float | None = None
        self.first_chunk_at: float | None = None
        self.stream = False
        self._events = 0
        self._tail = b""
        self._body: list[bytes] | None = None
        self._body_size = 0

    def leased(self) -> None:
        self.leased_at = time.monotonic()

    def begin(self, content_type: str) -> None:
        """The answer's headers arrived; decide what to keep of its body."""
        self.stream = content_type.startswith("text/event-stream")
        if content_type.startswith("application/json"):
            self._body = []

    def chunk(self, chunk: bytes) -> None:
        """Called for every chunk relayed to the client: keep this cheap."""
        if self.first_chunk_at is None:
            self.first_chunk_at = time.monotonic()
        if self.stream:
            self._events += chunk.count(b"data: ")
            self._tail = (self._tail + chunk)[-SSE_TAIL:]
        elif self._body is not None:
            self._body_size += len(chunk)
            if self._body_size > MAX_JSON_BODY:
                self._body = None
            else:
                self._body.append(chunk)

    def finish(self, status: int) -> RequestRecord:
        end = time.monotonic()
        completion, prompt = self._usage()
        rate = None
        if completion and self.leased_at is not None and end > self.leased_at:
            rate = round(completion / (end - self.leased_at), 2)
        return RequestRecord(
            time=round(self.wall, 3), model=self.model, endpoint=self.endpoint, status=status,
            duration_s=round(end - self.t0, 4),
            queue_s=None if self.leased_at is None else round(self.leased_at - self.t0, 4),
            ttft_s=round(self.first_chunk_at - self.t0, 4) if self.stream and self.first_chunk_at else None,
            stream=self.stream, completion_tokens=completion, prompt_tokens=prompt, tokens_per_s=rate)

    def _usage(self) -> tuple[int | None, int | None]:
        if self.stream:
            completion = _COMPLETION_TOKENS.search(self._tail)
            if completion:
                prompt = _PROMPT_TOKENS.search(self._tail)
                return int(completion.group(1)), int(prompt.group(1)) if prompt else None
            # No usage event: every data event but the closing [DONE] carried (about) one token.
            done = 1 if b"data: [DONE]" in self._tail else 0
            return (self._events - done) or None, None
        if not self._body:
            return None, None
        try:
            usage = json.loads(b"".join(self._body)).get("usage")
        except (ValueError, AttributeError):
            return None, None
        if not isinstance(usage, dict):
            return None, None
        return _int(usage.get("completion_tokens")), _int(usage.get("prompt_tokens"))


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


RequestListener = Callable[[RequestRecord], None]


class RequestLog:
    """The last ``keep`` requests in memory, and the listeners told of each one."""

    def __init__(self, keep: int = 200, listeners: Iterable[RequestListener] = ()) -> None:
        self._records: deque[RequestRecord] = deque(maxlen=keep)
        self._listeners = list(listeners)

    def add(self, record: RequestRecord) -> None:
        self._records.append(record)
        for listener in self._listeners:
            try:
                listener(record)
            except Exception:  # an observer must never break a request
                log.exception("request listener failed")

    def recent(self, limit: int = 100, model: str | None = None) -> list[dict[str, Any]]:
        """The last ``limit`` requests (to ``model``, if given), oldest first."""
        records = [r for r in self._records if model is None or r.model == model]
        return [r.as_dict() for r in records[-limit:]] if limit > 0 else []


def request_log_of(scope: Scope) -> RequestLog | None:
    """The app's request log (``app.state.requests``), found from an ASGI scope; None if it has none.

    The proxy finds it this way so that every handler that returns a ProxyResponse is measured
    without having to pass anything along.
    """
    state = getattr(scope.get("app"), "state", None)
    found = getattr(state, "requests", None)
    return found if isinstance(found, RequestLog) else None
