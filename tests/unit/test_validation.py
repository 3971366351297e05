"""mlx_serve.validation: request-body checks the router makes before any worker is involved."""

from __future__ import annotations

import base64
import copy
import math
from collections.abc import Callable
from typing import Any

import pytest

from mlx_serve.errors import APIError
from mlx_serve.validation import (
    FORBIDDEN_FIELDS,
    check_chat,
    check_completion,
    check_generation,
    check_image_url,
    keep_alive_field,
    model_field,
    strip_forbidden,
)

PNG = base64.b64encode(b"\x89PNG\r\n\x1a\n" + b"\x00" * 16).decode()
WHERE = "messages[0].content[1]"


def assert_400(call: Callable[[], Any], param: str, code: str | None = None) -> APIError:
    with pytest.raises(APIError) as info:
        call()
    error = info.value
    assert error.status == 400
    assert error.param == param
    assert error.type == "invalid_request_error"
    assert error.message
    if code is not None:
        assert error.code == code
    body = error.body()["error"]
    assert body["param"] == param and body["message"] == error.message
    return error


# --- check_image_url ---------------------------------------------------------------------------

GOOD_IMAGES = [
    ("data-png", {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG}"}}),
    ("data-jpeg", {"type": "image_url", "image_url": {"url": f"data:image/jpeg;base64,{PNG}"}}),
    ("data-svg+xml", {"type": "image_url", "image_url": {"url": f"data:image/svg+xml;base64,{PNG}"}}),
    ("data-uppercase", {"type": "image_url", "image_url": {"url": f"DATA:IMAGE/PNG;BASE64,{PNG}"}}),
    ("data-url-as-string", {"type": "image_url", "image_url": f"data:image/png;base64,{PNG}"}),
    ("http", {"type": "image_url", "image_url": {"url": "http://example.com/cat.png"}}),
    ("https", {"type": "image_url", "image_url": {"url": "https://example.com/cat.png?x=1"}}),
    ("https-uppercase", {"type": "image_url", "image_url": {"url": "HTTPS://EXAMPLE.COM/CAT.PNG"}}),
    ("image-key", {"type": "image", "image": "https://example.com/cat.png"}),
    ("input-image", {"type": "input_image", "image_url": "https://example.com/cat.png"}),
]


@pytest.mark.parametrize("part", [p for _, p in GOOD_IMAGES], ids=[i for i, _ in GOOD_IMAGES])
def test_check_image_url_accepts(part: dict[str, Any]) -> None:
    before = copy.deepcopy(part)
    assert check_image_url(part, WHERE) is None
    assert part == before


BAD_IMAGES = [
    # id, url, code
    ("local-absolute-path", "/etc/passwd", "invalid_image_url"),
    ("relative-path", "cat.png", "invalid_image_url"),
    ("dot-relative-path", "./images/cat.png", "invalid_image_url"),
    ("parent-path", "../../etc/shadow", "invalid_image_url"),
    ("home-path", "~/cat.png", "invalid_image_url"),
    ("file-url", "file:///etc/passwd", "invalid_image_url"),
    ("file-url-uppercase", "FILE:///etc/passwd", "invalid_image_url"),
    ("file-url-mixed-case", "File://localhost/etc/passwd", "invalid_image_url"),
    ("windows-path", "C:\\Users\\me\\cat.png", "invalid_image_url"),
    ("ftp", "ftp://example.com/cat.png", "invalid_image_url"),
    ("javascript", "javascript:alert(1)", "invalid_image_url"),
    ("http-without-slashes", "http:example.com/cat.png", "invalid_image_url"),
    ("invalid-base64", "data:image/png;base64,!!!not-base64!!!", "invalid_image"),
    ("bad-padding", "data:image/png;base64,aGVsbG8", "invalid_image"),
    ("data-text-plain", "data:text/plain;base64,aGVsbG8=", "invalid_image"),
    ("data-not-base64", "data:image/png,rawbytes", "invalid_image"),
    ("data-no-type", "data:;base64,aGVsbG8=", "invalid_image"),
    ("empty-url", "", None),
]


@pytest.mark.parametrize(("url", "code"), [(u, c) for _, u, c in BAD_IMAGES], ids=[i for i, _, _ in BAD_IMAGES])
@pytest.mark.parametrize("shape", ["object", "string"])
def test_check_image_url_refuses(url: str, code: str | None, shape: str) -> None:
    part = {"type": "image_url", "image_url": {"url": url} if shape == "object" else url}
    error = assert_400(lambda: check_image_url(part, WHERE), param=f"{WHERE}.image_url", code=code)
    assert WHERE in error.message


@pytest.mark.parametrize("part", [{"type": "image_url"}, {"type": "image_url", "image_url": None},
                                  {"type": "image_url", "image_url": {"url": 5}},
                                  {"type": "image_url", "image_url": {}}, {"type": "image_url", "image_url": ["x"]}],
                         ids=["no-key", "none", "url-int", "empty-object", "list"])
def test_check_image_url_missing_url(part: dict[str, Any]) -> None:
    assert_400(lambda: check_image_url(part, WHERE), param=f"{WHERE}.image_url")


# --- check_generation --------------------------------------------------------------------------

GOOD_GENERATION = [
    ("empty", {}),
    ("all-none", {k: None for k in ("temperature", "top_p", "min_p", "max_tokens", "max_completion_tokens",
                                    "top_k", "n", "stream", "stop", "seed", "presence_penalty")}),
    ("low-bounds", {"temperature": 0, "top_p": 0, "min_p": 0, "presence_penalty": -2, "frequency_penalty": -2,
                    "repetition_penalty": 0, "max_tokens": 1, "top_k": 0}),
    ("high-bounds", {"temperature": 2, "top_p": 1, "min_p": 1.0, "presence_penalty": 2.0,
                     "frequency_penalty": 2, "repetition_penalty": 10}),
    ("typical", {"temperature": 0.7, "top_p": 0.9, "max_tokens": 256, "max_completion_tokens": 100, "n": 1,
                 "stream": True, "stop": "\n\n", "seed": 42, "top_k": 40}),
    ("stream-false", {"stream": False}),
    ("stop-list", {"stop": ["a", "b"]}),
    ("stop-empty-list", {"stop": []}),
    ("negative-seed", {"seed": -1}),
    ("unknown-fields-pass", {"logprobs": True, "user": "me", "response_format": {"type": "text"}}),
]


@pytest.mark.parametrize("body", [b for _, b in GOOD_GENERATION], ids=[i for i, _ in GOOD_GENERATION])
def test_check_generation_accepts(body: dict[str, Any]) -> None:
    assert check_generation(body) is None


BAD_GENERATION = [
    # id, body, param
    ("temperature-negative", {"temperature": -1}, "temperature"),
    ("temperature-3", {"temperature": 3}, "temperature"),
    ("temperature-string", {"temperature": "0.5"}, "temperature"),
    ("temperature-bool", {"temperature": True}, "temperature"),
    ("temperature-nan", {"temperature": math.nan}, "temperature"),
    ("temperature-inf", {"temperature": math.inf}, "temperature"),
    ("top-p-1.5", {"top_p": 1.5}, "top_p"),
    ("top-p-negative", {"top_p": -0.1}, "top_p"),
    ("min-p-2", {"min_p": 2}, "min_p"),
    ("presence-penalty-3", {"presence_penalty": 3}, "presence_penalty"),
    ("frequency-penalty--3", {"frequency_penalty": -3}, "frequency_penalty"),
    ("repetition-penalty-11", {"repetition_penalty": 11}, "repetition_penalty"),
    ("max-tokens-0", {"max_tokens": 0}, "max_tokens"),
    ("max-tokens-negative", {"max_tokens": -5}, "max_tokens"),
    ("max-tokens-string", {"max_tokens": "10"}, "max_tokens"),
    ("max-tokens-true", {"max_tokens": True}, "max_tokens"),
    ("max-tokens-float", {"max_tokens": 10.0}, "max_tokens"),
    ("max-completion-tokens-0", {"max_completion_tokens": 0}, "max_completion_tokens"),
    ("top-k-negative", {"top_k": -1}, "top_k"),
    ("top-k-float", {"top_k": 1.5}, "top_k"),
    ("top-k-bool", {"top_k": True}, "top_k"),
    ("n-2", {"n": 2}, "n"),
    ("n-0", {"n": 0}, "n"),
    ("n-string", {"n": "1"}, "n"),
    ("stream-yes", {"stream": "yes"}, "stream"),
    ("stream-1", {"stream": 1}, "stream"),
    ("stop-5", {"stop": 5}, "stop"),
    ("stop-mixed-list", {"stop": ["a", 1]}, "stop"),
    ("stop-mapping", {"stop": {"a": 1}}, "stop"),
    ("seed-string", {"seed": "42"}, "seed"),
    ("seed-bool", {"seed": True}, "seed"),
    ("seed-float", {"seed": 1.5}, "seed"),
]


@pytest.mark.parametrize(("body", "param"), [(b, p) for _, b, p in BAD_GENERATION],
                         ids=[i for i, _, _ in BAD_GENERATION])
def test_check_generation_refuses(body: dict[str, Any], param: str) -> None:
    error = assert_400(lambda: check_generation(body), param=param)
    assert param in error.message


# --- check_chat --------------------------------------------------------------------------------

def user(content: Any) -> dict[str, Any]:
    return {"role": "user", "content": content}


IMAGE_PART = {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG}"}}

GOOD_CHATS = [
    ("one-user-message", {"messages": [user("hi")]}, False),
    ("all-roles", {"messages": [{"role": "system", "content": "be brief"}, {"role": "developer", "content": "x"},
                                user("hi"), {"role": "assistant", "content": None, "tool_calls": []},
                                {"role": "tool", "content": "42", "tool_call_id": "1"},
                                {"role": "function", "content": None}]}, False),
    ("text-parts", {"messages": [user([{"type": "text", "text": "a"}, {"type": "text", "text": "b"}])]}, False),
    ("image-to-vision", {"messages": [user([{"type": "text", "text": "what is this?"}, IMAGE_PART])]}, True),
    ("image-key-to-vision", {"messages": [user([{"type": "image", "image": "https://example.com/a.png"}])]}, True),
    ("with-generation-params", {"messages": [user("hi")], "temperature": 0.2, "max_tokens": 8}, False),
]


@pytest.mark.parametrize(("body", "vision"), [(b, v) for _, b, v in GOOD_CHATS], ids=[i for i, _, _ in GOOD_CHATS])
def test_check_chat_accepts(body: dict[str, Any], vision: bool) -> None:
    assert check_chat(body, vision=vision) is None


BAD_CHATS = [
    # id, body, vision, param, code
    ("messages-missing", {}, False, "messages", "missing_required_parameter"),
    ("messages-none", {"messages": None}, False, "messages", "missing_required_parameter"),
    ("messages-empty", {"messages": []}, False, "messages", None),
    ("messages-string", {"messages": "hi"}, False, "messages", None),
    ("messages-mapping", {"messages": user("hi")}, False, "messages", None),
    ("message-not-object", {"messages": ["hi"]}, False, "messages[0]", None),
    ("bad-role", {"messages": [{"role": "robot", "content": "hi"}]}, False, "messages[0].role", None),
    ("missing-role", {"messages": [user("hi"), {"content": "hi"}]}, False, "messages[1].role", None),
    ("content-int", {"messages": [user(5)]}, False, "messages[0].content", None),
    ("user-content-none", {"messages": [user(None)]}, False, "messages[0].content", None),
    ("part-not-object", {"messages": [user(["hi"])]}, False, "messages[0].content[0]", None),
    ("part-without-type", {"messages": [user([{"text": "hi"}])]}, False, "messages[0].content[0]", None),
    ("text-part-not-string", {"messages": [user([{"type": "text", "text": 5}])]}, False,
     "messages[0].content[0].text", None),
    ("image-url-to-text-model", {"messages": [user([{"type": "text", "text": "?"}, IMAGE_PART])]}, False,
     "messages[0].content[1]", "unsupported_content"),
    ("input-image-to-text-model", {"messages": [user([{"type": "input_image", "image_url": "https://x/a.png"}])]},
     False, "messages[0].content[0]", "unsupported_content"),
    ("image-to-text-model", {"messages": [user([{"type": "image", "image": "https://x/a.png"}])]}, False,
     "messages[0].content[0]", "unsupported_content"),
    ("local-file-to-vision-model",
     {"messages": [user([{"type": "image_url", "image_url": {"url": "file:///etc/passwd"}}])]}, True,
     "messages[0].content[0].image_url", "invalid_image_url"),
    ("local-path-in-second-message",
     {"messages": [user("hi"), user([{"type": "image_url", "image_url": "/etc/passwd"}])]}, True,
     "messages[1].content[0].image_url", "invalid_image_url"),
    ("generation-checked-too", {"messages": [user("hi")], "temperature": 3}, False, "temperature", None),
]


@pytest.mark.parametrize(("body", "vision", "param", "code"), [c[1:] for c in BAD_CHATS], ids=[c[0] for c in BAD_CHATS])
def test_check_chat_refuses(body: dict[str, Any], vision: bool, param: str, code: str | None) -> None:
    assert_400(lambda: check_chat(body, vision=vision), param=param, code=code)


def test_text_model_image_error_says_to_use_a_vision_model() -> None:
    error = assert_400(lambda: check_chat({"messages": [user([IMAGE_PART])]}, vision=False),
                       param="messages[0].content[0]")
    assert "vision model" in error.message


# --- check_completion, model_field -------------------------------------------------------------

@pytest.mark.parametrize(("body", "param"), [({}, "prompt"), ({"prompt": ["a"]}, "prompt"),
                                             ({"prompt": "hi", "max_tokens": 0}, "max_tokens")],
                         ids=["missing", "list", "generation"])
def test_check_completion_refuses(body: dict[str, Any], param: str) -> None:
    assert_400(lambda: check_completion(body), param=param)


def test_check_completion_accepts() -> None:
    assert check_completion({"prompt": "once upon a time", "max_tokens": 5}) is None


@pytest.mark.parametrize("value", [None, "", 5, ["m"]], ids=["none", "empty", "int", "list"])
def test_model_field_refuses(value: Any) -> None:
    assert_400(lambda: model_field(value), param="model")


def test_model_field_accepts() -> None:
    assert model_field("qwen3-4b") == "qwen3-4b"


# --- keep_alive_field --------------------------------------------------------------------------

@pytest.mark.parametrize(("value", "seconds"), [(None, None), (0, 0.0), ("0", 0.0), (300, 300.0), ("10m", 600.0),
                                                ("1h30m", 5400.0), (-1, math.inf), ("-1m", math.inf)],
                         ids=["none", "0", "0-str", "300", "10m", "1h30m", "-1", "-1m"])
def test_keep_alive_field(value: Any, seconds: float | None) -> None:
    assert keep_alive_field(value) == seconds


@pytest.mark.parametrize("value", ["banana", "", "10x", "1h30", True, [], {}, "nan", math.inf],
                         ids=["banana", "empty", "10x", "1h30", "true", "list", "dict", "nan", "inf"])
def test_keep_alive_field_refuses(value: Any) -> None:
    error = assert_400(lambda: keep_alive_field(value), param="keep_alive")
    assert repr(value) in error.message


# --- strip_forbidden ---------------------------------------------------------------------------

def test_strip_forbidden_removes_every_forbidden_field_and_keeps_the_rest() -> None:
    body = {"model": "m", "messages": [], "temperature": 0.1, **{k: "/tmp/x" for k in FORBIDDEN_FIELDS}}
    assert strip_forbidden(body) is None
    assert body == {"model": "m", "messages": [], "temperature": 0.1}


@pytest.mark.parametrize("field", ["adapters", "adapter_path", "draft_model", "draft_model_path", "model_path"])
def test_strip_forbidden_named_fields(field: str) -> None:
    body = {"model": "m", field: "evil"}
    strip_forbidden(body)
    assert field not in body and body == {"model": "m"}


def test_strip_forbidden_without_forbidden_fields_changes_nothing() -> None:
    body = {"model": "m", "prompt": "hi"}
    strip_forbidden(body)
    assert body == {"model": "m", "prompt": "hi"}
