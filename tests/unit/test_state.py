"""mlx_serve.state: the worker lifecycle state machine, checked over every pair of states."""

from __future__ import annotations

import itertools

import pytest

from mlx_serve.state import TRANSITIONS, InvalidTransition, WorkerState, check_transition

S = WorkerState
PAIRS = list(itertools.product(WorkerState, WorkerState))
ALLOWED = [(a, b) for a, b in PAIRS if b in TRANSITIONS[a]]
FORBIDDEN = [(a, b) for a, b in PAIRS if b not in TRANSITIONS[a]]


def _id(pair: tuple[WorkerState, WorkerState]) -> str:
    return f"{pair[0].value}->{pair[1].value}"


def test_every_state_has_a_transition_entry() -> None:
    assert set(TRANSITIONS) == set(WorkerState)
    assert all(targets <= set(WorkerState) for targets in TRANSITIONS.values())


def test_the_documented_diagram() -> None:
    """The arrows drawn in the module docstring, and no others."""
    assert set(ALLOWED) == {
        (S.STOPPED, S.STARTING),
        (S.STARTING, S.READY), (S.STARTING, S.FAILED), (S.STARTING, S.STOPPING),
        (S.READY, S.STOPPING), (S.READY, S.FAILED),
        (S.STOPPING, S.STOPPED),
        (S.FAILED, S.STOPPED),
    }
    assert len(ALLOWED) + len(FORBIDDEN) == len(WorkerState) ** 2 == 25


@pytest.mark.parametrize(("current", "new"), ALLOWED, ids=[_id(p) for p in ALLOWED])
def test_allowed_transition_returns_the_new_state(current: WorkerState, new: WorkerState) -> None:
    assert check_transition(current, new) is new


@pytest.mark.parametrize(("current", "new"), FORBIDDEN, ids=[_id(p) for p in FORBIDDEN])
def test_forbidden_transition_raises_naming_both_states(current: WorkerState, new: WorkerState) -> None:
    with pytest.raises(InvalidTransition) as info:
        check_transition(current, new)
    message = str(info.value)
    assert f"from {current.value}" in message
    assert f"to {new.value}" in message


@pytest.mark.parametrize("state", list(WorkerState), ids=[s.value for s in WorkerState])
def test_no_state_may_stay_where_it_is(state: WorkerState) -> None:
    with pytest.raises(InvalidTransition):
        check_transition(state, state)


def test_every_state_leads_back_to_stopped_and_stopped_can_reach_ready() -> None:
    def reachable(start: WorkerState) -> set[WorkerState]:  # in one step or more
        seen: set[WorkerState] = set()
        todo = [start]
        while todo:
            for nxt in TRANSITIONS[todo.pop()]:
                if nxt not in seen:
                    seen.add(nxt)
                    todo.append(nxt)
        return seen

    for state in WorkerState:
        assert S.STOPPED in reachable(state)
    assert S.READY in reachable(S.STOPPED)


def test_invalid_transition_is_a_runtime_error_and_states_are_strings() -> None:
    assert issubclass(InvalidTransition, RuntimeError)
    assert S.READY == "ready" and S("stopping") is S.STOPPING
