"""Attention over the token-indexed KV pool (pure torch; the reference every kernel must match).

Owns the two attention shapes the engine runs: extend (new tokens of each request attend to its
cached prefix and causally to each other) and decode (one query per request). Knows nothing of
the radix tree or sampling; reads k/v through `req_to_token` rows.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from lmnb.runtime.batch import ForwardBatch


def extend_attention(
    q: torch.Tensor,  # [num_tokens, heads, dim]
    k_pool: torch.Tensor,  # [slots, kv_heads, dim]
    v_pool: torch.Tensor,
    table: torch.Tensor,  # [rows, max_context] slot per position
    batch: ForwardBatch,
    scale: float,
) -> torch.Tensor:
    out = torch.empty_like(q)
    start = 0
    rows = batch.rows.tolist()
    for row, seq_len, ext_len in zip(rows, batch.seq_lens, batch.extend_lens):
        slots = table[row, :seq_len]
        qi = q[start : start + ext_len].transpose(0, 1).unsqueeze(0)  # [1, heads, n, dim]
        ki = k_pool[slots].transpose(0, 1).unsqueeze(0)  # [1, kv_heads, L, dim]
        vi = v_pool[slots].transpose(0, 1).unsqueeze(0)
        if seq_len == ext_len:
            oi = F.scaled_dot_product_attention(qi, ki, vi, is_causal=True, scale=scale,
                                                enable_gqa=True)
        else:
            # query j sits at position seq_len - ext_len + j and sees keys up to it
            mask = torch.ones(ext_len, seq_len, dtype=torch.bool, device=q.device)
            mask = mask.tril(diagonal=seq_len - ext_len)
            oi = F.scaled_dot_product_attention(qi, ki, vi, attn_mask=mask, scale=scale,
                                                enable_gqa=True)
        out[start : start + ext_len] = oi[0].transpose(0, 1)
        start += ext_len
    return out


def decode_attention(
    q: torch.Tensor,  # [batch, heads, dim]
    k_pool: torch.Tensor,  # [slots, kv_heads, dim]
    v_pool: torch.Tensor,
    table: torch.Tensor,
    batch: ForwardBatch,
    scale: float,
) -> torch.Tensor:
    bsz, heads, dim = q.shape
    kv_heads = k_pool.shape[1]
    group = heads // kv_heads
    idx = table[batch.rows, : batch.max_seq_len]  # [batch, L]; padding reads slot 0
    k = k_pool[idx].permute(0, 2, 3, 1)  # [batch, kv_heads, dim, L]
    v = v_pool[idx].transpose(1, 2)  # [batch, kv_heads, L, dim]
    qg = q.view(bsz, kv_heads, group, dim)
    scores = torch.matmul(qg, k) * scale  # [batch, kv_heads, group, L]
    lens = torch.tensor(batch.seq_lens, device=q.device)
    pad = torch.arange(batch.max_seq_len, device=q.device)[None, :] >= lens[:, None]
    scores.masked_fill_(pad[:, None, None, :], float("-inf"))
    probs = torch.softmax(scores.float(), dim=-1).to(q.dtype)
    return torch.matmul(probs, v).reshape(bsz, heads, dim)
