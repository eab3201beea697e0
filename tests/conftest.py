"""Shared fixtures: one default-model engine for the whole session (loading costs seconds).

`engine` runs in the machine's default dtype and weights (`LMNB_DTYPE`, `LMNB_WEIGHTS` choose
others): behaviour tests use it. `engine_fp32` is for tests whose subject is a comparison with
a float32 reference (transformers' model, logprob tolerances tuned for fp32): the session
engine when that already multiplies fp32 activations as they are, else a second, smaller
engine pinned to fp32 (and to q4 where the default is q4q8, whose int8 activations are
another arithmetic: q4 with fp32 activations gives the fp32 model's bits).
"""

from __future__ import annotations

import os

import pytest
import torch

from lmnb.runtime import Engine

# Triton's interpreter is chosen when triton is first imported (its language's helpers are
# defined then), so it is set here, before any test imports triton: without a GPU, the Triton
# kernels' tests run interpreted on the CPU; with one, compiled on it.
if "TRITON_INTERPRET" not in os.environ and not torch.cuda.is_available():
    os.environ["TRITON_INTERPRET"] = "1"


def pytest_collection_modifyitems(config, items) -> None:
    """`@pytest.mark.gpu` tests are skipped where no CUDA GPU is at hand."""
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU (benchmarks/gpu_check.py runs these)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def engine() -> Engine:
    eng = Engine(max_tokens_in_cache=16384)
    yield eng
    eng.shutdown()


@pytest.fixture(scope="session")
def engine_fp32(engine: Engine) -> Engine:
    if engine.dtype == torch.float32 and engine.weights != "q4q8":
        yield engine
        return
    eng = Engine(dtype="float32", weights="q4" if engine.weights == "q4q8" else None,
                 max_tokens_in_cache=4096)
    yield eng
    eng.shutdown()


@pytest.fixture(scope="session")
def hf_fp32():
    """transformers' own model of the default model in float32 behind `HFRuntime` (its `.model`
    is the plain `AutoModelForCausalLM`), loaded once for every comparison with it."""
    from benchmarks.hf_backend import HFRuntime

    return HFRuntime(dtype="float32")


@pytest.fixture(scope="session")
def tokenizer(engine: Engine):
    return engine.tokenizer


def wait_idle(eng: Engine, timeout: float = 60.0) -> None:
    import time

    deadline = time.time() + timeout
    while not eng.idle():
        assert time.time() < deadline, "engine did not become idle"
        time.sleep(0.01)


def assert_slots_accounted(eng: Engine) -> None:
    """free + evictable + protected + in-flight == capacity, and no slot is held twice."""
    st = eng.stats()
    total = (st["free_slots"] + st["evictable_slots"] + st["protected_slots"]
             + st["in_flight_slots"])
    assert total == st["capacity"], st
    with eng._lock:
        free = eng.pool.free_slots()
        held = [s for n in eng.cache._nodes() for s in n.slots]
    assert len(set(free)) == len(free)
    assert not set(free) & set(held)
    assert 0 not in free and 0 not in held
