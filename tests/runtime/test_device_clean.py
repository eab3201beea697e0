"""Every tensor of an engine step lives on the engine's device: checked without a GPU.

A step runs with the default device set to `meta` and a dispatch mode that records every op
touching a tensor off the engine's device. On a CPU engine, a tensor made without an explicit
device (the mistake that puts a step's tensor on the CPU beside a GPU's) lands on `meta` and
is caught at its first op, in the forward, the sampler, grammar masks, logprobs, the cascade.
Also: the device choices (`Engine(device="cuda")` without CUDA, the attention kernels).
"""

from __future__ import annotations

import contextlib

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from lmnb.runtime import Engine, device
from lmnb.runtime.engine import Engine as EngineClass
from tests.conftest import wait_idle


class OneDevice(TorchDispatchMode):
    """Records every op whose tensor inputs or outputs are not all on `device`."""

    def __init__(self, device: torch.device) -> None:
        super().__init__()
        self.device = device
        self.mixed: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        seen = {t.device for t in tree_flatten((args, kwargs, out))[0]
                if isinstance(t, torch.Tensor)}
        if seen - {self.device}:
            self.mixed.append(f"{func}: {sorted(map(str, seen))}")
        return out


class CheckedEngine(EngineClass):
    """An engine whose loop runs every step under the meta default device and `OneDevice`."""

    def _loop(self) -> None:
        self.mode = OneDevice(self.device)
        with torch.device("meta"), self.mode:
            super()._loop()


def test_the_checker_catches_a_tensor_made_without_a_device() -> None:
    mode = OneDevice(torch.device("cpu"))
    logits = torch.zeros(2, 5)
    with torch.device("meta"), mode:
        _ = logits.argmax(-1)  # fine
        assert mode.mixed == []
        # torch may refuse the mix itself; the mode has seen it first
        with contextlib.suppress(Exception):
            torch.empty(2, dtype=torch.int64)[[0]] = logits.argmax(-1)[[0]]
    assert mode.mixed


@pytest.mark.slow
def test_an_engine_step_keeps_every_tensor_on_its_device() -> None:
    """The torch runner (forward, cascade decode), the sampler (greedy, seeded top-k/top-p),
    grammar masks with jump-forward, min_new_tokens, output and prompt logprobs."""
    eng = CheckedEngine(device="cpu", deterministic=False, runner="torch", max_tokens_in_cache=2048,
                        cuda_graphs=False)
    try:
        shared = "You are a careful assistant. Answer in one short sentence, please. " * 3
        handles = [
            eng.generate(shared + "What is 2+2?", max_new_tokens=6),
            eng.generate(shared + "Name a colour.", max_new_tokens=6, temperature=0.8,
                         top_p=0.9, top_k=20, seed=3, return_logprobs=True,
                         min_new_tokens=2),
            eng.generate(shared + "Pick one.", max_new_tokens=8, regex=r"(yes|no)\.",
                         min_new_tokens=1),
            eng.generate("Count: one, two,", max_new_tokens=3, logprob_start_len=0,
                         return_logprobs=True),
        ]
        results = [h.result(timeout=120) for h in handles]
        wait_idle(eng)
    finally:
        eng.shutdown()
    assert eng.mode.mixed == [], eng.mode.mixed[:5]
    assert results[2].text in ("yes.", "no.")
    assert len(results[3].prompt_logprobs) > 0 and len(results[1].output_logprobs) > 0
    assert eng.stats()["decode_steps"] > 0


def test_cuda_without_a_gpu_is_a_clear_error() -> None:
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    with pytest.raises(ValueError, match="device='cuda'.*use device='cpu'"):
        device.pick_device("cuda")
    with pytest.raises(ValueError, match="device='cuda'"):
        Engine(device="cuda")
    with pytest.raises(ValueError, match="'cpu' or 'cuda'"):
        device.pick_device("mps")


def test_attention_kernels_chosen_and_why(monkeypatch) -> None:
    monkeypatch.delenv("LMNB_ATTENTION", raising=False)
    cpu, gpu = torch.device("cpu"), torch.device("cuda")
    assert device.pick_attention(None, cpu, True)[0] == "native"
    assert device.pick_attention(None, cpu, False)[0] == "torch"
    assert device.pick_attention(None, gpu, False)[0] == (
        "triton" if device.triton_available() else "torch")
    assert device.pick_attention("torch", gpu, False) == (
        "torch", "asked for (attention=): SDPA for extend, gather + cascade for decode")
    monkeypatch.setenv("LMNB_ATTENTION", "torch")
    assert "LMNB_ATTENTION" in device.pick_attention(None, gpu, False)[1]
    with pytest.raises(ValueError, match="'torch' or 'triton'"):
        device.pick_attention("flash", gpu, False)
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    with pytest.raises(ValueError, match="runs on a GPU"):
        device.pick_attention("triton", cpu, False)
