"""mlx_serve.config: models.yaml schema, validation messages, defaults and overrides."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest

from mlx_serve.config import Config, ConfigError, ModelConfig, ServerConfig, load_config, parse_config

REPO = Path(__file__).resolve().parents[2]
SOURCE = Path("/srv/conf/models.yaml")
WHERE = str(SOURCE)


def parse(data: Any, **kwargs: Any) -> Config:
    kwargs.setdefault("environ", {})
    return parse_config(data, source=SOURCE, **kwargs)


def error_of(data: Any, **kwargs: Any) -> str:
    with pytest.raises(ConfigError) as info:
        parse(data, **kwargs)
    return str(info.value)


def model(**fields: Any) -> dict[str, Any]:
    entry = {"name": "m", "type": "text", "path": "org/repo"}
    entry.update(fields)
    return {k: v for k, v in entry.items() if v is not _DROP}


_DROP = object()


# --- a valid file ------------------------------------------------------------------------------

def test_valid_file_fills_defaults() -> None:
    config = parse({"models": [model(name="qwen", path="mlx-community/Qwen3-4B-4bit")]})
    server = config.server
    assert server.port == 8095
    assert server.host == "127.0.0.1"
    assert server.keep_alive == 600.0
    assert server.api_key is None
    assert server.memory_budget == "75%"
    assert server.start_timeout == 120.0
    assert server.stop_timeout == 10.0
    assert server.queue_size == 256
    assert server.max_body_bytes == 64 * 1000**2
    assert server.log_level == "info"
    assert server == ServerConfig()  # the dataclass defaults agree with the schema's defaults
    assert config.source == SOURCE
    assert config.base_dir == SOURCE.parent
    assert config.models == (ModelConfig(name="qwen", type="text", path="mlx-community/Qwen3-4B-4bit"),)
    m = config.model("qwen")
    assert m is not None and m.options == {} and m.keep_alive is None and m.preload is False
    assert m.memory is None and m.start_timeout is None
    assert config.model("nope") is None


def test_valid_file_with_every_model_key() -> None:
    config = parse({
        "server": {"host": "0.0.0.0", "port": "8100", "api_key": "secret", "memory_budget": "24GB",
                   "keep_alive": "-1", "queue_size": 4, "log_level": "DEBUG", "fast_blas": "off",
                   "max_body_bytes": "1MB", "min_residency": 0},
        "models": [
            model(name="a", keep_alive="30m", preload=True, memory="4GB", start_timeout="1m",
                  options={"max_tokens": 2048, "temperature": 0.7, "chat_template_args": {"enable_thinking": False}}),
            model(name="b", type="embedding", path="./emb", keep_alive=0, options=None),
            model(name="c", type="vision", options={"max_images": 1}),
        ],
    })
    s = config.server
    assert (s.host, s.port, s.api_key, s.memory_budget) == ("0.0.0.0", 8100, "secret", "24GB")
    assert math.isinf(s.keep_alive)
    assert (s.queue_size, s.log_level, s.fast_blas, s.max_body_bytes, s.min_residency) == (4, "debug", False,
                                                                                          10**6, 0.0)
    a, b, c = config.models
    assert (a.keep_alive, a.preload, a.memory, a.start_timeout) == (1800.0, True, 4 * 1000**3, 60.0)
    assert a.options == {"max_tokens": 2048, "temperature": 0.7, "chat_template_args": {"enable_thinking": False}}
    assert (b.type, b.keep_alive, b.options) == ("embedding", 0.0, {})
    assert c.options == {"max_images": 1}


@pytest.mark.parametrize("data", [None, {}, {"server": None, "models": None}, {"models": []}],
                         ids=["empty-file", "empty-mapping", "null-sections", "no-models"])
def test_empty_configs_are_valid(data: Any) -> None:
    config = parse(data)
    assert config.models == ()
    assert config.server.port == 8095


# --- one problem per file: the message names the file, the model and the key --------------------

ERRORS = [
    # id, data, fragments the message must contain
    ("unknown-model-key", {"models": [model(path=_DROP, pathh="org/repo")]},
     ["models[0] (name 'm')", "unknown key 'pathh'", "did you mean 'path'", "missing required key 'path'"]),
    ("unknown-server-key", {"server": {"prot": 8000}},
     [": server: unknown key 'prot'", "did you mean 'port'", "known keys: host, port"]),
    ("unknown-top-level-key", {"modles": []},
     ["unknown top-level key 'modles'", "did you mean 'models'"]),
    ("non-string-top-level-key", {1: "x"}, ["unknown top-level key 1"]),
    ("yaml-bool-top-level-key", {True: "x"}, ["unknown top-level key True"]),
    ("duplicate-name", {"models": [model(name="a"), model(name="b"), model(name="a", type="vision")]},
     ["models[2] (name 'a')", "key 'name'", "duplicate model name 'a'", "models[0]"]),
    ("missing-path", {"models": [model(path=_DROP)]}, ["models[0] (name 'm')", "missing required key 'path'"]),
    ("missing-name", {"models": [model(), model(name=_DROP)]}, ["models[1]", "missing required key 'name'"]),
    ("missing-type", {"models": [model(type=_DROP)]}, ["models[0] (name 'm')", "missing required key 'type'"]),
    ("bad-type", {"models": [model(type="llm")]},
     ["models[0] (name 'm')", "key 'type'", "'llm'", "text, vision, embedding, tts, stt"]),
    ("bad-name", {"models": [model(name="has space")]}, ["models[0] (name 'has space')", "key 'name'"]),
    ("name-not-a-string", {"models": [model(name=5)]}, ["models[0]", "key 'name'", "int 5"]),
    ("empty-path", {"models": [model(path="  ")]}, ["models[0] (name 'm')", "key 'path'", "non-empty string"]),
    ("port-abc", {"server": {"port": "abc"}}, [": server: key 'port'", "'abc'", "1 and 65535"]),
    ("port-zero", {"server": {"port": 0}}, [": server: key 'port'", "int 0"]),
    ("port-too-big", {"server": {"port": 70000}}, [": server: key 'port'", "70000"]),
    ("port-bool", {"server": {"port": True}}, [": server: key 'port'", "True"]),
    ("port-fraction", {"server": {"port": 80.5}}, [": server: key 'port'", "80.5"]),
    ("server-keep-alive-banana", {"server": {"keep_alive": "banana"}}, [": server: key 'keep_alive'", "banana"]),
    ("server-budget-150%", {"server": {"memory_budget": "150%"}}, [": server: key 'memory_budget'", "150%"]),
    ("server-budget-0%", {"server": {"memory_budget": "0%"}}, [": server: key 'memory_budget'", "0%"]),
    ("negative-timeout", {"server": {"start_timeout": "-5s"}}, [": server: key 'start_timeout'", "at least 0"]),
    ("queue-size-zero", {"server": {"queue_size": 0}}, [": server: key 'queue_size'", "at least 1"]),
    ("log-level", {"server": {"log_level": "loud"}}, [": server: key 'log_level'", "'loud'"]),
    ("empty-api-key", {"server": {"api_key": ""}}, [": server: key 'api_key'"]),
    ("server-not-mapping", {"server": ["port", 1]}, [": server: expected a mapping"]),
    ("models-not-list", {"models": {"name": "m"}}, [": models: expected a list"]),
    ("entry-not-mapping", {"models": ["qwen"]}, ["models[0]: expected a mapping with name, type and path"]),
    ("preload-maybe", {"models": [model(preload="maybe")]}, ["models[0] (name 'm'): key 'preload'", "'maybe'"]),
    ("keep-alive-banana", {"models": [model(keep_alive="banana")]},
     ["models[0] (name 'm'): key 'keep_alive'", "banana"]),
    ("memory-lots", {"models": [model(memory="lots")]}, ["models[0] (name 'm'): key 'memory'", "'lots'"]),
    ("start-timeout-bad", {"models": [model(start_timeout="soon")]},
     ["models[0] (name 'm'): key 'start_timeout'", "soon"]),
    ("options-not-mapping", {"models": [model(options=["max_tokens", 5])]},
     ["models[0] (name 'm'): key 'options'", "expected a mapping"]),
    ("options-string", {"models": [model(options="max_tokens=5")]},
     ["models[0] (name 'm'): key 'options'", "expected a mapping"]),
    ("unknown-text-option", {"models": [model(options={"max_tokenz": 5})]},
     ["models[0] (name 'm'): key 'options'", "unknown option 'max_tokenz' for a text model", "max_tokens"]),
    ("embedding-rejects-generation-option", {"models": [model(type="embedding", options={"max_tokens": 5})]},
     ["models[0] (name 'm'): key 'options'", "unknown option 'max_tokens' for an embedding model",
      "known options: pooling"]),
    ("vision-rejects-text-only-option", {"models": [model(type="vision", options={"top_k": 5})]},
     ["key 'options'", "unknown option 'top_k' for a vision model"]),
    ("option-wrong-type", {"models": [model(options={"max_tokens": "many"})]},
     ["models[0] (name 'm'): key 'options'", "option 'max_tokens' expects int", "str 'many'"]),
    ("option-bool-for-int", {"models": [model(options={"decode_concurrency": True})]},
     ["key 'options'", "option 'decode_concurrency' expects int", "True"]),
    ("option-float-for-int", {"models": [model(options={"top_k": 1.5})]},
     ["key 'options'", "option 'top_k' expects int", "1.5"]),
    ("option-str-for-number", {"models": [model(options={"temperature": "hot"})]},
     ["key 'options'", "option 'temperature' expects int or float"]),
    ("option-str-for-bool", {"models": [model(options={"trust_remote_code": "yes"})]},
     ["key 'options'", "option 'trust_remote_code' expects bool"]),
]


@pytest.mark.parametrize(("data", "fragments"), [(d, f) for _, d, f in ERRORS], ids=[i for i, _, _ in ERRORS])
def test_config_error_names_file_model_and_key(data: Any, fragments: list[str]) -> None:
    message = error_of(data)
    for line in message.splitlines():
        assert line.startswith(WHERE + ": "), f"line does not name the file: {line!r}"
    for fragment in fragments:
        assert fragment in message, f"{fragment!r} not in:\n{message}"


@pytest.mark.parametrize(("data", "key"), [
    ({"models": [model(type="llm")]}, "type"),
    ({"models": [model(name=5)]}, "name"),
    ({"models": [model(path=123)]}, "path"),
], ids=["type", "name", "path"])
def test_an_invalid_required_key_is_not_also_reported_missing(data: Any, key: str) -> None:
    message = error_of(data)
    assert f"key {key!r}" in message
    assert "missing required key" not in message
    assert len(message.splitlines()) == 1


def test_top_level_must_be_a_mapping() -> None:
    message = error_of(["server", "models"])
    assert message.startswith(WHERE)
    assert "top level must be a mapping" in message and "list" in message


def test_every_problem_is_reported_in_one_error() -> None:
    data = {
        "sever": {},
        "server": {"port": "abc", "prot": 1},
        "models": [
            model(name="a", pathh="x", path=_DROP),
            model(name="b", type="llm"),
            model(name="c", preload="maybe", memory="lots"),
            model(name="d", options={"max_tokenz": 1, "temperature": "hot"}),
        ],
    }
    message = error_of(data)
    lines = message.splitlines()
    expected = [
        "unknown top-level key 'sever'",
        "server: key 'port'",
        "server: unknown key 'prot'",
        "models[0] (name 'a'): unknown key 'pathh'",
        "models[0] (name 'a'): missing required key 'path'",
        "models[1] (name 'b'): key 'type'",
        "models[2] (name 'c'): key 'preload'",
        "models[2] (name 'c'): key 'memory'",
        "models[3] (name 'd'): key 'options': unknown option 'max_tokenz'",
        "models[3] (name 'd'): key 'options': option 'temperature'",
    ]
    for fragment in expected:
        assert sum(fragment in line for line in lines) == 1, f"{fragment!r} not reported once in:\n{message}"
    assert len(lines) == len(expected)
    assert all(line.startswith(WHERE + ": ") for line in lines)


def test_duplicate_after_a_valid_entry_is_reported_with_the_others() -> None:
    message = error_of({"models": [model(name="a"), model(name="a"), model(name="b", preload="maybe")]})
    assert "models[1] (name 'a'): key 'name': duplicate model name 'a' (also models[0])" in message
    assert "models[2] (name 'b'): key 'preload'" in message


# --- environment and command-line overrides ----------------------------------------------------

FILE = {"server": {"host": "127.0.0.1", "port": 8100, "api_key": "from-file"}, "models": [model()]}

OVERRIDES = [
    # id, environ, overrides, expected (host, port, api_key)
    ("file-only", {}, None, ("127.0.0.1", 8100, "from-file")),
    ("env-port", {"MLX_SERVE_PORT": "9000"}, None, ("127.0.0.1", 9000, "from-file")),
    ("env-host", {"MLX_SERVE_HOST": "0.0.0.0"}, None, ("0.0.0.0", 8100, "from-file")),
    ("env-serve-api-key", {"MLX_SERVE_API_KEY": "k-serve"}, None, ("127.0.0.1", 8100, "k-serve")),
    ("env-mlx-api-key", {"MLX_API_KEY": "k-mlx"}, None, ("127.0.0.1", 8100, "k-mlx")),
    ("env-serve-api-key-wins", {"MLX_SERVE_API_KEY": "k-serve", "MLX_API_KEY": "k-mlx"}, None,
     ("127.0.0.1", 8100, "k-serve")),
    ("empty-env-ignored", {"MLX_SERVE_PORT": "", "MLX_SERVE_HOST": "", "MLX_SERVE_API_KEY": "", "MLX_API_KEY": "k"},
     None, ("127.0.0.1", 8100, "k")),
    ("unrelated-env-ignored", {"PORT": "1", "HOST": "x", "API_KEY": "y"}, None, ("127.0.0.1", 8100, "from-file")),
    ("cli-beats-env", {"MLX_SERVE_PORT": "9000", "MLX_SERVE_HOST": "0.0.0.0"}, {"port": 9100, "host": "::1"},
     ("::1", 9100, "from-file")),
    ("cli-none-keeps-env", {"MLX_SERVE_PORT": "9000"}, {"port": None, "host": None}, ("127.0.0.1", 9000, "from-file")),
    ("cli-beats-file", {}, {"port": 9200}, ("127.0.0.1", 9200, "from-file")),
    ("cli-api-key-beats-env", {"MLX_SERVE_API_KEY": "k-env"}, {"api_key": "k-cli"}, ("127.0.0.1", 8100, "k-cli")),
]


@pytest.mark.parametrize(("environ", "overrides", "expected"), [(e, o, x) for _, e, o, x in OVERRIDES],
                         ids=[i for i, *_ in OVERRIDES])
def test_overrides(environ: dict[str, str], overrides: dict[str, Any] | None,
                   expected: tuple[str, int, str]) -> None:
    server = parse(FILE, environ=environ, overrides=overrides).server
    assert (server.host, server.port, server.api_key) == expected


def test_other_env_overrides() -> None:
    server = parse({}, environ={"MLX_SERVE_MEMORY_BUDGET": "16GB", "MLX_SERVE_LOG_LEVEL": "WARNING",
                                "MLX_SERVE_HOME": "/var/lib/mlx"}).server
    assert (server.memory_budget, server.log_level, server.state_dir) == ("16GB", "warning", "/var/lib/mlx")


def test_explicit_environ_is_used_instead_of_the_process_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLX_SERVE_PORT", "9999")
    assert parse({}, environ={}).server.port == 8095
    assert parse({}, environ={"MLX_SERVE_PORT": "9001"}).server.port == 9001


@pytest.mark.parametrize(("environ", "overrides", "fragment"), [
    ({"MLX_SERVE_PORT": "abc"}, None, f"{WHERE}: environment MLX_SERVE_PORT: expected a port"),
    ({"MLX_SERVE_LOG_LEVEL": "loud"}, None, f"{WHERE}: environment MLX_SERVE_LOG_LEVEL"),
    ({"MLX_SERVE_MEMORY_BUDGET": "150%"}, None, f"{WHERE}: environment MLX_SERVE_MEMORY_BUDGET"),
    ({}, {"port": 70000}, "command-line option for server.port"),
], ids=["env-port", "env-log-level", "env-budget", "cli-port"])
def test_invalid_overrides_are_config_errors(environ: dict[str, str], overrides: dict[str, Any] | None,
                                             fragment: str) -> None:
    assert fragment in error_of({}, environ=environ, overrides=overrides)


# --- load_config: files --------------------------------------------------------------------------

def test_load_config_reads_a_file(tmp_path: Path) -> None:
    path = tmp_path / "models.yaml"
    path.write_text("server:\n  port: 8200\n  memory_budget: 50%\nmodels:\n"
                    "  - name: m\n    type: stt\n    path: ./whisper\n    keep_alive: -1\n")
    config = load_config(path, environ={})
    assert config.source == path
    assert config.base_dir == tmp_path
    assert config.server.port == 8200 and config.server.memory_budget == "50%"
    (m,) = config.models
    assert (m.name, m.type, m.path, m.keep_alive) == ("m", "stt", "./whisper", math.inf)


def test_load_config_errors_name_the_file(tmp_path: Path) -> None:
    path = tmp_path / "models.yaml"
    path.write_text("models:\n  - name: m\n    type: text\n    pathh: x\n")
    with pytest.raises(ConfigError) as info:
        load_config(path, environ={})
    assert str(info.value).startswith(f"{path}: models[0] (name 'm'): unknown key 'pathh'")


def test_load_config_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nowhere" / "models.yaml"
    with pytest.raises(ConfigError) as info:
        load_config(path, environ={})
    message = str(info.value)
    assert str(path) in message
    assert "no such file" in message and "mlx-serve init" in message


def test_load_config_directory(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(tmp_path, environ={})
    assert str(tmp_path) in str(info.value)


@pytest.mark.parametrize("text", ["server: [unclosed\n", "models:\n  - name: a\n   type: text\n", "a: b: c\n",
                                  "\tserver: {}\n"],
                         ids=["unclosed-flow", "bad-indent", "nested-colon", "tab"])
def test_load_config_invalid_yaml(tmp_path: Path, text: str) -> None:
    path = tmp_path / "models.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_config(path, environ={})
    message = str(info.value)
    assert message.startswith(f"{path}: not valid YAML")


def test_load_config_empty_file(tmp_path: Path) -> None:
    path = tmp_path / "models.yaml"
    path.write_text("# nothing yet\n")
    config = load_config(path, environ={})
    assert config.models == () and config.server.port == 8095


# --- the shipped files --------------------------------------------------------------------------

def test_repository_models_yaml_parses() -> None:
    config = load_config(REPO / "models.yaml", environ={})
    assert len(config.models) >= 1
    assert len({m.name for m in config.models}) == len(config.models)
    assert config.server.port == 8095 and config.server.host == "127.0.0.1"
    for m in config.models:
        assert m.type in ("text", "vision", "embedding", "tts", "stt")


def test_repository_models_yaml_is_the_shipped_template() -> None:
    top = (REPO / "models.yaml").read_bytes()
    template = (REPO / "src" / "mlx_serve" / "models.example.yaml").read_bytes()
    assert top == template
    assert load_config(REPO / "src" / "mlx_serve" / "models.example.yaml", environ={}).models == \
        load_config(REPO / "models.yaml", environ={}).models
