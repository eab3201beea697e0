"""The compiled decode attention kernel against the torch path, and its fallback."""

from __future__ import annotations

import shutil

import pytest
import torch

from lmnb.runtime import attention as A
from lmnb.runtime import cpu_kernels


def _kernel() -> cpu_kernels.DecodeAttention:
    if shutil.which("cc") is None and shutil.which("gcc") is None:
        pytest.skip("no C compiler: the engine uses the torch path (tested elsewhere)")
    kernel = cpu_kernels.decode_attention(torch.empty(1, 1, 1), torch.empty(1, 1, 1))
    assert kernel is not None, cpu_kernels.prepare(torch.device("cpu"), torch.float32)
    return kernel


def _torch_path(q, k_pool, v_pool, table, plan, scale):
    with cpu_kernels.disabled():  # what the engine runs where the kernel is unavailable
        assert cpu_kernels.decode_attention(q, k_pool) is None
        return A.decode_attention(q, k_pool, v_pool, table, plan, scale, A.Workspace())


@pytest.mark.parametrize("heads,kv_heads,dim", [(9, 3, 64), (4, 4, 32), (8, 1, 16)])
def test_the_kernel_matches_the_torch_path(heads: int, kv_heads: int, dim: int) -> None:
    kernel = _kernel()
    gen = torch.Generator().manual_seed(heads * 100 + dim)
    slots, rows_in_table, width = 3000, 12, 400
    k_pool = torch.randn(slots, kv_heads, dim, generator=gen)
    v_pool = torch.randn(slots, kv_heads, dim, generator=gen)
    table = torch.randint(1, slots, (rows_in_table, width), generator=gen)
    rows = torch.tensor([7, 0, 11, 3, 5])
    lens = torch.tensor([400, 1, 37, 256, 2])  # uneven: the torch path pads and masks
    q = torch.randn(len(rows), heads, dim, generator=gen)
    plan = _plan(table, rows, lens)
    want = _torch_path(q, k_pool, v_pool, table, plan, 0.125)
    got = kernel(q, k_pool, v_pool, table, rows, lens, 0.125)
    torch.testing.assert_close(got, want, atol=2e-5, rtol=1e-4)
    # and through `decode_attention`, which picks the kernel by itself
    torch.testing.assert_close(
        A.decode_attention(q, k_pool, v_pool, table, plan, 0.125, A.Workspace()), want,
        atol=2e-5, rtol=1e-4)


def _plan(table, rows, lens) -> A.AttentionPlan:
    width = int(lens.max())
    suffix = table[rows, :width].reshape(-1)
    mask = (torch.arange(width)[None, :] < lens[:, None])[:, None, None, :]
    return A.AttentionPlan([], 0, len(rows), None, suffix, mask, rows, lens)


def test_the_kernel_is_skipped_outside_fp32_on_the_cpu() -> None:
    assert cpu_kernels.decode_attention(torch.empty(1, 1, 1, dtype=torch.bfloat16),
                                        torch.empty(1, 1, 1, dtype=torch.bfloat16)) is None
    assert "fp32" in cpu_kernels.prepare(torch.device("cpu"), torch.bfloat16)


def test_without_a_compiler_the_torch_path_is_used(monkeypatch, tmp_path) -> None:
    monkeypatch.setattr(cpu_kernels, "_kernel", None)
    monkeypatch.setattr(cpu_kernels, "_status", None)
    monkeypatch.setenv("LMNB_CACHE", str(tmp_path))  # nothing built there yet
    monkeypatch.setenv("CC", str(tmp_path / "no-such-compiler"))
    assert cpu_kernels.decode_attention(torch.empty(1, 1, 1), torch.empty(1, 1, 1)) is None
    assert "native kernel unavailable" in cpu_kernels.prepare(torch.device("cpu"),
                                                              torch.float32)


def test_lmnb_no_kernels_turns_it_off(monkeypatch) -> None:
    monkeypatch.setattr(cpu_kernels, "_kernel", None)
    monkeypatch.setattr(cpu_kernels, "_status", None)
    monkeypatch.setenv("LMNB_NO_KERNELS", "1")
    assert cpu_kernels.decode_attention(torch.empty(1, 1, 1), torch.empty(1, 1, 1)) is None
    assert cpu_kernels.prepare(torch.device("cpu"), torch.float32) == "torch (LMNB_NO_KERNELS=1)"
