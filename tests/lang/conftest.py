"""Language tests: on a scripted backend where the model is not the subject (`scripted`), on
the session's one engine (tests/conftest.py) as the default backend where it is (`runtime`)."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest

import lmnb as lm
from lmnb.testing import ScriptedBackend, default_backend


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


@pytest.fixture
def scripted() -> Iterator[ScriptedBackend]:
    """A fresh `ScriptedBackend` (FILLER replies) as the default backend for one test; set
    `scripted.script` to script it."""
    with default_backend(ScriptedBackend()) as backend:
        yield backend
