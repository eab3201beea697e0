"""Attention over the token-indexed KV pool in Triton: the GPU path of `attention.py`.

Owns two kernels with the torch path's contract (same plan, same inputs, same result up to
rounding): extend (each request's new tokens attend to its cached prefix, read from the pool
through its `req_to_token` row, and causally to each other, read from this step's k/v) and
decode (one query per request; its keys split into chunks that run in parallel and are merged
by the softmax's log-sum-exp, so a few long requests still fill the GPU). Grouped-query heads:
decode reads each kv head once for the whole group of query heads that share it.

Imported only where Triton runs (a GPU, or the interpreter in tests): `attention.py` imports
this module when a plan asks for it, so the runtime imports and runs where triton is missing.
Arithmetic: scores, softmax and sums in fp32; the products take the pool's dtype on a GPU
(bf16 on tensor cores) and fp32 under the interpreter (`TRITON_INTERPRET=1`), whose numpy
back end has no bf16 arithmetic. Knows nothing of the radix tree, requests or sampling.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

BLOCK_M = 32  # extend: queries a program takes
BLOCK_N = 32  # keys a loop iteration takes
MIN_SPLIT_KEYS = 256  # decode: a split shorter than this does not pay for its merge
MAX_SPLITS = 16


def interpreting() -> bool:
    """True under Triton's interpreter (read when a kernel is defined, as triton does)."""
    from triton import knobs

    return bool(knobs.runtime.interpret)


INTERPRET = interpreting()  # the kernels below were defined for the interpreter


def _compute(dtype: torch.dtype) -> dict:
    """The products' operand dtype and precision: the pool's dtype on a GPU (fp32 operands in
    full precision, not tf32), fp32 in the interpreter."""
    if INTERPRET or dtype == torch.float32:
        return {"COMPUTE": tl.float32, "PRECISION": "ieee"}
    return {"COMPUTE": tl.bfloat16 if dtype == torch.bfloat16 else tl.float16,
            "PRECISION": "tf32"}  # unused for 16-bit operands


@triton.jit
def _softmax_step(s, m_i, l_i, acc, v, PRECISION: tl.constexpr):
    """One block of the online softmax: scores s [M, N] (log2 units, -inf where masked),
    running max m_i and sum l_i [M], output acc [M, D]; v [N, D]."""
    m_new = tl.maximum(m_i, tl.max(s, 1))
    alpha = tl.exp2(m_i - m_new)
    p = tl.exp2(s - m_new[:, None])
    l_i = l_i * alpha + tl.sum(p, 1)
    acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=PRECISION)
    return m_new, l_i, acc


@triton.jit
def _pool_block_step(q, m_i, l_i, acc, start, end, Table, KPool, VPool, row, kv_head, offs_d,
                     d_mask, stride_table, stride_pt, stride_ph, stride_vpt, stride_vph,
                     qk_scale, BLOCK_N: tl.constexpr, COMPUTE: tl.constexpr,
                     PRECISION: tl.constexpr):
    """The queries q against the pool's keys start .. start+BLOCK_N-1 (below `end`) of the
    request's slot row `row`, one kv head: the running softmax after them."""
    offs_n = start + tl.arange(0, BLOCK_N)
    n_mask = offs_n < end
    slots = tl.load(Table + row * stride_table + offs_n, mask=n_mask, other=0)
    kv_mask = n_mask[:, None] & d_mask[None, :]
    k = tl.load(KPool + slots[:, None] * stride_pt + kv_head * stride_ph + offs_d[None, :],
                mask=kv_mask, other=0.0).to(COMPUTE)
    v = tl.load(VPool + slots[:, None] * stride_vpt + kv_head * stride_vph + offs_d[None, :],
                mask=kv_mask, other=0.0).to(COMPUTE)
    s = tl.dot(q, tl.trans(k), input_precision=PRECISION) * qk_scale
    s = tl.where(n_mask[None, :], s, float("-inf"))
    return _softmax_step(s, m_i, l_i, acc, v, PRECISION)


@triton.jit
def _extend_kernel(
    Q, K, V, KPool, VPool, Table, Out,
    Rows, PrefixLens, ExtendLens, QStarts,
    stride_qt, stride_qh, stride_kt, stride_kh, stride_vt, stride_vh,
    stride_pt, stride_ph, stride_vpt, stride_vph, stride_table, stride_ot, stride_oh,
    qk_scale,  # softmax scale * log2(e)
    GROUP: tl.constexpr, D: tl.constexpr, BLOCK_D: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, COMPUTE: tl.constexpr, PRECISION: tl.constexpr,
):
    item = tl.program_id(0)
    head = tl.program_id(1)
    block = tl.program_id(2)
    extend_len = tl.load(ExtendLens + item)
    if block * BLOCK_M >= extend_len:
        return
    kv_head = head // GROUP
    row = tl.load(Rows + item)
    prefix_len = tl.load(PrefixLens + item)
    q_start = tl.load(QStarts + item)
    offs_m = block * BLOCK_M + tl.arange(0, BLOCK_M)  # query offsets inside this extend
    offs_d = tl.arange(0, BLOCK_D)
    m_mask = offs_m < extend_len
    d_mask = offs_d < D
    q = tl.load(Q + (q_start + offs_m)[:, None] * stride_qt + head * stride_qh + offs_d[None, :],
                mask=m_mask[:, None] & d_mask[None, :], other=0.0).to(COMPUTE)
    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    # the cached prefix: every query sees all of it; keys through the request's slot row
    for start in range(0, prefix_len, BLOCK_N):
        m_i, l_i, acc = _pool_block_step(
            q, m_i, l_i, acc, start, prefix_len, Table, KPool, VPool, row, kv_head, offs_d, d_mask,
            stride_table, stride_pt, stride_ph, stride_vpt, stride_vph, qk_scale,
            BLOCK_N, COMPUTE, PRECISION)
    # this step's tokens, causally: query j sees new keys 0..j (no key past this block's end)
    end = tl.minimum(extend_len, (block + 1) * BLOCK_M)
    for start in range(0, end, BLOCK_N):
        offs_n = start + tl.arange(0, BLOCK_N)
        n_mask = offs_n < extend_len
        kv_mask = n_mask[:, None] & d_mask[None, :]
        t = q_start + offs_n
        k = tl.load(K + t[:, None] * stride_kt + kv_head * stride_kh + offs_d[None, :],
                    mask=kv_mask, other=0.0).to(COMPUTE)
        v = tl.load(V + t[:, None] * stride_vt + kv_head * stride_vh + offs_d[None, :],
                    mask=kv_mask, other=0.0).to(COMPUTE)
        s = tl.dot(q, tl.trans(k), input_precision=PRECISION) * qk_scale
        seen = n_mask[None, :] & (offs_n[None, :] <= offs_m[:, None])
        s = tl.where(seen, s, float("-inf"))
        m_i, l_i, acc = _softmax_step(s, m_i, l_i, acc, v, PRECISION)
    out = acc / l_i[:, None]
    tl.store(Out + (q_start + offs_m)[:, None] * stride_ot + head * stride_oh + offs_d[None, :],
             out.to(Out.dtype.element_ty), mask=m_mask[:, None] & d_mask[None, :])


@triton.jit
def _decode_split_kernel(
    Q, KPool, VPool, Table, Rows, Lens, PartOut, PartLse,
    stride_qb, stride_qh, stride_pt, stride_ph, stride_vpt, stride_vph, stride_table,
    stride_ob, stride_oh, stride_os, stride_lb, stride_lh,
    qk_scale,
    GROUP: tl.constexpr, D: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_H: tl.constexpr,
    BLOCK_N: tl.constexpr, NUM_SPLITS: tl.constexpr, COMPUTE: tl.constexpr, PRECISION: tl.constexpr,
):
    """One (request, kv head, split): the group's queries over one chunk of the keys ->
    unnormalised-free partial output [GROUP, D] and its log2-sum-exp [GROUP]."""
    b = tl.program_id(0)
    kv_head = tl.program_id(1)
    split = tl.program_id(2)
    row = tl.load(Rows + b)
    length = tl.load(Lens + b)
    # every split but the last holds a whole number of key blocks
    split_len = tl.cdiv(tl.cdiv(length, NUM_SPLITS), BLOCK_N) * BLOCK_N
    lo = split * split_len
    hi = tl.minimum(lo + split_len, length)
    offs_h = tl.arange(0, BLOCK_H)
    offs_d = tl.arange(0, BLOCK_D)
    h_mask = offs_h < GROUP
    d_mask = offs_d < D
    heads = kv_head * GROUP + offs_h
    q = tl.load(Q + b * stride_qb + heads[:, None] * stride_qh + offs_d[None, :],
                mask=h_mask[:, None] & d_mask[None, :], other=0.0).to(COMPUTE)
    m_i = tl.full([BLOCK_H], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_H], tl.float32)
    acc = tl.zeros([BLOCK_H, BLOCK_D], tl.float32)
    for start in range(lo, hi, BLOCK_N):
        m_i, l_i, acc = _pool_block_step(
            q, m_i, l_i, acc, start, hi, Table, KPool, VPool, row, kv_head, offs_d, d_mask,
            stride_table, stride_pt, stride_ph, stride_vpt, stride_vph, qk_scale,
            BLOCK_N, COMPUTE, PRECISION)
    has_keys = l_i > 0  # an empty split (a short request) weighs nothing in the merge
    out = tl.where(has_keys[:, None], acc / tl.where(has_keys, l_i, 1.0)[:, None], 0.0)
    lse = tl.where(has_keys, m_i + tl.log2(tl.where(has_keys, l_i, 1.0)), float("-inf"))
    o_ptr = PartOut + b * stride_ob + heads[:, None] * stride_oh + split * stride_os
    tl.store(o_ptr + offs_d[None, :], out, mask=h_mask[:, None] & d_mask[None, :])
    tl.store(PartLse + b * stride_lb + heads * stride_lh + split, lse, mask=h_mask)


@triton.jit
def _decode_merge_kernel(
    PartOut, PartLse, Out,
    stride_ob, stride_oh, stride_os, stride_lb, stride_lh, stride_b, stride_h,
    D: tl.constexpr, BLOCK_D: tl.constexpr, NUM_SPLITS: tl.constexpr,
    BLOCK_S: tl.constexpr,
):
    """One (request, head): the splits' partial outputs weighted by their share of the sum."""
    b = tl.program_id(0)
    head = tl.program_id(1)
    offs_s = tl.arange(0, BLOCK_S)
    offs_d = tl.arange(0, BLOCK_D)
    s_mask = offs_s < NUM_SPLITS
    lse = tl.load(PartLse + b * stride_lb + head * stride_lh + offs_s, mask=s_mask,
                  other=float("-inf"))
    weights = tl.exp2(lse - tl.max(lse, 0))  # split 0 always has keys: max is finite
    weights = weights / tl.sum(weights, 0)
    part = tl.load(PartOut + b * stride_ob + head * stride_oh + offs_s[:, None] * stride_os
                   + offs_d[None, :], mask=s_mask[:, None] & (offs_d < D)[None, :], other=0.0)
    out = tl.sum(part * weights[:, None], 0)
    tl.store(Out + b * stride_b + head * stride_h + offs_d, out.to(Out.dtype.element_ty),
             mask=offs_d < D)


LOG2E = 1.4426950408889634


def extend_attention(
    out: torch.Tensor,  # [num_extend_tokens, heads, dim], written
    q: torch.Tensor,  # [num_extend_tokens, heads, dim]
    k: torch.Tensor,  # [num_extend_tokens, kv_heads, dim]: this step's keys
    v: torch.Tensor,
    k_pool: torch.Tensor,  # [slots, kv_heads, dim]
    v_pool: torch.Tensor,
    table: torch.Tensor,  # [rows, max_context] int64
    meta: torch.Tensor,  # [4, items] int32: row, prefix_len, extend_len, first query
    max_extend_len: int,
    scale: float,
) -> None:
    heads, dim = q.shape[1], q.shape[2]
    group = heads // k_pool.shape[1]
    grid = (meta.shape[1], heads, triton.cdiv(max_extend_len, BLOCK_M))
    _extend_kernel[grid](
        q, k, v, k_pool, v_pool, table, out, meta[0], meta[1], meta[2], meta[3],
        q.stride(0), q.stride(1), k.stride(0), k.stride(1), v.stride(0), v.stride(1),
        k_pool.stride(0), k_pool.stride(1), v_pool.stride(0), v_pool.stride(1),
        table.stride(0), out.stride(0), out.stride(1), scale * LOG2E,
        GROUP=group, D=dim, BLOCK_D=triton.next_power_of_2(dim), BLOCK_M=BLOCK_M,
        BLOCK_N=BLOCK_N, **_compute(k_pool.dtype),
    )


def num_splits(max_len: int) -> int:
    """Key chunks per decoding request, from the step's longest context: one per
    MIN_SPLIT_KEYS of its keys, rounded up to a power of two, at most MAX_SPLITS.

    The power of two is the bucket: a longest context in (MIN_SPLIT_KEYS * 2^(k-1),
    MIN_SPLIT_KEYS * 2^k] gets 2^k splits, so each of its splits holds more than half of
    MIN_SPLIT_KEYS keys and at most MIN_SPLIT_KEYS (until the cap), and a short context never
    launches the long one's empty programs. NUM_SPLITS is a compile-time constant of the
    kernels and a CUDA graph replays fixed grids, so the buckets bound what gets compiled and
    captured: five values (1, 2, 4, 8, 16), not one per length."""
    return min(MAX_SPLITS, triton.next_power_of_2(max(1, triton.cdiv(max_len, MIN_SPLIT_KEYS))))


def decode_attention(
    q: torch.Tensor,  # [batch, heads, dim]
    k_pool: torch.Tensor,  # [slots, kv_heads, dim]
    v_pool: torch.Tensor,
    table: torch.Tensor,
    rows: torch.Tensor,  # [batch] int: table rows
    lens: torch.Tensor,  # [batch] int: keys each query attends to (>= 1)
    scale: float,
    splits: int,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """No host synchronisation and no size that depends on the lengths' values (only on
    `splits`), so a CUDA graph can capture it."""
    bsz, heads, dim = q.shape
    kv_heads = k_pool.shape[1]
    group = heads // kv_heads
    part_out = torch.empty((bsz, heads, splits, dim), dtype=torch.float32, device=q.device)
    part_lse = torch.empty((bsz, heads, splits), dtype=torch.float32, device=q.device)
    block_d = triton.next_power_of_2(dim)
    _decode_split_kernel[(bsz, kv_heads, splits)](
        q, k_pool, v_pool, table, rows, lens, part_out, part_lse,
        q.stride(0), q.stride(1), k_pool.stride(0), k_pool.stride(1), v_pool.stride(0),
        v_pool.stride(1), table.stride(0), part_out.stride(0), part_out.stride(1),
        part_out.stride(2), part_lse.stride(0), part_lse.stride(1), scale * LOG2E,
        GROUP=group, D=dim, BLOCK_D=block_d, BLOCK_H=max(16, triton.next_power_of_2(group)),
        BLOCK_N=BLOCK_N, NUM_SPLITS=splits, **_compute(k_pool.dtype),
    )
    out = torch.empty_like(q) if out is None else out
    _decode_merge_kernel[(bsz, heads)](
        part_out, part_lse, out, part_out.stride(0), part_out.stride(1), part_out.stride(2),
        part_lse.stride(0), part_lse.stride(1), out.stride(0), out.stride(1),
        D=dim, BLOCK_D=block_d, NUM_SPLITS=splits,
        BLOCK_S=triton.next_power_of_2(splits),
    )
    return out
