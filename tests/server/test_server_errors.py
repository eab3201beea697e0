"""Bad requests are 400s naming the problem (OpenAI's error shape under /v1, SGLang's on the
native routes) and fail alone; an engine failure after submission is a 500 or a stream error
event for that request alone; the server keeps serving through all of it."""

from __future__ import annotations

import json

import httpx
import openai
import pytest

from lmnb.runtime import Engine, GenerateHandle
from lmnb.server import start_server
from tests.server.helpers import sse_events

TEXT = {"text": "Hi", "sampling_params": {"max_new_tokens": 2}}
PROMPT = {"model": "m", "prompt": "Hi", "max_tokens": 2}
CHAT = {"model": "m", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2}
LONG = "word " * 9000  # more tokens than the model's context (8192)


NATIVE_BAD = [
    ({"sampling_params": {"max_new_tokens": 2}}, "text"),
    ({"text": 5}, "text"),
    ({"input_ids": ["a"]}, "input_ids"),
    ({**TEXT, "sampling_params": {"max_new_tokens": "8"}}, "max_new_tokens"),
    ({**TEXT, "sampling_params": {"temperature": -1}}, "temperature"),
    ({**TEXT, "sampling_params": {"top_p": 0}}, "top_p"),
    ({**TEXT, "sampling_params": {"regex": "a(b"}}, "regex"),
    ({**TEXT, "sampling_params": {"json_schema": "{\"type\": \"objec\"}"}}, "JSON schema"),
    ({**TEXT, "sampling_params": {"colour": 1}}, "colour"),
    ({**TEXT, "sampling_params": {"frequency_penalty": 0.5}}, "frequency_penalty"),
    ({**TEXT, "sampling_params": {"n": 2}}, "n"),
    ({**TEXT, "top_logprobs_num": 3}, "top_logprobs_num"),
    ({**TEXT, "return_logprob": True, "logprob_start_len": 50}, "logprob_start_len"),
    ({**TEXT, "stream": "yes"}, "stream"),
    ({"text": LONG}, "context"),
    ({"input_ids": [10**9]}, "vocabulary"),
    ({"text": ["a", "b"], "sampling_params": [{}]}, "sampling_params"),
]


@pytest.mark.parametrize(("body", "named"), NATIVE_BAD)
def test_native_bad_request_names_the_problem(client: httpx.Client, body: dict,
                                              named: str) -> None:
    r = client.post("/generate", json=body)
    assert r.status_code == 400, r.text
    message = r.json()["error"]["message"]
    assert named in message


OPENAI_BAD = [
    ("/v1/completions", {**PROMPT, "max_tokens": -1}, "max_tokens"),
    ("/v1/completions", {**PROMPT, "temperature": "warm"}, "temperature"),
    ("/v1/completions", {**PROMPT, "n": 2}, "n"),
    ("/v1/completions", {**PROMPT, "prompt": {"a": 1}}, "prompt"),
    ("/v1/completions", {**PROMPT, "prompt": LONG}, "prompt"),
    ("/v1/completions", {**PROMPT, "regex": "(("}, "regex"),
    ("/v1/completions", {**PROMPT, "stop": [1]}, "stop"),
    ("/v1/completions", {**PROMPT, "seed": -3}, "seed"),
    ("/v1/completions", {**PROMPT, "logprobs": 2, "stream": True}, "logprobs"),
    ("/v1/completions", {**PROMPT, "presence_penalty": 1.0}, "presence_penalty"),
    ("/v1/completions", {**PROMPT, "wibble": True}, "wibble"),
    ("/v1/chat/completions", {**CHAT, "messages": []}, "messages"),
    ("/v1/chat/completions", {**CHAT, "messages": [{"content": "x"}]}, "messages"),
    ("/v1/chat/completions", {**CHAT, "min_tokens": 5}, "min_tokens"),
    ("/v1/chat/completions", {**CHAT, "response_format": {"type": "xml"}}, "response_format"),
    ("/v1/chat/completions", {**CHAT, "response_format": {
        "type": "json_schema", "json_schema": {"schema": {"type": "objec"}}}},
     "response_format"),
    ("/v1/chat/completions", {**CHAT, "tools": [{"type": "function"}]}, "tools"),
    ("/v1/chat/completions", {**CHAT, "regex": "a", "choices": ["a"]}, "regex"),
]


@pytest.mark.parametrize(("path", "body", "param"), OPENAI_BAD)
def test_openai_bad_request_names_the_param(client: httpx.Client, path: str, body: dict,
                                            param: str) -> None:
    r = client.post(path, json=body)
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert error["type"] == "invalid_request_error" and error["param"] == param, error
    assert error["message"] and set(error) == {"message", "type", "param", "code"}


@pytest.mark.parametrize("path", ["/generate", "/v1/completions", "/v1/chat/completions"])
def test_malformed_json_and_nan(client: httpx.Client, path: str) -> None:
    headers = {"content-type": "application/json"}
    r = client.post(path, content=b'{"text": "Hi",', headers=headers)
    assert r.status_code == 400 and "JSON" in r.json()["error"]["message"]
    r = client.post(path, content=b"[1, 2]", headers=headers)
    assert r.status_code == 400 and "object" in r.json()["error"]["message"]
    nan = {"/generate": b'{"text": "Hi", "sampling_params": {"temperature": NaN}}',
           "/v1/completions": b'{"model": "m", "prompt": "Hi", "temperature": NaN}',
           "/v1/chat/completions": b'{"model": "m", "messages": [{"role": "user", '
                                   b'"content": "Hi"}], "temperature": NaN}'}[path]
    r = client.post(path, content=nan, headers=headers)
    assert r.status_code == 400 and "temperature" in r.json()["error"]["message"], r.text


def test_openai_client_raises_bad_request(oai: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        oai.completions.create(model="m", prompt="Hi", max_tokens=2, n=3)
    assert info.value.param == "n"


def test_the_server_keeps_serving_after_bad_requests(client: httpx.Client,
                                                     settled: Engine) -> None:
    for body, _ in NATIVE_BAD:
        client.post("/generate", json=body)
    r = client.post("/generate", json=TEXT)
    assert r.status_code == 200 and r.json()["meta_info"]["completion_tokens"] == 2
    r = client.post("/v1/completions", json=PROMPT)
    assert r.status_code == 200


def test_unknown_route_is_a_404_in_the_right_shape(client: httpx.Client) -> None:
    assert client.get("/nope").json() == {"error": {"message": "Not Found"}}
    r = client.get("/v1/nope")
    assert r.status_code == 404 and r.json()["error"]["type"] == "not_found_error"


# ---- an engine that fails requests after accepting them --------------------------------------


class FailingEngine:
    """Looks like an engine to the server; every request fails after submission (or, once
    `closed`, is refused as a shut-down engine refuses it)."""

    def __init__(self, real: Engine) -> None:
        self.tokenizer, self.model_name = real.tokenizer, real.model_name
        self.max_context, self.pool = real.max_context, real.pool
        self.closed = False

    def generate(self, prompt: object, params: object) -> GenerateHandle:
        if self.closed:
            raise RuntimeError("the engine has been shut down")
        handle = GenerateHandle(1, lambda rid: None)
        handle._finish(None, RuntimeError("model forward failed: boom"))
        return handle


def test_engine_failure_is_a_500_for_that_request(engine: Engine) -> None:
    failing = FailingEngine(engine)
    srv = start_server(failing)  # type: ignore[arg-type]
    try:
        with httpx.Client(base_url=srv.url, timeout=30) as c:
            r = c.post("/generate", json=TEXT)
            assert r.status_code == 500 and "boom" in r.json()["error"]["message"]
            r = c.post("/v1/completions", json=PROMPT)
            assert r.status_code == 500 and r.json()["error"]["type"] == "server_error"
            with c.stream("POST", "/v1/completions", json={**PROMPT, "stream": True}) as r:
                events = sse_events(list(r.iter_lines()))
            assert "boom" in events[0]["error"]["message"] and events[-1] == "[DONE]"
            with c.stream("POST", "/generate", json={**TEXT, "stream": True}) as r:
                events = sse_events(list(r.iter_lines()))
            assert "boom" in json.dumps(events[0]) and events[-1] == "[DONE]"
            assert c.get("/health").status_code == 200
            failing.closed = True
            r = c.post("/v1/chat/completions", json=CHAT)
            assert r.status_code == 500 and "shut down" in r.json()["error"]["message"]
    finally:
        srv.stop()
