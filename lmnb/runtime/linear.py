"""The model's matrix products: weights pre-packed for oneDNN on the CPU, F.linear elsewhere.

Owns how a weight [out, in] is multiplied by activations [n, in]. On the CPU in fp32, torch's
default (MKL) path is slow for the few-row products of decoding (2-3x at 3-8 rows on the AMD
machine these were measured on), while oneDNN with the weight packed once at load runs them
at the memory-bound speed and is no slower for long prefills. The packed op is torch's
internal `mkldnn::_linear_pointwise` (the one its compiler uses for CPU linears); it is
checked against `F.linear` on a probe at load, and anything unavailable or off falls back to
`F.linear`. Knows nothing of layers or attention.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def _packing_available(weight: torch.Tensor) -> bool:
    return (weight.device.type == "cpu" and weight.dtype == torch.float32
            and torch.backends.mkldnn.is_available()
            and hasattr(torch.ops.mkldnn, "_reorder_linear_weight")
            and hasattr(torch.ops.mkldnn, "_linear_pointwise"))


class Linear:
    """y = x @ weight.T (+ bias). `weight` is kept only when the packed path is not used."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None = None,
                 pack: bool = True) -> None:
        self.bias = bias
        self.out_features, self.in_features = weight.shape
        self.packed = self._pack(weight) if pack and _packing_available(weight) else None
        self.weight = weight if self.packed is None else None

    def _pack(self, weight: torch.Tensor) -> torch.Tensor | None:
        try:
            packed = torch.ops.mkldnn._reorder_linear_weight(weight, None)
            probe = torch.randn(3, weight.shape[1], dtype=weight.dtype,
                                generator=torch.Generator().manual_seed(0))
            got = torch.ops.mkldnn._linear_pointwise(probe, packed, self.bias, "none", [], "")
        except RuntimeError:
            return None
        want = F.linear(probe, weight, self.bias)
        return packed if torch.allclose(got, want, rtol=1e-4, atol=1e-4) else None

    def __call__(self, x: torch.Tensor) -> torch.Tensor:  # x: [n, in] -> [n, out]
        if self.packed is not None:
            return torch.ops.mkldnn._linear_pointwise(x.contiguous(), self.packed, self.bias,
                                                      "none", [], "")
        return F.linear(x, self.weight, self.bias)  # type: ignore[arg-type]
