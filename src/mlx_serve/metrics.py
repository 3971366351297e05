"""Prometheus metrics for ``GET /metrics``, through ``prometheus_client``.

Each app owns a :class:`Metrics` with its own ``CollectorRegistry`` (not the process-wide one, so
that several apps can live in one process, as in tests). Three sources feed it:

* lifecycle events from the scheduler (:meth:`Metrics.observe_event`, an EventLog listener):
  loads, load time, failures, evictions and their reason, crashes, restarts, back-offs;
* finished requests from the proxy (:meth:`Metrics.observe_request`, a RequestLog listener):
  count by model, endpoint and status, latency, time to first token, queue wait, tokens;
* the scheduler's state, read at scrape time by a custom collector: memory per model against the
  budget, requests in flight and waiting, each model's state.

Every family is listed, with its labels, in docs/api.md (a test checks that they all are).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Counter, Histogram, Info, disable_created_metrics, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import Collector

from mlx_serve import __version__
from mlx_serve.requestlog import RequestRecord

if TYPE_CHECKING:
    from mlx_serve.scheduler import Scheduler

log = logging.getLogger("mlx_serve.metrics")

PREFIX = "mlx_serve"
CONTENT_TYPE = CONTENT_TYPE_LATEST

# Every state a configured model can be in, as /api/ps and the CLI name them.
MODEL_STATES = ("stopped", "loading", "starting", "ready", "draining", "stopping", "failed")

# Why a model was unloaded, from the scheduler's reason for the stop (see unload_reason).
EVICTION_REASONS = ("memory", "keep_alive", "requested", "shutdown", "other")

LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)
TTFT_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)
QUEUE_BUCKETS = (0.001, 0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300)
LOAD_BUCKETS = (0.25, 0.5, 1, 2.5, 5, 10, 20, 30, 60, 120, 300)
RATE_BUCKETS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000)


def unload_reason(reason: str) -> str:
    """The eviction reason label for one of the scheduler's stop reasons."""
    if reason.startswith("evicted"):
        return "memory"
    if "keep_alive" in reason:
        return "keep_alive"
    if reason.startswith("unload"):
        return "requested"
    if reason == "shutdown":
        return "shutdown"
    return "other"


class Metrics:
    """The metric families of one router, and what feeds them."""

    def __init__(self) -> None:
        # No *_created series: they double the output and Prometheus does not need them.
        disable_created_metrics()
        r = self.registry = CollectorRegistry()
        p = PREFIX
        Info(f"{p}_build", "The router's version.", registry=r).info({"version": __version__})
        # Requests (from the proxy).
        self.requests = Counter(f"{p}_requests", "Requests proxied to a model, by model, endpoint and HTTP status "
                                "(499: the client went away before any answer).",
                                ["model", "endpoint", "status"], registry=r)
        self.request_duration = Histogram(f"{p}_request_duration_seconds",
                                          "Time from the request read to the last byte of the answer.",
                                          ["model", "endpoint"], buckets=LATENCY_BUCKETS, registry=r)
        self.ttft = Histogram(f"{p}_time_to_first_token_seconds",
                              "Streams only: time from the request read to the model's first event.",
                              ["model", "endpoint"], buckets=TTFT_BUCKETS, registry=r)
        self.queue_wait = Histogram(f"{p}_queue_wait_seconds",
                                    "Time a request waited for its model (load, memory, swaps) before it was "
                                    "forwarded.", ["model"], buckets=QUEUE_BUCKETS, registry=r)
        self.generated_tokens = Counter(f"{p}_generated_tokens", "Tokens generated (from the usage the model "
                                        "reports; streams without usage: content events).",
                                        ["model", "endpoint"], registry=r)
        self.prompt_tokens = Counter(f"{p}_prompt_tokens", "Prompt tokens processed (from the reported usage).",
                                     ["model", "endpoint"], registry=r)
        self.tokens_per_second = Histogram(f"{p}_tokens_per_second",
                                           "Per request: generated tokens over the time since it was forwarded.",
                                           ["model", "endpoint"], buckets=RATE_BUCKETS, registry=r)
        # Model lifecycle (from the scheduler's events).
        self.loads = Counter(f"{p}_model_loads", "Models loaded and ready.", ["model"], registry=r)
        self.load_failures = Counter(f"{p}_model_load_failures", "Worker starts that failed.", ["model"],
                                     registry=r)
        self.load_duration = Histogram(f"{p}_model_load_seconds", "Time from a worker's spawn to ready.",
                                       ["model"], buckets=LOAD_BUCKETS, registry=r)
        self.evictions = Counter(f"{p}_model_evictions", "Models unloaded by the router, by reason: memory (to make "
                                 "room for another), keep_alive (idle), requested (/api/unload), shutdown.",
                                 ["model", "reason"], registry=r)
        self.crashes = Counter(f"{p}_model_crashes", "Workers that died on their own or were killed as hung.",
                               ["model"], registry=r)
        self.restarts = Counter(f"{p}_model_restarts", "Loads that followed a crash or a failed start.",
                                ["model"], registry=r)
        self.backoffs = Counter(f"{p}_model_backoffs", "Times a model was held back after repeated failures.",
                                ["model"], registry=r)
        # Gauges are read from the scheduler at scrape time; the router's own process too.
        self._state = _SchedulerCollector()
        r.register(self._state)
        ProcessCollector(registry=r)

    def watch(self, scheduler: Scheduler) -> None:
        """Read memory, queues and states from ``scheduler`` at each scrape."""
        self._state.scheduler = scheduler

    def exposition(self) -> bytes:
        """The text format Prometheus scrapes (content type :data:`CONTENT_TYPE`)."""
        return generate_latest(self.registry)

    # -- sources ---------------------------------------------------------------------------------

    def observe_event(self, event: dict[str, Any]) -> None:
        kind, model = event["event"], event["model"]
        if kind == "ready":
            self.loads.labels(model).inc()
            if isinstance(event.get("duration_s"), (int, float)):
                self.load_duration.labels(model).observe(event["duration_s"])
        elif kind == "load_failed":
            self.load_failures.labels(model).inc()
        elif kind == "unload":
            self.evictions.labels(model, unload_reason(str(event.get("reason", "")))).inc()
        elif kind == "crash":
            self.crashes.labels(model).inc()
        elif kind == "restart":
            self.restarts.labels(model).inc()
        elif kind == "backoff":
            self.backoffs.labels(model).inc()

    def observe_request(self, record: RequestRecord) -> None:
        model, endpoint = record.model, record.endpoint
        self.requests.labels(model, endpoint, str(record.status)).inc()
        self.request_duration.labels(model, endpoint).observe(record.duration_s)
        if record.queue_s is not None:
            self.queue_wait.labels(model).observe(record.queue_s)
        if record.ttft_s is not None:
            self.ttft.labels(model, endpoint).observe(record.ttft_s)
        if record.completion_tokens:
            self.generated_tokens.labels(model, endpoint).inc(record.completion_tokens)
        if record.prompt_tokens:
            self.prompt_tokens.labels(model, endpoint).inc(record.prompt_tokens)
        if record.tokens_per_s:
            self.tokens_per_second.labels(model, endpoint).observe(record.tokens_per_s)


class _SchedulerCollector(Collector):
    """Gauges read from the scheduler when Prometheus scrapes (nothing to keep in sync)."""

    def __init__(self) -> None:
        self.scheduler: Scheduler | None = None

    def describe(self) -> Iterator[Metric]:
        return iter(self._families())

    def collect(self) -> Iterator[Metric]:
        families = self._families()
        if self.scheduler is not None:
            try:
                self._fill(self.scheduler, *families)
            except Exception:  # a scrape must answer even if one reading fails
                log.exception("reading the scheduler for /metrics failed")
        return iter(families)

    @staticmethod
    def _families() -> tuple[GaugeMetricFamily, ...]:
        p = PREFIX
        return (
            GaugeMetricFamily(f"{p}_memory_budget_bytes", "Memory that loaded models may use together."),
            GaugeMetricFamily(f"{p}_memory_used_bytes",
                              "Memory booked by the loaded models (their footprints) and warm spare workers."),
            GaugeMetricFamily(f"{p}_model_memory_bytes", "A loaded model's footprint in the budget's books.",
                              labels=["model"]),
            GaugeMetricFamily(f"{p}_model_resident_bytes", "Resident memory (RSS) of a loaded model's worker "
                              "processes, read at scrape time.", labels=["model"]),
            GaugeMetricFamily(f"{p}_model_loaded", "1 if the model holds memory (loading, ready or stopping).",
                              labels=["model", "type"]),
            GaugeMetricFamily(f"{p}_model_state", "1 for the model's current state, 0 for the others.",
                              labels=["model", "state"]),
            GaugeMetricFamily(f"{p}_requests_in_flight", "Requests being answered by the model.", labels=["model"]),
            GaugeMetricFamily(f"{p}_queue_depth", "Requests waiting for the model to be ready.", labels=["model"]),
        )

    @staticmethod
    def _fill(s: Scheduler, budget: GaugeMetricFamily, used: GaugeMetricFamily, memory: GaugeMetricFamily,
              resident: GaugeMetricFamily, loaded: GaugeMetricFamily, state: GaugeMetricFamily,
              in_flight: GaugeMetricFamily, queue: GaugeMetricFamily) -> None:
        budget.add_metric([], s.budget)
        used.add_metric([], s.used_bytes())
        for name, slot in s.slots.items():
            current = s.state_of(name)
            loaded.add_metric([name, slot.config.type], 1 if slot.holds_memory else 0)
            for st in MODEL_STATES:
                state.add_metric([name, st], 1 if st == current else 0)
            in_flight.add_metric([name], slot.in_flight)
            queue.add_metric([name], slot.waiting)
            if slot.worker is not None:
                memory.add_metric([name], slot.footprint)
                rss = _rss_of_tree(slot.worker.pid)
                if rss is not None:
                    resident.add_metric([name], rss)


def _rss_of_tree(pid: int | None) -> int | None:
    """RSS of a process and its children (a worker may run helpers), or None if it is gone."""
    if pid is None:
        return None
    import psutil

    try:
        proc = psutil.Process(pid)
        total = proc.memory_info().rss
        for child in proc.children(recursive=True):
            try:
                total += child.memory_info().rss
            except psutil.Error:
                pass
        return total
    except psutil.Error:
        return None
