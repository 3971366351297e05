"""LiteLLM against a real router: the ``openai/`` provider with ``api_base``, as in docs/litellm.md.

tests/conftest.py sets LITELLM_LOCAL_MODEL_COST_MAP and LITELLM_OFFLINE_MODE before litellm is
imported, so it never reaches for the network; the first test proves that in a fresh interpreter.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from typing import Any

import pytest

import litellm
from litellm_docs import served_name, single_host_config
from support import Router

API_KEY = "sk-mlx-litellm-test"
MESSAGES = [{"role": "user", "content": "hello"}]
litellm.suppress_debug_info = True


@pytest.fixture(scope="module")
def router(tmp_path_factory: pytest.TempPathFactory, demo_model: Any) -> Iterator[Router]:
    chat, embed = demo_model("demo-chat")["path"], demo_model("demo-embed")["path"]
    models = [{"name": "chat", "type": "text", "path": chat}, {"name": "embed", "type": "embedding", "path": embed}]
    # The models the doc's config.yaml names, so that config can be run as written.
    for deployment in single_host_config()["model_list"]:
        is_embedding = (deployment.get("model_info") or {}).get("mode") == "embedding"
        models.append({"name": served_name(deployment), "type": "embedding" if is_embedding else "text",
                       "path": embed if is_embedding else chat})
    with Router(tmp_path_factory.mktemp("litellm"), models, {"api_key": API_KEY}) as r:
        yield r


def _args(router: Router, model: str) -> dict[str, Any]:
    return {"model": f"openai/{model}", "api_base": f"{router.base_url}/v1", "api_key": API_KEY}


def _ps(router: Router, name: str) -> dict[str, Any] | None:
    return next((m for m in router.ps() if m["name"] == name), None)


def _unload(router: Router, name: str) -> None:
    with router.client() as c:
        assert c.post("/api/unload", json={"model": name}).status_code == 200


OFFLINE_PROBE = textwrap.dedent("""
    import json, socket, sys, time
    seen = []
    def hook(event, args):
        if event == "socket.connect":
            address = args[1]
            seen.append(address if isinstance(address, str) else str(address[0]))
        elif event == "socket.getaddrinfo":
            host = args[0]
            seen.append(host.decode() if isinstance(host, bytes) else str(host))
    sys.addaudithook(hook)
    started = time.monotonic()
    import litellm
    import_s = time.monotonic() - started
    base, key = sys.argv[1], sys.argv[2]
    reply = litellm.completion(model="openai/chat", api_base=base, api_key=key, max_tokens=3,
                               messages=[{"role": "user", "content": "hi"}])
    chunks = list(litellm.completion(model="openai/chat", api_base=base, api_key=key, max_tokens=3, stream=True,
                                     messages=[{"role": "user", "content": "hi"}]))
    vectors = litellm.embedding(model="openai/embed", api_base=base, api_key=key, input=["hi"])
    calls_s = time.monotonic() - started - import_s
    print(json.dumps({"import_s": import_s, "calls_s": calls_s, "seen": seen, "answered": bool(reply.choices[0].message.content),
                      "chunks": len(chunks), "vectors": len(vectors.data)}))
""")


def test_litellm_imports_and_calls_mlx_serve_without_touching_the_network(
        router: Router, record_property: Any) -> None:
    """A fresh interpreter, as CI starts one: every socket it opens or name it resolves is local."""
    env = {**os.environ, "LITELLM_LOCAL_MODEL_COST_MAP": "True", "LITELLM_OFFLINE_MODE": "true"}
    proc = subprocess.run([sys.executable, "-c", OFFLINE_PROBE, f"{router.base_url}/v1", API_KEY],
                          capture_output=True, text=True, env=env, timeout=180)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["answered"] and result["chunks"] >= 2 and result["vectors"] == 1
    local = {"127.0.0.1", "localhost", "::1"}
    remote = [s for s in result["seen"] if s not in local and not s.startswith("/")]  # "/..." = a Unix socket
    assert remote == [], f"litellm reached for the network: {remote}"
    assert "127.0.0.1" in result["seen"]  # the hook did see the calls to mlx-serve
    record_property("litellm_import_s", round(result["import_s"], 2))
    print(f"litellm import: {result['import_s']:.2f} s, then three calls: {result['calls_s']:.2f} s")
    assert result["import_s"] < 60  # a hung cost-map fetch would show here; the machine may be slow


def test_completion(router: Router) -> None:
    reply = litellm.completion(**_args(router, "chat"), messages=MESSAGES, max_tokens=8)
    assert reply.choices[0].message.content
    assert reply.choices[0].finish_reason == "length"
    assert reply.usage.completion_tokens == 8
    assert reply.model.endswith("chat")


def test_streaming_completion_with_usage(router: Router) -> None:
    chunks = list(litellm.completion(**_args(router, "chat"), messages=MESSAGES, max_tokens=6, stream=True,
                                     stream_options={"include_usage": True}))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == ["length"]
    usage = [c.usage for c in chunks if getattr(c, "usage", None)]
    assert usage and usage[-1].completion_tokens == 6


def test_embedding(router: Router) -> None:
    result = litellm.embedding(**_args(router, "embed"), input=["first text", "a second, longer text"])
    vectors = [d["embedding"] for d in result.data]
    assert len(vectors) == 2 and len(vectors[0]) == len(vectors[1]) > 0
    assert vectors[0] != vectors[1]
    assert result.usage.prompt_tokens > 0


def test_async_streaming_and_embedding(router: Router) -> None:
    """The async paths, which the LiteLLM proxy uses."""
    async def run() -> tuple[str, int]:
        stream = await litellm.acompletion(**_args(router, "chat"), messages=MESSAGES, max_tokens=5, stream=True)
        text = "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])
        vectors = await litellm.aembedding(**_args(router, "embed"), input=["x", "y", "z"])
        return text, len(vectors.data)

    text, count = asyncio.run(run())
    assert text and count == 3


def test_keep_alive_in_extra_body_unloads_the_model_soon_after(router: Router) -> None:
    _unload(router, "chat")
    since = time.time()
    litellm.completion(**_args(router, "chat"), messages=MESSAGES, max_tokens=2, extra_body={"keep_alive": "2s"})
    done = time.monotonic()
    row = _ps(router, "chat")
    assert row is not None and row["keep_alive"] == "2s"  # it reached mlx-serve, not just LiteLLM
    while _ps(router, "chat") is not None and time.monotonic() < done + 15:
        time.sleep(0.1)
    assert _ps(router, "chat") is None, "keep_alive '2s' did not unload the model"
    assert time.monotonic() - done >= 1.5
    with router.client() as c:
        events = c.get("/api/events", params={"model": "chat", "limit": 50}).json()["events"]
    assert "expire" in [e["event"] for e in events if e["time"] >= since]  # the timer did it


def test_keep_alive_minus_one_in_extra_body_pins_the_model(router: Router) -> None:
    litellm.embedding(**_args(router, "embed"), input=["pin me"], extra_body={"keep_alive": -1})
    row = _ps(router, "embed")
    assert row is not None and row["pinned"] is True and row["expires_at"] is None
    _unload(router, "embed")


def test_errors_map_to_litellm_exceptions(router: Router) -> None:
    with pytest.raises(litellm.AuthenticationError):
        litellm.completion(**{**_args(router, "chat"), "api_key": "wrong"}, messages=MESSAGES, max_tokens=2)
    with pytest.raises(litellm.NotFoundError) as err:
        litellm.completion(**_args(router, "no-such-model"), messages=MESSAGES, max_tokens=2)
    assert "chat" in str(err.value)  # mlx-serve's message lists the models that exist


def test_the_docs_config_yaml_runs_as_written(router: Router, monkeypatch: pytest.MonkeyPatch) -> None:
    """docs/litellm.md's config.yaml, with host.docker.internal pointed at this router.

    The proxy builds a ``litellm.Router`` from ``model_list``; so does this test, and checks that
    the ``os.environ/`` key and each model's ``extra_body`` keep_alive reach mlx-serve.
    """
    config = single_host_config()
    monkeypatch.setenv("MLX_SERVE_API_KEY", API_KEY)
    model_list = [dict(d, litellm_params={**d["litellm_params"],
                                          "api_base": d["litellm_params"]["api_base"].replace(
                                              "http://host.docker.internal:8095", router.base_url)})
                  for d in config["model_list"]]
    assert all(router.base_url in d["litellm_params"]["api_base"] for d in model_list)
    proxy = litellm.Router(model_list=model_list)
    for deployment in config["model_list"]:
        name = deployment["model_name"]
        if (deployment.get("model_info") or {}).get("mode") == "embedding":
            assert len(proxy.embedding(model=name, input=["docs"]).data) == 1
        else:
            assert proxy.completion(model=name, messages=MESSAGES, max_tokens=2).choices[0].message.content
        wanted = deployment["litellm_params"]["extra_body"]["keep_alive"]
        row = _ps(router, served_name(deployment))
        assert row is not None
        if isinstance(wanted, (int, float)) and wanted < 0:
            assert row["pinned"] is True
        else:
            assert row["keep_alive"] == str(wanted)
    for deployment in config["model_list"]:
        _unload(router, served_name(deployment))
