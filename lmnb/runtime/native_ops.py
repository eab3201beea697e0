"""The torch-facing calls of the native CPU kernels (`csrc/linear.c`, `attention.c`): packing
weights in the formats of `csrc/linear.h`, the matrix products and attention over the KV pool.

Owns the ctypes signatures of the compiled libraries and the layout of a packed weight; knows
nothing of how the libraries are built or checked (`cpu_kernels`), nor of the model.
Every product is batch-invariant: a row's bits never depend on the other rows.
"""

from __future__ import annotations

import ctypes

import torch

PANEL = 16  # output columns per packed weight panel (csrc/linear.c)
i64, ptr, cint = ctypes.c_int64, ctypes.c_void_p, ctypes.c_int


# the weight formats of csrc/linear.h (LMNB_W_*)
W_F32, W_BF16, W_BF16_PAIRS, W_Q4, W_INT8, W_Q8, W_Q4_PAIRS, W_Q8_PAIRS, W_Q4_Q8 = range(9)
FORMAT_NAMES = {W_F32: "fp32", W_BF16: "bf16", W_BF16_PAIRS: "bf16 pairs", W_Q4: "q4 (Q4_1)",
                W_INT8: "int8", W_Q8: "q8 (Q8_0)", W_Q4_PAIRS: "q4 (Q4_1) pairs",
                W_Q8_PAIRS: "q8 (Q8_0) pairs", W_Q4_Q8: "q4 (Q4_1) x int8 activations"}
PAIR_FORMATS = (W_BF16_PAIRS, W_Q4_PAIRS, W_Q8_PAIRS)  # x rounded to bf16, bf16 dot products
QUANT_FORMATS = (W_Q4, W_INT8, W_Q8, W_Q4_PAIRS, W_Q8_PAIRS, W_Q4_Q8)  # lmnb_linear_w's
GGUF_BLOCKS = {"Q4_1": (W_Q4, 20), "Q8_0": (W_Q8, 34)}  # GGUF type -> (format, bytes a block)
GROUP = 32  # k per block of the GGUF's Q4_1 and Q8_0


class LmnbWeight(ctypes.Structure):
    """csrc/linear.h's descriptor: what C callers pass to `lmnb_linear_w`."""

    _fields_ = [("format", ctypes.c_int32), ("n", ctypes.c_int64), ("k", ctypes.c_int64),
                ("data", ctypes.c_void_p), ("scales", ctypes.c_void_p),
                ("bias", ctypes.c_void_p)]


class PackedWeight:
    """A weight [out, in] in the kernel's panel layout, in one format of csrc/linear.h (its
    integers or floats in `data`, its scales in `scales`); keeps the bias."""

    def __init__(self, data: torch.Tensor, out_features: int, in_features: int,
                 bias: torch.Tensor | None, pairs: bool = False, fmt: int | None = None,
                 scales: torch.Tensor | None = None) -> None:
        self.data = data  # dense: [panels * in * 16] float32 or bfloat16
        self.scales = scales
        self.out_features, self.in_features = out_features, in_features
        self.bias = None if bias is None else bias.float().contiguous()
        # bf16 pairs for the CPU's bf16 dot product (csrc/linear.c, lmnb_linear_pairs)
        self.format = fmt if fmt is not None else (
            W_BF16_PAIRS if pairs else W_BF16 if data.dtype == torch.bfloat16 else W_F32)
        self._descriptor: LmnbWeight | None = None

    @property
    def pairs(self) -> bool:
        return self.format in PAIR_FORMATS

    @property
    def format_name(self) -> str:
        return FORMAT_NAMES[self.format]

    @property
    def nbytes(self) -> int:
        """Bytes a product reads from the weight (padding panels included)."""
        scales = 0 if self.scales is None else self.scales.nbytes
        return self.data.nbytes + scales

    def descriptor(self) -> LmnbWeight:
        """The LmnbWeight for C callers; valid while this object lives."""
        if self._descriptor is None:
            self._descriptor = LmnbWeight(
                self.format, self.out_features, self.in_features, self.data.data_ptr(),
                None if self.scales is None else self.scales.data_ptr(),
                None if self.bias is None else self.bias.data_ptr())
        return self._descriptor


class NativeKernels:
    def __init__(self, libs: dict[str, ctypes.CDLL]) -> None:
        lin = libs["linear"]
        self._pack = lin.lmnb_pack_weight
        self._pack.argtypes = [ptr, i64, i64, ptr, cint]
        self._linear = lin.lmnb_linear
        self._linear.argtypes = [ptr, i64, i64, ptr, cint, i64, ptr, ptr, cint]
        self._reference = lin.lmnb_linear_reference
        self._reference.argtypes = [ptr, i64, i64, ptr, cint, i64, ptr, ptr]
        self._pack_pairs = lin.lmnb_pack_pairs
        self._pack_pairs.argtypes = [ptr, i64, i64, ptr]
        self._linear_pairs = lin.lmnb_linear_pairs
        self._linear_pairs.argtypes = [ptr, i64, i64, ptr, i64, ptr, ptr, cint]
        self._linear_pairs.restype = cint
        # bf16 weights multiply bf16 activations with the CPU's bf16 dot product where it has
        # one (avx512_bf16); elsewhere they are widened to fp32 chains
        self.bf16_pairs = bool(lin.lmnb_has_pairs())
        # Q4 weights times int8 activations on vector integer dot products (vpdpbusd with
        # avx512_vnni and avx512_vbmi, vpmaddwd with AVX2); elsewhere the same bits from
        # scalar code
        self.q8_dot = bool(lin.lmnb_has_q8_dot())
        weight_p = ctypes.POINTER(LmnbWeight)
        self._linear_w = lin.lmnb_linear_w
        self._linear_w.argtypes = [weight_p, ptr, i64, ptr, cint]
        self._linear_w.restype = cint
        self._linear_w_round = lin.lmnb_linear_w_round  # what the forward calls (bf16 models)
        self._linear_w_round.argtypes = [weight_p, ptr, i64, ptr, cint, cint]
        self._linear_w_round.restype = cint
        self._reference_w = lin.lmnb_linear_w_reference
        self._reference_w.argtypes = [weight_p, ptr, i64, ptr]
        self._reference_w.restype = cint
        self._dequantize = lin.lmnb_dequantize
        self._dequantize.argtypes = [weight_p, ptr]
        self._dequantize.restype = cint
        self._pack_gguf = {W_Q4: lin.lmnb_pack_q4_1, W_Q8: lin.lmnb_pack_q8_0}
        for fn in self._pack_gguf.values():
            fn.argtypes = [ptr, i64, i64, ptr, ptr]
        self._pack_int8 = lin.lmnb_pack_int8
        self._pack_int8.argtypes = [ptr, ptr, i64, i64, ptr, ptr]
        att = libs["attention"]
        self._attention = att.lmnb_attention
        self._attention.argtypes = [ptr, ptr, ptr, cint, ptr, i64, ptr, ptr, i64, i64, i64, i64,
                                    ctypes.c_float, ptr, cint]
        self._attention.restype = cint
        # csrc/forward.c, called by native_forward.ForwardModel
        fwd = libs["forward"]
        self.c_forward = fwd.lmnb_forward
        self.c_forward.argtypes = [ptr, ptr, ptr, cint]
        self.c_forward.restype = cint
        self.c_forward_work = fwd.lmnb_forward_work
        self.c_forward_work.argtypes = [ptr, i64]
        self.c_forward_work.restype = i64

    # ---- linear ----------------------------------------------------------------------------

    def pack(self, weight: torch.Tensor, bias: torch.Tensor | None,
             dtype: torch.dtype, pairs: bool = True) -> PackedWeight:
        """weight [out, in] -> panels in `dtype` (float32 or bfloat16). pairs: bf16 weights may
        take the CPU's bf16 dot product (which rounds x to bf16: for bf16 activations)."""
        out_f, in_f = weight.shape
        w32 = weight.detach().float().contiguous()
        panels = -(-out_f // PANEL)
        data = torch.empty(panels * in_f * PANEL, dtype=dtype)
        if dtype == torch.bfloat16 and pairs and self.bf16_pairs and in_f % 2 == 0:
            self._pack_pairs(w32.data_ptr(), out_f, in_f, data.data_ptr())
            return PackedWeight(data, out_f, in_f, bias, pairs=True)
        self._pack(w32.data_ptr(), out_f, in_f, data.data_ptr(), data.element_size())
        return PackedWeight(data, out_f, in_f, bias)

    def pack_gguf(self, kind: str, raw: torch.Tensor, out_features: int, in_features: int,
                  bias: torch.Tensor | None = None, pairs: bool = False,
                  int8_activations: bool = False) -> PackedWeight:
        """A GGUF tensor's blocks as the file stores them (`kind` Q4_1 or Q8_0; raw: uint8
        [out, in / 32 * block bytes]) -> LMNB_W_Q4 or LMNB_W_Q8 panels, the file's values.
        pairs: multiply x rounded to bf16 on the CPU's bf16 dot product where it has one
        (LMNB_W_Q4_PAIRS, LMNB_W_Q8_PAIRS: for bf16 activations). int8_activations: Q4_1
        blocks multiply x quantized to int8 per 32 (LMNB_W_Q4_Q8, on every CPU; Q8_0 blocks
        take `pairs` as above)."""
        if kind not in GGUF_BLOCKS:
            raise ValueError(f"no native format for GGUF {kind} blocks; have {sorted(GGUF_BLOCKS)}")
        fmt, block = GGUF_BLOCKS[kind]
        if in_features % GROUP or raw.shape != (out_features, in_features // GROUP * block):
            raise ValueError(f"{kind} blocks of shape {tuple(raw.shape)} do not hold a "
                             f"[{out_features}, {in_features}] weight")
        raw = raw.contiguous()
        panels = -(-out_features // PANEL)
        if fmt == W_Q4:
            data = torch.empty(panels * in_features * PANEL // 2, dtype=torch.uint8)
            scales = torch.empty(panels * in_features // GROUP * 2 * PANEL, dtype=torch.int16)
        else:
            data = torch.empty(panels * in_features * PANEL, dtype=torch.int8)
            scales = torch.empty(panels * in_features // GROUP * PANEL, dtype=torch.float32)
        self._pack_gguf[fmt](raw.data_ptr(), out_features, in_features, data.data_ptr(),
                             scales.data_ptr())
        if int8_activations and fmt == W_Q4:
            fmt = W_Q4_Q8
        elif pairs and self.bf16_pairs:
            fmt = W_Q4_PAIRS if fmt == W_Q4 else W_Q8_PAIRS
        return PackedWeight(data, out_features, in_features, bias, fmt=fmt, scales=scales)

    def pack_int8(self, q: torch.Tensor, scale: torch.Tensor,
                  bias: torch.Tensor | None = None) -> PackedWeight:
        """q [out, in] int8 and scale [out] fp32 (w = scale * q) -> LMNB_W_INT8 panels."""
        out_f, in_f = q.shape
        q, scale = q.to(torch.int8).contiguous(), scale.float().contiguous()
        panels = -(-out_f // PANEL)
        data = torch.empty(panels * in_f * PANEL, dtype=torch.int8)
        scales = torch.empty(panels * PANEL, dtype=torch.float32)
        self._pack_int8(q.data_ptr(), scale.data_ptr(), out_f, in_f, data.data_ptr(),
                        scales.data_ptr())
        return PackedWeight(data, out_f, in_f, bias, fmt=W_INT8, scales=scales)

    def dequantize(self, w: PackedWeight) -> torch.Tensor:
        """The values w multiplies by, [out, in] fp32, read back element by element (C)."""
        out = torch.empty(w.out_features, w.in_features, dtype=torch.float32)
        if self._dequantize(ctypes.byref(w.descriptor()), out.data_ptr()):
            raise ValueError(f"cannot read back a {w.format_name} weight")
        return out

    def linear(self, x: torch.Tensor, w: PackedWeight, reference: bool = False) -> torch.Tensor:
        """x [n, in] (any float dtype) -> y [n, out] float32. With bf16 pairs, x is rounded
        to bf16 (exact for a bf16 model's activations)."""
        y = torch.empty(x.shape[0], w.out_features, dtype=torch.float32)
        if w.format in QUANT_FORMATS:
            if reference and w.pairs:
                raise ValueError("the pair formats have no element-by-element reference")
            x = x.float().contiguous()
            call = (self._reference_w(ctypes.byref(w.descriptor()), x.data_ptr(), x.shape[0],
                                      y.data_ptr()) if reference else
                    self._linear_w(ctypes.byref(w.descriptor()), x.data_ptr(), x.shape[0],
                                   y.data_ptr(), torch.get_num_threads()))
            if call:
                raise ValueError(f"the kernels cannot multiply by a {w.format_name} weight "
                                 f"[{w.out_features}, {w.in_features}]")
            return y
        bias = None if w.bias is None else w.bias.data_ptr()
        if w.pairs:
            if reference:
                raise ValueError("the bf16 pair path has no element-by-element reference")
            x = x.to(torch.bfloat16).contiguous()
            self._linear_pairs(x.data_ptr(), x.shape[0], w.in_features, w.data.data_ptr(),
                               w.out_features, bias, y.data_ptr(), torch.get_num_threads())
            return y
        x = x.float().contiguous()
        args = (x.data_ptr(), x.shape[0], w.in_features, w.data.data_ptr(),
                int(w.data.dtype == torch.bfloat16), w.out_features, bias, y.data_ptr())
        if reference:
            self._reference(*args)
        else:
            self._linear(*args, torch.get_num_threads())
        return y

    # ---- attention -------------------------------------------------------------------------

    def attention(self, q: torch.Tensor, k_pool: torch.Tensor, v_pool: torch.Tensor,
                  table: torch.Tensor, rows: torch.Tensor, lens: torch.Tensor,
                  scale: float) -> torch.Tensor:
        """out [n, heads, dim] fp32 for queries q [n, heads, dim]: query t attends to the
        slots table[rows[t], :lens[t]]."""
        num_q, heads, dim = q.shape
        q = q.float().contiguous()
        for t in (k_pool, v_pool, table, rows, lens):
            if not t.is_contiguous():
                raise ValueError("attention needs contiguous tensors")
        if k_pool.dtype not in (torch.float32, torch.bfloat16) or v_pool.dtype != k_pool.dtype:
            raise ValueError(f"attention reads fp32 or bf16 pools, not {k_pool.dtype}")
        out = torch.empty_like(q)
        failed = self._attention(
            q.data_ptr(), k_pool.data_ptr(), v_pool.data_ptr(),
            int(k_pool.dtype == torch.bfloat16), table.data_ptr(), table.stride(0),
            rows.data_ptr(), lens.data_ptr(), num_q, heads, k_pool.shape[1], dim, scale,
            out.data_ptr(), torch.get_num_threads())
        if failed:
            raise MemoryError("attention: out of memory for its tile buffers")
        return out
