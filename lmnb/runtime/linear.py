"""The model's matrix products, through one of three paths chosen at load.

Owns how a weight [out, in] is multiplied by activations [n, in]:
- `native`: the batch-invariant kernel of `cpu_kernels` (csrc/linear.c), weights packed once
  into panels in the model's dtype (fp32 or bf16). Every output element is one FMA chain over
  the inputs whatever the number of rows, so a token's bits do not depend on its batch: the
  engine's exactness promise (a cache hit never changes an answer) rests on this.
- `onednn`: torch's internal `mkldnn::_linear_pointwise` with the weight packed once (fp32),
  checked against `F.linear` on a probe. Fast, but oneDNN picks its blocking by the number of
  rows, so one row's bits differ alone and in a batch (measured: down_proj at 37+ rows).
- `torch`: `F.linear` (MKL on the CPU, cuBLAS on a GPU); not batch-invariant either (MKL
  takes another kernel for one row).
Knows nothing of layers or attention.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from lmnb.runtime.cpu_kernels import NativeKernels


def _onednn_available(weight: torch.Tensor) -> bool:
    return (weight.device.type == "cpu" and weight.dtype == torch.float32
            and torch.backends.mkldnn.is_available()
            and hasattr(torch.ops.mkldnn, "_reorder_linear_weight")
            and hasattr(torch.ops.mkldnn, "_linear_pointwise"))


class Linear:
    """y = x @ weight.T (+ bias) in x's dtype. `native` given: the batch-invariant kernel;
    else oneDNN packing where it applies and `pack`, else F.linear."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None = None,
                 pack: bool = True, native: NativeKernels | None = None) -> None:
        self.bias = bias
        self.out_features, self.in_features = weight.shape
        self.native = native
        self.panels = native.pack(weight, bias, weight.dtype) if native is not None else None
        self.packed = (self._pack(weight) if native is None and pack
                       and _onednn_available(weight) else None)
        self.weight = weight if self.panels is None and self.packed is None else None

    @property
    def path(self) -> str:
        return "native" if self.panels is not None else (
            "onednn" if self.packed is not None else "torch")

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
        if self.panels is not None:
            return self.native.linear(x, self.panels).to(x.dtype)  # type: ignore[union-attr]
        if self.packed is not None:
            return torch.ops.mkldnn._linear_pointwise(x.contiguous(), self.packed, self.bias,
                                                      "none", [], "")
        return F.linear(x, self.weight, self.bias)  # type: ignore[arg-type]
