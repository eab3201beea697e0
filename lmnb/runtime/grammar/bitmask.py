"""Packed token masks: one bit per vocabulary entry, 32 to an int32 word.

Owns the layout the matcher writes (bit `t % 32` of word `t // 32` is set when token `t` is
allowed; llguidance's layout) and the batched ops on it: allocate, unpack to bool, apply to
logits (on a GPU by `triton_ops`' kernel, imported only then). Unpacking runs in numpy
(single-threaded, ~20 µs a row) rather than in torch ops that would compete for the CPU's few
cores. Knows nothing of grammars or requests.
"""

from __future__ import annotations

import importlib
import importlib.util

import numpy as np
import torch


def num_words(vocab_size: int) -> int:
    return (vocab_size + 31) // 32


def allocate_bitmask(batch_size: int, vocab_size: int) -> torch.Tensor:
    """An all-allowed bitmask: [batch_size, num_words(vocab_size)] int32, every bit set; in
    host memory, where the matcher writes it."""
    return torch.full((batch_size, num_words(vocab_size)), -1, dtype=torch.int32, device="cpu")


def unpack_bitmask(bitmask: torch.Tensor, vocab_size: int, out: torch.Tensor | None = None
                   ) -> torch.Tensor:
    """bitmask: [..., num_words] int32 on the CPU -> [..., vocab_size] bool, True = allowed."""
    words = np.ascontiguousarray(bitmask.numpy())
    # little-endian int32 words viewed as bytes keep token order: byte k holds tokens 8k..8k+7
    bits = np.unpackbits(words.view(np.uint8), axis=-1, count=vocab_size, bitorder="little")
    allowed = bits.view(np.bool_)
    if out is None:
        return torch.from_numpy(allowed)
    if out.device.type == "cpu" and out.is_contiguous():
        # numpy's copy: torch's parallel copy_ stalls for ms when the cores are busy
        np.copyto(out.numpy(), allowed.reshape(out.shape))
    else:
        out.copy_(torch.from_numpy(allowed).view(out.shape))
    return out


def apply_bitmask_(logits: torch.Tensor, bitmask: torch.Tensor, kernels: str | None = None,
                   ) -> torch.Tensor:
    """Set disallowed logits to -inf in place. logits: [batch, vocab]; bitmask: [batch, words].

    Columns past the bitmask's 32 * words (padding of the logits' width) are disallowed.
    kernels: "torch" (the reference: unpacked on the host), "triton" (`triton_ops`, on the
    logits' device), None: triton for logits on a GPU where triton is installed.
    """
    if kernels is None:
        kernels = "triton" if logits.is_cuda and _has_triton() else "torch"
    if kernels == "triton":
        ops = importlib.import_module("lmnb.runtime.triton_ops")
        return ops.apply_bitmask_(logits, bitmask.to(logits.device, non_blocking=True))
    covered = min(logits.shape[-1], 32 * bitmask.shape[-1])
    allowed = unpack_bitmask(bitmask.cpu(), covered).to(logits.device, non_blocking=True)
    logits[..., :covered].masked_fill_(~allowed, float("-inf"))
    logits[..., covered:] = float("-inf")
    return logits


def _has_triton() -> bool:
    return importlib.util.find_spec("triton") is not None
