"""The router process must never import MLX or a model library: only workers do.

Imports every module of the ``mlx_serve`` package in a fresh interpreter (this test process may
already hold other modules) and checks what ended up in ``sys.modules``.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

HEAVY_PREFIXES = ("mlx_lm", "mlx_vlm", "mlx_embeddings", "mlx_audio", "mlx_whisper", "torch", "transformers")

SCRIPT = r"""
import importlib, json, pkgutil, sys
import mlx_serve
import mlx_serve.app, mlx_serve.cli, mlx_serve.scheduler, mlx_serve.proxy
names = sorted(m.name for m in pkgutil.iter_modules(mlx_serve.__path__, "mlx_serve."))
for name in names:
    importlib.import_module(name)
print(json.dumps({"package_modules": names, "sys_modules": sorted(sys.modules)}))
"""


def is_heavy(name: str) -> bool:
    """mlx and mlx.*, the model libraries (mlx_lm*, torch*, ...) and the workers' own modules.

    The one exception is ``mlx_serve_workers.options``: the per-kind option tables, plain Python
    that the router reads to validate models.yaml (with its package's MLX-free ``__init__``).
    """
    if name in ("mlx_serve_workers", "mlx_serve_workers.options"):
        return False
    top = name.split(".")[0]
    return top in ("mlx", "mlx_serve_workers") or top.startswith(HEAVY_PREFIXES)


@pytest.mark.parametrize(("name", "heavy"), [
    ("mlx", True), ("mlx.core", True), ("mlx.nn.layers", True), ("mlx_lm", True), ("mlx_lm.generate", True),
    ("mlx_vlm.utils", True), ("mlx_embeddings", True), ("mlx_audio.tts", True), ("mlx_whisper", True),
    ("torch", True), ("torch.nn", True), ("torchvision", True), ("transformers", True),
    ("transformers.models.llama", True), ("mlx_serve_workers", False), ("mlx_serve_workers.text", True),
    ("mlx_serve_workers.options", False), ("mlx_serve_workers.common", True),
    ("mlx_serve", False), ("mlx_serve.app", False), ("mlx_serve.scheduler", False), ("mlxtend", False),
    ("starlette", False), ("httpx", False), ("yaml", False), ("json", False),
])
def test_is_heavy(name: str, heavy: bool) -> None:
    assert is_heavy(name) is heavy


def test_router_modules_import_no_mlx() -> None:
    proc = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    package_modules = set(result["package_modules"])
    # the walk really covered the package
    assert {"mlx_serve.app", "mlx_serve.cli", "mlx_serve.scheduler", "mlx_serve.proxy", "mlx_serve.config",
            "mlx_serve.policy", "mlx_serve.validation", "mlx_serve.worker"} <= package_modules
    assert package_modules <= set(result["sys_modules"])
    offending = [name for name in result["sys_modules"] if is_heavy(name)]
    assert offending == [], f"the router imported model libraries: {offending}"
