"""Attention over the pool against a naive per-query softmax, on random data: extend items
(fresh and over a cached prefix), a batched decode tail, and the cascade over a prefix shared
by every decoding row."""

from __future__ import annotations

import random

import pytest
import torch

from lmnb.runtime.attention import CASCADE_MIN_PREFIX, AttentionPlan, Workspace, attention
from lmnb.runtime.batch import ForwardBatch

HEADS, KV_HEADS, DIM, SLOTS = 6, 2, 8, 4096
CPU = torch.device("cpu")


def reference(q, k_pool, v_pool, table, batch, scale):
    """Query j of an item at position p sees the row's slots [0, p], one softmax each."""
    out, start = [], 0
    group = HEADS // KV_HEADS
    for row, seq_len, ext_len in zip(batch.rows, batch.seq_lens, batch.extend_lens):
        for j in range(ext_len):
            pos = seq_len - ext_len + j
            slots = table[row, : pos + 1]
            k = k_pool[slots].repeat_interleave(group, dim=1)  # [keys, heads, dim]
            v = v_pool[slots].repeat_interleave(group, dim=1)
            scores = torch.einsum("hd,khd->hk", q[start + j].double(), k.double()) * scale
            out.append(torch.einsum("hk,khd->hd", scores.softmax(-1), v.double()))
        start += ext_len
    return torch.stack(out).float()


def make_case(rng: random.Random, shared_prefix: int, num_decode: int, extends: list[int]):
    """Rows with given shapes; decoding rows start with `shared_prefix` identical slots."""
    free = list(range(1, SLOTS))
    rng.shuffle(free)
    table = torch.zeros(16, 512, dtype=torch.int64)
    prefix = [free.pop() for _ in range(shared_prefix)]
    rows, prefix_lens, new_ids, new_slots = [], [], [], []
    for i, (cached, ext) in enumerate([(c, e) for c, e in extends]
                                      + [(shared_prefix + rng.randrange(1, 40), 1)
                                         for _ in range(num_decode)]):
        is_decode = i >= len(extends)
        head = prefix[:cached] if is_decode else []
        slots = head + [free.pop() for _ in range(cached + ext - len(head))]
        table[i, : len(slots)] = torch.tensor(slots)
        rows.append(i)
        prefix_lens.append(cached)
        new_ids.append([0] * ext)
        new_slots.append(slots[cached:])
    batch = ForwardBatch.build(num_decode > 0 and not extends, rows, prefix_lens, new_ids,
                               new_slots, [[]] * len(rows), CPU)
    return table, batch


@pytest.mark.parametrize("shared_prefix,num_decode,extends", [
    (0, 5, []),  # plain decode
    (CASCADE_MIN_PREFIX + 40, 7, []),  # cascade decode
    (CASCADE_MIN_PREFIX + 40, 1, []),  # one request: no cascade
    (CASCADE_MIN_PREFIX + 5, 4, [(0, 17), (30, 9)]),  # extends with a cascade tail
    (3, 3, [(0, 1), (12, 1), (0, 20)]),  # one-token extends stay extends before the tail
])
def test_attention_matches_reference(shared_prefix, num_decode, extends) -> None:
    rng = random.Random(shared_prefix * 31 + num_decode)
    torch.manual_seed(rng.randrange(1000))
    table, batch = make_case(rng, shared_prefix, num_decode, extends)
    k_pool, v_pool = torch.randn(SLOTS, KV_HEADS, DIM), torch.randn(SLOTS, KV_HEADS, DIM)
    n = int(batch.input_ids.shape[0])
    q = torch.randn(n, HEADS, DIM)
    k, v = k_pool[batch.out_slots], v_pool[batch.out_slots]
    plan = AttentionPlan.build(batch, table)
    expect_cascade = num_decode > 1 and shared_prefix >= CASCADE_MIN_PREFIX
    assert (plan.prefix_slots is not None) == expect_cascade
    assert plan.num_decode == num_decode
    work = Workspace()
    got = attention(q, k, v, k_pool, v_pool, table, plan, 0.3, work)
    torch.testing.assert_close(got, reference(q, k_pool, v_pool, table, batch, 0.3),
                               atol=1e-5, rtol=1e-4)
    again = attention(q, k, v, k_pool, v_pool, table, plan, 0.3, work)  # reused buffers
    torch.testing.assert_close(again, got, atol=0, rtol=0)
