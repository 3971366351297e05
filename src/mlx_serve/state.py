"""The lifecycle of one worker process, as an explicit state machine.

::

    STOPPED ──start──▶ STARTING ──ready──▶ READY ──stop──▶ STOPPING ──exited──▶ STOPPED
                          │                  │                 │
                          └──────failed──────┴──crashed──▶ FAILED ──reaped──▶ STOPPED

Only :class:`mlx_serve.worker.Worker` writes a worker's state, and every change goes through
:func:`check_transition`, so an impossible change (READY → STARTING, say) is a bug caught where
it happens rather than a worker leaked later.
"""

from __future__ import annotations

import enum


class WorkerState(str, enum.Enum):
    STOPPED = "stopped"
    STARTING = "starting"
    READY = "ready"
    STOPPING = "stopping"
    FAILED = "failed"


TRANSITIONS: dict[WorkerState, frozenset[WorkerState]] = {
    WorkerState.STOPPED: frozenset({WorkerState.STARTING}),
    WorkerState.STARTING: frozenset({WorkerState.READY, WorkerState.FAILED, WorkerState.STOPPING}),
    WorkerState.READY: frozenset({WorkerState.STOPPING, WorkerState.FAILED}),
    WorkerState.STOPPING: frozenset({WorkerState.STOPPED}),
    WorkerState.FAILED: frozenset({WorkerState.STOPPED}),
}


class InvalidTransition(RuntimeError):
    pass


def check_transition(current: WorkerState, new: WorkerState) -> WorkerState:
    """Return ``new`` if a worker may go there from ``current``; raise :class:`InvalidTransition` if not."""
    if new not in TRANSITIONS[current]:
        raise InvalidTransition(f"a worker cannot go from {current.value} to {new.value}")
    return new
