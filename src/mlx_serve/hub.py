"""Where a model's files are: a local directory, or a Hugging Face repo in the local hub cache.

No network and no import of huggingface_hub here: the router only looks at the cache layout
(``models--org--name/refs/main`` and ``snapshots/<revision>/``). Downloading is ``mlx-serve pull``.
"""

from __future__ import annotations

import os
from pathlib import Path

from mlx_serve.config import ModelConfig


def hub_cache() -> Path:
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    return Path(os.environ.get("HF_HOME", "~/.cache/huggingface")).expanduser() / "hub"


def hf_cache_dir(repo_id: str) -> Path | None:
    """The cache folder of a repo, if anything of it was downloaded."""
    folder = hub_cache() / ("models--" + repo_id.replace("/", "--"))
    return folder if folder.is_dir() else None


def snapshot_dir(repo_id: str) -> Path | None:
    """The cached snapshot of a repo's main revision (else its newest one), if it was downloaded."""
    folder = hf_cache_dir(repo_id)
    if folder is None:
        return None
    try:
        revision = (folder / "refs" / "main").read_text().strip()
    except OSError:
        revision = ""
    candidate = folder / "snapshots" / revision if revision else None
    if candidate is not None and candidate.is_dir():
        return candidate
    snapshots = folder / "snapshots"
    found = sorted(snapshots.glob("*"), key=lambda p: p.stat().st_mtime, reverse=True) if snapshots.is_dir() else []
    return found[0] if found else None


def looks_local(path: str) -> bool:
    """A path (not a repo id): absolute, relative with ./ or ../, or under ~."""
    return path.startswith(("/", "./", "../", "~")) or path.count("/") != 1


def model_dir(model: ModelConfig, base_dir: Path | None) -> Path | None:
    """The directory holding the model's files, or None when it is not on this machine."""
    return model.local_path(base_dir) or (None if looks_local(model.path) else snapshot_dir(model.path))
