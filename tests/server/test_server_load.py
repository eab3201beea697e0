"""200 concurrent streaming clients: every one completes with the right text, none leaks a slot.

The expected texts come from the engine in process (greedy, so batching must not change them
where the engine runs its exact kernels). Bounds are generous: this checks behaviour, not speed.
"""

from __future__ import annotations

import asyncio
import json
import time

import httpx

from lmnb.runtime import Engine, SamplingParams
from lmnb.server import ServerThread
from tests.conftest import assert_slots_accounted, wait_idle

NUM_CLIENTS = 200
MAX_NEW = 6
PROMPTS = [f"Fact number {i} about the sea:" for i in range(10)]
BOUND_S = 300


async def one_client(client: httpx.AsyncClient, i: int) -> tuple[int, str, dict]:
    """Stream one request; return (prompt index, final text, final meta_info)."""
    k = i % len(PROMPTS)
    body = {"text": PROMPTS[k], "stream": True,
            "sampling_params": {"max_new_tokens": MAX_NEW, "temperature": 0, "ignore_eos": True}}
    last: dict = {}
    texts = []
    async with client.stream("POST", "/generate", json=body) as r:
        assert r.status_code == 200
        async for line in r.aiter_lines():
            if line.startswith("data: ") and line != "data: [DONE]":
                last = json.loads(line[6:])
                texts.append(last["text"])
    assert all(b.startswith(a) for a, b in zip(texts, texts[1:]))  # cumulative
    return k, last["text"], last["meta_info"]


async def run_all(url: str) -> list[tuple[int, str, dict]]:
    limits = httpx.Limits(max_connections=NUM_CLIENTS + 10)
    async with httpx.AsyncClient(base_url=url, timeout=BOUND_S, limits=limits) as client:
        return await asyncio.gather(*(one_client(client, i) for i in range(NUM_CLIENTS)))


def test_200_concurrent_streaming_clients(server: ServerThread, engine: Engine) -> None:
    expected = [engine.generate(p, SamplingParams(max_new_tokens=MAX_NEW, ignore_eos=True))
                .result().text for p in PROMPTS]
    wait_idle(engine)
    started = time.monotonic()
    results = asyncio.run(asyncio.wait_for(run_all(server.url), BOUND_S))
    assert time.monotonic() - started < BOUND_S
    assert len(results) == NUM_CLIENTS
    for k, final, meta in results:
        assert meta["finish_reason"] == {"type": "length", "length": MAX_NEW}
        assert meta["completion_tokens"] == MAX_NEW
        if engine.deterministic:  # exact kernels: batching never changes a greedy answer
            assert final == expected[k]
    wait_idle(engine)
    assert_slots_accounted(engine)
    assert engine.stats()["in_flight_slots"] == 0
