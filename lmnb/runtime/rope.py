"""Rotary position embeddings: inverse frequencies (with scaling types) and a cos/sin table.

Owns the rope variants found in Llama-family configs: default, linear, dynamic (NTK, applied at
the configured length), llama3 and yarn. Knows nothing of attention or the KV pool.
"""

from __future__ import annotations

import math

import torch

from lmnb.runtime.config import ModelConfig


def inv_freq_and_scale(cfg: ModelConfig) -> tuple[torch.Tensor, float]:
    """Inverse frequencies [head_dim // 2] (fp32) and the attention scaling of cos/sin."""
    dim = cfg.head_dim
    base = cfg.rope_theta
    inv = 1.0 / (base ** (torch.arange(0, dim, 2, dtype=torch.int64).float() / dim))
    scaling = cfg.rope_scaling
    kind = scaling.get("rope_type", scaling.get("type", "default"))
    match kind:
        case "default":
            return inv, 1.0
        case "linear":
            return inv / float(scaling["factor"]), 1.0
        case "dynamic":
            return inv, 1.0  # NTK scaling only changes frequencies beyond max_position
        case "llama3":
            return _llama3(inv, scaling), 1.0
        case "yarn":
            return _yarn(cfg, scaling)
        case _:
            raise ValueError(f"rope scaling type {kind!r} is not supported")


def _llama3(inv: torch.Tensor, s: dict) -> torch.Tensor:
    factor, low = float(s["factor"]), float(s["low_freq_factor"])
    high = float(s["high_freq_factor"])
    old_len = float(s["original_max_position_embeddings"])
    wavelen = 2 * math.pi / inv
    low_wavelen, high_wavelen = old_len / low, old_len / high
    scaled = torch.where(wavelen > low_wavelen, inv / factor, inv)
    smooth = (old_len / wavelen - low) / (high - low)
    smoothed = (1 - smooth) * scaled / factor + smooth * scaled
    is_medium = (wavelen >= high_wavelen) & (wavelen <= low_wavelen)
    return torch.where(is_medium, smoothed, scaled)


def _yarn(cfg: ModelConfig, s: dict) -> tuple[torch.Tensor, float]:
    dim, base, factor = cfg.head_dim, cfg.rope_theta, float(s["factor"])
    old_len = s.get("original_max_position_embeddings") or cfg.max_position
    beta_fast, beta_slow = float(s.get("beta_fast") or 32), float(s.get("beta_slow") or 1)
    attn_factor = s.get("attention_factor") or (0.1 * math.log(factor) + 1.0 if factor > 1 else 1.0)

    def correction_dim(num_rot: float) -> float:
        return (dim * math.log(old_len / (num_rot * 2 * math.pi))) / (2 * math.log(base))

    low = max(math.floor(correction_dim(beta_fast)), 0)
    high = min(math.ceil(correction_dim(beta_slow)), dim - 1)
    pos_freqs = base ** (torch.arange(0, dim, 2).float() / dim)
    extrapolation, interpolation = 1.0 / pos_freqs, 1.0 / (factor * pos_freqs)
    ramp = (torch.arange(dim // 2, dtype=torch.float32) - low) / max(high - low, 1e-3)
    extrapolation_factor = 1 - ramp.clamp(0, 1)
    inv = interpolation * (1 - extrapolation_factor) + extrapolation * extrapolation_factor
    return inv, float(attn_factor)


class RotaryTable:
    """cos/sin for every position up to max_position, in the model dtype (half a head wide:
    both halves of a head rotate by the same angles)."""

    def __init__(self, cfg: ModelConfig, dtype: torch.dtype, device: torch.device) -> None:
        inv, scale = inv_freq_and_scale(cfg)
        pos = torch.arange(cfg.max_position, dtype=torch.float32)
        freqs = torch.outer(pos, inv)  # [max_position, head_dim // 2]
        self.cos = (freqs.cos() * scale).to(dtype=dtype, device=device)
        self.sin = (freqs.sin() * scale).to(dtype=dtype, device=device)

    def at(self, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """cos, sin [n, 1, head_dim // 2] for positions [n]."""
        return self.cos[positions].unsqueeze(1), self.sin[positions].unsqueeze(1)

    @staticmethod
    def rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> None:
        """Rotate x [n, heads, head_dim] in place (the halves convention: (x1, x2) ->
        (x1 cos - x2 sin, x2 cos + x1 sin))."""
        half = x.shape[-1] // 2
        x1, x2 = x[..., :half], x[..., half:]
        rotated1 = x1 * cos - x2 * sin
        x2.mul_(cos).addcmul_(x1, sin)
        x1.copy_(rotated1)
