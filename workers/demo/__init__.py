"""Tiny random-weight models of every kind, built offline for tests and ``mlx-serve init --demo``.

Each kind has a module here with ``build(out: Path, seed: int = 0) -> dict``: it writes a
complete model directory into ``out`` and returns extra fields for the model's models.yaml
entry (for instance ``{"options": {...}}``), or ``{}``. The weights are random: the models
produce gibberish, quickly, which is what tests and a first try of the server need.
"""

from __future__ import annotations

# name in models.yaml -> (model type, builder module, library the builder and worker need)
DEMO_MODELS: dict[str, tuple[str, str, str]] = {
    "demo-chat": ("text", "text", "mlx_lm"),
    "demo-vision": ("vision", "vision", "mlx_vlm"),
    "demo-embed": ("embedding", "embedding", "mlx_embeddings"),
    "demo-tts": ("tts", "tts", "mlx_audio"),
    "demo-stt": ("stt", "stt", "mlx_whisper"),
    "demo-rerank": ("rerank", "rerank", "mlx_lm"),
}
