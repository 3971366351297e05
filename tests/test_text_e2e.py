"""End to end: the router starts a real text worker and proxies the OpenAI SDK's requests to it."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import openai
import pytest

from support import Router


@pytest.fixture(scope="module")
def router(tmp_path_factory: pytest.TempPathFactory, demo_model: Any) -> Iterator[Router]:
    chat = demo_model("demo-chat")
    models = [{"name": "chat", "type": "text", "path": chat["path"]}]
    with Router(tmp_path_factory.mktemp("text-e2e"), models) as r:
        yield r


def test_streaming_chat_yields_chunks_and_ends_cleanly(router: Router) -> None:
    client = router.openai()
    stream = client.chat.completions.create(model="chat", messages=[{"role": "user", "content": "hello"}],
                                            stream=True, max_tokens=12)
    chunks = list(stream)
    content = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert len(chunks) >= 5
    assert content
    assert chunks[-1].choices[0].finish_reason == "length"


def test_non_streaming_chat_echoes_the_name_and_counts_tokens(router: Router) -> None:
    client = router.openai()
    reply = client.chat.completions.create(model="chat", messages=[{"role": "user", "content": "hi"}],
                                           max_tokens=8)
    assert reply.choices[0].message.content
    assert reply.usage.completion_tokens == 8
    assert reply.choices[0].finish_reason == "length"


def test_completions_endpoint(router: Router) -> None:
    client = router.openai()
    reply = client.completions.create(model="chat", prompt="once upon a time", max_tokens=6)
    assert reply.choices[0].text
    assert reply.usage.completion_tokens == 6


def test_unknown_model_is_404_in_openai_shape(router: Router) -> None:
    client = router.openai()
    with pytest.raises(openai.NotFoundError) as err:
        client.chat.completions.create(model="nope", messages=[{"role": "user", "content": "x"}])
    body = err.value.response.json()
    assert set(body["error"]) == {"message", "type", "param", "code"}
    assert body["error"]["param"] == "model"
    assert "chat" in body["error"]["message"]  # it says what is available


def test_models_list_has_type_and_state(router: Router) -> None:
    models = router.openai().models.list().data
    assert [m.id for m in models] == ["chat"]
    extra = models[0].model_extra
    assert extra["type"] == "text"
    assert extra["state"] in ("ready", "stopped")


def test_health_answers_without_touching_workers(router: Router) -> None:
    with router.client() as c:
        assert c.get("/health").json()["status"] == "ok"


def test_adapters_and_foreign_model_fields_never_reach_the_worker(router: Router) -> None:
    with router.client() as c:
        r = c.post("/v1/chat/completions", json={
            "model": "chat", "messages": [{"role": "user", "content": "x"}], "max_tokens": 3,
            "adapters": "/etc", "draft_model": "/tmp/evil", "keep_alive": "5m"})
    assert r.status_code == 200, r.text
    assert r.json()["model"] == "chat"


def test_bad_keep_alive_is_400_quoting_the_value(router: Router) -> None:
    with router.client() as c:
        r = c.post("/v1/chat/completions", json={"model": "chat", "messages": [{"role": "user", "content": "x"}],
                                                 "keep_alive": "banana"})
    assert r.status_code == 400
    assert "banana" in r.json()["error"]["message"]
    assert r.json()["error"]["param"] == "keep_alive"
