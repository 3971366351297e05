"""The benchmark (scripts/bench.py) runs end to end in its quick mode and prints its whole table.

It asserts no timings: these machines are shared and the quick mode measures one short round.
It guards the script against rot: every goal keeps its row, and every row carries a number.
"""

from __future__ import annotations

import json
import math
import re
import subprocess
import sys
from pathlib import Path

from support import TEST_ENV

ROOT = Path(__file__).resolve().parent.parent

# The goals of docs/performance.md, by the label each row of the table starts with.
GOAL_ROWS = ["1a.", "1b.", "1c.", "1d.", "1e.", "1f.", "2. cold start of the tiny text model", "2. reference",
             "3.", "4a.", "4b.", "5a.", "5b. text worker", "5c.", "5d.", "6.", "7a.", "7b."]


def test_quick_benchmark_prints_a_row_with_a_number_for_every_goal(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "bench.py"), "--quick", "--json", str(out)],
                          capture_output=True, text=True, env=TEST_ENV, timeout=240, cwd=ROOT)
    assert proc.returncode == 0, f"bench.py failed:\n{proc.stderr[-4000:]}"

    rows = [line for line in proc.stdout.splitlines() if line.startswith("| ") and not line.startswith("| goal")]
    cells = [[c.strip() for c in row.strip("|").split("|")] for row in rows]
    assert all(len(c) == 3 for c in cells), rows
    for label in GOAL_ROWS:
        matching = [c for c in cells if c[0].startswith(label)]
        assert matching, f"no row for {label!r} in:\n{proc.stdout}"
        for goal, measured, met in matching:
            assert re.search(r"[-+]?\d+(\.\d+)?", measured), f"{goal}: no number in {measured!r}"
            assert met in ("yes", "**no**", "—"), f"{goal}: verdict {met!r}"
    # Rows with a target say whether it is met; the figures behind them are finite numbers.
    assert any(c[2] in ("yes", "**no**") for c in cells)

    report = json.loads(out.read_text())
    assert len(report["rows"]) == len(rows)
    for row in report["rows"]:
        assert row["value"] is None or math.isfinite(row["value"]), row
    assert "cores" in report["machine"]
