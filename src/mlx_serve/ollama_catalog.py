"""What configured models look like to Ollama clients: ``/api/tags`` entries and ``/api/show`` answers.

Everything comes from the model's files on disk, read without MLX: ``config.json`` (architecture,
context length, quantisation), the safetensors headers (parameter count: a few KB read per
shard) and the chat template. A Hugging Face repo id is looked up in the local Hub cache only;
a repo that is not downloaded yet is listed with size 0 and what models.yaml says. Results are
cached per model until its files change.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from mlx_serve.config import ModelConfig
from mlx_serve.hub import model_dir
from mlx_serve.memory import weight_bytes

# Model kinds the Ollama API serves (chat/generate, or embed); audio models are OpenAI-only.
OLLAMA_KINDS = ("text", "vision", "embedding")

_MAX_HEADER = 100 * 1000**2  # a safetensors header larger than this is not one


@dataclass(frozen=True)
class ModelFacts:
    """What the files say about one model."""

    directory: Path | None
    config: dict[str, Any]
    size: int
    modified: float | None
    parameters: int | None
    dtype: str  # the safetensors dtype holding most parameters ("F32", "BF16", "U32" when quantised)
    template: str


_cache: dict[tuple[str, str, float | None], ModelFacts] = {}


def facts(model: ModelConfig, base_dir: Path | None) -> ModelFacts:
    directory = model_dir(model, base_dir)
    config_path = directory / "config.json" if directory else None
    try:
        modified = config_path.stat().st_mtime if config_path else None
    except OSError:
        modified = None
    key = (model.name, str(directory), modified)
    if key not in _cache:
        config: dict[str, Any] = {}
        if config_path is not None:
            try:
                loaded = json.loads(config_path.read_text())
                config = loaded if isinstance(loaded, dict) else {}
            except (OSError, ValueError):
                pass
        parameters, dtype = parameter_count(directory, config) if directory else (None, "")
        _cache[key] = ModelFacts(
            directory=directory, config=config, size=weight_bytes(directory) if directory else 0,
            modified=modified, parameters=parameters, dtype=dtype,
            template=chat_template(directory) if directory else "")
    return _cache[key]


def parameter_count(directory: Path, config: dict[str, Any]) -> tuple[int | None, str]:
    """Parameters from the safetensors headers (MLX-quantised weights count ``32 / bits`` per uint32),
    and the dtype that holds most of them."""
    quant = config.get("quantization") or config.get("quantization_config") or {}
    bits = quant.get("bits") if isinstance(quant, dict) else None
    total, seen = 0, False
    by_dtype: dict[str, int] = {}
    for path in sorted(directory.glob("*.safetensors")):
        try:
            with open(path, "rb") as f:
                (length,) = struct.unpack("<Q", f.read(8))
                if length > _MAX_HEADER:
                    continue
                header = json.loads(f.read(length))
        except (OSError, ValueError, struct.error):
            continue
        for name, entry in header.items():
            if name == "__metadata__" or not isinstance(entry, dict):
                continue
            if name.endswith((".scales", ".biases")) and bits:
                continue  # quantisation bookkeeping, not parameters
            count = 1
            for dim in entry.get("shape", []):
                count *= int(dim)
            if entry.get("dtype") == "U32" and isinstance(bits, int) and bits > 0:
                count = count * 32 // bits
            total += count
            seen = True
            by_dtype[str(entry.get("dtype"))] = by_dtype.get(str(entry.get("dtype")), 0) + count
    dtype = max(by_dtype, key=lambda d: by_dtype[d]) if by_dtype else ""
    return (total if seen else None), dtype


def chat_template(directory: Path) -> str:
    """The model's chat template (a Jinja template, not Ollama's Go template)."""
    jinja = directory / "chat_template.jinja"
    try:
        if jinja.is_file():
            return jinja.read_text()
        config = json.loads((directory / "tokenizer_config.json").read_text())
    except (OSError, ValueError):
        return ""
    template = config.get("chat_template") if isinstance(config, dict) else None
    if isinstance(template, list):  # named templates: [{"name": "default", "template": "..."}]
        named = {t.get("name"): t.get("template") for t in template if isinstance(t, dict)}
        template = named.get("default") or next(iter(named.values()), "")
    return template if isinstance(template, str) else ""


def _text_config(config: dict[str, Any]) -> dict[str, Any]:
    inner = config.get("text_config")
    return {**config, **inner} if isinstance(inner, dict) else config


def family(config: dict[str, Any], model: ModelConfig) -> str:
    value = config.get("model_type") or _text_config(config).get("model_type")
    return value if isinstance(value, str) else model.type


def format_parameters(count: int | None) -> str:
    """``8.0B``, ``135M``, ``48.6K`` as Ollama shows parameter sizes."""
    if not count:
        return ""
    for unit, scale in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if count >= scale:
            value = count / scale
            return f"{value:.1f}{unit}" if value < 100 else f"{value:.0f}{unit}"
    return str(count)


def quantization(config: dict[str, Any], dtype: str = "") -> str:
    """Ollama's quantization_level: ``Q4``/``Q8`` for MLX affine quantisation, else the weights' float type."""
    quant = config.get("quantization") or config.get("quantization_config")
    if isinstance(quant, dict):
        mode = quant.get("mode")
        if isinstance(mode, str) and mode not in ("affine", ""):
            return mode.upper()  # mxfp4, nvfp4, ...
        if isinstance(quant.get("bits"), int):
            return f"Q{quant['bits']}"
    declared = config.get("torch_dtype") or config.get("dtype") or _text_config(config).get("torch_dtype")
    level = {"float32": "F32", "float16": "F16", "bfloat16": "BF16"}.get(str(declared), "")
    return level or (dtype if dtype in ("F32", "F16", "BF16") else "")


def details(model: ModelConfig, f: ModelFacts) -> dict[str, Any]:
    fam = family(f.config, model)
    return {"parent_model": "", "format": "mlx", "family": fam, "families": [fam],
            "parameter_size": format_parameters(f.parameters), "quantization_level": quantization(f.config, f.dtype)}


def digest(model: ModelConfig) -> str:
    """A stable stand-in for Ollama's manifest digest: the same name and path give the same digest."""
    return hashlib.sha256(f"{model.name}\0{model.path}".encode()).hexdigest()


def _iso(timestamp: float | None) -> str:
    when = datetime.fromtimestamp(timestamp, timezone.utc) if timestamp else datetime.now(timezone.utc)
    return when.isoformat().replace("+00:00", "Z")


def tag_entry(model: ModelConfig, base_dir: Path | None) -> dict[str, Any]:
    """One ``/api/tags`` entry."""
    f = facts(model, base_dir)
    return {"name": model.name, "model": model.name, "modified_at": _iso(f.modified), "size": f.size,
            "digest": digest(model), "details": details(model, f)}


def capabilities(model: ModelConfig, f: ModelFacts) -> list[str]:
    if model.type == "embedding":
        return ["embedding"]
    caps = ["completion"]
    if model.type == "vision":
        caps.append("vision")
    if "tools" in f.template:
        caps.append("tools")
    if "enable_thinking" in f.template or "<think>" in f.template or "reasoning_content" in f.template:
        caps.append("thinking")
    return caps


def model_info(model: ModelConfig, f: ModelFacts) -> dict[str, Any]:
    """``model_info`` with the keys Ollama uses (``<arch>.context_length``, ...) that config.json can fill."""
    config = _text_config(f.config)
    arch = family(f.config, model)
    info: dict[str, Any] = {"general.architecture": arch}
    if f.parameters:
        info["general.parameter_count"] = f.parameters
    keys = {"context_length": "max_position_embeddings", "embedding_length": "hidden_size",
            "block_count": "num_hidden_layers", "feed_forward_length": "intermediate_size",
            "attention.head_count": "num_attention_heads", "attention.head_count_kv": "num_key_value_heads",
            "vocab_size": "vocab_size"}
    for key, source in keys.items():
        value = config.get(source)
        if isinstance(value, int) and not isinstance(value, bool):
            info[f"{arch}.{key}"] = value
    return info


def show(model: ModelConfig, base_dir: Path | None) -> dict[str, Any]:
    """The ``/api/show`` answer."""
    f = facts(model, base_dir)
    where = str(f.directory) if f.directory else model.path
    parameters = "\n".join(f"{k:<30} {json.dumps(v)}" for k, v in sorted(model.options.items()))
    modelfile = (f"# mlx-serve model {model.name!r} ({model.type}), from models.yaml\n"
                 f"# (mlx-serve has no Modelfiles: this is for information only)\nFROM {where}\n")
    return {
        "license": _license(f.directory),
        "modelfile": modelfile,
        "parameters": parameters,
        "template": f.template,
        "details": details(model, f),
        "model_info": model_info(model, f),
        "capabilities": capabilities(model, f),
        "modified_at": _iso(f.modified),
    }


def _license(directory: Path | None) -> str:
    if directory is None:
        return ""
    for name in ("LICENSE", "LICENSE.txt", "LICENSE.md"):
        path = directory / name
        try:
            if path.is_file() and path.stat().st_size < 1_000_000:
                return path.read_text(errors="replace")
        except OSError:
            continue
    return ""


def cache_location() -> str:
    """Where the Hub cache is, for messages."""
    return os.environ.get("HF_HUB_CACHE") or str(Path(os.environ.get("HF_HOME", "~/.cache/huggingface")) / "hub")
