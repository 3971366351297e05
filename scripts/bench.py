#!/usr/bin/env python3
"""Benchmark mlx-serve on this machine: one command, one table of goals, figures and verdicts.

    .venv/bin/python scripts/bench.py [--quick] [--rounds N] [--model-path DIR] [--json FILE]

It builds the tiny random-weight demo models (they are fast, so the router's own costs show
up), starts real routers (``mlx-serve start`` subprocesses with real workers) and measures:

1. proxy overhead: 16 concurrent streaming chats through the router versus straight to the same
   worker's Unix socket (aggregate tokens/s, TTFT p50), and the latency a non-streaming request
   gains by going through the router;
2. cold start per model kind, from a request for an unloaded model to its first token, split
   into process start, imports, weight load, warm-up and first token (and stock mlx_lm.server
   for reference);
3. cold start of the text model with a warm spare worker;
4. embeddings under 32 concurrent one-input clients: dynamic batching versus the same worker
   with ``max_batch_size: 1`` and versus the worker's own code called in-process at batch 32;
5. memory: the router's RSS under load, each worker's RSS, and total RSS across 51 swaps;
6. a swap storm (4 clients alternating between two models that do not fit together) with and
   without the per-model batching of queued requests (``min_residency``);
7. OpenBLAS preloading (``fast_blas``) on and off.

These machines are shared and noisy: every comparison is measured in the same run, its two sides
interleaved round by round, and each figure is the median over rounds. Progress goes to stderr,
the table (Markdown) to stdout. ``--quick`` runs one short round of everything (CI runs it so the
script cannot rot; it asserts no timings). docs/performance.md holds a full run and explains it.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import psutil

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))  # the tests' Router: a real `mlx-serve start` subprocess

from benchkit.clients import (  # noqa: E402
    EMBED_CLIENTS, STREAM_CLIENTS, STREAM_TOKENS, Window, _wav, chat_body, decode_rate, embed_clients, post_json,
    router_client, single_chat, socket_client, stream_chat, stream_window, worker_socket)
from benchkit.processes import (  # noqa: E402
    BenchRouter, ByteRelay, InProcessEmbedder, PeakRSS, _not_zombie, build_base_embedder, cpu_seconds, machine,
    rss, stock_mlx_lm_server, tree, tree_rss)
from benchkit.results import MB, BenchError, Results, mb, median, ms, say  # noqa: E402
from mlx_serve.runtime import worker_environment  # noqa: E402  (the router package: no MLX)
from support import TEST_ENV, Router, build_demo_models  # noqa: E402

KINDS = ("text", "vision", "embedding", "tts", "stt")
DEMO_FOR_KIND = {"text": "demo-chat", "vision": "demo-vision", "embedding": "demo-embed", "tts": "demo-tts",
                 "stt": "demo-stt"}


class Bench:
    """The sections of the benchmark; each adds its rows to ``results`` (see the module docstring)."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.quick: bool = args.quick
        self.rounds: int = args.rounds or (1 if args.quick else 5)
        self.window = 1.0 if args.quick else 3.0  # seconds of steady load per measurement (section 1)
        self.tmp = Path(tempfile.mkdtemp(prefix="mlx-serve-bench-"))
        self.results = Results()
        self.models: dict[str, dict[str, Any]] = {}  # kind -> models.yaml entry of its demo model
        self.routers: list[Router] = []
        self.real_text = args.model_path is not None
        self.router_peak = 0
        self.worker_rss: dict[str, list[int]] = {}  # kind -> RSS of its worker after a first request
        self.stock_rss = 0.0  # stock mlx_lm.server's RSS, measured in section 2, reported in 5

    # -- setup ---------------------------------------------------------------------------------

    def build_models(self) -> None:
        say(f"building the demo models in {self.tmp / 'models'}")
        built = build_demo_models(self.tmp / "models", only=[DEMO_FOR_KIND[k] for k in KINDS])
        for entry in built["models"]:
            self.models[entry["type"]] = entry
        for name, why in built["skipped"].items():
            say(f"  skipped {name}: {why}")
        if "embedding" in self.models and not self.quick:  # quick mode: the goals' rows only
            self.models["embedding-base"] = build_base_embedder(self.tmp / "models" / "embed-base")
        if self.real_text:
            path = Path(self.args.model_path).expanduser().resolve()
            if not path.is_dir():
                raise BenchError(f"--model-path {path} is not a directory")
            self.models["text"] = {"name": "real-text", "type": "text", "path": str(path)}
        if "text" not in self.models:
            raise BenchError("the text demo model could not be built: install mlx-serve[text]")

    def entry(self, kind: str, name: str, **extra: Any) -> dict[str, Any]:
        base = self.models[kind]
        options = {**base.get("options", {}), **extra.pop("options", {})}
        return {"name": name, "type": kind, "path": base["path"], **({"options": options} if options else {}),
                **extra}

    @contextlib.contextmanager
    def router(self, name: str, models: list[dict[str, Any]], server: dict[str, Any] | None = None,
               env: dict[str, str] | None = None) -> Iterator[Router]:
        settings = {"memory_budget": "16GB", "health_interval": "30s", "log_level": "warning", **(server or {})}
        router = BenchRouter(self.tmp, models, settings, env=env, name=name)
        router.start(timeout=60)
        self.routers.append(router)
        try:
            yield router
        finally:
            router.stop()

    def close(self) -> None:
        for router in self.routers:
            router.stop()
        shutil.rmtree(self.tmp, ignore_errors=True)

    async def load(self, router: Router, model: str) -> dict[str, Any]:
        async with router_client(router) as c:
            r = await post_json(c, "/api/load", {"model": model})
        return r.json()["model"]

    async def events(self, router: Router, kind: str, model: str | None = None) -> list[dict[str, Any]]:
        async with router_client(router) as c:
            events = (await c.get("/api/events", params={"limit": 1000})).json()["events"]
        return [e for e in events if e["event"] == kind and (model is None or e["model"] == model)]

    async def ps(self, router: Router) -> dict[str, Any]:
        async with router_client(router) as c:
            return (await c.get("/api/ps")).json()

    # -- 1. proxy overhead ---------------------------------------------------------------------

    async def proxy_overhead(self) -> None:
        say(f"1. proxy overhead: {STREAM_CLIENTS} streaming clients x {STREAM_TOKENS} tokens, router vs the "
            f"worker's own socket, {self.window:g}s windows")
        models = [self.entry("text", "chat", keep_alive=-1)]
        # Two setups side by side: the default one (the goals), and the same with the workers' OpenBLAS
        # on one thread, which shows how much of the gap is BLAS threads spinning on shared cores.
        setups = {"default": {}, "blas1": {"OPENBLAS_NUM_THREADS": "1"}}
        figures: dict[str, dict[str, list[float]]] = {k: {} for k in setups}
        with contextlib.ExitStack() as stack:
            routers = {k: stack.enter_context(self.router(f"proxy-{k}", models, env=env)) for k, env in setups.items()}
            clients: dict[str, dict[str, httpx.AsyncClient]] = {}
            for key, router in routers.items():
                await self.load(router, "chat")
                clients[key] = {"router": router_client(router), "direct": socket_client(worker_socket(router, 0))}
            # A control: a relay that only copies bytes between a TCP port and the same socket. What
            # it costs, any extra hop costs; what the router costs beyond it is the router's own work.
            relay = stack.enter_context(ByteRelay(worker_socket(routers["default"], 0)))
            clients["default"]["relay"] = httpx.AsyncClient(
                base_url=relay.url, timeout=300, limits=httpx.Limits(max_keepalive_connections=0))
            try:
                for key in setups:  # warm both paths (connections, prompt cache, kernels)
                    for client in clients[key].values():
                        await stream_window(client, "chat", min(1.0, self.window))
                for i in range(self.rounds):
                    for key, router in routers.items():
                        got = figures[key]
                        order = list(clients[key])
                        order = order[i % len(order):] + order[:i % len(order)]  # a different order each round
                        this: dict[str, Window] = {}
                        for path in order:
                            cpu0 = cpu_seconds(router.proc.pid)
                            with PeakRSS(router.proc.pid) as peak:
                                this[path] = await stream_window(clients[key][path], "chat", self.window)
                            if path == "router":
                                self.router_peak = max(self.router_peak, peak.peak)
                                got.setdefault("cpu_ms", []).append(
                                    (cpu_seconds(router.proc.pid) - cpu0) * 1000 / this[path].requests)
                        got.setdefault("ratio", []).append(this["router"].tokens_per_s / this["direct"].tokens_per_s)
                        got.setdefault("ttft_delta", []).append(this["router"].ttft_p50 - this["direct"].ttft_p50)
                        if "relay" in this:
                            got.setdefault("relay_ratio", []).append(
                                this["relay"].tokens_per_s / this["direct"].tokens_per_s)
                            got.setdefault("relay_ttft_delta", []).append(
                                this["relay"].ttft_p50 - this["direct"].ttft_p50)
                        for path in order:
                            got.setdefault(f"tps_{path}", []).append(this[path].tokens_per_s)
                            got.setdefault(f"ttft_{path}", []).append(this[path].ttft_p50)
                        if key == "default":  # non-streaming: single requests, one at a time, alternating
                            lat: dict[str, list[float]] = {"router": [], "direct": []}
                            for j in range(4 if self.quick else 12):
                                for path in (["router", "direct"] if j % 2 == 0 else ["direct", "router"]):
                                    lat[path].append(await single_chat(clients[key][path], "chat"))
                            got.setdefault("added", []).append(median(lat["router"]) - median(lat["direct"]))
                        say(f"  round {i + 1}/{self.rounds} {key}: " + ", ".join(
                            f"{path} {w.tokens_per_s:.0f} tok/s TTFT p50 {ms(w.ttft_p50)}" for path, w in this.items())
                            + f"; router CPU {got['cpu_ms'][-1]:.1f} ms/request")
            finally:
                for pair in clients.values():
                    for client in pair.values():
                        await client.aclose()
        d, b = ({k: median(v) for k, v in figures[key].items()} for key in ("default", "blas1"))
        self.results.add(
            f"1a. streaming throughput, router ÷ direct ({STREAM_CLIENTS} clients × {STREAM_TOKENS} tokens) ≥ 0.90×",
            f"{d['ratio']:.2f}× ({d['tps_router']:.0f} vs {d['tps_direct']:.0f} tokens/s)", d["ratio"] >= 0.90,
            d["ratio"])
        self.results.add(
            "1b. streaming TTFT p50, router − direct ≤ 5 ms",
            f"{d['ttft_delta'] * 1000:+.1f} ms ({ms(d['ttft_router'])} vs {ms(d['ttft_direct'])})",
            d["ttft_delta"] <= 0.005, d["ttft_delta"] * 1000)
        self.results.add("1c. non-streaming request (8 tokens), latency added by the router, p50",
                         f"{d['added'] * 1000:+.1f} ms", None, d["added"] * 1000)
        self.results.add(f"1d. router CPU per streamed request ({STREAM_TOKENS} tokens)", f"{d['cpu_ms']:.1f} ms",
                         None, d["cpu_ms"])
        self.results.add(
            "1e. diagnosis: 1a and 1b with the workers' OpenBLAS on one thread (OPENBLAS_NUM_THREADS=1)",
            f"{b['ratio']:.2f}× ({b['tps_router']:.0f} vs {b['tps_direct']:.0f} tokens/s); TTFT "
            f"{b['ttft_delta'] * 1000:+.1f} ms", None, b["ratio"])
        self.results.add(
            "1f. control: a relay that only copies bytes, in place of the router: ÷ direct, TTFT − direct",
            f"{d['relay_ratio']:.2f}×; TTFT {d['relay_ttft_delta'] * 1000:+.1f} ms", None, d["relay_ratio"])
        self.results.details["proxy"] = figures

    # -- 2 and 3. cold start, with and without a spare ----------------------------------------

    async def first_response(self, router: Router, kind: str, name: str) -> float:
        """Seconds from sending a request for ``name`` to its first token (or whole answer)."""
        async with router_client(router) as c:
            started = time.perf_counter()
            if kind in ("text", "vision"):
                result = await stream_chat(c, name, "Hello there.", 4)
                return result.ttft
            if kind == "embedding":
                await post_json(c, "/v1/embeddings", {"model": name, "input": "hello world"})
            elif kind == "tts":
                await post_json(c, "/v1/audio/speech", {"model": name, "input": "Hello.", "voice": "alloy",
                                                        "response_format": "wav"})
            elif kind == "stt":
                r = await c.post("/v1/audio/transcriptions", data={"model": name},
                                 files={"file": ("clip.wav", _wav(1.0), "audio/wav")})
                if r.status_code != 200:
                    raise BenchError(f"transcription answered {r.status_code}: {r.text[:500]}")
            return time.perf_counter() - started

    async def cold_once(self, router: Router, kind: str, name: str) -> dict[str, float]:
        async with router_client(router) as c:
            await post_json(c, "/api/unload", {"model": name})
        seen = len(await self.events(router, "ready", name))
        total = await self.first_response(router, kind, name)
        ready = (await self.events(router, "ready", name))[seen:]
        if not ready:
            raise BenchError(f"no ready event for {name}: was it loaded before the request?")
        event = ready[-1]
        t = event.get("timings") or {}
        worker_total = t.get("total_s", 0.0)
        phases = {
            "total": total,
            "process": max(0.0, event["duration_s"] - worker_total) if "spare_import_s" not in t else 0.0,
            "imports": t.get("import_s", 0.0),
            "load": t.get("load_s", 0.0),
            "warmup": max(0.0, worker_total - t.get("import_s", 0.0) - t.get("load_s", 0.0))
            if "spare_import_s" not in t else t.get("warmup_s", 0.0),
            "first": max(0.0, total - event["duration_s"]),
            "spare_import": t.get("spare_import_s", 0.0),
        }
        row = next((m for m in (await self.ps(router))["models"] if m["name"] == name), None)
        if row is not None:
            self.worker_rss.setdefault(kind, []).append(rss(row["pid"]))
        return phases

    async def wait_for_spare(self, router: Router, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if (await self.ps(router))["spares"]:
                return
            await asyncio.sleep(0.05)
        raise BenchError("no spare worker became ready")

    async def cold_start(self) -> None:
        kinds = [k for k in KINDS if k in self.models]
        say(f"2-3. cold start per kind ({', '.join(kinds)}), with a spare, and stock mlx_lm.server")
        models = [self.entry(k, k, keep_alive="10m") for k in kinds]
        phases: dict[str, list[dict[str, float]]] = {k: [] for k in kinds}
        spare_phases: list[dict[str, float]] = []
        stock: list[tuple[float, int]] = []
        with self.router("cold", models) as cold, \
                self.router("spare", [self.entry("text", "text")], {"spare_workers": ["text"]}) as spare:
            for i in range(self.rounds):
                for kind in kinds:
                    phases[kind].append(await self.cold_once(cold, kind, kind))
                async with router_client(cold) as c:
                    await post_json(c, "/api/unload", {})
                await self.wait_for_spare(spare)
                await asyncio.sleep(0.2)
                spare_phases.append(await self.cold_once(spare, "text", "text"))
                await self.wait_for_spare(spare)  # its refill must not overlap the next measurement
                stock.append(await asyncio.to_thread(stock_mlx_lm_server, self.models["text"]["path"]))
                say(f"  round {i + 1}/{self.rounds}: " + ", ".join(
                    f"{k} {phases[k][-1]['total']:.2f}s" for k in kinds)
                    + f"; text with spare {spare_phases[-1]['total']:.2f}s; stock mlx_lm.server /health "
                      f"{stock[-1][0]:.2f}s")

        def split(rows: list[dict[str, float]]) -> str:
            keys = [("process", "process"), ("imports", "imports"), ("load", "load"),
                    ("warmup", "warm-up"), ("first", "first token")]
            return ", ".join(f"{label} {median([r[k] for r in rows]):.2f}" for k, label in keys)

        tiny = not self.real_text
        for kind in kinds:
            total = median([p["total"] for p in phases[kind]])
            what = "first token" if kind in ("text", "vision") else "first response"
            if kind == "text":
                goal = ("2. cold start of the tiny text model, request → first token ≤ 1.0 s" if tiny
                        else f"2. cold start of {self.models['text']['path']}, request → first token")
                self.results.add(goal, f"{total:.2f} s ({split(phases[kind])})",
                                 total <= 1.0 if tiny else None, total)
            else:
                self.results.add(f"2. cold start, {kind} (demo model), request → {what}",
                                 f"{total:.2f} s ({split(phases[kind])})", None, total)
        health = median([s[0] for s in stock])
        self.results.add("2. reference: stock mlx_lm.server, start → /health answers (model not loaded yet)",
                         f"{health:.2f} s", None, health)
        total = median([p["total"] for p in spare_phases])
        spare_split = ", ".join(f"{label} {median([r[k] for r in spare_phases]):.2f}" for k, label in
                                (("load", "load"), ("warmup", "warm-up"), ("first", "first token")))
        self.results.add(
            "3. cold start of the tiny text model with a spare ready ≤ 0.3 s" if tiny
            else "3. cold start of the text model with a spare ready",
            f"{total:.2f} s ({spare_split}; the spare's imports took "
            f"{median([p['spare_import'] for p in spare_phases]):.2f} s ahead of time)",
            total <= 0.3 if tiny else None, total)
        self.results.details["cold_start"] = {"phases": phases, "spare": spare_phases,
                                              "stock_health_s": [s[0] for s in stock]}
        self.stock_rss = median([s[1] for s in stock])

    # -- 4 and 7. embeddings, batching and BLAS -------------------------------------------------

    async def embeddings(self) -> None:
        if "embedding" not in self.models:
            raise BenchError("the embedding demo model could not be built: install mlx-serve[embeddings]")
        say(f"4. embeddings: {EMBED_CLIENTS} concurrent one-input clients; batching on, off, in-process batch 32; "
            f"and 7. fast_blas")
        tiny_n = EMBED_CLIENTS * (2 if self.quick else 6)
        base_n = EMBED_CLIENTS * (1 if self.quick else 2)
        texts = [f"Sentence number {i} is about {('rivers', 'mountains', 'cities', 'music')[i % 4]} "
                 f"and {'many ' * (i % 7)}other things." for i in range(tiny_n)]
        base = self.models.get("embedding-base")
        fast = [self.entry("embedding", "emb"), self.entry("embedding", "emb1", options={"max_batch_size": 1}),
                self.entry("text", "chat")]
        if base:
            fast += [{**base, "name": "base"}, {**base, "name": "base1", "options": {"max_batch_size": 1}}]
        # The same tiny models with OpenBLAS on one thread, and with MLX's reference BLAS (fast_blas: false).
        slow = [self.entry("embedding", "emb"), self.entry("embedding", "emb1", options={"max_batch_size": 1}),
                self.entry("text", "chat")]
        async with contextlib.AsyncExitStack() as stack:
            fr = stack.enter_context(self.router("emb-fast", fast, {"fast_blas": True}))
            f1 = stack.enter_context(self.router("emb-blas1", slow, {"fast_blas": True},
                                                 env={"OPENBLAS_NUM_THREADS": "1"}))
            sr = stack.enter_context(self.router("emb-slow", slow, {"fast_blas": False}))
            inproc = stack.enter_context(InProcessEmbedder(self.models["embedding"]["path"], texts))
            for router, name in [(r, m) for r in (fr, f1, sr) for m in ("emb", "emb1", "chat")] + \
                    ([(fr, "base"), (fr, "base1")] if base else []):
                await self.load(router, name)
            direct = socket_client(worker_socket(fr, 0))
            stack.push_async_callback(direct.aclose)
            runs: dict[str, Callable[[], Awaitable[float]]] = {
                "batched": lambda: embed_clients(router_client(fr), "emb", texts),
                "unbatched": lambda: embed_clients(router_client(fr), "emb1", texts),
                "socket": lambda: embed_clients(direct, "emb", texts, close=False),
                "blas1": lambda: embed_clients(router_client(f1), "emb", texts),
                "blas1_unbatched": lambda: embed_clients(router_client(f1), "emb1", texts),
                "no_blas": lambda: embed_clients(router_client(sr), "emb", texts),
                "no_blas_unbatched": lambda: embed_clients(router_client(sr), "emb1", texts),
                "inproc": lambda: asyncio.to_thread(inproc.run, len(texts), 32),
                "text_blas": lambda: decode_rate(fr),
                "text_blas1": lambda: decode_rate(f1),
                "text_no_blas": lambda: decode_rate(sr),
            }
            if base:
                fast_env, slow_env = worker_environment(True), worker_environment(False)
                base_inproc = stack.enter_context(InProcessEmbedder(base["path"], texts[:base_n], env=fast_env))
                base_noblas = stack.enter_context(InProcessEmbedder(base["path"], texts[:16], env=slow_env))
                base_blas1 = stack.enter_context(InProcessEmbedder(base["path"], texts[:base_n],
                                                                   env={**fast_env, "OPENBLAS_NUM_THREADS": "1"}))
                runs.update({
                    "base_batched": lambda: embed_clients(router_client(fr), "base", texts[:base_n]),
                    "base_unbatched": lambda: embed_clients(router_client(fr), "base1", texts[:base_n]),
                    "base_inproc": lambda: asyncio.to_thread(base_inproc.run, base_n, 32),
                    "base_blas16": lambda: asyncio.to_thread(base_inproc.run, 16, 16),
                    "base_noblas16": lambda: asyncio.to_thread(base_noblas.run, 16, 16),
                    "base_blas1": lambda: asyncio.to_thread(base_blas1.run, base_n, 32),
                })
            for name, run in runs.items():  # a warm-up pass, not counted
                if name != "base_noblas16":
                    await run()
            got: dict[str, list[float]] = {k: [] for k in runs}
            for i in range(self.rounds):
                names = list(runs)
                names = names[i % len(names):] + names[:i % len(names)]  # a different order each round
                for name in names:
                    got[name].append(await runs[name]())
                say(f"  round {i + 1}/{self.rounds}: " + ", ".join(f"{k} {got[k][-1]:.0f}/s" for k in runs))
        ratio = {key: [x / y for x, y in zip(got[a], got[b])] for key, (a, b) in {
            "unbatched": ("batched", "unbatched"), "inproc": ("batched", "inproc"), "socket": ("socket", "inproc"),
            "no_blas": ("batched", "no_blas"), "text": ("text_blas", "text_no_blas"),
            "blas1": ("blas1", "no_blas"), "text1": ("text_blas1", "text_no_blas"),
            "unbatched_blas1": ("blas1", "blas1_unbatched"), "unbatched_no_blas": ("no_blas", "no_blas_unbatched"),
            "base_unbatched": ("base_batched", "base_unbatched"), "base_inproc": ("base_batched", "base_inproc"),
            "base_blas": ("base_blas16", "base_noblas16"), "base_blas1": ("base_blas1", "base_inproc"),
        }.items() if a in got and b in got}
        m = {k: median(v) for k, v in got.items()}
        r = {k: median(v) for k, v in ratio.items()}
        self.results.add(f"4a. embeddings, {EMBED_CLIENTS} concurrent one-input clients: batching ÷ the same worker "
                         f"unbatched ≥ 3×",
                         f"{r['unbatched']:.2f}× ({m['batched']:.0f} vs {m['unbatched']:.0f} inputs/s; with OpenBLAS "
                         f"on one thread {r['unbatched_blas1']:.2f}×, with the reference BLAS "
                         f"{r['unbatched_no_blas']:.2f}×)", r["unbatched"] >= 3.0, r["unbatched"])
        self.results.add("4b. embeddings: batching worker (through the router) ÷ in-process batches of 32 ≥ 0.7×",
                         f"{r['inproc']:.2f}× ({m['batched']:.0f} vs {m['inproc']:.0f} inputs/s; straight to "
                         f"the worker's socket {r['socket']:.2f}×, {m['socket']:.0f}/s)", r["inproc"] >= 0.7,
                         r["inproc"])
        if base:
            self.results.add("4c. the same with a MiniLM-sized model (6 layers × 384, random weights): batching ÷ "
                             "unbatched; ÷ in-process",
                             f"{r['base_unbatched']:.2f}× ({m['base_batched']:.0f} vs {m['base_unbatched']:.0f} "
                             f"inputs/s); {r['base_inproc']:.2f}× (in-process {m['base_inproc']:.0f}/s)",
                             None, r["base_unbatched"])
        if sys.platform.startswith("linux"):
            self.results.add("7a. fast_blas: tiny embeddings through the router (batching), OpenBLAS ÷ reference BLAS",
                             f"{r['no_blas']:.2f}× ({m['batched']:.0f} vs {m['no_blas']:.0f} inputs/s); OpenBLAS "
                             f"on one thread {r['blas1']:.2f}× ({m['blas1']:.0f}/s)", None, r["no_blas"])
            self.results.add("7b. fast_blas: tiny text model, decode of one stream, OpenBLAS ÷ reference BLAS",
                             f"{r['text']:.2f}× ({m['text_blas']:.0f} vs {m['text_no_blas']:.0f} tokens/s); OpenBLAS "
                             f"on one thread {r['text1']:.2f}× ({m['text_blas1']:.0f}/s)", None, r["text"])
            if base:
                self.results.add("7c. fast_blas: MiniLM-sized embeddings in-process (batch 16), OpenBLAS ÷ reference BLAS",
                                 f"{r['base_blas']:.1f}× ({m['base_blas16']:.1f} vs {m['base_noblas16']:.1f} inputs/s)",
                                 None, r["base_blas"])
                self.results.add("7d. OpenBLAS on one thread ÷ default threads, MiniLM-sized in-process (batch 32)",
                                 f"{r['base_blas1']:.2f}× ({m['base_blas1']:.1f} vs {m['base_inproc']:.1f} inputs/s)",
                                 None, r["base_blas1"])
        self.results.details["embeddings"] = {"per_run": got, "ratios": ratio}

    # -- 5. memory -----------------------------------------------------------------------------

    async def memory(self) -> None:
        say("5. memory: router under load, workers, and 51 swaps between three models")
        self.results.add("5a. router RSS under load (peak during 1 and 6) ≤ 80 MB", mb(self.router_peak),
                         self.router_peak <= 80 * MB, self.router_peak / MB)
        for kind in (k for k in KINDS if k in self.worker_rss):
            value = median(self.worker_rss[kind])
            if kind == "text" and not self.real_text:
                self.results.add("5b. text worker RSS with the tiny model (after a request) ≤ 150 MB", mb(value),
                                 value <= 150 * MB, value / MB)
            else:
                self.results.add(f"5b. {kind} worker RSS with its demo model (after a request)", mb(value),
                                 None, value / MB)
        self.results.add("5b. reference: stock mlx_lm.server RSS with the same model (after a request)",
                         mb(self.stock_rss), None, self.stock_rss / MB)
        await self.swaps()

    async def swaps(self) -> None:
        cycle = [("a", "text"), ("b", "embedding" if "embedding" in self.models else "text"), ("c", "text")]
        models = [self.entry(kind, name, memory="600MB") for name, kind in cycle]
        swaps = 6 if self.quick else 51  # a multiple of 3: the same model is resident at both ends
        seen: set[int] = set()
        extra_max = 0
        with self.router("swaps", models, {"memory_budget": "1GB", "min_residency": 0}) as router:
            pid = router.proc.pid

            async def visit(name: str, kind: str) -> None:
                nonlocal extra_max
                await self.first_response(router, kind, name)
                workers = [p.pid for p in tree(pid) if p.pid != pid]
                seen.update(workers)
                extra_max = max(extra_max, len(workers) - 1)

            for name, kind in cycle:  # a first cycle warms every path; then 'a' is resident
                await visit(name, kind)
            await visit("a", "text")
            start = tree_rss(pid)
            for i in range(1, swaps + 1):
                name, kind = cycle[i % 3]
                await visit(name, kind)
            end = tree_rss(pid)
            loads = len(await self.events(router, "ready"))
        await asyncio.sleep(0.2)
        left = [p for p in seen if psutil.pid_exists(p) and _not_zombie(p)]
        change = end / start - 1
        self.results.add(f"5c. total RSS (router + workers) after {swaps} more swaps between three models, "
                         f"change ≤ 10%",
                         f"{change * 100:+.1f}% ({mb(start)} → {mb(end)})", abs(change) <= 0.10, change * 100)
        self.results.add("5d. processes left behind (at most one worker at a time; none after stop) = 0",
                         f"{len(left)} left of {len(seen)} workers started ({loads} loads); "
                         f"most workers at once beyond the resident one: {extra_max}",
                         not left and extra_max == 0, float(len(left)))

    # -- 6. swap storm -------------------------------------------------------------------------

    async def swap_storm(self) -> None:
        say("6. swap storm: 4 clients alternating between two models that do not fit together")
        window = 3.0 if self.quick else 8.0
        models = [self.entry("text", n, memory="600MB") for n in ("x", "y")]
        base = {"memory_budget": "1GB", "queue_timeout": "60s"}  # a stuck queue fails the run, it does not hang it
        results: dict[str, list[tuple[float, float]]] = {"batched": [], "unbatched": []}
        with self.router("storm-on", models, {**base, "min_residency": "1s"}) as on, \
                self.router("storm-off", models, {**base, "min_residency": 0}) as off:
            routers = {"batched": on, "unbatched": off}
            for i in range(self.rounds):
                order = ["batched", "unbatched"] if i % 2 == 0 else ["unbatched", "batched"]
                for mode in order:
                    with PeakRSS(routers[mode].proc.pid) as peak:
                        results[mode].append(await self.storm_once(routers[mode], window))
                    self.router_peak = max(self.router_peak, peak.peak)
                    async with router_client(routers[mode]) as c:
                        await post_json(c, "/api/unload", {})
                say(f"  round {i + 1}/{self.rounds}: " + ", ".join(
                    f"{m} {results[m][-1][0]:.2f} req/s {results[m][-1][1]:.2f} swaps/s" for m in order))
        req = {m: median([r[0] for r in v]) for m, v in results.items()}
        swaps = {m: median([r[1] for r in v]) for m, v in results.items()}
        ratio = median([a[0] / b[0] for a, b in zip(results["batched"], results["unbatched"])])
        self.results.add(
            "6. swap storm (4 clients alternating between 2 models, one fits): requests/s with per-model "
            "batching (min_residency 1s) ÷ without (0)",
            f"{ratio:.2f}× ({req['batched']:.2f} vs {req['unbatched']:.2f} req/s; swaps/s "
            f"{swaps['batched']:.2f} vs {swaps['unbatched']:.2f})", None, ratio)
        self.results.details["storm"] = results

    async def storm_once(self, router: Router, window: float) -> tuple[float, float]:
        loads_before = len(await self.events(router, "ready"))
        done = 0
        async with router_client(router) as c:
            started = time.perf_counter()

            async def client(i: int) -> None:
                nonlocal done
                k = i
                while time.perf_counter() - started < window:
                    model = ("x", "y")[k % 2]
                    k += 1
                    await post_json(c, "/v1/chat/completions", chat_body(model, f"Hi {k}", 8, False))
                    done += 1

            await asyncio.gather(*(client(i) for i in range(4)))
            wall = time.perf_counter() - started
        loads = len(await self.events(router, "ready")) - loads_before
        return done / wall, loads / wall

    # -- all -----------------------------------------------------------------------------------

    async def run(self) -> None:
        self.build_models()
        await self.proxy_overhead()
        await self.cold_start()
        await self.embeddings()
        await self.swap_storm()
        await self.memory()


def _interrupt(*_: Any) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="one short round of everything (CI)")
    parser.add_argument("--rounds", type=int, default=None, help="rounds per comparison (default 5; quick 1)")
    parser.add_argument("--model-path", default=None,
                        help="a local MLX text model directory to use instead of the tiny demo text model")
    parser.add_argument("--json", type=Path, default=None, help="also write the rows and raw figures here")
    args = parser.parse_args(argv)
    os.environ.update({k: v for k, v in TEST_ENV.items() if k not in os.environ})
    signal.signal(signal.SIGTERM, _interrupt)  # stop the routers on the way out, as for Ctrl-C
    bench = Bench(args)
    started = time.monotonic()
    try:
        asyncio.run(bench.run())
    finally:
        bench.close()
    took = time.monotonic() - started
    command = "scripts/bench.py " + " ".join(argv if argv is not None else sys.argv[1:])
    print(f"mlx-serve benchmark ({command.strip()}; {took:.0f} s)  \n{machine()}\n")
    print(bench.results.table())
    if args.json:
        args.json.write_text(json.dumps({"machine": machine(), "seconds": took,
                                         "rows": [row.__dict__ for row in bench.results.rows],
                                         "details": bench.results.details}, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
