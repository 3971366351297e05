"""The benchmark's table: one row per goal (or figure), with its measured value and verdict."""

from __future__ import annotations

import math
import statistics
import sys
import time
from dataclasses import dataclass, field
from typing import Any

MB = 1_000_000


@dataclass
class Row:
    """One line of the table. ``met`` is None for figures reported without a goal."""

    goal: str
    measured: str
    met: bool | None
    value: float | None = None


@dataclass
class Results:
    rows: list[Row] = field(default_factory=list)
    details: dict[str, Any] = field(default_factory=dict)

    def add(self, goal: str, measured: str, met: bool | None, value: float | None = None) -> None:
        self.rows.append(Row(goal, measured, met, value))
        verdict = {True: "met", False: "NOT met", None: "info"}[met]
        say(f"  -> {goal}: {measured} [{verdict}]")

    def table(self) -> str:
        lines = ["| goal | measured | met? |", "|---|---|---|"]
        for row in sorted(self.rows, key=lambda r: int(r.goal.split(".")[0][:1])):  # by goal (stable)
            met = {True: "yes", False: "**no**", None: "—"}[row.met]
            lines.append(f"| {row.goal} | {row.measured} | {met} |")
        return "\n".join(lines)


def say(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def median(values: list[float]) -> float:
    return statistics.median(values) if values else math.nan


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f} ms"


def mb(n: float) -> str:
    return f"{n / MB:.0f} MB"


class BenchError(RuntimeError):
    """Something the benchmark needs did not work (a router, a worker, a request)."""
