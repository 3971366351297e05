"""The scheduler: which models are loaded, who is using them, and when they go.

Handlers never look at worker states. They take a lease::

    async with scheduler.lease("qwen3", keep_alive=300) as worker:
        ...  # proxy to worker.client

``lease`` waits for a ready worker (joining a load already in progress, so there is only ever
one process per model), counts the request in flight, and in its ``finally`` starts the
keep_alive timer once the model goes idle. Admission under the memory budget is decided by the
pure :func:`mlx_serve.policy.plan_admission`; this module carries it out.

Everything here runs on the router's event loop, so state is changed without locks: a
decision and the bookkeeping that follows it happen with no ``await`` in between.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import httpx

from mlx_serve.config import Config, ModelConfig
from mlx_serve.durations import FOREVER, format_duration, format_size
from mlx_serve.errors import APIError, unavailable
from mlx_serve.hub import looks_local, model_dir
from mlx_serve.memory import WORKER_BASELINE, FootprintStore, expected_footprint
from mlx_serve.policy import Action, Resident, drain_candidates, held_back_until, plan_admission
from mlx_serve.runtime import Runtime, worker_environment
from mlx_serve.spares import SparePool
from mlx_serve.state import WorkerState
from mlx_serve.worker import LaunchSpec, Worker, WorkerStartError

log = logging.getLogger("mlx_serve.scheduler")

EventSink = Callable[..., None]


@dataclass
class ModelSlot:
    """The router's book on one configured model (the worker, if any, comes and goes)."""

    config: ModelConfig
    footprint: int
    keep_alive: float
    socket_index: int
    worker: Worker | None = None
    in_flight: int = 0
    waiting: int = 0
    draining: bool = False
    last_used: float = 0.0
    expires_at: float | None = None
    load_task: asyncio.Task[Worker] | None = None
    stop_task: asyncio.Task[None] | None = None
    expiry: asyncio.TimerHandle | None = None
    loads: int = 0
    failures: list[float] = field(default_factory=list)  # times of failed starts and crashes
    last_error: str | None = None
    restart_after: str | None = None  # the failure that the next load recovers from

    @property
    def name(self) -> str:
        return self.config.name

    @property
    def holds_memory(self) -> bool:
        return self.worker is not None

    @property
    def ready_worker(self) -> Worker | None:
        w = self.worker
        if w is not None and w.state is WorkerState.READY and not self.draining and self.stop_task is None:
            return w
        return None


class Scheduler:
    def __init__(self, config: Config, runtime: Runtime, budget: int, *,
                 clock: Callable[[], float] = time.monotonic, on_event: EventSink | None = None) -> None:
        self.config = config
        self.server = config.server
        self.runtime = runtime
        self.budget = budget
        self.clock = clock
        self.store = FootprintStore(runtime.footprints_path)
        self._on_event = on_event
        self._env = worker_environment(config.server.fast_blas)
        self.slots: dict[str, ModelSlot] = {}
        for index, model in enumerate(config.models):
            self.slots[model.name] = ModelSlot(
                config=model,
                footprint=expected_footprint(model, self.store, config.base_dir),
                keep_alive=model.keep_alive if model.keep_alive is not None else config.server.keep_alive,
                socket_index=index,
            )
        self._changed = asyncio.Event()
        self._pending_loads: list[ModelSlot] = []  # loads waiting for memory, first come first served
        self._waiting_total = 0
        self._closing = False
        self._health_task: asyncio.Task[None] | None = None
        self.spares = SparePool(config.server.spare_workers, self._env, runtime.log_dir,
                                timeout=config.server.start_timeout)

    # -- the public contract -------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def lease(self, name: str, keep_alive: float | None = None) -> AsyncIterator[Worker]:
        """A ready worker for ``name``, held for the duration of the ``async with`` block."""
        worker = await self.ensure_ready(name, keep_alive)
        slot = self.slots[name]
        slot.in_flight += 1  # no await since ensure_ready returned: the worker is still ready
        self._cancel_expiry(slot)
        slot.last_used = self.clock()
        try:
            yield worker
        finally:
            slot.in_flight -= 1
            slot.last_used = self.clock()
            if slot.in_flight == 0:
                self._went_idle(slot)
            self._notify()

    async def ensure_ready(self, name: str, keep_alive: float | None = None) -> Worker:
        """Return a ready worker for ``name``, loading it (once) if needed; raise APIError if it cannot be."""
        slot = self._slot(name)
        if keep_alive is not None:
            slot.keep_alive = keep_alive  # the last explicit value wins
        if self._closing:  # a stop has begun: requests in flight finish, new ones go elsewhere
            raise unavailable("the server is shutting down", retry_after=5, code="shutting_down")
        worker = slot.ready_worker
        if worker is not None:
            return worker
        if self._waiting_total >= self.server.queue_size:
            raise unavailable(f"too many requests are waiting for models ({self.server.queue_size}, "
                              f"server.queue_size); try again shortly", retry_after=2, code="queue_full")
        self._waiting_total += 1
        slot.waiting += 1
        deadline = self.clock() + self.server.queue_timeout
        try:
            while True:
                worker = slot.ready_worker
                if worker is not None:
                    return worker
                if self._closing:
                    raise unavailable("the server is shutting down", retry_after=5, code="shutting_down")
                if slot.worker is None and slot.load_task is None and slot.stop_task is None:
                    self._check_backoff(slot)
                    slot.load_task = asyncio.create_task(self._load(slot), name=f"load-{name}")
                task = slot.load_task
                remaining = deadline - self.clock()
                if remaining <= 0:
                    raise self._timeout_error(slot)
                try:
                    await self._wait_for_change(remaining)
                except asyncio.TimeoutError:
                    raise self._timeout_error(slot) from None
                if task is not None and task.done() and not task.cancelled() and task.exception() is not None:
                    raise _copy(task.exception())  # every request that joined this load gets its error
        finally:
            slot.waiting -= 1
            self._waiting_total -= 1
            if slot.waiting == 0 and slot.in_flight == 0 and slot.ready_worker is not None:
                self._went_idle(slot)  # e.g. every waiter gave up: restart the keep_alive clock
            self._notify()  # fewer waiters can make a model evictable for a load that waits

    async def load(self, name: str, keep_alive: float | None = None) -> Worker:
        """Load ``name`` now (``/api/load``); it then stays for its keep_alive like after a request."""
        worker = await self.ensure_ready(name, keep_alive)
        slot = self.slots[name]
        if slot.in_flight == 0:
            self._went_idle(slot)
        return worker

    async def unload(self, name: str | None = None) -> list[str]:
        """Unload one model (or all), each after its requests in flight finish. Returns what was unloaded."""
        slots = [self._slot(name)] if name else list(self.slots.values())
        targets = [s for s in slots if s.holds_memory or s.load_task is not None]
        await asyncio.gather(*(self._unload_when_idle(s) for s in targets))
        return [s.name for s in targets]

    def begin_shutdown(self) -> None:
        """First phase of a stop: queued requests fail with 503 now; requests in flight go on."""
        self._closing = True
        for slot in self.slots.values():
            if slot.load_task is not None:
                slot.load_task.cancel()
        self._notify()

    async def shutdown(self) -> None:
        """Last phase of a stop: stop every worker (the router is going away)."""
        self.begin_shutdown()
        if self._health_task is not None:
            self._health_task.cancel()
        stops = [self._begin_stop(s, "shutdown") for s in self.slots.values() if s.holds_memory]
        await asyncio.gather(*(asyncio.shield(t) for t in stops if t is not None),
                             self.spares.close(), return_exceptions=True)
        for slot in self.slots.values():
            self._cancel_expiry(slot)

    def start_background(self) -> None:
        """Liveness probes, and the spare workers models.yaml asks for."""
        if self.server.health_interval > 0 and self._health_task is None:
            self._health_task = asyncio.create_task(self._probe_forever(), name="health-probe")
        for kind in self.spares.kinds:
            self._refill_spare(kind)

    def _refill_spare(self, kind: str) -> None:
        """Start a spare of ``kind`` if it fits beside what is loaded without evicting anything."""
        if self._closing or kind not in self.spares.kinds:
            return
        plan = plan_admission(self._residents(self.clock()), spare_size(kind), self.budget)
        if plan.action is Action.LOAD and not plan.evict:
            self.spares.refill(kind)

    async def _probe_forever(self) -> None:
        """Liveness: a ready worker that does not answer GET /health in time is killed and replaced."""
        while True:
            await asyncio.sleep(self.server.health_interval)
            workers = [s.worker for s in self.slots.values()
                       if s.worker is not None and s.worker.state is WorkerState.READY]
            await asyncio.gather(*(self._probe(w) for w in workers), return_exceptions=True)

    async def _probe(self, worker: Worker) -> None:
        try:
            response = await worker.client.get("/health", timeout=self.server.health_timeout)
            if response.status_code == 200:
                return
            reason = f"answered its health probe with HTTP {response.status_code}"
        except Exception as e:  # timeouts, resets: all mean it cannot serve
            if worker.state is not WorkerState.READY:
                return
            reason = (f"did not answer its health probe within {self.server.health_timeout:g}s"
                      if isinstance(e, httpx.TimeoutException) else f"failed its health probe ({type(e).__name__})")
        await worker.abort(reason)

    def preload(self) -> list[asyncio.Task[Worker]]:
        return [asyncio.create_task(self.load(s.name), name=f"preload-{s.name}")
                for s in self.slots.values() if s.config.preload]

    # -- views ---------------------------------------------------------------------------------

    def queue_snapshot(self) -> dict[str, Any]:
        """Requests waiting for a model (to load, for memory, or for another model to drain)."""
        by_model = {s.name: s.waiting for s in self.slots.values() if s.waiting}
        return {"waiting": self._waiting_total, "limit": self.server.queue_size, "by_model": by_model}

    def expected_footprint(self, name: str) -> int:
        return self.slots[name].footprint

    def used_bytes(self) -> int:
        spares = sum(spare_size(kind) for kind in (*self.spares.ready(), *self.spares.starting()))
        return sum(s.footprint for s in self.slots.values() if s.holds_memory) + spares

    def state_of(self, name: str) -> str:
        slot = self.slots[name]
        if slot.worker is None:
            return "loading" if slot.load_task is not None else WorkerState.STOPPED.value
        if slot.draining and slot.worker.state is WorkerState.READY:
            return "draining"
        return slot.worker.state.value

    def snapshot(self) -> list[dict[str, Any]]:
        """The loaded models, for /api/ps and the CLI."""
        now_mono, now_wall = self.clock(), time.time()
        rows = []
        for slot in self.slots.values():
            if slot.worker is None:
                continue
            expires_at = None
            if slot.keep_alive != FOREVER:
                expires_mono = slot.expires_at if slot.expires_at is not None else now_mono + slot.keep_alive
                if slot.in_flight == 0 or slot.expires_at is not None:
                    expires_at = now_wall + max(0.0, expires_mono - now_mono)
            rows.append({
                "name": slot.name,
                "model": slot.name,
                "type": slot.config.type,
                "path": slot.config.path,
                "state": self.state_of(slot.name),
                "pid": slot.worker.pid,
                "size": slot.footprint,
                "size_vram": slot.footprint,
                "memory_measured": slot.worker.memory_bytes,
                "requests_in_flight": slot.in_flight,
                "requests_waiting": slot.waiting,
                "keep_alive": format_duration(slot.keep_alive),
                "pinned": slot.keep_alive == FOREVER,
                "expires_at": _iso(expires_at),
                "loaded_for_s": round(now_mono - slot.worker.ready_at, 3) if slot.worker.ready_at else None,
                "loads": slot.loads,
            })
        return rows

    # -- loading and admission -----------------------------------------------------------------

    async def _load(self, slot: ModelSlot) -> Worker:
        try:
            spec = self._launch_spec(slot)  # before admission: a model that is not here evicts nothing
            await self._admit(slot)
            worker = Worker(spec, on_unexpected_exit=self._on_worker_exit)
            slot.worker = worker  # reserves its footprint in the books from now on
            spare = self.spares.take(slot.config.type)
            if slot.restart_after is not None:
                self._emit("restart", slot, reason=f"after {slot.restart_after}", failures=len(slot.failures))
            self._emit("load", slot, reason="requested", spare=spare.proc.pid if spare else None)
            try:
                await worker.start(spare)
            except WorkerStartError as e:
                slot.worker = None
                self._record_failure(slot, e.reason)
                self._emit("load_failed", slot, error=e.reason)
                raise APIError(502, str(e), code="worker_start_failed") from None
            except BaseException:
                slot.worker = None
                raise
            slot.loads += 1
            if spare is not None:
                self._refill_spare(slot.config.type)
            measured = worker.memory_bytes
            if measured and slot.config.memory is None:
                slot.footprint = measured
                self.store.put(slot.config, measured)
            self._emit("ready", slot, pid=worker.pid, duration_s=round(time.monotonic() - (worker.started_at or 0), 3),
                       memory=measured, timings=worker.ready_info.get("timings"))
            slot.restart_after = None
            slot.last_used = self.clock()
            return worker
        finally:
            slot.load_task = None
            self._notify()

    async def _admit(self, slot: ModelSlot) -> None:
        """Wait until ``slot`` fits in the budget, evicting idle models and draining busy ones as needed."""
        self._pending_loads.append(slot)
        deadline = self.clock() + self.server.queue_timeout
        try:
            while True:
                if self._closing:
                    raise unavailable("the server is shutting down", retry_after=5, code="shutting_down")
                now = self.clock()
                # A spare of this model's kind becomes the model: its memory is not extra.
                residents = [r for r in self._residents(now) if r.name != f"spare:{slot.config.type}"]
                plan = plan_admission(residents, slot.footprint, self.budget)
                if plan.action is Action.REFUSE:
                    raise self._refusal(slot, plan.blocking)
                at_head = self._pending_loads[0] is slot
                if plan.action is Action.LOAD and at_head:
                    if not plan.evict:
                        return
                    for name in plan.evict:
                        if name.startswith("spare:"):
                            self.spares.evict(name.split(":", 1)[1])
                    victims = [self.slots[n] for n in plan.evict if not n.startswith("spare:")]
                    for victim in victims:
                        self._emit("evict", victim, reason=f"make room for {slot.name}",
                                   pid=victim.worker.pid if victim.worker else None)
                    stops = [self._begin_stop(v, f"evicted for {slot.name}") for v in victims]
                    await asyncio.gather(*(asyncio.shield(t) for t in stops if t is not None))
                    await asyncio.sleep(0)
                    continue
                wake_in = deadline - now
                if wake_in <= 0:
                    raise self._timeout_error(slot)
                if at_head and plan.action is Action.WAIT:
                    wake_in = min(wake_in, self._drain_for(slot, residents, now))
                await self._wait_for_change(wake_in, raise_on_timeout=False)
        finally:
            self._pending_loads.remove(slot)
            if not self._pending_loads:
                for other in self.slots.values():
                    other.draining = False
            self._notify()

    def _drain_for(self, slot: ModelSlot, residents: list[Resident], now: float) -> float:
        """Mark busy models that had their minimum residency as draining; return when to look again."""
        drainable, soonest = [], math.inf
        for r in residents:
            other = self.slots.get(r.name)  # None for a spare: never drained, it is evicted
            if other is None or not r.busy or r.pinned or other.worker is None or other.worker.ready_at is None:
                continue
            if other.in_flight == 0:
                # Only requests queued for it, about to be served (it has just become ready):
                # draining it now would strand them, and no finishing request would ever wake us.
                continue
            resident_for = now - other.worker.ready_at
            if resident_for >= self.server.min_residency:
                drainable.append(r.name)
            else:
                soonest = min(soonest, self.server.min_residency - resident_for)
        for name in drain_candidates(residents, slot.footprint, self.budget, drainable):
            if not self.slots[name].draining:
                self.slots[name].draining = True
                self._emit("drain", self.slots[name], reason=f"make room for {slot.name}")
        return max(0.01, soonest)

    def _residents(self, now: float) -> list[Resident]:
        residents = []
        for s in self.slots.values():
            if not s.holds_memory:
                continue
            w = s.worker
            transitional = w is None or w.state is not WorkerState.READY or s.stop_task is not None
            busy = transitional or s.in_flight > 0 or (s.waiting > 0 and not s.draining)
            residents.append(Resident(
                name=s.name, size=s.footprint, busy=busy, pinned=s.keep_alive == FOREVER,
                expires_at=s.expires_at if s.expires_at is not None else now + s.keep_alive,
                last_used=s.last_used))
        # Spares go first when room is needed (they hold no model); one still starting waits.
        for kind in self.spares.ready():
            residents.append(Resident(name=f"spare:{kind}", size=spare_size(kind), expires_at=-math.inf,
                                      last_used=-math.inf))
        for kind in self.spares.starting():
            residents.append(Resident(name=f"spare:{kind}", size=spare_size(kind), busy=True))
        return residents

    def _refusal(self, slot: ModelSlot, pinned: tuple[str, ...]) -> APIError:
        size, budget = format_size(slot.footprint), format_size(self.budget)
        if pinned:
            held = ", ".join(f"{n!r} ({format_size(self.slots[n].footprint)})" for n in pinned)
            message = (f"model {slot.name!r} needs {size} but the memory budget is {budget} and the pinned "
                       f"model(s) {held} stay loaded (keep_alive -1); unload them with "
                       f"POST /api/unload or `mlx-serve unload NAME`")
        else:
            message = (f"model {slot.name!r} needs {size}, more than the whole memory budget of {budget}; "
                       f"raise server.memory_budget or choose a smaller model")
        self._emit("refused", slot, reason=message)
        return APIError(503, message, code="insufficient_memory")

    def _timeout_error(self, slot: ModelSlot) -> APIError:
        busy = [s.name for s in self.slots.values() if s.in_flight > 0 and s is not slot]
        why = f" (busy: {', '.join(busy)})" if busy else ""
        return unavailable(f"model {slot.name!r} was not ready within server.queue_timeout "
                           f"({self.server.queue_timeout:g}s){why}; try again later",
                           retry_after=min(30.0, self.server.queue_timeout), code="queue_timeout")

    def _launch_spec(self, slot: ModelSlot) -> LaunchSpec:
        model = slot.config
        directory = model_dir(model, self.config.base_dir)
        if directory is None:
            where = self.config.source or "models.yaml"
            if looks_local(model.path):
                message = (f"model {model.name!r}: directory {model.path!r} (key 'path' in {where}) does not exist")
            else:
                message = (f"model {model.name!r} ({model.path}) is not downloaded yet: run `mlx-serve pull "
                           f"{model.name}` (or POST /api/pull) first")
            raise APIError(503, message, code="model_not_available")
        return LaunchSpec(
            model=model,
            model_path=str(directory),
            socket_path=self.runtime.socket_path(slot.socket_index),
            log_path=self.runtime.worker_log(model.name),
            env=self._env,
            start_timeout=model.start_timeout or self.server.start_timeout,
            stop_timeout=self.server.stop_timeout,
        )

    # -- stopping ------------------------------------------------------------------------------

    def _begin_stop(self, slot: ModelSlot, reason: str) -> asyncio.Task[None] | None:
        """Start stopping ``slot``'s worker now, synchronously with the decision to stop it.

        From this call on the worker is no longer ready, so no request can lease it between the
        decision and the stop (a stop scheduled for later could cut a request that slipped in).
        """
        if slot.stop_task is None and slot.worker is not None:
            slot.stop_task = asyncio.create_task(self._do_stop(slot, slot.worker, reason), name=f"stop-{slot.name}")
        return slot.stop_task

    async def _stop(self, slot: ModelSlot, reason: str) -> None:
        task = self._begin_stop(slot, reason)
        if task is not None:
            await asyncio.shield(task)

    async def _do_stop(self, slot: ModelSlot, worker: Worker, reason: str) -> None:
        stop_started = time.monotonic()
        self._cancel_expiry(slot)
        self._notify()
        try:
            await worker.stop()
        finally:
            if slot.worker is worker:
                slot.worker = None
            slot.stop_task = None
            slot.draining = False
            slot.expires_at = None
            self._emit("unload", slot, pid=worker.pid, reason=reason,
                       duration_s=round(time.monotonic() - stop_started, 3),
                       loaded_for_s=round(stop_started - worker.ready_at, 3) if worker.ready_at else None)
            self._notify()

    async def _unload_when_idle(self, slot: ModelSlot) -> None:
        if slot.load_task is not None:
            with contextlib.suppress(Exception):
                await asyncio.shield(slot.load_task)
        if slot.worker is None:
            return
        slot.draining = True  # new requests wait, then load it afresh
        self._notify()
        while slot.in_flight > 0:
            await self._wait_for_change(None)
        await self._stop(slot, "unload requested")

    def _went_idle(self, slot: ModelSlot) -> None:
        """Start the keep_alive clock (the model has no request in flight)."""
        self._cancel_expiry(slot)
        if slot.worker is None or slot.keep_alive == FOREVER:
            slot.expires_at = None
            return
        slot.expires_at = self.clock() + slot.keep_alive
        loop = asyncio.get_running_loop()
        slot.expiry = loop.call_later(max(0.0, slot.keep_alive), self._expire, slot)

    def _expire(self, slot: ModelSlot) -> None:
        slot.expiry = None
        if slot.in_flight or slot.waiting or slot.worker is None or slot.stop_task is not None:
            return
        if slot.keep_alive == FOREVER or (slot.expires_at is not None and self.clock() < slot.expires_at - 0.001):
            return
        self._emit("expire", slot, reason=f"idle for keep_alive {format_duration(slot.keep_alive)}")
        self._begin_stop(slot, "keep_alive expired")

    def _cancel_expiry(self, slot: ModelSlot) -> None:
        if slot.expiry is not None:
            slot.expiry.cancel()
            slot.expiry = None
        slot.expires_at = None

    def _on_worker_exit(self, worker: Worker, returncode: int) -> None:
        slot = self.slots.get(worker.name)
        if slot is None or slot.worker is not worker:
            return
        slot.worker = None  # its memory is free in our books at once
        slot.draining = False
        self._cancel_expiry(slot)
        self._record_failure(slot, f"worker crashed: {worker.exit_reason()}")
        self._emit("crash", slot, pid=worker.pid, reason=worker.exit_reason(), log_tail=worker.log_tail(5))
        self._notify()

    def _record_failure(self, slot: ModelSlot, error: str) -> None:
        now = self.clock()
        slot.failures = [t for t in slot.failures if now - t <= self.server.restart_window] + [now]
        slot.last_error = error
        slot.restart_after = error
        until = self._held_until(slot, now)
        if until is not None:
            self._emit("backoff", slot, reason=error, retry_in_s=round(until - now, 2),
                       failures=len(slot.failures))

    def _held_until(self, slot: ModelSlot, now: float) -> float | None:
        s = self.server
        return held_back_until(slot.failures, now, s.restart_limit, s.restart_window, s.restart_backoff)

    def _check_backoff(self, slot: ModelSlot) -> None:
        now = self.clock()
        until = self._held_until(slot, now)
        if until is not None:
            raise unavailable(f"model {slot.name!r} is held back after {len(slot.failures)} failures in "
                              f"{self.server.restart_window:g}s; next try in {until - now:.0f}s. "
                              f"Last error: {slot.last_error}", retry_after=until - now, code="model_backoff")

    # -- plumbing ------------------------------------------------------------------------------

    def _slot(self, name: str) -> ModelSlot:
        slot = self.slots.get(name)
        if slot is None:
            known = ", ".join(sorted(self.slots)) or "none configured"
            raise APIError(404, f"model {name!r} not found; available models: {known}", param="model",
                           code="model_not_found")
        return slot

    def _notify(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    async def _wait_for_change(self, timeout: float | None, raise_on_timeout: bool = True) -> None:
        event = self._changed
        try:
            await asyncio.wait_for(event.wait(), timeout=timeout)
        except asyncio.TimeoutError:
            if raise_on_timeout:
                raise

    def _emit(self, kind: str, slot: ModelSlot, **fields: Any) -> None:
        fields = {k: v for k, v in fields.items() if v is not None}
        log.info("%s %s %s", kind, slot.name, " ".join(f"{k}={v}" for k, v in fields.items() if k != "log_tail"))
        if self._on_event is not None:
            self._on_event(kind, slot.name, **fields)


def spare_size(kind: str) -> int:
    """What a spare worker holds: the baseline of a worker of its kind, with no weights."""
    return WORKER_BASELINE.get(kind, 150 * 1000**2)


def _copy(error: BaseException) -> BaseException:
    if isinstance(error, APIError):
        return APIError(error.status, error.message, param=error.param, code=error.code, type_=error.type,
                        headers=dict(error.headers))
    return error


def _iso(timestamp: float | None) -> str | None:
    if timestamp is None:
        return None
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(timestamp)) + f"{time.strftime('%z')[:3]}:{time.strftime('%z')[3:]}"
