"""Language tests run on the session's one engine (tests/conftest.py) as the default backend."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest

import lmnb as lm


@pytest.fixture(scope="session")
def runtime(engine) -> Iterator[lm.Runtime]:
    rt = lm.Runtime(engine=engine)
    lm.set_default_backend(rt)
    yield rt
    lm.set_default_backend(None)


@pytest.fixture
def stats_delta(runtime: lm.Runtime) -> Callable[[], dict[str, int]]:
    """`delta()`: prompt and cached token counts of the engine since the test started."""
    before = runtime.stats()

    def delta() -> dict[str, int]:
        now = runtime.stats()
        return {k: now[k] - before[k] for k in ("prompt_tokens", "cached_tokens")}

    return delta
