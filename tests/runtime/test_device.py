"""Which dtype an engine runs and why: dtype=, LMNB_DTYPE, then the CPU and the kernels."""

from __future__ import annotations

import pytest
import torch

from lmnb.runtime import Engine, cpu_kernels, device

CPU, GPU = torch.device("cpu"), torch.device("cuda")


@pytest.fixture
def no_env(monkeypatch):
    monkeypatch.delenv("LMNB_DTYPE", raising=False)


def test_an_explicit_dtype_wins(no_env, monkeypatch) -> None:
    monkeypatch.setenv("LMNB_DTYPE", "bfloat16")
    assert device.pick_dtype("fp32", CPU, True) == (torch.float32, "asked for (dtype=)")


def test_lmnb_dtype_is_honoured(no_env, monkeypatch) -> None:
    for name, want in (("bfloat16", torch.bfloat16), ("float32", torch.float32),
                       ("BF16", torch.bfloat16)):
        monkeypatch.setenv("LMNB_DTYPE", name)
        got, why = device.pick_dtype(None, CPU, False)
        assert got == want and "LMNB_DTYPE" in why
    monkeypatch.setenv("LMNB_DTYPE", "float64")
    with pytest.raises(ValueError, match="unknown LMNB_DTYPE 'float64'"):
        device.pick_dtype(None, CPU, True)


def test_the_cpu_offers_fp32_and_bf16_only(no_env) -> None:
    with pytest.raises(ValueError, match="float16 is not offered on the CPU"):
        device.pick_dtype("float16", CPU, True)
    assert device.pick_dtype("float16", GPU, False)[0] == torch.float16


@pytest.mark.parametrize("native_bf16,exact,want", [
    (True, True, torch.bfloat16),   # checked kernels on a bf16 CPU
    (True, False, torch.float32),   # never bf16 from the CPU's flags alone
    (False, True, torch.float32),
    (False, False, torch.float32),
])
def test_the_default(no_env, monkeypatch, native_bf16, exact, want) -> None:
    monkeypatch.setattr(device, "cpu_has_native_bf16", lambda: native_bf16)
    got, why = device.pick_dtype(None, CPU, exact)
    assert got == want and why.startswith("default")
    assert device.pick_dtype(None, GPU, False)[0] == torch.bfloat16


def test_describe_says_what_runs_and_why(engine) -> None:
    info = engine.describe()
    if engine.device.type == "cuda":  # a plain Engine() on a GPU machine
        assert info["gpu"] == torch.cuda.get_device_name() and "triton" in info["attention"]
        return
    assert info["dtype"] == str(engine.dtype).removeprefix("torch.")
    assert info["dtype_reason"] and info["cpu"] == device.cpu_name()
    assert info["native_bf16"] == device.cpu_has_native_bf16()
    assert info["deterministic"] == (cpu_kernels.load() is not None)
    assert info["linear"] in (("native",) if info["deterministic"] else ("onednn", "torch"))
    if info["deterministic"]:
        assert info["kernels"].startswith("native")


def test_deterministic_true_refuses_to_run_without_the_kernels() -> None:
    with cpu_kernels.disabled(), pytest.raises(ValueError, match="deterministic=True needs"):
        Engine(deterministic=True)


def test_without_the_kernels_the_default_is_fp32_and_says_so(no_env) -> None:
    with cpu_kernels.disabled():
        eng = Engine(device="cpu", max_tokens_in_cache=256)
    try:
        info = eng.describe()
        assert info["deterministic"] is False and info["linear"] in ("onednn", "torch")
        assert eng.dtype == torch.float32 or "LMNB_DTYPE" in info["dtype_reason"]
        assert eng.generate("The capital of France is", max_new_tokens=3).result().output_ids
    finally:
        eng.shutdown()
