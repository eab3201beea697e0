"""Fixtures for the HTTP server tests: one real server on 127.0.0.1 (a random free port) in
front of the session's default-model engine, an httpx client and the real `openai` client.

The server never shuts the engine down; the session fixture in tests/conftest.py does.
"""

from __future__ import annotations

import httpx
import openai
import pytest

from lmnb.runtime import Engine
from lmnb.server import ServerThread, start_server
from tests.conftest import assert_slots_accounted, wait_idle


@pytest.fixture(scope="session")
def server(engine: Engine) -> ServerThread:
    srv = start_server(engine)
    yield srv
    srv.stop()
    assert not engine._stopped.is_set(), "stopping the server must not stop the engine"


@pytest.fixture(scope="session")
def client(server: ServerThread) -> httpx.Client:
    with httpx.Client(base_url=server.url, timeout=120) as c:
        yield c


@pytest.fixture(scope="session")
def oai(server: ServerThread) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0,
                         timeout=120)


@pytest.fixture
def settled(engine: Engine) -> Engine:
    """The engine, checked idle with every slot accounted for after the test."""
    yield engine
    wait_idle(engine)
    assert_slots_accounted(engine)

