"""A client that goes away cancels its request: its KV slots come back and it stops generating
long before max_new_tokens (streaming and non-streaming, native and OpenAI)."""

from __future__ import annotations

import httpx
import openai
import pytest

from lmnb.runtime import Engine
from lmnb.server import ServerThread
from tests.conftest import assert_slots_accounted, wait_idle

MAX = 2000  # far more than could be generated before the abort lands
LONG = {"max_new_tokens": MAX, "ignore_eos": True}


def generated(engine: Engine) -> int:
    return engine.stats()["generated_tokens"]


def settle_and_check(engine: Engine, before: int) -> None:
    wait_idle(engine)
    assert_slots_accounted(engine)
    assert generated(engine) - before < MAX  # cancelled, not run to the end
    assert engine.stats()["num_running"] == 0


def test_native_stream_disconnect_after_first_chunk(server: ServerThread,
                                                    engine: Engine) -> None:
    wait_idle(engine)
    before = generated(engine)
    body = {"text": "Tell me a very long story.", "sampling_params": LONG, "stream": True}
    with httpx.Client(base_url=server.url, timeout=60) as c, \
            c.stream("POST", "/generate", json=body) as r:
        first = next(line for line in r.iter_lines() if line.startswith("data: "))
        assert '"finish_reason": null' in first
    settle_and_check(engine, before)


def test_openai_stream_disconnect(server: ServerThread, engine: Engine) -> None:
    wait_idle(engine)
    before = generated(engine)
    oai = openai.OpenAI(base_url=server.url + "/v1", api_key="x", max_retries=0)
    stream = oai.chat.completions.create(
        model="m", messages=[{"role": "user", "content": "Write an endless poem."}],
        max_tokens=MAX, stream=True, extra_body={"ignore_eos": True})
    next(iter(stream))
    stream.close()
    settle_and_check(engine, before)


@pytest.mark.parametrize("path", ["/generate", "/v1/completions"])
def test_non_streaming_client_timeout_cancels(server: ServerThread, engine: Engine,
                                              path: str) -> None:
    wait_idle(engine)
    before = generated(engine)
    body = ({"text": "Count to a million:", "sampling_params": LONG} if path == "/generate"
            else {"model": "m", "prompt": "Count to a million:", "max_tokens": MAX,
                  "ignore_eos": True})
    with httpx.Client(base_url=server.url, timeout=1.5) as c, \
            pytest.raises(httpx.ReadTimeout):
        c.post(path, json=body)
    settle_and_check(engine, before)
