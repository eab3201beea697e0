"""--api-key: every route but /health needs `Authorization: Bearer K` (or `x-api-key: K`)."""

from __future__ import annotations

import httpx
import openai
import pytest

from lmnb.runtime import Engine
from lmnb.server import ServerThread, start_server

KEY = "sk-test-0123"


@pytest.fixture(scope="module")
def keyed(engine: Engine) -> ServerThread:
    srv = start_server(engine, api_key=KEY)
    yield srv
    srv.stop()


@pytest.mark.parametrize("path", ["/get_model_info", "/v1/models", "/metrics", "/stats",
                                  "/snapshot", "/events", "/get_server_info"])
def test_routes_need_the_key(keyed: ServerThread, path: str) -> None:
    with httpx.Client(base_url=keyed.url) as c:
        assert c.get(path).status_code == 401
        assert c.get(path, headers={"Authorization": "Bearer wrong"}).status_code == 401
        assert c.get(path, headers={"Authorization": f"Bearer {KEY}"}).status_code == 200
        assert c.get(path, headers={"x-api-key": KEY}).status_code == 200


def test_401_bodies_and_open_health(keyed: ServerThread) -> None:
    with httpx.Client(base_url=keyed.url) as c:
        native = c.post("/generate", json={"text": "Hi"})
        assert native.status_code == 401 and "API key" in native.json()["error"]["message"]
        oai = c.post("/v1/completions", json={"model": "m", "prompt": "Hi"}).json()["error"]
        assert oai["code"] == "invalid_api_key" and set(oai) == {"message", "type", "param",
                                                                 "code"}
        assert c.get("/health").status_code == 200


def test_openai_client_with_and_without_the_key(keyed: ServerThread, settled: Engine) -> None:
    good = openai.OpenAI(base_url=keyed.url + "/v1", api_key=KEY, max_retries=0)
    out = good.completions.create(model="m", prompt="Hi", max_tokens=2)
    assert out.usage.completion_tokens == 2
    bad = openai.OpenAI(base_url=keyed.url + "/v1", api_key="nope", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        bad.models.list()
