"""The native kernels: values against torch, bits against themselves (batch invariance), and
the fallback where they cannot be built."""

from __future__ import annotations

import os
import shutil

import pytest
import torch
import torch.nn.functional as F

from lmnb.runtime import cpu_kernels, device

DTYPES = [torch.float32, torch.bfloat16]


def _has_avx512() -> bool:
    return "avx512f" in device._cpuinfo()


# The kernels as this CPU builds them, and, on an AVX-512 CPU, the AVX2 variant that CPUs
# without AVX-512 run (same arithmetic, 8-wide vectors, no bf16 pairs).
VARIANTS = ["native", "avx2"]


@pytest.fixture(scope="module", params=VARIANTS)
def kernels(request) -> cpu_kernels.NativeKernels:
    if shutil.which("cc") is None and shutil.which("gcc") is None:
        pytest.skip("no C compiler: the engine uses the torch path (tested elsewhere)")
    if os.environ.get("LMNB_NO_KERNELS") == "1":
        pytest.skip("LMNB_NO_KERNELS=1: the engine uses the torch path (tested elsewhere)")
    if request.param == "native":
        native = cpu_kernels.load()
        assert native is not None, cpu_kernels.status()
        return native
    if not _has_avx512():
        pytest.skip("this CPU builds the AVX2 variant natively")
    variant = cpu_kernels.build(("-mno-avx512f",))  # probed like the native one
    assert not variant.bf16_pairs
    return variant


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("out_f,in_f", [(96, 40), (1000, 576), (7, 33)])
def test_linear_matches_torch_and_is_batch_invariant(kernels, dtype, out_f, in_f) -> None:
    gen = torch.Generator().manual_seed(out_f + in_f)
    weight = torch.randn(out_f, in_f, generator=gen).to(dtype)
    bias = torch.randn(out_f, generator=gen)
    x = torch.randn(70, in_f, generator=gen).to(dtype)
    packed = kernels.pack(weight, bias, dtype)
    assert packed.data.dtype == dtype
    full = kernels.linear(x, packed)
    torch.testing.assert_close(full, F.linear(x.float(), weight.float(), bias),
                               rtol=1e-5, atol=2e-4)
    # bits: every row alone, in batches of any size, and (fp32 chains) the element-by-element
    # reference; bf16 weights with an even width use the CPU's bf16 pairs where it has them
    assert packed.pairs == (dtype == torch.bfloat16 and kernels.bf16_pairs and in_f % 2 == 0)
    if not packed.pairs:
        assert torch.equal(full, kernels.linear(x, packed, reference=True))
    for rows in (1, 2, 5, 6, 7, 13, 48, 49):
        for start in range(0, len(x) - rows + 1, 23):
            assert torch.equal(kernels.linear(x[start : start + rows], packed),
                               full[start : start + rows]), (rows, start)


def _reference_attention(q, k_pool, v_pool, table, rows, lens):
    out = []
    heads, kv_heads = q.shape[1], k_pool.shape[1]
    for t in range(len(q)):
        s = table[rows[t], : lens[t]]
        kk = k_pool[s].float().repeat_interleave(heads // kv_heads, 1)  # [len, heads, dim]
        vv = v_pool[s].float().repeat_interleave(heads // kv_heads, 1)
        w = torch.softmax(torch.einsum("hd,lhd->hl", q[t].float(), kk) * 0.125, -1)
        out.append(torch.einsum("hl,lhd->hd", w, vv))
    return torch.stack(out)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("heads,kv_heads,dim", [(9, 3, 64), (4, 4, 32), (8, 1, 24)])
def test_attention_matches_torch(kernels, dtype, heads, kv_heads, dim) -> None:
    gen = torch.Generator().manual_seed(heads * 100 + dim)
    slots, width = 3000, 400
    k_pool = torch.randn(slots, kv_heads, dim, generator=gen).to(dtype)
    v_pool = torch.randn(slots, kv_heads, dim, generator=gen).to(dtype)
    table = torch.randint(1, slots, (12, width), generator=gen)
    rows = torch.tensor([7, 0, 11, 3, 5])
    lens = torch.tensor([400, 1, 37, 256, 2])
    q = torch.randn(len(rows), heads, dim, generator=gen).to(dtype)
    got = kernels.attention(q, k_pool, v_pool, table, rows, lens, 0.125)
    want = _reference_attention(q, k_pool, v_pool, table, rows, lens)
    if _pair_path(kernels, dtype, dim):  # softmax weights rounded to bf16 (2^-9 relative)
        torch.testing.assert_close(got, want, atol=4e-3, rtol=1.6e-2)
        assert (got - want).abs().mean() < 5e-4
    else:
        torch.testing.assert_close(got, want, atol=2e-5, rtol=1e-4)


def _pair_path(kernels, dtype, dim) -> bool:
    """Whether attention over this pool takes the bf16 pair path (csrc/attention.c)."""
    return kernels.bf16_pairs and dtype == torch.bfloat16 and dim == 64


@pytest.mark.parametrize("dtype", DTYPES)
def test_attention_is_the_same_for_extend_and_decode(kernels, dtype) -> None:
    """A prompt's queries attended together (an extend: query i sees keys 0..i) give the same
    bits as each attended alone (decode steps), in any order and batch."""
    gen = torch.Generator().manual_seed(3)
    n, heads, kv_heads, dim = 50, 9, 3, 64
    k_pool = torch.randn(200, kv_heads, dim, generator=gen).to(dtype)
    v_pool = torch.randn(200, kv_heads, dim, generator=gen).to(dtype)
    table = torch.zeros(4, 64, dtype=torch.int64)
    table[2, :n] = torch.randperm(199, generator=gen)[:n] + 1
    q = torch.randn(n, heads, dim, generator=gen)
    rows, lens = torch.full((n,), 2), torch.arange(1, n + 1)
    together = kernels.attention(q, k_pool, v_pool, table, rows, lens, 0.125)
    for i in (0, 1, 17, n - 1):
        alone = kernels.attention(q[i : i + 1], k_pool, v_pool, table, rows[i : i + 1],
                                  lens[i : i + 1], 0.125)
        assert torch.equal(alone[0], together[i])
    flipped = kernels.attention(q.flip(0), k_pool, v_pool, table, rows, lens.flip(0), 0.125)
    assert torch.equal(flipped.flip(0), together)


def test_without_a_compiler_the_torch_path_is_used(monkeypatch, tmp_path) -> None:
    monkeypatch.setattr(cpu_kernels, "_kernels", None)
    monkeypatch.setattr(cpu_kernels, "_status", None)
    monkeypatch.setenv("LMNB_CACHE", str(tmp_path))  # nothing built there yet
    monkeypatch.setenv("CC", str(tmp_path / "no-such-compiler"))
    assert cpu_kernels.load() is None
    assert cpu_kernels.status().startswith("unavailable")


def test_lmnb_no_kernels_turns_them_off(monkeypatch) -> None:
    monkeypatch.setattr(cpu_kernels, "_kernels", None)
    monkeypatch.setattr(cpu_kernels, "_status", None)
    monkeypatch.setenv("LMNB_NO_KERNELS", "1")
    assert cpu_kernels.load() is None
    assert cpu_kernels.status() == "unavailable (LMNB_NO_KERNELS=1)"


def test_disabled_is_temporary() -> None:
    kernels = cpu_kernels.load()
    with cpu_kernels.disabled():
        assert cpu_kernels.load() is None
        assert "disabled" in cpu_kernels.status()
    assert cpu_kernels.load() is kernels


@pytest.mark.parametrize("dtype", DTYPES)
def test_attention_bits_are_the_same_on_avx512_and_avx2(dtype) -> None:
    """The AVX-512 attention (transposes, the 16-lane softmax update, bf16 rows widened in
    the split order) performs the plain code's operations: the AVX2 build, which runs the
    plain code, gives the same bits, so a CPU without AVX-512 answers the same. (A CPU with
    the bf16 dot product takes the pair path for bf16 pools: another arithmetic, like the
    linear's pairs; the AVX-512 build without it is compared here.)"""
    if not _has_avx512() or cpu_kernels.load() is None:
        pytest.skip("needs an AVX-512 CPU with the kernels built")
    native = cpu_kernels.load()
    if native.bf16_pairs:
        native = cpu_kernels.build(("-mno-avx512bf16",))
        assert not native.bf16_pairs
    avx2 = cpu_kernels.build(("-mno-avx512f",))
    gen = torch.Generator().manual_seed(11)
    for heads, kv_heads, dim in ((9, 3, 64), (4, 2, 32)):
        k_pool = torch.randn(700, kv_heads, dim, generator=gen).to(dtype)
        v_pool = torch.randn(700, kv_heads, dim, generator=gen).to(dtype)
        table = torch.randint(1, 700, (6, 300), generator=gen)
        rows = torch.tensor([4, 4, 4, 1, 0, 5, 2])  # an extend tile of three, then decodes
        lens = torch.tensor([20, 21, 22, 300, 1, 47, 129])
        q = torch.randn(len(rows), heads, dim, generator=gen)
        assert torch.equal(native.attention(q, k_pool, v_pool, table, rows, lens, 0.125),
                           avx2.attention(q, k_pool, v_pool, table, rows, lens, 0.125))
