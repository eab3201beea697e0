"""A whole Llama-family step in one call of `csrc/forward.c`: the C structs that describe the
model (pointing into its packed weights and norms, kept alive here), the step's arguments
checked before the C code trusts them, and the workspace.

Owns nothing of how the weights were packed (`native_ops`) or which runner a model takes
(`model.pick_runner`).
"""

from __future__ import annotations

import ctypes

import torch

from lmnb.runtime.native_ops import LmnbWeight, NativeKernels, PackedWeight, i64, ptr


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

    def __init__(self, kernels: NativeKernels, embed: torch.Tensor, final_norm: torch.Tensor,
                 lm_head: PackedWeight, layers: list[LayerWeights], heads: int, kv_heads: int,
                 head_dim: int, eps: float) -> None:
        if embed.dtype not in (torch.float32, torch.bfloat16):
            raise ValueError(f"the native forward runs fp32 or bf16 models, not {embed.dtype}")
        self.kernels = kernels
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

    def step(self, ids: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
             out_slots: torch.Tensor, rows: torch.Tensor, lens: torch.Tensor,
             table: torch.Tensor, k_pool: torch.Tensor, v_pool: torch.Tensor,
             logit_index: torch.Tensor, profile: torch.Tensor | None = None) -> torch.Tensor:
        """One step: logits [len(logit_index), vocab] fp32; writes the k/v of the tokens ids
        [n] into k_pool/v_pool [layers, slots, kv_heads, dim] at out_slots [n]. Token t sits
        at the angles cos/sin [n, dim // 2] and attends to table[rows[t], :lens[t]].
        profile: float64 [3], seconds added (linear, attention, total)."""
        n = len(ids)
        if any(t.dtype != torch.int64 or not t.is_contiguous()
               for t in (ids, out_slots, rows, lens, logit_index, table)):
            raise ValueError("the forward's index tensors must be contiguous int64")
        c = self.c
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
        need = self.kernels.c_forward_work(ctypes.byref(self.c), n)
        if self.work.numel() < need:
            self.work = torch.empty(need, dtype=torch.float32)
        logits = torch.empty(len(logit_index), c.vocab, dtype=torch.float32)
        step = CStep(n, ids.data_ptr(), out_slots.data_ptr(), rows.data_ptr(), lens.data_ptr(),
                     cos.data_ptr(), sin.data_ptr(), table.data_ptr(), table.stride(0),
                     k_pool.data_ptr(), v_pool.data_ptr(), k_pool.shape[1],
                     int(k_pool.dtype == torch.bfloat16), len(logit_index),
                     logit_index.data_ptr(), logits.data_ptr(),
                     None if profile is None else profile.data_ptr())
        if self.kernels.c_forward(ctypes.byref(c), ctypes.byref(step), self.work.data_ptr(),
                                  torch.get_num_threads()):
            raise RuntimeError("the native forward failed (a weight format this build lacks, "
                               "or out of memory)")
        return logits
