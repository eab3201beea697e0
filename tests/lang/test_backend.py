"""The backend protocol: every backend keeps it, and `Runtime` takes SGLang's arguments."""

from __future__ import annotations

import pytest

import lmnb as lm
from lmnb.lang.backend import Backend, Prompt, Runtime
from lmnb.lang.backend.runtime import _engine_kwargs
from lmnb.runtime import SamplingParams
from lmnb.testing import ScriptedBackend


def test_backends_keep_the_protocol(engine) -> None:
    for backend in (Runtime(engine=engine), ScriptedBackend()):
        assert isinstance(backend, Backend), type(backend)


def test_sglang_runtime_arguments_map_to_the_engine() -> None:
    got = _engine_kwargs({"model_path": "m", "tp_size": 1, "mem_fraction_static": 0.8,
                          "max_total_tokens": 4096, "schedule_policy": "fcfs",
                          "disable_radix_cache": True, "log_level": "error"})
    assert got == {"model": "m", "max_tokens_in_cache": 4096, "policy": "fcfs",
                   "disable_radix_cache": True}


@pytest.mark.parametrize(("kwargs", "error", "words"), [
    ({"tp_size": 2}, ValueError, "tp_size must be 1"),
    ({"dp_size": 4}, ValueError, "RuntimeEndpoint"),
    ({"schedule_policy": "lof"}, ValueError, "lpm, dfs-weight or fcfs"),
    ({"speculative_algorithm": "EAGLE"}, TypeError, "speculative_algorithm"),
])
def test_unsupported_runtime_arguments_are_clear_errors(kwargs, error, words) -> None:
    with pytest.raises(error, match=words):
        lm.Runtime(**kwargs)  # raises before any model loads


def test_runtime_with_sglang_arguments_runs_a_program() -> None:
    rt = lm.Runtime(model_path=None, tp_size=1, mem_fraction_static=0.5, max_total_tokens=600)
    try:
        assert rt.engine.pool.capacity == 600

        @lm.function
        def hello(s):
            s += "The capital of France is" + lm.gen("city", max_tokens=3)

        assert "Paris" in hello.run(backend=rt)["city"]
        assert rt.get_server_info()["dtype"]
    finally:
        rt.shutdown()


def test_token_backends_take_a_prompt_or_ids(engine) -> None:
    rt = Runtime(engine=engine)
    ids = engine.tokenizer.encode("One, two, three,")
    a = rt.generate(Prompt(ids, "One, two, three,"), SamplingParams(max_new_tokens=3))
    b = rt.generate(ids, SamplingParams(max_new_tokens=3))
    assert a.result().output_ids == b.result().output_ids
