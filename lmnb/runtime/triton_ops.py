"""The torch runner's row-wise ops in Triton, for a GPU: RMSNorm fused with the residual add,
rotary embedding applied in place to q and k together, and a grammar's packed bitmask applied
to logits on the device.

Each op has a torch reference with the same contract, which stays the CPU path: RMSNorm in
`model.LlamaModel.rms_norm` (after `h = h + delta`), rotary in `rope.RotaryTable.rotate`, the
bitmask in `grammar.bitmask.apply_bitmask_` (which dispatches here for logits on a GPU).
Why fuse: on a GPU each torch op is a launch and a round trip through memory; the residual
add, the norm's fp32 upcast, its sum, the scale and the weight are six ops a layer twice, the
rotation five, and the torch bitmask unpacks on the host (a device sync a step).

Rounding follows the torch reference where it rounds to the model dtype (the residual sum, the
normalised row before the weight, the product): the values the step carries are the same
kind. Inside, everything is fp32 (the norm's sum in one tree, not torch's order; the rotation
in one rounding, not three), so results agree to the dtype's rounding, not bit for bit.
Under Triton's interpreter (`TRITON_INTERPRET=1`, how tests run on the CPU) fp32 -> bf16
casts truncate instead of rounding to nearest, so bf16 results there are within one bf16 ulp
of a GPU's. Knows nothing of the model, requests or grammars.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

BITMASK_BLOCK = 1024  # logits a program of the bitmask kernel covers


@triton.jit
def _rms_norm_kernel(
    X, Residual, W, Out, stride_x, stride_r, stride_o, n_cols, eps,
    HAS_RESIDUAL: tl.constexpr, BLOCK: tl.constexpr,
):
    """One row: with a residual, residual += x (rounded to its dtype, written back) and the
    sum is normalised; without, x is. out = w * (row * rsqrt(mean(row^2) + eps))."""
    row = tl.program_id(0).to(tl.int64)
    offs = tl.arange(0, BLOCK)
    mask = offs < n_cols
    x = tl.load(X + row * stride_x + offs, mask=mask, other=0.0).to(tl.float32)
    if HAS_RESIDUAL:
        r_ptr = Residual + row * stride_r + offs
        summed = (tl.load(r_ptr, mask=mask, other=0.0).to(tl.float32) + x)
        summed = summed.to(Residual.dtype.element_ty)
        tl.store(r_ptr, summed, mask=mask)
        x = summed.to(tl.float32)
    inv = tl.rsqrt(tl.sum(x * x, 0) / n_cols + eps)
    normed = (x * inv).to(Out.dtype.element_ty).to(tl.float32)
    w = tl.load(W + offs, mask=mask, other=0.0).to(tl.float32)
    tl.store(Out + row * stride_o + offs, (w * normed).to(Out.dtype.element_ty), mask=mask)


def _check_rows(*tensors: torch.Tensor) -> None:
    for t in tensors:
        if t.dim() != 2 or t.stride(1) != 1:
            raise ValueError(f"expected rows [n, cols] with contiguous columns, got "
                             f"{tuple(t.shape)} strides {t.stride()}")


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """`LlamaModel.rms_norm(x, weight)`: x [n, hidden] -> [n, hidden] in x's dtype."""
    _check_rows(x)
    out = torch.empty_like(x)
    _launch_norm(x, None, weight, out, eps)
    return out


def add_rms_norm_(residual: torch.Tensor, x: torch.Tensor, weight: torch.Tensor, eps: float,
                  ) -> torch.Tensor:
    """residual += x in place (the layer's residual stream), then the norm of the sum, as
    `h = h + x; LlamaModel.rms_norm(h, weight)`. residual, x: [n, hidden]."""
    _check_rows(residual, x)
    if residual.shape != x.shape:
        raise ValueError(f"residual {tuple(residual.shape)} and x {tuple(x.shape)} differ")
    out = torch.empty_like(residual)
    _launch_norm(x, residual, weight, out, eps)
    return out


def _launch_norm(x: torch.Tensor, residual: torch.Tensor | None, weight: torch.Tensor,
                 out: torch.Tensor, eps: float) -> None:
    n, cols = x.shape
    if n == 0:
        return
    _rms_norm_kernel[(n,)](
        x, x if residual is None else residual, weight, out, x.stride(0),
        0 if residual is None else residual.stride(0), out.stride(0), cols, eps,
        HAS_RESIDUAL=residual is not None, BLOCK=triton.next_power_of_2(cols),
    )


@triton.jit
def _rotary_kernel(
    QK, Cos, Sin, stride_t, stride_h, stride_c, stride_s, heads,
    HALF: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_HALF: tl.constexpr,
):
    """One token, every head: (x1, x2) -> (x1 cos - x2 sin, x2 cos + x1 sin), halves of a
    head rotating by the token's angles."""
    t = tl.program_id(0).to(tl.int64)
    offs_h = tl.arange(0, BLOCK_H)
    offs_d = tl.arange(0, BLOCK_HALF)
    d_mask = offs_d < HALF
    mask = (offs_h < heads)[:, None] & d_mask[None, :]
    cos = tl.load(Cos + t * stride_c + offs_d, mask=d_mask, other=0.0).to(tl.float32)
    sin = tl.load(Sin + t * stride_s + offs_d, mask=d_mask, other=0.0).to(tl.float32)
    first = QK + t * stride_t + offs_h[:, None] * stride_h + offs_d[None, :]
    x1 = tl.load(first, mask=mask, other=0.0).to(tl.float32)
    x2 = tl.load(first + HALF, mask=mask, other=0.0).to(tl.float32)
    dtype = QK.dtype.element_ty
    tl.store(first, (x1 * cos[None, :] - x2 * sin[None, :]).to(dtype), mask=mask)
    tl.store(first + HALF, (x2 * cos[None, :] + x1 * sin[None, :]).to(dtype), mask=mask)


def rotary_(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> None:
    """`RotaryTable.rotate(x, cos, sin)`: x [n, heads, head_dim] rotated in place (any token
    and head strides, e.g. q and k as a view into the fused qkv output); cos, sin
    [n, 1, head_dim // 2] or [n, head_dim // 2] (what `RotaryTable.at` gives)."""
    n, heads, dim = x.shape
    half = dim // 2
    cos, sin = cos.reshape(n, half), sin.reshape(n, half)
    if x.stride(2) != 1 or cos.stride(1) != 1 or sin.stride(1) != 1:
        raise ValueError("rotary_ needs contiguous head dims")
    if n == 0:
        return
    _rotary_kernel[(n,)](
        x, cos, sin, x.stride(0), x.stride(1), cos.stride(0), sin.stride(0), heads,
        HALF=half, BLOCK_H=triton.next_power_of_2(heads),
        BLOCK_HALF=triton.next_power_of_2(half),
    )


@triton.jit
def _bitmask_kernel(Logits, Bitmask, stride_l, stride_b, vocab, covered,
                    BLOCK: tl.constexpr):
    """One block of one row: -inf where the token's bit is clear (bit t % 32 of word t // 32)
    or past the bitmask's `covered` columns; allowed logits are not touched."""
    row = tl.program_id(0).to(tl.int64)
    offs = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    words = tl.load(Bitmask + row * stride_b + offs // 32, mask=offs < covered, other=0)
    allowed = ((words >> (offs % 32)) & 1) != 0
    tl.store(Logits + row * stride_l + offs, float("-inf"), mask=(offs < vocab) & ~allowed)


def apply_bitmask_(logits: torch.Tensor, bitmask: torch.Tensor) -> torch.Tensor:
    """`grammar.bitmask.apply_bitmask_` on the logits' device: logits [batch, vocab] (masked
    in place), bitmask [batch, words] int32 on the same device. Columns past 32 * words are
    disallowed."""
    _check_rows(logits, bitmask)
    if bitmask.dtype != torch.int32 or bitmask.shape[0] != logits.shape[0]:
        raise ValueError("bitmask must be int32 [batch, words] for logits [batch, vocab]")
    batch, vocab = logits.shape
    if batch == 0:
        return logits
    covered = min(vocab, 32 * bitmask.shape[1])
    grid = (batch, triton.cdiv(vocab, BITMASK_BLOCK))
    _bitmask_kernel[grid](logits, bitmask, logits.stride(0), bitmask.stride(0), vocab, covered,
                          BLOCK=BITMASK_BLOCK)
    return logits
