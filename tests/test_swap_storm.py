"""Clients alternating between two models that do not fit together: every request is served.

With ``min_residency: 0`` a model that has just become ready must still serve the requests that
were queued for it before it is drained for the other one. Draining it at once stranded them:
nothing woke the scheduler again, and every request waited for its queue_timeout.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import httpx

from support import Router


async def _storm(router: Router, seconds: float) -> list[int]:
    """Four clients start together, two on each model, and then alternate between the models."""
    statuses: list[int] = []
    async with httpx.AsyncClient(base_url=router.base_url, timeout=60,
                                 limits=httpx.Limits(keepalive_expiry=1.0)) as c:
        started = time.monotonic()

        async def client(k: int) -> None:
            while time.monotonic() - started < seconds:
                r = await c.post("/v1/chat/completions", json={
                    "model": ("x", "y")[k % 2], "max_tokens": 2, "messages": [{"role": "user", "content": f"hi {k}"}]})
                statuses.append(r.status_code)
                k += 1

        await asyncio.gather(*(client(i) for i in range(4)))
        # Start the next storm from nothing loaded: both models are wanted at once again.
        assert (await c.post("/api/unload", json={})).status_code == 200
    return statuses


def test_alternating_clients_are_all_served_with_min_residency_zero(tmp_path: Path, demo_model: Any) -> None:
    path = demo_model("demo-chat")["path"]
    models = [{"name": n, "type": "text", "path": path, "memory": "600MB"} for n in ("x", "y")]
    server = {"memory_budget": "1GB", "min_residency": 0, "queue_timeout": "15s"}
    with Router(tmp_path, models, server) as router:
        statuses = [s for _ in range(3) for s in asyncio.run(_storm(router, 2.5))]
        assert statuses and set(statuses) == {200}, statuses
        with router.client() as c:
            events = c.get("/api/events", params={"limit": 1000}).json()["events"]
    loads = [e for e in events if e["event"] == "ready"]
    # Each load serves requests that were queued for it: never more loads than requests.
    assert 2 <= len(loads) <= len(statuses), (len(loads), len(statuses))
