"""Attention over the token-indexed KV pool (pure torch; the reference every kernel must match).

Owns the two attention shapes the engine runs: extend (new tokens of each request attend to its
cached prefix and causally to each other) and decode (one query per request, batched over a
padded gather). A step's single-token items (a decode step, or decoding requests riding along
an extend step) take the batched decode path. Knows nothing of the radix tree or sampling;
reads k/v through `req_to_token` rows.

K/V are gathered with `index_select` on flattened slot lists (several times faster on the CPU
than advanced indexing) and attended with `scaled_dot_product_attention`, which handles the
grouped kv heads without copying them out per query head.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from lmnb.runtime.batch import ForwardBatch


@dataclass
class AttentionPlan:
    """Built once per forward, used by every layer. The batch's tokens are the extend items'
    tokens (attended one request at a time) followed by `num_decode` single tokens."""

    extend: list[tuple[int, int, int]]  # (row, seq_len, extend_len) per extend item
    num_extend_tokens: int
    decode_slots: torch.Tensor | None  # [num_decode * max_len]; padding reads slot 0
    decode_mask: torch.Tensor | None  # [num_decode, 1, 1, max_len] bool: real positions

    @classmethod
    def build(cls, batch: ForwardBatch, table: torch.Tensor) -> AttentionPlan:
        items = list(zip(batch.rows, batch.seq_lens, batch.extend_lens))
        split = len(items)
        while split > 0 and items[split - 1][2] == 1 and items[split - 1][1] > 1:
            split -= 1  # the single-token tail (decoding requests) is batched
        extend, tail = items[:split], items[split:]
        if not tail:
            return cls(extend, sum(e for _, _, e in extend), None, None)
        rows = torch.tensor([r for r, _, _ in tail], device=table.device)
        lens = torch.tensor([s for _, s, _ in tail], device=table.device)
        max_len = int(lens.max())
        slots = table[rows, :max_len].reshape(-1)
        mask = torch.arange(max_len, device=table.device)[None, :] < lens[:, None]
        return cls(extend, sum(e for _, _, e in extend), slots, mask[:, None, None, :])


def attention(
    q: torch.Tensor,  # [num_tokens, heads, dim]
    k: torch.Tensor,  # [num_tokens, kv_heads, dim]: this step's keys, already in the pool
    v: torch.Tensor,
    k_pool: torch.Tensor,  # [slots, kv_heads, dim]
    v_pool: torch.Tensor,
    table: torch.Tensor,  # [rows, max_context] slot per position
    plan: AttentionPlan,
    scale: float,
) -> torch.Tensor:
    out = torch.empty_like(q)
    split = plan.num_extend_tokens
    if plan.extend:
        out[:split] = extend_attention(q[:split], k, v, k_pool, v_pool, table, plan.extend, scale)
    if plan.decode_slots is not None:
        out[split:] = decode_attention(q[split:], k_pool, v_pool, plan.decode_slots,
                                       plan.decode_mask, scale)  # type: ignore[arg-type]
    return out


def extend_attention(
    q: torch.Tensor,  # [num_extend_tokens, heads, dim]
    k: torch.Tensor,
    v: torch.Tensor,
    k_pool: torch.Tensor,
    v_pool: torch.Tensor,
    table: torch.Tensor,
    items: list[tuple[int, int, int]],
    scale: float,
) -> torch.Tensor:
    out = torch.empty_like(q)
    start = 0
    for row, seq_len, ext_len in items:
        end = start + ext_len
        qi = q[start:end].transpose(0, 1)  # [heads, n, dim]
        if seq_len == ext_len:  # nothing cached before: attend to this step's own k/v
            ki, vi = k[start:end].transpose(0, 1), v[start:end].transpose(0, 1)
            oi = F.scaled_dot_product_attention(qi, ki, vi, is_causal=True, scale=scale,
                                                enable_gqa=True)
        else:
            slots = table[row, :seq_len]
            ki = k_pool.index_select(0, slots).transpose(0, 1)  # [kv_heads, seq_len, dim]
            vi = v_pool.index_select(0, slots).transpose(0, 1)
            # query j sits at position seq_len - ext_len + j and sees keys up to it
            mask = torch.ones(ext_len, seq_len, dtype=torch.bool, device=q.device)
            mask = mask.tril(diagonal=seq_len - ext_len)
            oi = F.scaled_dot_product_attention(qi, ki, vi, attn_mask=mask, scale=scale,
                                                enable_gqa=True)
        out[start:end] = oi.transpose(0, 1)
        start = end
    return out


def decode_attention(
    q: torch.Tensor,  # [batch, heads, dim]
    k_pool: torch.Tensor,  # [slots, kv_heads, dim]
    v_pool: torch.Tensor,
    slots: torch.Tensor,  # [batch * max_len]
    mask: torch.Tensor,  # [batch, 1, 1, max_len]
    scale: float,
) -> torch.Tensor:
    bsz, heads, dim = q.shape
    kv_heads = k_pool.shape[1]
    k = k_pool.index_select(0, slots).view(bsz, -1, kv_heads, dim).transpose(1, 2)
    v = v_pool.index_select(0, slots).view(bsz, -1, kv_heads, dim).transpose(1, 2)
    out = F.scaled_dot_product_attention(q.unsqueeze(2), k, v, attn_mask=mask, scale=scale,
                                         enable_gqa=True)
    return out.view(bsz, heads, dim)  # [batch, heads, 1, dim] -> [batch, heads, dim]
