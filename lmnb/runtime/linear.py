"""The model's matrix products, through one of three paths chosen at load, in one weight format.

Owns how a weight [out, in] is multiplied by activations [n, in]:
- `native`: the batch-invariant kernel of `cpu_kernels` (csrc/linear.c), weights packed once
  into panels. Every output element is one FMA chain over the inputs whatever the number of
  rows, so a token's bits do not depend on its batch: the engine's exactness promise (a cache
  hit never changes an answer) rests on this.
- `onednn`: torch's internal `mkldnn::_linear_pointwise` with the weight packed once (fp32),
  checked against `F.linear` on a probe. Fast, but oneDNN picks its blocking by the number of
  rows, so one row's bits differ alone and in a batch (measured: down_proj at 37+ rows).
- `torch`: `F.linear` (MKL on the CPU, cuBLAS on a GPU); not batch-invariant either (MKL
  takes another kernel for one row).
And which values the weights hold (`Linears`, by weight format): `q4` the GGUF's Q4_1 blocks as
they ship (Q8_0 ones too: the default model's tied embedding), `int8` per-output-channel
symmetric int8 quantized on load, `bf16`/`fp32` the de-quantized (converted) weights. The
torch paths multiply the same values de-quantized into the activations' dtype.
Knows nothing of layers or attention.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn.functional as F

from lmnb.runtime.cpu_kernels import NativeKernels, PackedWeight
from lmnb.runtime.device import Q4_FORMATS, WEIGHT_FORMATS
from lmnb.runtime.loader import GGUFBlocks


def quantize_int8(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per output channel, symmetric: (q int8 [out, in] in -127..127, scale fp32 [out]) with
    w ~ scale * q, |w - scale * q| <= scale / 2; scale = max |w| / 127 (1 for a zero row)."""
    w = weight.detach().float()
    scale = w.abs().amax(dim=1) / 127
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))
    q = torch.round(w / scale[:, None]).clamp(-127, 127).to(torch.int8)
    return q, scale


def dequantize_int8(q: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """The values the kernel multiplies by: scale * q in fp32, rounded once (as csrc does)."""
    return scale[:, None] * q.float()


def _onednn_available(weight: torch.Tensor) -> bool:
    return (weight.device.type == "cpu" and weight.dtype == torch.float32
            and torch.backends.mkldnn.is_available()
            and hasattr(torch.ops.mkldnn, "_reorder_linear_weight")
            and hasattr(torch.ops.mkldnn, "_linear_pointwise"))


class Linear:
    """y = x @ weight.T (+ bias) in x's dtype. `native` given: the batch-invariant kernel;
    else oneDNN packing where it applies and `pack`, else F.linear. `Linear.packed` wraps
    panels packed already (any format of csrc/linear.h)."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None = None,
                 pack: bool = True, native: NativeKernels | None = None) -> None:
        self.bias = bias
        self.out_features, self.in_features = weight.shape
        self.native = native
        self.panels = native.pack(weight, bias, weight.dtype) if native is not None else None
        self.packed = (self._pack(weight) if native is None and pack
                       and _onednn_available(weight) else None)
        self.weight = weight if self.panels is None and self.packed is None else None

    @classmethod
    def from_panels(cls, panels: PackedWeight, native: NativeKernels) -> Linear:
        lin = cls.__new__(cls)
        lin.bias, lin.native, lin.panels, lin.packed, lin.weight = None, native, panels, None, None
        lin.out_features, lin.in_features = panels.out_features, panels.in_features
        return lin

    @property
    def path(self) -> str:
        return "native" if self.panels is not None else (
            "onednn" if self.packed is not None else "torch")

    @property
    def format(self) -> str:
        """The weight's format: the panels' (q4 (Q4_1), int8, bf16 pairs, ...) or a dtype."""
        if self.panels is not None:
            return self.panels.format_name
        w = self.weight if self.weight is not None else self.packed
        return str(w.dtype).removeprefix("torch.")  # type: ignore[union-attr]

    @property
    def nbytes(self) -> int:
        """Bytes of weight one product reads."""
        if self.panels is not None:
            return self.panels.nbytes
        w = self.weight if self.weight is not None else self.packed
        return w.numel() * w.element_size()  # type: ignore[union-attr]

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


class Linears:
    """Builds a model's Linear layers in one weight format; parts (q, k, v; gate, up) are
    stacked by rows into one product.

    weights: the dense weights by name (fp32 as loaded; the GGUF's de-quantized values for a
    converted model); blocks: the GGUF's quantized blocks by the same names (`q4`); fmt: one of
    WEIGHT_FORMATS, or None for weights in the activations' dtype. With `native`, the weights
    are packed in that format (`q4`: Q4_1 blocks as LMNB_W_Q4, Q8_0 ones as LMNB_W_Q8, a
    matrix of any other type in fp32; `q4q8`: the same, the Q4_1 blocks multiplying x quantized
    to int8 per 32 (LMNB_W_Q4_Q8); `bf16` takes the bf16 pairs only with bf16
    activations). Without it, the format's values are de-quantized into `dtype` for torch."""

    def __init__(self, weights: Mapping[str, torch.Tensor], dtype: torch.dtype,
                 device: torch.device, pack: bool = True, native: NativeKernels | None = None,
                 fmt: str | None = None, blocks: dict[str, GGUFBlocks] | None = None) -> None:
        if fmt is not None and fmt not in WEIGHT_FORMATS:
            raise ValueError(f"unknown weight format {fmt!r}; choose one of {WEIGHT_FORMATS}")
        if fmt in Q4_FORMATS and not any(b.kind == "Q4_1" for b in (blocks or {}).values()):
            raise ValueError(f"weights={fmt!r} needs the model's Q4_1 blocks (a GGUF that ships "
                             "them); none were given")
        self.weights, self.dtype, self.device = weights, dtype, device
        self.pack, self.native, self.fmt, self.blocks = pack, native, fmt, blocks or {}

    def __call__(self, names: list[str], bias: torch.Tensor | None = None) -> Linear:
        native = self.native if self.device.type == "cpu" else None
        if native is None:
            w = self._values(names).to(device=self.device, dtype=self.dtype)
            b = None if bias is None else bias.to(device=self.device, dtype=self.dtype)
            return Linear(w, b, self.pack)
        return Linear.from_panels(self._panels(names, bias, native), native)

    def _dense(self, names: list[str]) -> torch.Tensor:
        return torch.cat([self.weights[n] for n in names]).float()

    def _values(self, names: list[str]) -> torch.Tensor:
        """fp32 [out, in]: the values the format holds (torch paths)."""
        if self.fmt == "int8":
            return dequantize_int8(*quantize_int8(self._dense(names)))
        return self._dense(names)  # q4: the converted weights are the blocks' values

    def _panels(self, names: list[str], bias: torch.Tensor | None,
                native: NativeKernels) -> PackedWeight:
        bias = None if bias is None else bias.float()
        match self.fmt:
            case "q4" | "q4q8" if all(n in self.blocks for n in names) and len(
                    {self.blocks[n].kind for n in names}) == 1:
                b = GGUFBlocks.cat([self.blocks[n] for n in names])
                return native.pack_gguf(b.kind, b.raw, *b.shape, bias,
                                        pairs=self.dtype == torch.bfloat16,
                                        int8_activations=self.fmt == "q4q8")
            case "q4" | "q4q8" | "fp32":  # q4: a matrix the file holds in another type, exactly
                return native.pack(self._dense(names), bias, torch.float32)
            case "int8":
                return native.pack_int8(*quantize_int8(self._dense(names)), bias)
            case "bf16":
                return native.pack(self._dense(names), bias, torch.bfloat16,
                                   pairs=self.dtype == torch.bfloat16)
            case _:  # None: the activations' dtype
                return native.pack(self._dense(names).to(self.dtype), bias, self.dtype)
