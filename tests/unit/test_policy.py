"""mlx_serve.policy: admission and drain decisions, as tables."""

from __future__ import annotations

import dataclasses
import math
from typing import NamedTuple

import pytest

from mlx_serve.policy import Action, Plan, Resident, drain_candidates, eviction_order, plan_admission


def idle(name: str, size: int, expires_at: float = math.inf, last_used: float = 0.0) -> Resident:
    return Resident(name, size, expires_at=expires_at, last_used=last_used)


def busy(name: str, size: int, expires_at: float = math.inf, last_used: float = 0.0) -> Resident:
    return Resident(name, size, busy=True, expires_at=expires_at, last_used=last_used)


def pinned(name: str, size: int, is_busy: bool = False) -> Resident:
    return Resident(name, size, busy=is_busy, pinned=True)


class Case(NamedTuple):
    id: str
    residents: list[Resident]
    size: int
    budget: int
    action: Action
    evict: tuple[str, ...] = ()
    blocking: tuple[str, ...] = ()


ADMISSION = [
    # --- fits as it is
    Case("empty-residents", [], 50, 100, Action.LOAD),
    Case("empty-residents-whole-budget", [], 100, 100, Action.LOAD),
    Case("fits-beside-idle", [idle("a", 30)], 50, 100, Action.LOAD),
    Case("fits-beside-busy-and-pinned", [busy("a", 20), pinned("p", 20)], 60, 100, Action.LOAD),
    Case("exact-fit-at-boundary", [idle("a", 50)], 50, 100, Action.LOAD),
    Case("exact-fit-beside-several", [idle("a", 25), busy("b", 25), pinned("p", 25)], 25, 100, Action.LOAD),
    Case("zero-size", [busy("a", 100)], 0, 100, Action.LOAD),
    # --- evicts idle models
    Case("one-byte-over-evicts", [idle("a", 51)], 50, 100, Action.LOAD, evict=("a",)),
    Case("evict-one-idle", [idle("a", 60)], 50, 100, Action.LOAD, evict=("a",)),
    Case("whole-budget-evicts-all-idle", [idle("a", 10), idle("b", 10)], 100, 100, Action.LOAD, evict=("a", "b")),
    Case("soonest-expiry-first",
         [idle("a", 40, expires_at=300), idle("b", 40, expires_at=100), idle("c", 40, expires_at=200)],
         40, 120, Action.LOAD, evict=("b",)),
    Case("expiry-beats-recency",
         [idle("old", 40, expires_at=500, last_used=1), idle("new", 40, expires_at=100, last_used=99)],
         40, 80, Action.LOAD, evict=("new",)),
    Case("lru-on-equal-expiry",
         [idle("a", 40, expires_at=100, last_used=50), idle("b", 40, expires_at=100, last_used=10)],
         40, 80, Action.LOAD, evict=("b",)),
    Case("lru-when-no-expiry",
         [idle("a", 40, last_used=50), idle("b", 40, last_used=10)], 40, 80, Action.LOAD, evict=("b",)),
    Case("name-on-full-tie", [idle("b", 40), idle("a", 40), idle("c", 40)], 40, 120, Action.LOAD, evict=("a",)),
    Case("just-enough-one-of-three",
         [idle("a", 30, expires_at=1), idle("b", 30, expires_at=2), idle("c", 30, expires_at=3)],
         40, 100, Action.LOAD, evict=("a",)),
    Case("just-enough-two-of-three",
         [idle("a", 30, expires_at=1), idle("b", 30, expires_at=2), idle("c", 30, expires_at=3)],
         65, 100, Action.LOAD, evict=("a", "b")),
    Case("greedy-in-eviction-order-not-by-size",
         [idle("small", 10, expires_at=1), idle("big", 70, expires_at=2)], 50, 100, Action.LOAD,
         evict=("small", "big")),
    Case("skip-busy", [busy("a", 40, expires_at=1), idle("b", 40, expires_at=2)], 50, 100, Action.LOAD,
         evict=("b",)),
    Case("skip-pinned", [pinned("p", 40), idle("b", 40)], 50, 100, Action.LOAD, evict=("b",)),
    Case("skip-busy-and-pinned",
         [busy("x", 20, expires_at=0), pinned("p", 20), idle("c", 30, expires_at=9), idle("d", 30, expires_at=5)],
         50, 100, Action.LOAD, evict=("d", "c")),
    # --- waits for busy models
    Case("wait-only-busy", [busy("b", 30), busy("a", 60)], 50, 100, Action.WAIT, blocking=("a", "b")),
    Case("wait-idle-not-enough", [busy("a", 60), idle("b", 20)], 50, 100, Action.WAIT, blocking=("a",)),
    Case("wait-beside-pinned", [pinned("p", 40), busy("a", 40)], 50, 100, Action.WAIT, blocking=("a",)),
    Case("wait-pinned-busy-not-listed", [pinned("p", 30, is_busy=True), busy("a", 50)], 50, 100, Action.WAIT,
         blocking=("a",)),
    # --- can never fit
    Case("bigger-than-budget", [], 101, 100, Action.REFUSE),
    Case("bigger-than-budget-with-idle", [idle("a", 10)], 200, 100, Action.REFUSE),
    Case("refuse-beside-pinned", [pinned("q", 30), pinned("p", 60), idle("b", 5)], 50, 100, Action.REFUSE,
         blocking=("p", "q")),
    Case("refuse-beside-pinned-busy", [pinned("p", 60, is_busy=True), busy("a", 20)], 50, 100, Action.REFUSE,
         blocking=("p",)),
    Case("refuse-one-byte-over-pinned", [pinned("p", 51)], 50, 100, Action.REFUSE, blocking=("p",)),
]


@pytest.mark.parametrize("case", ADMISSION, ids=[c.id for c in ADMISSION])
def test_plan_admission(case: Case) -> None:
    plan = plan_admission(case.residents, case.size, case.budget)
    assert isinstance(plan, Plan)
    assert (plan.action, plan.evict, plan.blocking) == (case.action, case.evict, case.blocking)
    assert plan.reason


@pytest.mark.parametrize("case", [c for c in ADMISSION if c.action is Action.LOAD],
                         ids=[c.id for c in ADMISSION if c.action is Action.LOAD])
def test_load_plans_fit_and_evict_only_idle_models_no_more_than_needed(case: Case) -> None:
    plan = plan_admission(case.residents, case.size, case.budget)
    by_name = {r.name: r for r in case.residents}
    assert all(not by_name[n].busy and not by_name[n].pinned for n in plan.evict)
    remaining = sum(r.size for r in case.residents if r.name not in plan.evict)
    assert remaining + case.size <= case.budget
    if plan.evict:  # without the last one evicted it would not fit
        assert remaining + by_name[plan.evict[-1]].size + case.size > case.budget


def test_plan_admission_does_not_mutate_or_depend_on_input_order() -> None:
    residents = [idle("c", 30, expires_at=3), idle("a", 30, expires_at=1), idle("b", 30, expires_at=2)]
    before = list(residents)
    first = plan_admission(residents, 65, 100)
    assert residents == before
    assert plan_admission(list(reversed(residents)), 65, 100) == first
    assert first.evict == ("a", "b")


def test_eviction_order_key() -> None:
    residents = [idle("z", 1, expires_at=5, last_used=1), idle("a", 1, expires_at=5, last_used=1),
                 idle("m", 1, expires_at=5, last_used=0), idle("q", 1, expires_at=1, last_used=9),
                 idle("forever", 1)]
    assert [r.name for r in sorted(residents, key=eviction_order)] == ["q", "m", "a", "z", "forever"]


# --- drain_candidates --------------------------------------------------------------------------

class DrainCase(NamedTuple):
    id: str
    residents: list[Resident]
    size: int
    budget: int
    drainable: tuple[str, ...]
    expected: tuple[str, ...]


DRAIN = [
    DrainCase("one-suffices", [busy("a", 60, expires_at=1), busy("b", 30, expires_at=2)], 50, 100, ("a", "b"),
              ("a",)),
    DrainCase("eviction-order", [busy("a", 40, expires_at=200), busy("b", 40, expires_at=100)], 50, 100,
              ("a", "b"), ("b",)),
    DrainCase("lru-on-equal-expiry", [busy("a", 40, last_used=9), busy("b", 40, last_used=1)], 50, 100,
              ("a", "b"), ("b",)),
    DrainCase("name-on-tie", [busy("b", 40), busy("a", 40)], 50, 100, ("a", "b"), ("a",)),
    DrainCase("fewest-in-order-two-of-three",
              [busy("a", 30, expires_at=1), busy("b", 30, expires_at=2), busy("c", 30, expires_at=3)],
              50, 100, ("a", "b", "c"), ("a", "b")),
    DrainCase("idle-counted-as-evictable", [idle("i", 30), busy("a", 60, expires_at=1), busy("b", 5, expires_at=0)],
              50, 100, ("a", "b"), ("b", "a")),
    DrainCase("idle-alone-enough-nothing-to-drain", [idle("i", 60), busy("a", 30)], 50, 100, ("a",), ()),
    DrainCase("only-drainable-ones", [busy("young", 60, expires_at=1), busy("old", 60, expires_at=2)], 80, 150,
              ("old",), ("old",)),
    DrainCase("unknown-names-ignored", [busy("a", 60)], 50, 100, ("ghost", "a"), ("a",)),
    DrainCase("none-drainable", [busy("a", 60)], 50, 100, (), ()),
    DrainCase("draining-all-not-enough", [busy("a", 20), busy("b", 20), busy("c", 60)], 50, 100, ("a", "b"), ()),
    DrainCase("pinned-never-drained", [pinned("p", 60, is_busy=True), busy("a", 30)], 50, 100, ("p", "a"), ()),
    DrainCase("idle-not-drained", [idle("i", 60), busy("a", 35)], 70, 100, ("i", "a"), ("a",)),
    DrainCase("exact-fit-after-drain", [busy("a", 50), busy("b", 50, expires_at=1)], 50, 100, ("a", "b"), ("b",)),
    DrainCase("empty", [], 50, 100, (), ()),
]


@pytest.mark.parametrize("case", DRAIN, ids=[c.id for c in DRAIN])
def test_drain_candidates(case: DrainCase) -> None:
    result = drain_candidates(case.residents, case.size, case.budget, case.drainable)
    assert isinstance(result, tuple)
    assert result == case.expected


@pytest.mark.parametrize("case", [c for c in DRAIN if c.expected], ids=[c.id for c in DRAIN if c.expected])
def test_drained_models_make_room_once_finished(case: DrainCase) -> None:
    result = drain_candidates(case.residents, case.size, case.budget, case.drainable)
    by_name = {r.name: r for r in case.residents}
    assert all(by_name[n].busy and not by_name[n].pinned and n in case.drainable for n in result)
    # once they finish, they are idle and the admission plan is LOAD
    after = [dataclasses.replace(r, busy=False) if r.name in result else r for r in case.residents]
    assert plan_admission(after, case.size, case.budget).action is Action.LOAD
