"""Native CPU kernels: C sources in `csrc/`, compiled on first use and loaded with ctypes.

Owns building the kernels (the system's C compiler, `-O3 -march=native -fopenmp
-ffp-contract=off`, into `$LMNB_CACHE/kernels/`, keyed by the source and the CPU; a build
takes a few seconds), loading them, checking them on probes, and the torch-facing calls.
Where there is no compiler, a build or a probe fails, or `LMNB_NO_KERNELS=1`, `load()` is
None and callers keep their torch path; `status()` says which and why. Knows nothing of the
model, the scheduler or the radix tree.

Kernels (all batch-invariant: a row's or a query's bits never depend on the rest of the batch):
- `linear`: y = x @ w.T (+ b) over weights packed once in panels, in one of the formats of
  `csrc/linear.h`: fp32, bf16 (widened, or pairs on the CPU's bf16 dot product), the GGUF's
  Q4_1 and Q8_0 blocks as they ship (group-32 int4 / int8), per-channel int8; every output
  element is one FMA chain over k, whatever the number of rows (quantized weights are
  de-quantized exactly, 32 k at a time, into the same chain; with bf16 activations the
  GGUF's blocks take the CPU's bf16 dot product per block instead, `pack_gguf(pairs=True)`).
- `attention`: one query token at a time over its request's slots in the pool, read in place;
  decode steps and extend steps (a query per new token, causal) share the code (an extend's
  consecutive queries are tiled to share each block of keys, without changing their bits).
- `forward`: a whole Llama-family step (forward.c, one library with linear.c and attention.c)
  over a `ForwardModel`: C structs pointing into the packed weights, and a workspace.
"""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

import torch

from lmnb.runtime.loader import cache_root

CSRC = Path(__file__).parent / "csrc"
# -ffp-contract=off: the compiler may not fuse a*b+c on its own, so each element's arithmetic
# is exactly what the source says, in every inlined copy of it (see csrc/linear.c).
FLAGS = ("-O3", "-march=native", "-fopenmp", "-ffp-contract=off", "-shared", "-fPIC")
# library -> its sources, compiled together (forward.c calls into linear.c and attention.c)
LIBS = {"linear": ("linear",), "attention": ("attention",),
        "forward": ("forward", "linear", "attention")}
PANEL = 16  # output columns per packed weight panel (csrc/linear.c)
_lock = threading.Lock()
_kernels: NativeKernels | None = None
_status: str | None = None  # None until the first try
_disabled = False

i64, ptr, cint = ctypes.c_int64, ctypes.c_void_p, ctypes.c_int


# the weight formats of csrc/linear.h (LMNB_W_*)
W_F32, W_BF16, W_BF16_PAIRS, W_Q4, W_INT8, W_Q8, W_Q4_PAIRS, W_Q8_PAIRS = range(8)
FORMAT_NAMES = {W_F32: "fp32", W_BF16: "bf16", W_BF16_PAIRS: "bf16 pairs", W_Q4: "q4 (Q4_1)",
                W_INT8: "int8", W_Q8: "q8 (Q8_0)", W_Q4_PAIRS: "q4 (Q4_1) pairs",
                W_Q8_PAIRS: "q8 (Q8_0) pairs"}
PAIR_FORMATS = (W_BF16_PAIRS, W_Q4_PAIRS, W_Q8_PAIRS)  # x rounded to bf16, bf16 dot products
QUANT_FORMATS = (W_Q4, W_INT8, W_Q8, W_Q4_PAIRS, W_Q8_PAIRS)  # lmnb_linear_w's
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
        weight_p = ctypes.POINTER(LmnbWeight)
        self._linear_w = lin.lmnb_linear_w
        self._linear_w.argtypes = [weight_p, ptr, i64, ptr, cint]
        self._linear_w.restype = cint
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
        fwd = libs["forward"]
        self._forward = fwd.lmnb_forward
        self._forward.argtypes = [ptr, ptr, ptr, cint]
        self._forward.restype = cint
        self._forward_work = fwd.lmnb_forward_work
        self._forward_work.argtypes = [ptr, i64]
        self._forward_work.restype = i64

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
                  bias: torch.Tensor | None = None, pairs: bool = False) -> PackedWeight:
        """A GGUF tensor's blocks as the file stores them (`kind` Q4_1 or Q8_0; raw: uint8
        [out, in / 32 * block bytes]) -> LMNB_W_Q4 or LMNB_W_Q8 panels, the file's values.
        pairs: multiply x rounded to bf16 on the CPU's bf16 dot product where it has one
        (LMNB_W_Q4_PAIRS, LMNB_W_Q8_PAIRS: for bf16 activations)."""
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
        if pairs and self.bf16_pairs:
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

    # ---- the whole forward -----------------------------------------------------------------

    def forward(self, model: ForwardModel, ids: torch.Tensor, cos: torch.Tensor,
                sin: torch.Tensor, out_slots: torch.Tensor, rows: torch.Tensor,
                lens: torch.Tensor, table: torch.Tensor, k_pool: torch.Tensor,
                v_pool: torch.Tensor, logit_index: torch.Tensor,
                profile: torch.Tensor | None = None) -> torch.Tensor:
        """One step: logits [len(logit_index), vocab] fp32; writes the k/v of the tokens ids
        [n] into k_pool/v_pool [layers, slots, kv_heads, dim] at out_slots [n]. Token t sits
        at the angles cos/sin [n, dim // 2] and attends to table[rows[t], :lens[t]].
        profile: float64 [3], seconds added (linear, attention, total)."""
        n = len(ids)
        if any(t.dtype != torch.int64 or not t.is_contiguous()
               for t in (ids, out_slots, rows, lens, logit_index, table)):
            raise ValueError("the forward's index tensors must be contiguous int64")
        c = model.c
        if k_pool.dtype != v_pool.dtype or k_pool.dtype not in (torch.float32, torch.bfloat16) \
                or not (k_pool.is_contiguous() and v_pool.is_contiguous()) \
                or k_pool.shape != v_pool.shape or k_pool.shape[0] != c.num_layers \
                or k_pool.shape[2:] != (c.kv_heads, c.head_dim):
            raise ValueError("the forward needs contiguous fp32 or bf16 pools of one dtype, "
                             "[layers, slots, kv_heads, head_dim] of this model")
        # the C code trusts every index and size: a bad one raises here, not a stray write
        bounds = ((ids, 0, c.vocab), (out_slots, 0, k_pool.shape[1]),
                  (rows, 0, len(table)), (lens, 1, table.shape[1] + 1), (logit_index, 0, n))
        if len(logit_index) > n or any(len(t) != n for t in (out_slots, rows, lens)) or any(
                t.shape != (n, c.head_dim // 2) for t in (cos, sin)) or any(
                len(t) and not lo <= int(t.min()) <= int(t.max()) < hi for t, lo, hi in bounds):
            raise IndexError("the forward's indices or sizes are out of range")
        cos, sin = (t.float().contiguous() for t in (cos, sin))
        need = self._forward_work(ctypes.byref(model.c), n)
        if model.work.numel() < need:
            model.work = torch.empty(need, dtype=torch.float32)
        logits = torch.empty(len(logit_index), model.c.vocab, dtype=torch.float32)
        step = CStep(n, ids.data_ptr(), out_slots.data_ptr(), rows.data_ptr(), lens.data_ptr(),
                     cos.data_ptr(), sin.data_ptr(), table.data_ptr(), table.stride(0),
                     k_pool.data_ptr(), v_pool.data_ptr(), k_pool.shape[1],
                     int(k_pool.dtype == torch.bfloat16), len(logit_index),
                     logit_index.data_ptr(), logits.data_ptr(),
                     None if profile is None else profile.data_ptr())
        if self._forward(ctypes.byref(model.c), ctypes.byref(step), model.work.data_ptr(),
                         torch.get_num_threads()):
            raise RuntimeError("the native forward failed (a weight format this build lacks, "
                               "or out of memory)")
        return logits


class CLayer(ctypes.Structure):  # csrc/forward.c
    _fields_ = [("input_norm", ptr), ("post_norm", ptr), ("qkv", LmnbWeight),
                ("o", LmnbWeight), ("gate_up", LmnbWeight), ("down", LmnbWeight)]


class CModel(ctypes.Structure):  # csrc/forward.c
    _fields_ = [*((name, i64) for name in ("num_layers", "hidden", "heads", "kv_heads",
                                           "head_dim", "inter", "vocab")),
                ("eps", ctypes.c_float), ("scale", ctypes.c_float), ("bf16", ctypes.c_int32),
                ("embed", ptr), ("final_norm", ptr), ("layers", ptr), ("lm_head", LmnbWeight)]


class CStep(ctypes.Structure):  # csrc/forward.c
    _fields_ = [("num_tokens", i64), ("ids", ptr), ("out_slots", ptr), ("rows", ptr),
                ("lens", ptr), ("cos", ptr), ("sin", ptr), ("table", ptr),
                ("table_stride", i64), ("k_pool", ptr), ("v_pool", ptr), ("num_slots", i64),
                ("pool_bf16", ctypes.c_int32), ("num_logits", i64), ("logit_index", ptr),
                ("logits", ptr), ("profile", ptr)]


# One layer's weights as forward.c takes them: input norm, post-attention norm [hidden] (any
# float dtype), then qkv (q, k, v rows), o, gate_up (gate rows, then up rows), down.
LayerWeights = tuple[torch.Tensor, torch.Tensor, PackedWeight, PackedWeight, PackedWeight,
                     PackedWeight]


class ForwardModel:
    """A model as csrc/forward.c reads it: C structs pointing into tensors kept alive here,
    and the step's workspace (grown to the largest step so far; one thread uses it).
    Activations round to bf16 where the torch path's do when `embed` is bf16."""

    def __init__(self, embed: torch.Tensor, final_norm: torch.Tensor, lm_head: PackedWeight,
                 layers: list[LayerWeights], heads: int, kv_heads: int, head_dim: int,
                 eps: float) -> None:
        if embed.dtype not in (torch.float32, torch.bfloat16):
            raise ValueError(f"the native forward runs fp32 or bf16 models, not {embed.dtype}")
        self.embed = embed.contiguous()
        self.norms = [x.float().contiguous() for layer in layers for x in layer[:2]]
        self.final_norm = final_norm.float().contiguous()
        self.weights = [lm_head, *(w for layer in layers for w in layer[2:])]  # kept alive
        self.layers = (CLayer * len(layers))(*(
            CLayer(self.norms[2 * i].data_ptr(), self.norms[2 * i + 1].data_ptr(),
                   *(w.descriptor() for w in layer[2:])) for i, layer in enumerate(layers)))
        self.c = CModel(len(layers), embed.shape[1], heads, kv_heads, head_dim,
                        layers[0][4].out_features // 2, lm_head.out_features, eps,
                        head_dim**-0.5, int(embed.dtype == torch.bfloat16),
                        self.embed.data_ptr(), self.final_norm.data_ptr(),
                        ctypes.addressof(self.layers), lm_head.descriptor())
        self.work = torch.empty(0)


def load() -> NativeKernels | None:
    """The kernels, built and checked on first use; None where they are unavailable."""
    if _status is None:
        with _lock:
            if _status is None:
                _load()
    return None if _disabled else _kernels


def status() -> str:
    load()
    return "torch (native kernels disabled for a measurement)" if _disabled else str(_status)


@contextlib.contextmanager
def disabled() -> Iterator[None]:
    """`load()` is None inside the block (engines built there take their torch path)."""
    global _disabled
    load()
    saved, _disabled = _disabled, True
    try:
        yield
    finally:
        _disabled = saved


def _load() -> None:
    global _kernels, _status
    if os.environ.get("LMNB_NO_KERNELS") == "1":
        _kernels, _status = None, "unavailable (LMNB_NO_KERNELS=1)"
        return
    try:
        kernels = build()
    except (OSError, RuntimeError, subprocess.SubprocessError) as err:
        _kernels, _status = None, f"unavailable ({err})"
        return
    _kernels, _status = kernels, "native (compiled, checked on probes)"


def build(extra_flags: tuple[str, ...] = ()) -> NativeKernels:
    """Compile (or find in the cache), load and probe the kernels. `extra_flags` go after the
    defaults (the tests build the AVX2 variant on an AVX-512 machine with `-mno-avx512f`)."""
    flags = (*FLAGS, *extra_flags)
    kernels = NativeKernels({name: ctypes.CDLL(str(_build(name, sources, flags)))
                             for name, sources in LIBS.items()})
    _probe(kernels)
    return kernels


def _build(name: str, sources: tuple[str, ...], flags: tuple[str, ...]) -> Path:
    # the key covers the headers too (csrc/*.h), which any source may include
    paths = [CSRC / f"{src}.c" for src in sources]
    source = b"".join(p.read_bytes() for p in paths) + b"".join(
        h.read_bytes() for h in sorted(CSRC.glob("*.h")))
    compiler = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        raise RuntimeError("no C compiler (cc or gcc) on PATH")
    key = hashlib.sha256(source + " ".join(flags).encode() + _cpu_id()).hexdigest()[:16]
    target = cache_root() / "kernels" / f"{name}-{key}.so"
    if target.exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        built = Path(tmp) / target.name
        proc = subprocess.run([compiler, *flags, "-o", str(built), *map(str, paths), "-lm"],
                              capture_output=True, text=True, timeout=120)
        if proc.returncode != 0:
            raise RuntimeError(f"{compiler} failed: {proc.stderr.strip()[-500:]}")
        os.replace(built, target)  # atomic: another process may be building the same file
    return target


def _cpu_id() -> bytes:
    """-march=native ties a build to the CPU: key it by the CPU's model and flags."""
    try:
        info = Path("/proc/cpuinfo").read_text()
        lines = [ln for ln in info.splitlines() if ln.startswith(("model name", "flags"))]
        return "\n".join(sorted(set(lines))).encode()
    except OSError:
        return platform.processor().encode()


def _probe(kernels: NativeKernels) -> None:
    """Small random cases against torch (values) and against the kernels' own element-by-
    element reference and themselves row by row (bits): a build that is fast but wrong on this
    CPU is not used."""
    gen = torch.Generator().manual_seed(0)
    w, b = torch.randn(40, 48, generator=gen), torch.randn(40, generator=gen)
    x = torch.randn(13, 48, generator=gen)
    for dtype in (torch.float32, torch.bfloat16):
        packed = kernels.pack(w, b, dtype)
        xd = x.to(dtype)
        got = kernels.linear(xd, packed)
        want = torch.nn.functional.linear(xd.float(), w.to(dtype).float(), b)
        if not torch.allclose(got, want, atol=1e-4, rtol=1e-4):
            raise RuntimeError(f"the compiled linear disagrees with torch on a probe ({dtype})")
        rows = torch.cat([kernels.linear(xd[i : i + 1], packed) for i in range(len(x))])
        same = packed.pairs or torch.equal(got, kernels.linear(xd, packed, reference=True))
        if not (same and torch.equal(got, rows)):
            raise RuntimeError("the compiled linear is not batch-invariant on a probe")
    for packed in _probe_quantized(kernels, gen):
        xq = x[:, :packed.in_features]
        xq = xq.bfloat16().float() if packed.pairs else xq  # the pairs round x to bf16
        got = kernels.linear(xq, packed)
        want = torch.nn.functional.linear(xq, kernels.dequantize(packed), packed.bias)
        rows = torch.cat([kernels.linear(xq[i : i + 1], packed) for i in range(len(x))])
        if not torch.allclose(got, want, atol=1e-4, rtol=1e-4):
            raise RuntimeError(f"the compiled linear disagrees with torch ({packed.format_name})")
        same = packed.pairs or torch.equal(got, kernels.linear(xq, packed, reference=True))
        if not (same and torch.equal(got, rows)):
            raise RuntimeError(f"the compiled {packed.format_name} linear is not batch-invariant")
    heads, kv_heads, dim, slots = 6, 2, 16, 40
    q = torch.randn(3, heads, dim, generator=gen)
    k, v = (torch.randn(slots, kv_heads, dim, generator=gen) for _ in range(2))
    table = torch.randperm(slots, generator=gen).view(4, 10)
    rows, lens = torch.tensor([2, 0, 3]), torch.tensor([10, 1, 7])
    got = kernels.attention(q, k, v, table, rows, lens, 0.25)
    for i in range(3):
        s = table[rows[i], : lens[i]]
        kk = k[s].repeat_interleave(heads // kv_heads, 1)  # [len, heads, dim]
        vv = v[s].repeat_interleave(heads // kv_heads, 1)
        weights = torch.softmax(torch.einsum("hd,lhd->hl", q[i], kk) * 0.25, -1)
        want = torch.einsum("hl,lhd->hd", weights, vv)
        if not torch.allclose(got[i], want, atol=1e-5, rtol=1e-4):
            raise RuntimeError("the compiled attention disagrees with torch on a probe")
        alone = kernels.attention(q[i : i + 1], k, v, table, rows[i : i + 1], lens[i : i + 1],
                                  0.25)
        if not torch.equal(alone[0], got[i]):
            raise RuntimeError("the compiled attention is not batch-invariant on a probe")


def random_blocks(kind: str, out_features: int, in_features: int,
                  gen: torch.Generator) -> torch.Tensor:
    """GGUF blocks of `kind` (Q4_1, Q8_0) with random integers and fp16 scales: uint8
    [out, in / 32 * block bytes] (probes and tests)."""
    _, block = GGUF_BLOCKS[kind]
    blocks = torch.randint(0, 256, (out_features, in_features // GROUP, block), generator=gen,
                           dtype=torch.uint8)
    scales = (torch.rand(out_features, in_features // GROUP, 2, generator=gen) * 0.1
              - (0.05 if kind == "Q4_1" else 0.0))  # d, m (Q4_1) or d (Q8_0)
    halves = scales.half().view(torch.uint8).view(out_features, in_features // GROUP, 4)
    blocks[..., : 4 if kind == "Q4_1" else 2] = halves[..., : 4 if kind == "Q4_1" else 2]
    return blocks.view(out_features, -1)


def _probe_quantized(kernels: NativeKernels, gen: torch.Generator) -> list[PackedWeight]:
    bias = torch.randn(40, generator=gen)
    q = torch.randint(-127, 128, (40, 48), generator=gen, dtype=torch.int8)
    q4, q8 = random_blocks("Q4_1", 40, 32, gen), random_blocks("Q8_0", 40, 32, gen)
    return [kernels.pack_gguf("Q4_1", q4, 40, 32, bias),
            kernels.pack_gguf("Q4_1", q4, 40, 32, bias, pairs=True),  # where the CPU has them
            kernels.pack_gguf("Q8_0", q8, 40, 32, bias),
            kernels.pack_gguf("Q8_0", q8, 40, 32, bias, pairs=True),
            kernels.pack_int8(q, torch.rand(40, generator=gen) / 127, bias)]
