"""``mlx-serve init --demo``: build tiny offline models (in a worker process) and a models.yaml for them."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import click
import yaml


def build_demo(out: Path, only: list[str] | None = None) -> dict[str, Any]:
    """Run the builder in a subprocess: it imports MLX, and the router process never does."""
    cmd = [sys.executable, "-m", "mlx_serve_workers.demo", str(out)]
    for name in only or []:
        cmd += ["--only", name]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    if proc.returncode != 0:
        raise click.ClickException(f"building the demo models failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout)


def demo_config_text(models: list[dict[str, Any]]) -> str:
    entries = [{k: m[k] for k in ("name", "type", "path", "options", "keep_alive") if k in m} for m in models]
    body = yaml.safe_dump({"models": entries}, sort_keys=False, default_flow_style=False)
    return (
        "# mlx-serve configuration for the tiny DEMO models built by `mlx-serve init --demo`.\n"
        "# Their weights are random: they answer fast, in gibberish. Replace them with real models\n"
        "# (a Hugging Face repo id or a local MLX directory) for real answers.\n"
        "# Every key is described in docs/configuration.md.\n"
        "server:\n"
        "  host: 127.0.0.1\n"
        "  port: 8095\n"
        "  memory_budget: 75%      # or an absolute size such as 16GB\n"
        "  keep_alive: 10m         # how long an idle model stays loaded\n\n"
        + body
    )
