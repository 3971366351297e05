"""``python -m mlx_serve_workers.demo OUT [--only NAME ...]``: build the demo models into OUT.

Prints one JSON document on stdout: ``{"models": [{name, type, path, ...}], "skipped":
{name: reason}}``. A kind whose library is not installed is skipped, not an error.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import sys
import time
from pathlib import Path

from mlx_serve_workers.common import hide_torch
from mlx_serve_workers.demo import DEMO_MODELS


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="mlx_serve_workers.demo")
    parser.add_argument("out", type=Path)
    parser.add_argument("--only", action="append", default=None, help="build only this demo model")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    hide_torch()

    args.out.mkdir(parents=True, exist_ok=True)
    built: list[dict] = []
    skipped: dict[str, str] = {}
    for name, (kind, module, library) in DEMO_MODELS.items():
        if args.only and name not in args.only:
            continue
        if importlib.util.find_spec(library) is None:
            skipped[name] = f"{library} is not installed (pip install 'mlx-serve[{_extra(kind)}]')"
            continue
        target = args.out / name
        started = time.monotonic()
        builder = importlib.import_module(f"mlx_serve_workers.demo.{module}")
        extra = builder.build(target, seed=args.seed) or {}
        print(f"built {name} ({kind}) in {time.monotonic() - started:.1f}s -> {target}", file=sys.stderr)
        built.append({"name": name, "type": kind, "path": str(target.resolve()), **extra})
    json.dump({"models": built, "skipped": skipped}, sys.stdout, indent=2)
    print()
    return 0


def _extra(kind: str) -> str:
    return {"embedding": "embeddings", "rerank": "text"}.get(kind, kind)


if __name__ == "__main__":
    sys.exit(main())
