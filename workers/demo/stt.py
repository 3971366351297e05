"""Tiny random-weight Whisper speech-to-text model (mlx-whisper format) for tests and demos.

The directory is what ``mlx_whisper.load_models.load_model`` reads: ``config.json`` with
exactly the ``ModelDimensions`` fields and ``weights.safetensors``. Constraints:
``n_audio_ctx`` must be 1500 (transcribe pads to 3000 mel frames, conv2 has stride 2),
``n_mels`` 80 or 128 (the bundled mel filters), and ``n_vocab`` 51864 selects the
English-only tiktoken vocabulary bundled with mlx-whisper (no download). Weights are
float32: fp32 compute is several times faster than fp16 on CPU.
"""

from __future__ import annotations

import json
from pathlib import Path

DIMS = {
    "n_mels": 80, "n_audio_ctx": 1500, "n_audio_state": 64, "n_audio_head": 2, "n_audio_layer": 1,
    "n_vocab": 51864, "n_text_ctx": 448, "n_text_state": 64, "n_text_head": 2, "n_text_layer": 1,
}


def build(out: Path, seed: int = 0) -> dict:
    """Write a tiny random English-only Whisper into ``out``; return its models.yaml extras."""
    import mlx.core as mx
    from mlx.utils import tree_flatten

    from mlx_whisper import whisper

    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(json.dumps({**DIMS, "model_type": "whisper"}, indent=2))
    mx.random.seed(seed)
    model = whisper.Whisper(whisper.ModelDimensions(**DIMS), mx.float32)
    weights = dict(tree_flatten(model.parameters()))
    mx.save_safetensors(str(out / "weights.safetensors"), weights)
    return {}
