"""Load generators: OpenAI-shaped requests to a router (TCP) or straight to a worker's Unix socket."""

from __future__ import annotations

import asyncio
import io
import json
import math
import random
import time
import wave
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from benchkit.results import BenchError, median
from support import Router

STREAM_CLIENTS, STREAM_TOKENS = 16, 64
THINK_TIME = 0.05  # seconds: the most a streaming client pauses before its next request
EMBED_CLIENTS = 32


def router_client(router: Router) -> httpx.AsyncClient:
    # Idle connections are dropped after 1 s, well before uvicorn closes them (5 s): reusing one that
    # the server is closing fails the request (a race every HTTP/1.1 client with equal timeouts has).
    return httpx.AsyncClient(base_url=router.base_url, timeout=300,
                             limits=httpx.Limits(max_connections=128, max_keepalive_connections=128,
                                                 keepalive_expiry=1.0))


def socket_client(path: Path) -> httpx.AsyncClient:
    """Straight to a worker's Unix socket, as the router itself talks to it."""
    return httpx.AsyncClient(transport=httpx.AsyncHTTPTransport(uds=str(path)), base_url="http://worker",
                             timeout=300, limits=httpx.Limits(max_connections=128))


def worker_socket(router: Router, index: int) -> Path:
    """The socket of the model at ``index`` in models.yaml (runtime_dir/w<index>.sock)."""
    return Path(router.server["runtime_dir"]) / f"w{index}.sock"


def chat_body(model: str, prompt: str, max_tokens: int, stream: bool) -> dict[str, Any]:
    body: dict[str, Any] = {"model": model, "messages": [{"role": "user", "content": prompt}],
                            "max_tokens": max_tokens, "temperature": 0.0, "stream": stream}
    if stream:
        body["stream_options"] = {"include_usage": True}
    return body


@dataclass
class StreamResult:
    ttft: float  # seconds to the first event that carries content
    tokens: int
    seconds: float


async def stream_chat(client: httpx.AsyncClient, model: str, prompt: str, max_tokens: int) -> StreamResult:
    """One streaming chat; parses only what it needs (the first content event and the usage)."""
    started = time.perf_counter()
    ttft: float | None = None
    tokens = content_events = 0
    pending = b""
    async with client.stream("POST", "/v1/chat/completions", json=chat_body(model, prompt, max_tokens, True)) as r:
        if r.status_code != 200:
            raise BenchError(f"chat stream answered {r.status_code}: {(await r.aread())[:500]!r}")
        async for chunk in r.aiter_raw():
            pending += chunk
            *events, pending = pending.split(b"\n\n")
            for event in events:
                if not event.startswith(b"data: {"):
                    continue  # ": keepalive" comments, [DONE]
                if b'"content": "' in event or b'"content":"' in event:
                    content_events += 1
                    if ttft is None:
                        delta = json.loads(event[6:])["choices"][0]["delta"]
                        if delta.get("content"):
                            ttft = time.perf_counter() - started
                if b'"usage"' in event:
                    usage = json.loads(event[6:]).get("usage") or {}
                    tokens = usage.get("completion_tokens") or tokens
    elapsed = time.perf_counter() - started
    if ttft is None:
        raise BenchError("the stream carried no content")
    return StreamResult(ttft, tokens or content_events, elapsed)


@dataclass
class Window:
    """What closed-loop clients got in one measuring window."""

    tokens_per_s: float
    ttft_p50: float
    requests: int


async def stream_window(client: httpx.AsyncClient, model: str, seconds: float,
                        clients: int = STREAM_CLIENTS, max_tokens: int = STREAM_TOKENS) -> Window:
    """``clients`` independent clients sending streaming chats for ``seconds``, each pausing a random
    0-50 ms before each request (the same pauses on every path measured).

    Why the pauses: clients that resubmit the instant their stream ends lock into step with the
    engine's batching cycle when they talk to the worker directly (a whole batch ends, all resubmit
    within a millisecond, all are prefilled together), and any hop in between, even a relay that
    only copies bytes, breaks that lock-step: TTFT p50 then differs by 40-60 ms whatever the hop
    does. Independent users do not arrive in lock-step; with the pauses neither path does.
    """
    results: list[StreamResult] = []
    started = time.perf_counter()

    async def one(i: int) -> None:
        pauses, k = random.Random(i), 0
        while time.perf_counter() - started < seconds:
            await asyncio.sleep(pauses.uniform(0.0, THINK_TIME))
            results.append(await stream_chat(client, model, f"Tell me a story about {i} and {k}.", max_tokens))
            k += 1

    await asyncio.gather(*(one(i) for i in range(clients)))
    elapsed = time.perf_counter() - started
    return Window(sum(r.tokens for r in results) / elapsed, median([r.ttft for r in results]), len(results))


async def single_chat(client: httpx.AsyncClient, model: str) -> float:
    started = time.perf_counter()
    await post_json(client, "/v1/chat/completions", chat_body(model, "Say hi.", 8, False))
    return time.perf_counter() - started


async def post_json(client: httpx.AsyncClient, path: str, body: dict[str, Any]) -> httpx.Response:
    r = await client.post(path, json=body)
    if r.status_code != 200:
        raise BenchError(f"POST {path} answered {r.status_code}: {r.text[:500]}")
    return r


async def embed_clients(client: httpx.AsyncClient, model: str, texts: list[str], close: bool = True) -> float:
    """Inputs per second for EMBED_CLIENTS concurrent clients, each sending one input per request."""
    per_client = max(1, len(texts) // EMBED_CLIENTS)

    async def one(i: int) -> None:
        for j in range(per_client):
            await post_json(client, "/v1/embeddings", {"model": model, "input": texts[(i * per_client + j) % len(texts)]})

    try:
        started = time.perf_counter()
        await asyncio.gather(*(one(i) for i in range(EMBED_CLIENTS)))
        return EMBED_CLIENTS * per_client / (time.perf_counter() - started)
    finally:
        if close:
            await client.aclose()


async def decode_rate(router: Router) -> float:
    """Tokens per second of one client's streaming chats (two of 128 tokens, back to back)."""
    tokens, seconds = 0, 0.0
    async with router_client(router) as c:
        for _ in range(2):
            result = await stream_chat(c, "chat", "Write a long story.", 128)
            tokens, seconds = tokens + result.tokens, seconds + result.seconds
    return tokens / seconds


def _wav(seconds: float, rate: int = 16000) -> bytes:
    samples = bytearray()
    for i in range(int(seconds * rate)):
        value = int(8000 * math.sin(2 * math.pi * 440 * i / rate))
        samples += value.to_bytes(2, "little", signed=True)
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(bytes(samples))
    return buf.getvalue()
