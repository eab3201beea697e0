"""The Triton attention kernels against the torch path (`attention.py`), in Triton's
interpreter on the CPU (`TRITON_INTERPRET=1`): small shapes, uneven lengths, cached prefix plus
new tokens, grouped-query heads, fp32 and bf16. On a GPU the same cases run compiled, and the
`gpu`-marked one adds the default model's head shapes at longer contexts."""

from __future__ import annotations

import importlib

import pytest
import torch
from transformers import AutoModelForCausalLM, LlamaConfig

from lmnb.runtime.attention import AttentionPlan, Workspace, attention
from lmnb.runtime.batch import ForwardBatch
from lmnb.runtime.config import ModelConfig
from lmnb.runtime.kv_pool import KVPool, ReqToToken
from lmnb.runtime.model import LlamaModel

pytest.importorskip("triton")

MODULE = "lmnb.runtime.triton_attention"


# Without a GPU the kernels run in Triton's interpreter (tests/conftest.py sets
# TRITON_INTERPRET=1 before triton is imported); with one, compiled on it.
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


@pytest.fixture(scope="module")
def kernels():
    module = importlib.import_module(MODULE)
    assert (DEVICE == "cpu") == module.INTERPRET, "TRITON_INTERPRET must be set before triton"
    return module


def make_step(items, heads, kv_heads, dim, dtype, device=DEVICE, seed=0):
    """A pool, table and step for items (prefix_len, extend_len): prefixes at scattered slots,
    this step's k/v already written at their slots (as the model does before attention)."""
    gen = torch.Generator().manual_seed(seed)
    total = sum(p + e for p, e in items)
    slots = (torch.randperm(total + 40, generator=gen)[:total] + 1).tolist()  # never slot 0
    num_slots = total + 42
    k_pool = torch.randn(num_slots, kv_heads, dim, generator=gen).to(dtype)
    v_pool = torch.randn(num_slots, kv_heads, dim, generator=gen).to(dtype)
    max_context = max(p + e for p, e in items) + 3
    table = torch.zeros(len(items) + 2, max_context, dtype=torch.int64)
    rows = [len(items) + 1 - i for i in range(len(items))]  # not in order
    new_ids, new_slots, at = [], [], 0
    for row, (p, e) in zip(rows, items):
        table[row, : p + e] = torch.tensor(slots[at : at + p + e])
        new_slots.append(slots[at + p : at + p + e])
        new_ids.append([1] * e)
        at += p + e
    batch = ForwardBatch.build(False, rows, [p for p, _ in items], new_ids, new_slots,
                               [[] for _ in items], torch.device(device))
    n = batch.out_slots.numel()
    q = torch.randn(n, heads, dim, generator=gen).to(dtype)
    k, v = k_pool[batch.out_slots.cpu()], v_pool[batch.out_slots.cpu()]
    dev = torch.device(device)
    return [x.to(dev) for x in (q, k, v, k_pool, v_pool, table)], batch


def run_both(items, heads, kv_heads, dim, dtype, device=DEVICE):
    (q, k, v, k_pool, v_pool, table), batch = make_step(items, heads, kv_heads, dim, dtype,
                                                        device)
    scale = dim**-0.5
    ref_plan = AttentionPlan.build(batch, table)
    ref = attention(q.float(), k.float(), v.float(), k_pool.float(), v_pool.float(), table,
                    ref_plan, scale, Workspace())
    plan = AttentionPlan.build(batch, table, kernels="triton")
    out = attention(q, k, v, k_pool, v_pool, table, plan, scale, Workspace())
    return out, ref, plan


def check(out, ref, dtype):
    assert out.dtype == dtype and out.shape == ref.shape
    assert torch.isfinite(out.float()).all()
    tol = 1e-5 if dtype == torch.float32 else 2e-2  # bf16: the output's rounding
    torch.testing.assert_close(out.float(), ref, atol=tol, rtol=tol)


# (prefix_len, extend_len) per request; a decoding request is (len - 1, 1) at the batch's end
MIXED = [(0, 37), (50, 5), (3, 70), (1, 1), (39, 1), (299, 1)]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_triton_extend_and_decode_mixed_step(kernels, dtype):
    """Fresh prompts, cached prefixes of uneven lengths plus new tokens (past one query
    block), and decoding requests riding along (two key splits, one of them empty for the
    short ones); 6 query heads over 2 kv heads."""
    out, ref, plan = run_both(MIXED, heads=6, kv_heads=2, dim=32, dtype=dtype)
    assert plan.kernels == "triton" and len(plan.extend) == 3 and plan.num_decode == 3
    assert plan.splits == 2
    check(out, ref, dtype)


@pytest.mark.parametrize("heads,kv_heads,dim", [(4, 4, 16), (8, 1, 24)])
def test_triton_decode_long_context_splits(kernels, heads, kv_heads, dim):
    """Decode only, one long context split eight ways (1,101 keys: five splits' worth,
    bucketed up to a power of two) beside short ones, whose later splits are empty; plain
    multi-head and one kv head for all (dim 24: padded to a power of two inside the kernel)."""
    out, ref, plan = run_both([(1100, 1), (2, 1), (257, 1)], heads, kv_heads, dim,
                              torch.float32)
    assert plan.extend == [] and plan.splits == 8
    check(out, ref, torch.float32)


def test_triton_extend_prefix_split_points(kernels):
    """One prompt cut at different points into cached prefix + new tokens gives the same
    attention output for the same tokens (prefix from the pool, the rest from k/v)."""
    (q, k, v, k_pool, v_pool, table), batch = make_step([(0, 45)], 3, 1, 16, torch.float32)
    scale = 0.25
    full = attention(q, k, v, k_pool, v_pool, table,
                     AttentionPlan.build(batch, table, kernels="triton"), scale, Workspace())
    row, slots = batch.rows[0], batch.out_slots.tolist()
    for cut in (1, 17, 44):
        part = ForwardBatch.build(False, [row], [cut], [[1] * (45 - cut)], [slots[cut:]],
                                  [[]], torch.device(DEVICE))
        plan = AttentionPlan.build(part, table, kernels="triton")
        out = attention(q[cut:], k[cut:], v[cut:], k_pool, v_pool, table, plan, scale,
                        Workspace())
        torch.testing.assert_close(out, full[cut:], atol=1e-5, rtol=1e-5)


def test_triton_splits_follow_the_longest_context(kernels):
    assert kernels.num_splits(1) == 1
    assert kernels.num_splits(256) == 1 and kernels.num_splits(257) == 2
    assert kernels.num_splits(10**6) == kernels.MAX_SPLITS


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_triton_compiled_on_gpu_model_shapes(kernels, dtype):
    """The default model's heads (9 over 3 kv heads, dim 64), long prefixes and contexts."""
    items = [(0, 300), (4000, 130), (17, 1), (7999, 1), (512, 1)]
    out, ref, plan = run_both(items, heads=9, kv_heads=3, dim=64, dtype=dtype)
    assert plan.splits == kernels.MAX_SPLITS // 2 or plan.splits > 1
    check(out.cpu(), ref.cpu(), dtype)


def model_steps(attention_kernels: str, dtype: torch.dtype) -> torch.Tensor:
    """A tiny random Llama (4 query heads over 2 kv heads): two requests' prompts as extends
    (the second over a cached prefix), then two decode steps of both; all logits."""
    hf_cfg = LlamaConfig(vocab_size=101, hidden_size=64, intermediate_size=96,
                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                         max_position_embeddings=256)
    gen = torch.Generator().manual_seed(0)
    cfg = ModelConfig.from_hf(hf_cfg.to_dict())
    torch.manual_seed(0)
    weights = AutoModelForCausalLM.from_config(hf_cfg).state_dict()
    dev = torch.device(DEVICE)
    model = LlamaModel(cfg, weights, dtype, dev, attention=attention_kernels)
    assert model.attention == attention_kernels
    pool = KVPool(cfg.num_layers, 512, cfg.num_kv_heads, cfg.head_dim, dtype, dev)
    table = ReqToToken(4, 256, dev)
    ids = [torch.randint(0, 101, (n,), generator=gen).tolist() for n in (70, 45)]
    rows = [table.alloc(), table.alloc()]
    slots = [pool.alloc(len(x) + 2) for x in ids]
    for row, s in zip(rows, slots):
        table.set(row, 0, s)
    logits = []

    def step(starts, news):
        batch = ForwardBatch.build(
            False, rows, starts, [ids[i][a : a + n] for i, (a, n) in enumerate(zip(starts,
                                                                                    news))],
            [slots[i][a : a + n] for i, (a, n) in enumerate(zip(starts, news))],
            [list(range(n)) for n in news], dev)
        logits.append(model.forward(batch, pool, table.table).float().cpu())

    step([0, 0], [33, 45])  # prompts from scratch (the first in part)
    step([33, 44], [37, 1])  # the rest over its cached prefix, beside a decoding request
    last = [36, 37]  # each request's last row of logits
    for _ in range(2):  # decode: each request's argmax appended
        nxt = logits[-1][last].argmax(-1).tolist()
        last = [0, 1]
        starts = [len(x) for x in ids]
        for x, t in zip(ids, nxt):
            x.append(t)
        step(starts, [1, 1])
    return torch.cat(logits)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_triton_attention_in_the_model_forward(kernels, dtype):
    """The torch runner with Triton attention (and `triton_ops`' fused RMSNorm + residual and
    rotary) gives the torch path's logits through extend (fresh and over a cached prefix) and
    decode steps."""
    got, ref = model_steps("triton", dtype), model_steps("torch", dtype)
    tol = 1e-4 if dtype == torch.float32 else 5e-2
    torch.testing.assert_close(got, ref, atol=tol, rtol=tol)
