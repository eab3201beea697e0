"""Attention over the token-indexed KV pool in torch: the path where the native kernel is not used.

The engine's exact (batch-invariant) path is the native kernel of `cpu_kernels`
(csrc/attention.c), which takes extend and decode tokens alike, one query at a time; the model
calls it directly with the plan's per-token `rows`/`lens`. This module is the torch path (no C
compiler, a GPU, or an engine built with `deterministic=False`) and the numerical reference the
kernel is tested against. Its arithmetic depends on the batch (SDPA's blocking, the cascade),
so it makes no bitwise promise.

Owns the two attention shapes the engine runs: extend (new tokens of each request attend to its
cached prefix and causally to each other) and decode (one query per request). A step's
single-token items (a decode step, or decoding requests riding along an extend step) are
batched. Knows nothing of the radix tree or sampling; reads k/v through `req_to_token` rows.

Why it is shaped this way (CPU measurements in benchmarks/, reasons here):
- k/v are gathered with `index_select` into reused buffers (`Workspace`): advanced indexing is
  several times slower, and a fresh multi-MB tensor per layer costs page faults every time.
- Extend attention passes 4-d tensors to `scaled_dot_product_attention`: with 3-d ones torch
  takes its unfused path on the CPU (384 queries over 1,536 keys: 36 ms a layer vs 12 ms).
- Decoding requests whose rows start with the same slots (a shared prompt prefix, held once in
  the radix cache) attend to that prefix together: one matrix product of all their queries
  against the prefix keys, read once, merged with each request's own suffix through the
  softmax's log-sum-exp ("cascade"). Without it, a batch of 64 requests over a 1,000-token
  shared prefix reads 64 copies of the prefix per layer.
"""

from __future__ import annotations

import importlib
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from lmnb.runtime.batch import ForwardBatch
from lmnb.runtime.device import host_to_device

# A common prefix shorter than this is attended per request (the cascade's extra work does not
# pay for itself on short prefixes).
CASCADE_MIN_PREFIX = 32


class Workspace:
    """Reusable buffers by name, grown when a step needs more; used by one thread."""

    def __init__(self) -> None:
        self._buffers: dict[str, torch.Tensor] = {}

    def take(self, name: str, shape: tuple[int, ...], like: torch.Tensor) -> torch.Tensor:
        numel = math.prod(shape)
        buf = self._buffers.get(name)
        if buf is None or buf.numel() < numel or buf.dtype != like.dtype \
                or buf.device != like.device:
            buf = torch.empty(numel, dtype=like.dtype, device=like.device)
            self._buffers[name] = buf
        return buf[:numel].view(shape)


@dataclass
class AttentionPlan:
    """Built once per forward, used by every layer. The batch's tokens are the extend items'
    tokens (attended one request at a time) followed by `num_decode` single tokens."""

    extend: list[tuple[int, int, int]]  # (row, seq_len, extend_len) per extend item
    num_extend_tokens: int
    num_decode: int
    prefix_slots: torch.Tensor | None  # [prefix_len]: slots every decoding row starts with
    suffix_slots: torch.Tensor | None  # [num_decode * suffix_len]; padding reads slot 0
    suffix_mask: torch.Tensor | None  # [num_decode, 1, 1, suffix_len] bool: real positions
    # [num_decode] int64 (per_token: [num_tokens]): the decoding requests' (tokens') table rows
    rows: torch.Tensor | None = None
    lens: torch.Tensor | None = None  # likewise: the sequence lengths they attend to
    kernels: str = "torch"  # which path `attention` takes: "torch" or "triton"
    # triton: [4, extend items] int64 (row, prefix_len, extend_len, first query), on the device
    extend_meta: torch.Tensor | None = None
    max_extend_len: int = 0
    splits: int = 1  # triton decode: key chunks per request, merged by log-sum-exp

    @classmethod
    def build(cls, batch: ForwardBatch, table: torch.Tensor,
              per_token: bool = False, kernels: str = "torch") -> AttentionPlan:
        """per_token: only `rows` and `lens` for every token (query t attends to the slots
        table[rows[t], :lens[t]]), for the native kernel, which takes extend and decode
        tokens alike. kernels="triton": the Triton kernels' plan (no cascade: their decode
        splits long contexts instead)."""
        if kernels == "triton":
            return cls.build_triton(batch, table)
        if per_token:
            rows = torch.tensor(batch.rows, device=table.device).repeat_interleave(
                torch.tensor(batch.extend_lens, device=table.device))
            return cls([], 0, 0, None, None, None, rows, batch.positions + 1)
        extend, tail = split_decode_tail(list(zip(batch.rows, batch.seq_lens,
                                                  batch.extend_lens)))
        num_extend_tokens = sum(e for _, _, e in extend)
        if not tail:
            return cls(extend, num_extend_tokens, 0, None, None, None)
        rows = torch.tensor([r for r, _, _ in tail], device=table.device)
        lens = torch.tensor([s for _, s, _ in tail], device=table.device)
        prefix_len = common_prefix_len(table, rows, min(s for _, s, _ in tail) - 1)
        if prefix_len < CASCADE_MIN_PREFIX:
            prefix_len = 0
        suffix_len = max(s for _, s, _ in tail) - prefix_len
        suffix = table[rows, prefix_len : prefix_len + suffix_len].reshape(-1)
        positions = torch.arange(prefix_len, prefix_len + suffix_len, device=table.device)
        mask = (positions[None, :] < lens[:, None])[:, None, None, :]
        prefix = table[tail[0][0], :prefix_len] if prefix_len else None
        return cls(extend, num_extend_tokens, len(tail), prefix, suffix, mask, rows, lens)


    @classmethod
    def build_triton(cls, batch: ForwardBatch, table: torch.Tensor) -> AttentionPlan:
        """Every per-request number in one host tensor, copied to the device once (from
        pinned memory on a GPU), then viewed as the kernels' arguments."""
        extend, tail = split_decode_tail(list(zip(batch.rows, batch.seq_lens,
                                                  batch.extend_lens)))
        starts = [0]
        for _, _, e in extend:
            starts.append(starts[-1] + e)
        host = ([r for r, _, _ in extend] + [s - e for _, s, e in extend]
                + [e for _, _, e in extend] + starts[:-1]
                + [r for r, _, _ in tail] + [s for _, s, _ in tail])
        values = host_to_device(host, table.device)
        meta = values[: 4 * len(extend)].view(4, len(extend))
        rows, lens = values[4 * len(extend) :].view(2, len(tail))
        max_len = max((s for _, s, _ in tail), default=0)
        return cls(extend, starts[-1], len(tail), None, None, None, rows, lens,
                   kernels="triton", extend_meta=meta,
                   max_extend_len=max((e for _, _, e in extend), default=0),
                   splits=triton_splits(max_len))


def split_decode_tail(items: list[tuple[int, int, int]],
                      ) -> tuple[list[tuple[int, int, int]], list[tuple[int, int, int]]]:
    """(extend items, the single-token tail: decoding requests, batched)."""
    split = len(items)
    while split > 0 and items[split - 1][2] == 1 and items[split - 1][1] > 1:
        split -= 1
    return items[:split], items[split:]


def triton_splits(max_len: int) -> int:
    """The Triton decode's key chunks for the longest context (its module decides)."""
    if max_len == 0:
        return 1
    return importlib.import_module("lmnb.runtime.triton_attention").num_splits(max_len)


def common_prefix_len(table: torch.Tensor, rows: torch.Tensor, limit: int) -> int:
    """How many leading positions hold the same slot in every row (at most `limit`)."""
    if len(rows) < 2 or limit < CASCADE_MIN_PREFIX:
        return 0
    block = table[rows, :limit]  # [rows, limit]
    differs = (block != block[0]).any(0)  # [limit]
    return int(differs.int().argmax()) if bool(differs.any()) else limit


def attention(
    q: torch.Tensor,  # [num_tokens, heads, dim]
    k: torch.Tensor,  # [num_tokens, kv_heads, dim]: this step's keys, already in the pool
    v: torch.Tensor,
    k_pool: torch.Tensor,  # [slots, kv_heads, dim]
    v_pool: torch.Tensor,
    table: torch.Tensor,  # [rows, max_context] slot per position
    plan: AttentionPlan,
    scale: float,
    work: Workspace,
) -> torch.Tensor:
    out = torch.empty_like(q)
    split = plan.num_extend_tokens
    if plan.kernels == "triton":
        return triton_attention(out, q, k, v, k_pool, v_pool, table, plan, scale)
    if plan.extend:
        extend_attention(out[:split], q[:split], k, v, k_pool, v_pool, table, plan.extend,
                         scale, work)
    if plan.num_decode:
        out[split:] = decode_attention(q[split:], k_pool, v_pool, table, plan, scale, work)
    return out


def triton_attention(out: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                     k_pool: torch.Tensor, v_pool: torch.Tensor, table: torch.Tensor,
                     plan: AttentionPlan, scale: float) -> torch.Tensor:
    """The same contract on the Triton kernels (`triton_attention.py`, imported here)."""
    kernels = importlib.import_module("lmnb.runtime.triton_attention")
    split = plan.num_extend_tokens
    if plan.extend:
        kernels.extend_attention(out[:split], q[:split], k[:split], v[:split], k_pool, v_pool,
                                 table, plan.extend_meta, plan.max_extend_len, scale)
    if plan.num_decode:
        kernels.decode_attention(q[split:], k_pool, v_pool, table, plan.rows, plan.lens, scale,
                                 plan.splits, out=out[split:])
    return out


def extend_attention(
    out: torch.Tensor,  # [num_extend_tokens, heads, dim], written
    q: torch.Tensor,  # [num_extend_tokens, heads, dim]
    k: torch.Tensor,
    v: torch.Tensor,
    k_pool: torch.Tensor,
    v_pool: torch.Tensor,
    table: torch.Tensor,
    items: list[tuple[int, int, int]],
    scale: float,
    work: Workspace,
) -> None:
    # Tensors are 4-d ([1, heads, n, dim]): on the CPU, 3-d inputs take torch's unfused
    # path, 3-6x slower at a thousand tokens (measured; see the module's notes).
    start = 0
    for row, seq_len, ext_len in items:
        end = start + ext_len
        qi = q[start:end].transpose(0, 1).unsqueeze(0)  # [1, heads, n, dim]
        if seq_len == ext_len:  # nothing cached before: attend to this step's own k/v
            ki = k[start:end].transpose(0, 1).unsqueeze(0)
            vi = v[start:end].transpose(0, 1).unsqueeze(0)
            oi = F.scaled_dot_product_attention(qi, ki, vi, is_causal=True, scale=scale,
                                                enable_gqa=True)
        else:
            ki, vi = gather(k_pool, v_pool, table[row, :seq_len], work)
            ki = ki.transpose(0, 1).unsqueeze(0)  # [1, kv_heads, seq_len, dim]
            vi = vi.transpose(0, 1).unsqueeze(0)
            # query j sits at position seq_len - ext_len + j and sees keys up to it
            mask = torch.ones(ext_len, seq_len, dtype=torch.bool, device=q.device)
            mask = mask.tril(diagonal=seq_len - ext_len)
            oi = F.scaled_dot_product_attention(qi, ki, vi, attn_mask=mask, scale=scale,
                                                enable_gqa=True)
        out[start:end] = oi[0].transpose(0, 1)
        start = end


def gather(k_pool: torch.Tensor, v_pool: torch.Tensor, slots: torch.Tensor,
           work: Workspace) -> tuple[torch.Tensor, torch.Tensor]:
    """k, v [len(slots), kv_heads, dim] in reused buffers (valid until the next gather)."""
    shape = (len(slots), *k_pool.shape[1:])
    k = torch.index_select(k_pool, 0, slots, out=work.take("k", shape, k_pool))
    v = torch.index_select(v_pool, 0, slots, out=work.take("v", shape, v_pool))
    return k, v


def decode_attention(
    q: torch.Tensor,  # [batch, heads, dim]
    k_pool: torch.Tensor,  # [slots, kv_heads, dim]
    v_pool: torch.Tensor,
    table: torch.Tensor,
    plan: AttentionPlan,
    scale: float,
    work: Workspace,
) -> torch.Tensor:
    bsz, heads, dim = q.shape
    kv_heads = k_pool.shape[1]
    k, v = gather(k_pool, v_pool, plan.suffix_slots, work)  # type: ignore[arg-type]
    k = k.view(bsz, -1, kv_heads, dim).transpose(1, 2)  # [batch, kv_heads, suffix_len, dim]
    v = v.view(bsz, -1, kv_heads, dim).transpose(1, 2)
    if plan.prefix_slots is None:
        out = F.scaled_dot_product_attention(q.unsqueeze(2), k, v, attn_mask=plan.suffix_mask,
                                             scale=scale, enable_gqa=True)
        return out.view(bsz, heads, dim)  # [batch, heads, 1, dim] -> [batch, heads, dim]
    qg = q.view(bsz, kv_heads, heads // kv_heads, dim)  # [batch, kv_heads, group, dim]
    suffix = partial_attention(qg, k, v, plan.suffix_mask, scale)
    kp = k_pool.index_select(0, plan.prefix_slots).transpose(0, 1)  # [kv_heads, prefix, dim]
    vp = v_pool.index_select(0, plan.prefix_slots).transpose(0, 1)
    qp = qg.transpose(0, 1).reshape(kv_heads, -1, dim)  # [kv_heads, batch * group, dim]
    prefix = partial_attention(qp, kp, vp, None, scale)
    prefix = tuple(x.view(kv_heads, bsz, -1, x.shape[-1]).transpose(0, 1) for x in prefix)
    return merge(suffix, prefix).reshape(bsz, heads, dim)


Partial = tuple[torch.Tensor, torch.Tensor, torch.Tensor]  # (unnormalised out, max, sum)


def partial_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                      mask: torch.Tensor | None, scale: float) -> Partial:
    """Softmax attention over part of the keys, kept mergeable: q [..., n, dim], k and v
    [..., keys, dim] -> out [..., n, dim] (not yet divided by the sum), max and sum [..., n, 1].
    Every query must see at least one key."""
    scores = torch.matmul(q, k.transpose(-1, -2)).mul_(scale)  # [..., n, keys]
    if mask is not None:
        scores.masked_fill_(~mask, float("-inf"))
    top = scores.amax(-1, keepdim=True)
    weights = scores.sub_(top).exp_()
    return torch.matmul(weights, v), top, weights.sum(-1, keepdim=True)


def merge(a: Partial, b: Partial) -> torch.Tensor:
    """Attention over the union of two key sets from their partial results."""
    top = torch.maximum(a[1], b[1])
    wa, wb = (a[1] - top).exp_(), (b[1] - top).exp_()
    return (a[0] * wa + b[0] * wb) / (a[2] * wa + b[2] * wb)
