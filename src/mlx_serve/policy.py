"""Which models to evict so that another one fits: a pure, deterministic decision.

No I/O, no clock, no logging: the scheduler describes what is loaded (with times it read
itself) and gets back a :class:`Plan`. That makes the policy testable with plain tables.

Order of eviction among the models that may go: idle ones only (never a model with requests in
flight, a model that is starting or stopping, or a pinned one); among those, the one whose
keep_alive expires soonest first, then the least recently used, then by name so that ties are
deterministic. Only as many as needed are evicted.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from enum import Enum


@dataclass(frozen=True)
class Resident:
    """A model that holds (or is about to hold) memory."""

    name: str
    size: int
    busy: bool = False  # requests in flight, starting, stopping, or protected by its minimum residency
    pinned: bool = False  # keep_alive < 0: stays until unloaded explicitly
    expires_at: float = math.inf  # when its keep_alive runs out if it stays idle
    last_used: float = 0.0


class Action(str, Enum):
    LOAD = "load"  # evict `evict` (maybe nothing), then load
    WAIT = "wait"  # it will fit once busy models finish; try again when something changes
    REFUSE = "refuse"  # it can never fit: too big for the budget, or held back by pinned models


@dataclass(frozen=True)
class Plan:
    action: Action
    evict: tuple[str, ...] = ()
    blocking: tuple[str, ...] = ()  # busy models we wait for (WAIT) or pinned ones in the way (REFUSE)
    reason: str = ""


def plan_admission(residents: Sequence[Resident], size: int, budget: int) -> Plan:
    """Decide how a model of ``size`` bytes can be admitted beside ``residents`` within ``budget``."""
    if size > budget:
        return Plan(Action.REFUSE, reason=f"needs {size} bytes but the whole budget is {budget} bytes")
    used = sum(r.size for r in residents)
    free = budget - used
    if size <= free:
        return Plan(Action.LOAD, reason="fits beside the loaded models")

    pinned = [r for r in residents if r.pinned]
    if size > budget - sum(r.size for r in pinned):
        return Plan(Action.REFUSE, blocking=tuple(sorted(r.name for r in pinned)),
                    reason="does not fit beside the pinned models")

    candidates = sorted((r for r in residents if not r.busy and not r.pinned), key=eviction_order)
    evict: list[str] = []
    for r in candidates:
        if free >= size:
            break
        evict.append(r.name)
        free += r.size
    if free >= size:
        return Plan(Action.LOAD, evict=tuple(evict), reason="evicting idle models")

    busy = tuple(sorted(r.name for r in residents if r.busy and not r.pinned))
    return Plan(Action.WAIT, blocking=busy, reason="waiting for busy models to finish")


def eviction_order(r: Resident) -> tuple[float, float, str]:
    return (r.expires_at, r.last_used, r.name)


def drain_candidates(residents: Sequence[Resident], size: int, budget: int,
                     drainable: Sequence[str]) -> tuple[str, ...]:
    """Busy models to stop taking new requests so that ``size`` can fit once they finish.

    ``drainable`` are the busy models that have had their minimum residency. Picks as few as
    needed, in eviction order, after counting every idle model as evictable.
    """
    free = budget - sum(r.size for r in residents)
    free += sum(r.size for r in residents if not r.busy and not r.pinned)
    chosen: list[str] = []
    allowed = set(drainable)
    for r in sorted((r for r in residents if r.busy and not r.pinned and r.name in allowed), key=eviction_order):
        if free >= size:
            break
        chosen.append(r.name)
        free += r.size
    return tuple(chosen) if free >= size else ()


BACKOFF_CAP = 300.0


def held_back_until(failures: Sequence[float], now: float, limit: int, window: float, base: float,
                    cap: float = BACKOFF_CAP) -> float | None:
    """When a model that keeps failing may be started again, or None if it may start now.

    ``failures`` are the times of its failed starts and crashes. Fewer than ``limit`` of them within
    ``window`` seconds: no hold-back. Otherwise the hold-back starts at ``base`` seconds after the
    last failure and doubles with each further failure in the window, up to ``cap``.
    """
    recent = sorted(t for t in failures if now - t <= window)
    if len(recent) < limit:
        return None
    until = recent[-1] + min(cap, base * 2 ** (len(recent) - limit))
    return until if until > now else None
