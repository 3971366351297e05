"""One model name on two mlx-serve instances behind ``litellm.Router``; one instance dies mid-run, no request fails.

The Router is built from the "More than one Mac" config in docs/litellm.md (its two hosts
pointed at two routers on loopback), so the settings the docs recommend are the ones tested.
"""

from __future__ import annotations

import signal
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

import litellm
from litellm.integrations.custom_logger import CustomLogger
from litellm_docs import multi_host_config, pointed_at, served_name
from support import Router

API_KEY = "sk-mlx-failover-test"
TOTAL = 30
KILL_AFTER = 10
CONCURRENCY = 3
litellm.suppress_debug_info = True


class Attempts(CustomLogger):
    """Which deployment each attempt went to, and whether it failed (LiteLLM logs every try, retries included)."""

    def __init__(self) -> None:
        super().__init__()
        self.lock = threading.Lock()
        self.failed: Counter[str] = Counter()

    def log_failure_event(self, kwargs: dict[str, Any], response_obj: Any, start_time: Any, end_time: Any) -> None:
        deployment = ((kwargs.get("litellm_params") or {}).get("model_info") or {}).get("id", "?")
        with self.lock:
            self.failed[deployment] += 1


# One instance for the module: LiteLLM registers a callback class only once per process.
ATTEMPTS = Attempts()


def _answered(router: Router, model: str) -> int:
    """Requests for ``model`` the router answered with 200, by its own count (``GET /metrics``)."""
    with router.client() as c:
        text = c.get("/metrics").text
    return int(sum(sample.value for family in text_string_to_metric_families(text)
                   if family.name == "mlx_serve_requests" for sample in family.samples
                   if sample.name.endswith("_total") and sample.labels.get("model") == model
                   and sample.labels.get("status") == "200"))


def _wait_for(check: Any, timeout: float = 5.0) -> bool:
    """The router counts a request just after its last byte is sent: allow it that moment."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def _ready_events(router: Router) -> list[dict[str, Any]]:
    with router.client() as c:
        events = c.get("/api/events", params={"limit": 100}).json()["events"]
    return [e for e in events if e["event"] == "ready"]


@pytest.mark.parametrize("stop_signal", [signal.SIGKILL, signal.SIGTERM], ids=["SIGKILL", "SIGTERM"])
def test_a_dead_instance_is_skipped_and_no_request_fails(tmp_path: Path, demo_model: Any,
                                                         monkeypatch: pytest.MonkeyPatch,
                                                         stop_signal: signal.Signals) -> None:
    config = multi_host_config()
    name = served_name(config["model_list"][0])
    ids = [d["model_info"]["id"] for d in config["model_list"]]
    models = [{"name": name, "type": "text", "path": demo_model("demo-chat")["path"]}]
    server = {"api_key": API_KEY}
    with Router(tmp_path, models, server, name="a") as a, Router(tmp_path, models, server, name="b") as b:
        monkeypatch.setenv("MLX_SERVE_API_KEY", API_KEY)
        attempts = ATTEMPTS
        attempts.failed.clear()
        monkeypatch.setattr(litellm, "callbacks", [attempts])
        router = litellm.Router(model_list=pointed_at(config, [f"{a.base_url}/v1", f"{b.base_url}/v1"]),
                                **config["router_settings"])
        served: list[str] = []
        errors: list[str] = []
        lock = threading.Lock()
        stopped = threading.Event()
        took: list[float] = []

        def one(i: int) -> None:
            started = time.monotonic()
            try:
                reply = router.completion(model=config["model_list"][0]["model_name"], max_tokens=3,
                                          messages=[{"role": "user", "content": f"request {i}"}])
                assert reply.choices[0].message.content
            except Exception as e:  # every failure is collected: the assertion below shows them all
                with lock:
                    errors.append(f"request {i}: {type(e).__name__}: {e}")
                return
            with lock:
                served.append(reply._hidden_params["model_id"])
                took.append(round(time.monotonic() - started, 2))
                # Stop A once at least KILL_AFTER are done and both have served (random routing
                # could, rarely, not have picked one of them yet); requests are in flight meanwhile.
                if not stopped.is_set() and len(served) >= KILL_AFTER and set(ids) <= set(served):
                    # A's own count: it did serve (not just LiteLLM saying so).
                    assert _wait_for(lambda: _answered(a, name) >= served.count(ids[0])), _answered(a, name)
                    a.proc.send_signal(stop_signal)
                    stopped.set()
                    served.append("--stopped--")

        with ThreadPoolExecutor(CONCURRENCY) as pool:
            list(pool.map(one, range(TOTAL)))

        print(f"{stop_signal.name}: slowest requests {sorted(took)[-5:]} s")
        assert errors == []
        assert stopped.is_set(), f"both instances never served before the end: {served}"
        before, after = served[:served.index("--stopped--")], served[served.index("--stopped--") + 1:]
        assert len(before) + len(after) == TOTAL
        assert Counter(before)[ids[0]] >= 1 and Counter(before)[ids[1]] >= 1
        # Right after the stop A may still answer: after SIGKILL only what it had already sent;
        # after SIGTERM also what it took in before uvicorn acted on the signal (it checks every 0.1 s).
        if stop_signal == signal.SIGKILL:
            assert Counter(after)[ids[0]] <= CONCURRENCY - 1, after
        # A may still finish what it took in before acting on SIGTERM (its server looks every
        # 0.1 s; these 3-token requests take ~20 ms each), so its late completions are bounded,
        # not absent; and B serves the end of the run.
        assert Counter(after)[ids[0]] <= 2 * CONCURRENCY, " ".join(after)
        assert len(after) >= 10 and set(after[-3:]) == {ids[1]}, " ".join(after)
        # A was tried after its stop (random routing picks it with even odds), failed at most once
        # per request in flight, then was cooled down and skipped; the failed tries were retried on B.
        assert attempts.failed[ids[1]] == 0
        assert 1 <= attempts.failed[ids[0]] <= CONCURRENCY, attempts.failed
        assert a.proc.wait(30) == (0 if stop_signal == signal.SIGTERM else -signal.SIGKILL)
        assert len(_ready_events(b)) == 1  # B loaded once and served the rest
        # B's own count matches what LiteLLM says B answered: every retry of A's share landed there.
        assert _wait_for(lambda: _answered(b, name) == served.count(ids[1])), (_answered(b, name), served)
