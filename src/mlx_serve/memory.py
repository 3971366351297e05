"""How much memory models need: estimates from weight files, measurements remembered across restarts.

A model's expected footprint is, in order of preference: the ``memory:`` override in
models.yaml; what its worker last reported once loaded (kept in ``footprints.json`` in the
state directory, keyed by model name and path); an estimate from the size of its weight files
plus the baseline of a worker process of its kind.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from pathlib import Path

import psutil

from mlx_serve.config import ModelConfig
from mlx_serve.hub import model_dir

log = logging.getLogger("mlx_serve.memory")

WEIGHT_SUFFIXES = (".safetensors", ".npz", ".gguf", ".bin")
# What an idle worker process of each kind holds besides the weights (measured with torch hidden).
WORKER_BASELINE = {
    "text": 120 * 1000**2,
    "vision": 170 * 1000**2,
    "embedding": 150 * 1000**2,
    "tts": 200 * 1000**2,
    "stt": 200 * 1000**2,
    "rerank": 130 * 1000**2,
}
# Activations, KV cache and MLX's buffer cache on top of the weights.
WEIGHT_OVERHEAD = 1.2


def physical_memory() -> int:
    return int(psutil.virtual_memory().total)


def weight_bytes(directory: Path) -> int:
    total = 0
    for root, _dirs, files in os.walk(directory):
        for name in files:
            if name.endswith(WEIGHT_SUFFIXES):
                try:
                    total += (Path(root) / name).stat().st_size
                except OSError:
                    pass
    return total


def estimate_footprint(model: ModelConfig, base_dir: Path | None = None) -> int:
    """Expected memory of a model before it was ever loaded: weights × overhead + worker baseline."""
    directory = model_dir(model, base_dir)
    weights = weight_bytes(directory) if directory else 0
    return int(weights * WEIGHT_OVERHEAD) + WORKER_BASELINE.get(model.type, 150 * 1000**2)


class FootprintStore:
    """Measured footprints, persisted as JSON so the next start plans with real figures."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._data: dict[str, dict[str, object]] = {}
        try:
            loaded = json.loads(path.read_text())
            if isinstance(loaded, dict):
                self._data = loaded
        except (OSError, ValueError):
            pass

    def get(self, model: ModelConfig) -> int | None:
        entry = self._data.get(model.name)
        if isinstance(entry, dict) and entry.get("path") == model.path and isinstance(entry.get("bytes"), int):
            return entry["bytes"]
        return None

    def put(self, model: ModelConfig, measured: int) -> None:
        self._data[model.name] = {"path": model.path, "bytes": int(measured)}
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=".footprints-")
            with os.fdopen(fd, "w") as f:
                json.dump(self._data, f, indent=1)
            os.replace(tmp, self.path)
        except OSError as e:
            log.warning("could not save measured footprints to %s: %s", self.path, e)


def expected_footprint(model: ModelConfig, store: FootprintStore, base_dir: Path | None = None) -> int:
    if model.memory is not None:
        return model.memory
    measured = store.get(model)
    if measured is not None:
        return measured
    return estimate_footprint(model, base_dir)
