"""models.yaml: its schema, its validation, and the typed configuration the router runs on.

The schema is declared once, as tables of :class:`Key` (``SERVER_KEYS``, ``MODEL_KEYS``), so
that validation, defaults, environment overrides and ``docs/configuration.md`` all come from
the same place. Validation collects every problem in the file and raises one
:class:`ConfigError` whose lines each name the file, the model and the key.
"""

from __future__ import annotations

import difflib
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from mlx_serve.durations import DurationError, parse_budget, parse_duration, parse_keep_alive, parse_size

MODEL_TYPES = ("text", "vision", "embedding", "tts", "stt", "rerank")
DEFAULT_CONFIG_NAME = "models.yaml"


class ConfigError(ValueError):
    """models.yaml is wrong; the message says where and how to fix it."""


@dataclass(frozen=True)
class Key:
    """One accepted key: how to check it, its default, and what it means (for the docs)."""

    name: str
    check: Callable[[Any], Any]
    default: Any
    doc: str
    env: tuple[str, ...] = ()
    required: bool = False
    example: str | None = None


# --- value checkers: each returns the normalised value or raises ValueError -----------------

def _str(value: Any) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"expected a non-empty string, got {_show(value)}")
    return value


def _opt_str(value: Any) -> str | None:
    return None if value is None else _str(value)


def _bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("true", "yes", "1", "on", "false", "no", "0", "off"):
        return value.lower() in ("true", "yes", "1", "on")
    raise ValueError(f"expected true or false, got {_show(value)}")


def _port(value: Any) -> int:
    try:
        port = int(value) if not isinstance(value, bool) else None
    except (TypeError, ValueError):
        port = None
    if port is None or not 1 <= port <= 65535 or (isinstance(value, float) and not value.is_integer()):
        raise ValueError(f"expected a port number between 1 and 65535, got {_show(value)}")
    return port


def _positive_int(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"expected a whole number of at least 1, got {_show(value)}")
    return value


def _seconds(value: Any) -> float:
    try:
        seconds = parse_duration(value)
    except DurationError as e:
        raise ValueError(str(e)) from None
    if seconds < 0:
        raise ValueError(f"expected a duration of at least 0, got {_show(value)}")
    return seconds


def _keep_alive(value: Any) -> float:
    try:
        return parse_keep_alive(value)
    except DurationError as e:
        raise ValueError(str(e)) from None


def _size(value: Any) -> int:
    return parse_size(value)


def _opt_size(value: Any) -> int | None:
    return None if value is None else parse_size(value)


def _budget(value: Any) -> str | int:
    parse_budget(value, 1 << 40)  # checks the form; the share is resolved against physical memory later
    return value


def _model_type(value: Any) -> str:
    if value not in MODEL_TYPES:
        raise ValueError(f"expected one of {', '.join(MODEL_TYPES)}, got {_show(value)}")
    return value


_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:/@+-]*$")


def _model_name(value: Any) -> str:
    name = _str(value)
    if not _NAME.match(name) or len(name) > 128:
        raise ValueError(f"{name!r} is not a usable model name: use letters, digits and . _ : / @ + -")
    return name


def _options(value: Any) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ValueError(f"expected a mapping of option names to values, got {_show(value)}")
    return dict(value)


def _kinds(value: Any) -> tuple[str, ...]:
    if value is None:
        return ()
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ValueError(f"expected a list of model types such as [text, embedding], got {_show(value)}")
    for v in value:
        _model_type(v)
    return tuple(dict.fromkeys(value))


def _log_level(value: Any) -> str:
    levels = ("debug", "info", "warning", "error")
    if not isinstance(value, str) or value.lower() not in levels:
        raise ValueError(f"expected one of {', '.join(levels)}, got {_show(value)}")
    return value.lower()


def _show(value: Any) -> str:
    return f"{type(value).__name__} {value!r}" if not isinstance(value, str) else repr(value)


# --- the schema ---------------------------------------------------------------------------

SERVER_KEYS: tuple[Key, ...] = (
    Key("host", _str, "127.0.0.1", "Address the router listens on. Anything but loopback needs api_key.",
        env=("MLX_SERVE_HOST",)),
    Key("port", _port, 8095, "TCP port the router listens on.", env=("MLX_SERVE_PORT",)),
    Key("api_key", _opt_str, None, "Key clients must send (Authorization: Bearer or x-api-key); none by default.",
        env=("MLX_SERVE_API_KEY", "MLX_API_KEY")),
    Key("memory_budget", _budget, "75%",
        "Memory that loaded models may use together: a size ('24GB') or a share of physical memory ('75%').",
        env=("MLX_SERVE_MEMORY_BUDGET",)),
    Key("keep_alive", _keep_alive, "10m",
        "How long a model stays loaded after its last request, unless its entry or a request says otherwise. "
        "Seconds or a duration ('30s', '10m', '1h30m'); negative keeps it loaded until unloaded."),
    Key("state_dir", _str, "~/.mlx-serve",
        "Where logs, the pidfile and measured model footprints are kept.", env=("MLX_SERVE_HOME",)),
    Key("runtime_dir", _opt_str, None,
        "Private directory (mode 0700) for the workers' Unix sockets. Default: a per-user directory under "
        "$XDG_RUNTIME_DIR or the temporary directory."),
    Key("start_timeout", _seconds, "120s", "How long a worker may take to load its model before the start fails."),
    Key("stop_timeout", _seconds, "10s", "Grace period after SIGTERM before a worker's process group is killed."),
    Key("request_timeout", _seconds, "600s",
        "Longest wait for a worker's first byte, and between two chunks of a stream."),
    Key("shutdown_grace", _seconds, "30s",
        "On stop, how long requests in flight may take to finish before workers are stopped."),
    Key("restart_limit", _positive_int, 3,
        "Failed starts or crashes of one model within restart_window before it is held back."),
    Key("restart_window", _seconds, "60s", "The window in which restart_limit failures hold a model back."),
    Key("restart_backoff", _seconds, "5s",
        "First hold-back after restart_limit failures; it doubles with each further failure, up to 5 minutes."),
    Key("health_interval", _seconds, "10s", "How often each ready worker is probed (0 disables the probe)."),
    Key("health_timeout", _seconds, "5s", "A worker that does not answer its probe in this time is replaced."),
    Key("queue_size", _positive_int, 256, "Most requests that may wait for a model to load or for memory."),
    Key("queue_timeout", _seconds, "300s",
        "Longest a request waits for its model (load, memory, other models draining) before a 503."),
    Key("min_residency", _seconds, "2s",
        "While other models wait for memory, a model with demand stays loaded at least this long "
        "before it is drained, so alternating clients do not thrash the models."),
    Key("max_body_bytes", _size, "64MB", "Largest request body accepted (413 above it)."),
    Key("spare_workers", _kinds, [],
        "Model types that keep one warm spare worker (imports done, waiting for a model), so that a "
        "load of that type costs only the weight load. Each spare counts against memory_budget."),
    Key("fast_blas", _bool, True,
        "Linux: preload OpenBLAS into workers when it is installed (MLX's CPU build links a slow reference BLAS)."),
    Key("log_level", _log_level, "info", "Router log level: debug, info, warning or error.",
        env=("MLX_SERVE_LOG_LEVEL",)),
)

MODEL_KEYS: tuple[Key, ...] = (
    Key("name", _model_name, None, "What clients send as `model`.", required=True, example="qwen3-8b"),
    Key("type", _model_type, None, f"The model kind: {', '.join(MODEL_TYPES)}.", required=True, example="text"),
    Key("path", _str, None, "A Hugging Face repo id or a local model directory.", required=True,
        example="mlx-community/Qwen3-8B-4bit"),
    Key("options", _options, {}, "Options passed to the worker (per kind; see the table below)."),
    Key("keep_alive", _keep_alive, None, "This model's default keep_alive (else the server's)."),
    Key("preload", _bool, False, "Load this model when the server starts."),
    Key("memory", _opt_size, None,
        "Expected footprint, overriding the estimate from the weight files and the measured one."),
    Key("start_timeout", _seconds, None, "This model's start timeout (else the server's)."),
)


@dataclass(frozen=True)
class ModelConfig:
    name: str
    type: str
    path: str
    options: dict[str, Any] = field(default_factory=dict)
    keep_alive: float | None = None
    preload: bool = False
    memory: int | None = None
    start_timeout: float | None = None

    def local_path(self, base: Path | None = None) -> Path | None:
        """The model directory if ``path`` names one on disk (relative paths resolve against ``base``)."""
        candidate = Path(self.path).expanduser()
        if not candidate.is_absolute() and base is not None:
            candidate = base / candidate
        return candidate.resolve() if candidate.is_dir() else None


@dataclass(frozen=True)
class ServerConfig:
    host: str = "127.0.0.1"
    port: int = 8095
    api_key: str | None = None
    memory_budget: str | int = "75%"
    keep_alive: float = 600.0
    state_dir: str = "~/.mlx-serve"
    runtime_dir: str | None = None
    start_timeout: float = 120.0
    stop_timeout: float = 10.0
    request_timeout: float = 600.0
    shutdown_grace: float = 30.0
    restart_limit: int = 3
    restart_window: float = 60.0
    restart_backoff: float = 5.0
    health_interval: float = 10.0
    health_timeout: float = 5.0
    queue_size: int = 256
    queue_timeout: float = 300.0
    min_residency: float = 2.0
    max_body_bytes: int = 64 * 1000**2
    spare_workers: tuple[str, ...] = ()
    fast_blas: bool = True
    log_level: str = "info"

    @property
    def state_path(self) -> Path:
        return Path(self.state_dir).expanduser()


@dataclass(frozen=True)
class Config:
    server: ServerConfig
    models: tuple[ModelConfig, ...]
    source: Path | None = None

    def model(self, name: str) -> ModelConfig | None:
        for m in self.models:
            if m.name == name:
                return m
        return None

    @property
    def base_dir(self) -> Path:
        return self.source.parent if self.source else Path.cwd()


# --- loading --------------------------------------------------------------------------------

def load_config(path: str | Path, *, overrides: Mapping[str, Any] | None = None,
                environ: Mapping[str, str] | None = None) -> Config:
    """Read and validate models.yaml. ``overrides`` (from CLI flags) beat the environment, which beats the file."""
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such file. Create one with `mlx-serve init` "
                          f"(or `mlx-serve init --demo DIR` for tiny offline models).") from None
    except OSError as e:
        raise ConfigError(f"{path}: cannot read it: {e.strerror}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from None
    return parse_config(data, source=path, overrides=overrides, environ=environ)


def parse_config(data: Any, *, source: Path | None = None, overrides: Mapping[str, Any] | None = None,
                 environ: Mapping[str, str] | None = None) -> Config:
    where = str(source) if source else "models.yaml"
    environ = os.environ if environ is None else environ
    problems: list[str] = []
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: the top level must be a mapping with `server:` and `models:`, "
                          f"got {type(data).__name__}")
    for key in data:
        if key not in ("server", "models"):
            problems.append(f"{where}: unknown top-level key {key!r}{_suggest(str(key), ('server', 'models'))}; "
                            f"the file has `server:` and `models:`")

    raw_server = data.get("server") or {}
    if not isinstance(raw_server, dict):
        problems.append(f"{where}: server: expected a mapping of settings, got {_show(raw_server)}")
        raw_server = {}
    server_values = _check_section(raw_server, SERVER_KEYS, f"{where}: server", problems)
    for key in SERVER_KEYS:  # environment, then flags, beat the file
        for var in key.env:
            if environ.get(var):
                server_values[key.name] = _checked(key, environ[var], f"{where}: environment {var}", problems)
                break
    for name, value in (overrides or {}).items():
        if value is not None:
            key = next(k for k in SERVER_KEYS if k.name == name)
            server_values[name] = _checked(key, value, f"command-line option for server.{name}", problems)

    raw_models = data.get("models") or []
    models: list[ModelConfig] = []
    if not isinstance(raw_models, list):
        problems.append(f"{where}: models: expected a list of model entries (each starting with '- name:'), "
                        f"got {_show(raw_models)}")
        raw_models = []
    seen: dict[str, int] = {}
    for index, entry in enumerate(raw_models):
        label = f"{where}: models[{index}]"
        if not isinstance(entry, dict):
            problems.append(f"{label}: expected a mapping with name, type and path, got {_show(entry)}")
            continue
        if isinstance(entry.get("name"), str):
            label += f" (name {entry['name']!r})"
        values = _check_section(entry, MODEL_KEYS, label, problems)
        if any(k.required and k.name not in values for k in MODEL_KEYS):
            continue
        name = values["name"]
        if name in seen:
            problems.append(f"{label}: key 'name': duplicate model name {name!r} (also models[{seen[name]}]); "
                            f"each model needs its own name")
            continue
        seen[name] = index
        from mlx_serve.options import check_options  # late: the options tables are per kind

        for problem in check_options(values["type"], values.get("options", {})):
            problems.append(f"{label}: key 'options': {problem}")
        models.append(ModelConfig(**values))

    if problems:
        raise ConfigError("\n".join(problems))
    return Config(server=ServerConfig(**server_values), models=tuple(models), source=source)


def _check_section(raw: dict, keys: tuple[Key, ...], label: str, problems: list[str]) -> dict[str, Any]:
    known = {k.name: k for k in keys}
    values: dict[str, Any] = {}
    for name, value in raw.items():
        key = known.get(name)
        if key is None:
            problems.append(f"{label}: unknown key {name!r}{_suggest(str(name), known)}; "
                            f"known keys: {', '.join(known)}")
            continue
        checked = _checked(key, value, f"{label}: key {name!r}", problems)
        if checked is not _INVALID:
            values[name] = checked
    for key in keys:
        if key.name in values or key.name in raw:  # set (maybe invalid, already reported): not missing
            continue
        if key.required:
            problems.append(f"{label}: missing required key {key.name!r} (for example `{key.name}: {key.example}`)")
        elif key.default is not None:
            values[key.name] = key.check(key.default)
    return values


_INVALID = object()


def _checked(key: Key, value: Any, label: str, problems: list[str]) -> Any:
    try:
        return key.check(value)
    except (ValueError, TypeError) as e:
        problems.append(f"{label}: {e}")
        return _INVALID


def _suggest(word: str, choices: Any) -> str:
    close = difflib.get_close_matches(word, list(choices), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""
