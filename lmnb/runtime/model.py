"""The Llama-family forward (Llama, Mistral, Qwen2, SmolLM2) over the token-indexed KV pool.

Owns the weights (fused qkv and gate/up projections) and the layer math: RMSNorm, RoPE,
grouped-query attention, SwiGLU, tied or untied embeddings, optional qkv bias. Logits are
computed only at the positions a batch asks for. Knows nothing of requests or scheduling.

Two runners of the same step: `native` (csrc/forward.c: the whole step in one C call over the
packed weights, where the native kernels load) and `torch` (op by op from Python: the
reference, and the path without the kernels, on a GPU, or with `deterministic=False`).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from types import ModuleType

import torch
import torch.nn.functional as F

from lmnb.runtime.attention import AttentionPlan, Workspace, attention
from lmnb.runtime.batch import ForwardBatch
from lmnb.runtime.config import ModelConfig
from lmnb.runtime.cpu_kernels import NativeKernels
from lmnb.runtime.kv_pool import KVPool
from lmnb.runtime.linear import Linears
from lmnb.runtime.loader import GGUFBlocks
from lmnb.runtime.native_forward import ForwardModel
from lmnb.runtime.rope import RotaryTable


class Layer:
    def __init__(self, w: Callable[[str], torch.Tensor], prefix: str, cfg: ModelConfig,
                 linears: Linears) -> None:
        a, m = f"{prefix}.self_attn", f"{prefix}.mlp"
        self.input_norm = w(f"{prefix}.input_layernorm.weight")
        self.post_norm = w(f"{prefix}.post_attention_layernorm.weight")
        qkv_bias = (
            torch.cat([w(f"{a}.{p}_proj.bias") for p in "qkv"]) if cfg.qkv_bias else None
        )
        self.qkv = linears([f"{a}.{p}_proj.weight" for p in "qkv"], qkv_bias)
        self.o = linears([f"{a}.o_proj.weight"])
        self.gate_up = linears([f"{m}.gate_proj.weight", f"{m}.up_proj.weight"])
        self.down = linears([f"{m}.down_proj.weight"])


class LlamaModel:
    def __init__(
        self,
        cfg: ModelConfig,
        weights: Mapping[str, torch.Tensor],
        dtype: torch.dtype,
        device: torch.device,
        pack_weights: bool = True,
        native: NativeKernels | None = None,
        runner: str | None = None,
        weights_format: str | None = None,
        blocks: dict[str, GGUFBlocks] | None = None,
        attention: str = "torch",
    ) -> None:
        """pack_weights: pre-pack the matrix products' weights for oneDNN where `linear.Linear`
        can. native: run matrix products and attention on the batch-invariant kernels.
        runner: "native" (needs `native`), "torch", or None (native where given).
        weights_format, blocks: the matrix products' weights (`linear.Linears`): q4 (the GGUF's
        blocks, given), int8, bf16, fp32, or None (in `dtype`).
        attention: the torch runner's attention without the native kernels, "torch" (the
        reference) or "triton" (`triton_attention.py`, for a GPU; the step's row-wise ops,
        RMSNorm with the residual add and rotary, then run on `triton_ops.py` too)."""
        if attention not in ("torch", "triton"):
            raise ValueError(f"attention must be 'torch' or 'triton', not {attention!r}")
        self.runner, self.runner_reason = pick_runner(runner, native)
        self.attention = "native" if native is not None else attention
        self.cfg = cfg
        self.dtype = dtype
        self.device = device
        def w(name: str) -> torch.Tensor:  # read when needed (q4: the matrices never are)
            return weights[name].to(device=device, dtype=dtype)

        self.embed = w("model.embed_tokens.weight")
        linears = Linears(weights, dtype, device, pack_weights, native, weights_format, blocks)
        self.lm_head = linears(["model.embed_tokens.weight" if cfg.tie_word_embeddings
                                else "lm_head.weight"])
        self.norm = w("model.norm.weight")
        self.native = native
        self.layers = [Layer(w, f"model.layers.{i}", cfg, linears)
                       for i in range(cfg.num_layers)]
        self.rope = RotaryTable(cfg, dtype, device)
        self.scale = cfg.head_dim**-0.5
        self.q_size = cfg.num_heads * cfg.head_dim
        self.kv_size = cfg.num_kv_heads * cfg.head_dim
        self.workspace = Workspace()  # gather buffers reused across layers and steps
        # the torch runner's norms and rotary in Triton where its attention is (a GPU)
        self.ops: ModuleType | None = (
            importlib.import_module("lmnb.runtime.triton_ops")
            if self.attention == "triton" and self.runner == "torch" else None)
        self.native_model = None if self.runner == "torch" else ForwardModel(
            native, self.embed, self.norm, self.lm_head.panels,  # type: ignore[arg-type]
            [(x.input_norm, x.post_norm, x.qkv.panels, x.o.panels, x.gate_up.panels,
              x.down.panels) for x in self.layers],  # type: ignore[misc]
            cfg.num_heads, cfg.num_kv_heads, cfg.head_dim, cfg.rms_norm_eps)

    def rms_norm(self, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        if self.ops is not None:
            return self.ops.rms_norm(x, weight, self.cfg.rms_norm_eps)
        return rms_norm(x, weight, self.cfg.rms_norm_eps)

    def add_rms_norm(self, h: torch.Tensor, x: torch.Tensor, weight: torch.Tensor,
                     ) -> tuple[torch.Tensor, torch.Tensor]:
        """(h + x, its norm): the residual add and the next norm (one kernel on Triton, which
        adds into h in place)."""
        if self.ops is not None:
            return h, self.ops.add_rms_norm_(h, x, weight, self.cfg.rms_norm_eps)
        h = h + x
        return h, rms_norm(h, weight, self.cfg.rms_norm_eps)

    def rotate(self, qk: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> None:
        if self.ops is not None:
            self.ops.rotary_(qk, cos, sin)
        else:
            self.rope.rotate(qk, cos, sin)

    @torch.inference_mode()
    def forward(self, batch: ForwardBatch, pool: KVPool, table: torch.Tensor,
                profile: torch.Tensor | None = None, plan: AttentionPlan | None = None,
                ) -> torch.Tensor:
        """Logits [len(batch.logit_index), vocab] in fp32; writes the batch's k/v into the pool.
        profile (native runner): float64 [3], seconds added (linear, attention, total).
        plan (torch runner): the attention plan made already (a captured CUDA graph's)."""
        if self.native_model is not None:
            cos, sin = self.rope.at(batch.positions)  # [n, 1, head_dim // 2]
            plan = AttentionPlan.build(batch, table, per_token=True)
            return self.native_model.step(
                batch.input_ids, cos[:, 0], sin[:, 0], batch.out_slots,
                plan.rows, plan.lens, table, pool.k, pool.v, batch.logit_index, profile)
        cfg = self.cfg
        h = self.embed[batch.input_ids]  # [num_tokens, hidden]
        n = h.shape[0]
        heads, kv_heads, dim = cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
        cos, sin = self.rope.at(batch.positions)  # once for every layer
        if plan is None:
            plan = AttentionPlan.build(batch, table, per_token=self.native is not None,
                                       kernels="torch" if self.native else self.attention)
        x = self.rms_norm(h, self.layers[0].input_norm)
        for i, layer in enumerate(self.layers):
            qkv = layer.qkv(x)  # [n, q_size + 2 * kv_size]
            qk = qkv[:, : self.q_size + self.kv_size].view(n, heads + kv_heads, dim)
            self.rotate(qk, cos, sin)  # q and k together, in place
            q = qk[:, :heads]  # [n, heads, dim]
            k = qk[:, heads:]  # [n, kv_heads, dim]
            v = qkv[:, self.q_size + self.kv_size :].view(n, kv_heads, dim)
            pool.write(i, batch.out_slots, k, v)
            if self.native is not None:  # every token, extend or decode, one query at a time
                o = self.native.attention(q, pool.k[i], pool.v[i], table, plan.rows,
                                          plan.lens, self.scale).to(h.dtype)
            else:
                o = attention(q, k, v, pool.k[i], pool.v[i], table, plan, self.scale,
                              self.workspace)
            h, x = self.add_rms_norm(h, layer.o(o.reshape(n, self.q_size)), layer.post_norm)
            gate, up = layer.gate_up(x).chunk(2, dim=-1)
            down = layer.down(F.silu(gate) * up)
            if i + 1 < len(self.layers):  # the next layer's input norm
                h, x = self.add_rms_norm(h, down, self.layers[i + 1].input_norm)
            else:
                h = h + down
        h = self.rms_norm(h[batch.logit_index], self.norm)
        return self.lm_head(h).float()


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """The reference RMSNorm: computed in fp32 like the reference implementation, then cast
    back and scaled by the weight in the model dtype."""
    x32 = x.float()
    x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + eps)
    return weight * x32.to(x.dtype)


def check_runner(runner: object) -> None:
    if runner not in (None, "native", "torch"):
        raise ValueError(f"runner must be 'native', 'torch' or None, not {runner!r}")


def pick_runner(runner: str | None, native: NativeKernels | None) -> tuple[str, str]:
    """(runner, why): the native forward wherever the native kernels run, unless asked not."""
    check_runner(runner)
    if runner == "torch":
        return "torch", "asked for (runner='torch')"
    if native is not None:
        return "native", ("asked for (runner='native')" if runner else
                          "default: the native kernels are in use")
    if runner == "native":
        raise ValueError("runner='native' needs the native kernels (a CPU engine with a C "
                         "compiler, deterministic not False)")
    return "torch", "the native kernels are not in use"
