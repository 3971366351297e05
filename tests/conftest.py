from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from support import build_demo_models

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
# litellm fetches a model cost map from GitHub when imported unless told not to; the tests stay offline.
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
os.environ.setdefault("LITELLM_OFFLINE_MODE", "true")


@pytest.fixture(scope="session")
def demo_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("demo-models")


@pytest.fixture(scope="session")
def demo_model(demo_dir: Path) -> Callable[[str], dict[str, Any]]:
    """``demo_model("demo-embed")`` -> its models.yaml entry ({"name", "type", "path", ...}).

    Each demo model is built on first use and then reused for the whole session.
    """
    cache: dict[str, dict[str, Any]] = {}

    def get(name: str) -> dict[str, Any]:
        if name not in cache:
            result = build_demo_models(demo_dir, only=[name])
            if not result["models"]:
                pytest.skip(f"{name}: {result['skipped'].get(name, 'not built')}")
            cache[name] = result["models"][0]
        return cache[name]

    return get
