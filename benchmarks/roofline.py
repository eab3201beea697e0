"""The machine's limits and a model's cost per step: the roofline the runtime benchmark
holds its measurements against.

Owns two measurements of the machine, with every core torch uses: memory bandwidth (large
copy, triad and read-only sum over arrays far larger than the caches, GB/s) and GEMM peak (a
large square matmul in fp32 and bf16, GFLOP/s); and the arithmetic of a Llama-family model's
work: bytes a forward step reads (weights in a format + the KV it attends over) and FLOPs
(2 per multiply-add of the linears and the attention), so that a run's bytes / bandwidth is
its memory floor and its FLOPs / peak its compute floor. Knows nothing of engines or
systems: the caller says the weights' bytes (`ModelShape.weight_bytes(format)`, or what an
engine reports), the KV's dtype and the steps.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import torch

# bytes per weight of each format. q4: the default GGUF's Q4_1 blocks as they ship (per 32
# weights: 16 bytes of 4-bit values + an fp16 scale and an fp16 minimum); int8: one byte (a
# scale per row or group, negligible); the tied embedding / lm_head of that GGUF is Q8_0
# (34 bytes per 32), which the "q4" format keeps as it ships.
BYTES_PER_WEIGHT = {"fp32": 4.0, "bf16": 2.0, "fp16": 2.0, "int8": 1.0, "q4": 20 / 32,
                    "q4q8": 20 / 32, "q4_1": 20 / 32, "q8_0": 34 / 32}
HEAD_FORMAT = {"q4": "q8_0", "q4q8": "q8_0", "q4_1": "q8_0"}  # the lm_head's, where it differs
DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2, "f16": 2}


# ---- the machine ----------------------------------------------------------------------------


def _best_seconds(fn: Callable[[], Any], repeats: int) -> float:
    fn()  # first touch / warm-up
    best = math.inf
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - started)
    return best


def memory_bandwidth(megabytes: int = 512, repeats: int = 5) -> dict[str, float]:
    """GB/s of a copy (b -> a: 2 arrays of traffic), a triad (a = b + s*c: 3) and a read-only
    sum (1) over fp32 arrays of `megabytes` each, on torch's threads; `gbs` is the best of the
    three (a floor computed from the fastest the memory was seen to go is a true floor)."""
    n = megabytes * 2**20 // 4
    a, b, c = (torch.empty(n, dtype=torch.float32) for _ in range(3))
    b.fill_(1.0)
    c.fill_(2.0)
    a.fill_(0.0)
    size = n * 4
    copy_s = _best_seconds(lambda: a.copy_(b), repeats)
    triad_s = _best_seconds(lambda: torch.add(b, c, alpha=3.0, out=a), repeats)
    read_s = _best_seconds(lambda: b.sum(), repeats)
    out = {"copy_gbs": 2 * size / copy_s / 1e9, "triad_gbs": 3 * size / triad_s / 1e9,
           "read_gbs": size / read_s / 1e9, "array_mb": megabytes,
           "threads": torch.get_num_threads()}
    out["gbs"] = max(out["copy_gbs"], out["triad_gbs"], out["read_gbs"])
    return out


def gemm_peak(dtype: torch.dtype = torch.float32, size: int = 2048,
              repeats: int = 3) -> float:
    """GFLOP/s of one [size, size] @ [size, size] matmul in `dtype` (2 size^3 FLOPs); int8:
    torch's int8 x int8 -> int32 product (`torch._int_mm`, oneDNN's VNNI kernels), GOP/s."""
    gen = torch.Generator().manual_seed(0)
    if dtype == torch.int8:
        a = torch.randint(-127, 128, (size, size), generator=gen, dtype=torch.int8)
        b = torch.randint(-127, 128, (size, size), generator=gen, dtype=torch.int8)
        seconds = _best_seconds(lambda: torch._int_mm(a, b), repeats)
        return 2 * size**3 / seconds / 1e9
    x = torch.randn(size, size, generator=gen).to(dtype)
    y = torch.randn(size, size, generator=gen).to(dtype)
    seconds = _best_seconds(lambda: torch.mm(x, y), repeats)
    return 2 * size**3 / seconds / 1e9


@dataclass(frozen=True)
class Machine:
    """Measured limits: bandwidth (GB/s) and GEMM peaks (GFLOP/s) by dtype name."""

    bandwidth_gbs: float
    peak_gflops: dict[str, float]
    detail: dict[str, Any]

    def peak(self, dtype: str) -> float:
        return self.peak_gflops.get(dtype, self.peak_gflops["float32"])

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def best(self, other: Machine) -> Machine:
        """The higher of two measurements of each limit (load on a shared machine only ever
        lowers what is measured, so the higher one is nearer the truth)."""
        peaks = {k: max(v, other.peak_gflops.get(k, 0.0)) for k, v in self.peak_gflops.items()}
        return Machine(max(self.bandwidth_gbs, other.bandwidth_gbs), peaks,
                       {"measurements": [self.as_dict(), other.as_dict()]})


def measure_machine(quick: bool = False) -> Machine:
    """Bandwidth and the fp32 / bf16 (and int8, where torch has it) GEMM peaks (smaller arrays
    with `quick`)."""
    bw = memory_bandwidth(64 if quick else 512, 3 if quick else 5)
    size = 1024 if quick else 2048
    peaks = {"float32": gemm_peak(torch.float32, size), "bfloat16": gemm_peak(torch.bfloat16,
                                                                               size)}
    with contextlib.suppress(RuntimeError, AttributeError):  # where torch has an int8 matmul
        peaks["int8"] = gemm_peak(torch.int8, size)  # the peak of q4q8's integer products
    return Machine(bw["gbs"], peaks, {"bandwidth": bw, "gemm_size": size})


# ---- the model's work -----------------------------------------------------------------------


@dataclass(frozen=True)
class ModelShape:
    """The numbers of a Llama-family model that set its bytes and FLOPs."""

    hidden: int
    intermediate: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    vocab: int

    @classmethod
    def from_config(cls, cfg: Any) -> ModelShape:
        """From lmnb's `ModelConfig` (or anything with its field names)."""
        return cls(cfg.hidden_size, cfg.intermediate_size, cfg.num_layers, cfg.num_heads,
                   cfg.num_kv_heads, cfg.head_dim, cfg.vocab_size)

    @property
    def layer_params(self) -> int:
        """Weights of every layer's linears (q, k, v, o, gate, up, down)."""
        q_o = 2 * self.hidden * self.heads * self.head_dim
        k_v = 2 * self.hidden * self.kv_heads * self.head_dim
        mlp = 3 * self.hidden * self.intermediate
        return self.layers * (q_o + k_v + mlp)

    @property
    def head_params(self) -> int:
        return self.vocab * self.hidden

    def kv_elems_per_token(self) -> int:
        return self.layers * 2 * self.kv_heads * self.head_dim

    def weight_bytes(self, fmt: str) -> float:
        """Bytes one step reads of the linears and the lm_head in weight format `fmt`."""
        head = HEAD_FORMAT.get(fmt, fmt)
        return (self.layer_params * BYTES_PER_WEIGHT[fmt]
                + self.head_params * BYTES_PER_WEIGHT[head])

    def attention_flops(self, queries: int, keys: float) -> float:
        """QK^T and PV of `queries` query tokens over `keys` keys each (on average)."""
        return 4.0 * self.layers * self.heads * self.head_dim * queries * keys


@dataclass
class Work:
    """What a run made the model do: steps (each reads every weight once), bytes and FLOPs."""

    steps: int = 0
    weight_bytes: float = 0.0
    kv_bytes: float = 0.0
    flops: float = 0.0

    @property
    def bytes(self) -> float:
        return self.weight_bytes + self.kv_bytes

    def add(self, other: Work) -> Work:
        return Work(self.steps + other.steps, self.weight_bytes + other.weight_bytes,
                    self.kv_bytes + other.kv_bytes, self.flops + other.flops)


def extend_work(m: ModelShape, weight_bytes: float, kv_bytes: int, prompt_lens: list[int],
                chunk_tokens: int = 1024, logits_rows: int | None = None) -> Work:
    """Prefill of `prompt_lens` from nothing cached, in steps of up to `chunk_tokens` tokens
    (every step reads the `weight_bytes` of the weights once); `logits_rows` rows through the
    lm_head (default: one per prompt)."""
    tokens = sum(prompt_lens)
    steps = max(1, math.ceil(tokens / chunk_tokens))
    rows = len(prompt_lens) if logits_rows is None else logits_rows
    causal_keys = sum(n * (n + 1) / 2 for n in prompt_lens)  # query i attends to i + 1 keys
    flops = (2.0 * m.layer_params * tokens + 2.0 * m.head_params * rows
             + m.attention_flops(1, causal_keys))
    kv = tokens * m.kv_elems_per_token() * kv_bytes  # each key and value written, read once
    return Work(steps, steps * weight_bytes, float(kv), flops)


def decode_work(m: ModelShape, weight_bytes: float, kv_bytes: int, contexts: list[int],
                new_tokens: int) -> Work:
    """`new_tokens` decode steps of a batch whose requests start with `contexts` tokens in
    the KV: every step reads the weights once and every request's KV so far."""
    work = Work()
    for step in range(new_tokens):
        keys = sum(c + step + 1 for c in contexts)  # the new token's own key included
        work = work.add(Work(1, weight_bytes, keys * m.kv_elems_per_token() * kv_bytes,
                             2.0 * (m.layer_params + m.head_params) * len(contexts)
                             + m.attention_flops(1, keys)))
    return work


def generate_work(m: ModelShape, weight_bytes: float, kv_bytes: int, prompt_lens: list[int],
                  new_tokens: int, chunk_tokens: int = 1024) -> Work:
    """A batch submitted at once: the prompts' prefill (which gives the first new token),
    then new_tokens - 1 decode steps."""
    work = extend_work(m, weight_bytes, kv_bytes, prompt_lens, chunk_tokens)
    if new_tokens > 1:
        work = work.add(decode_work(m, weight_bytes, kv_bytes, prompt_lens, new_tokens - 1))
    return work


def rescore(cell: dict[str, Any], machine: Machine) -> dict[str, Any]:
    """A `roofline` result against other limits (the same work and time)."""
    work = Work(int(cell["steps"]), cell["weight_bytes"], cell["kv_bytes"], cell["flops"])
    return roofline(work, cell["seconds"], machine, cell["peak_dtype"])


def roofline(work: Work, seconds: float, machine: Machine, dtype: str) -> dict[str, Any]:
    """A run against the machine: its floors (bytes / bandwidth, FLOPs / peak), the step
    time floor, and what share of each it achieved (floor / measured time)."""
    bw_floor = work.bytes / (machine.bandwidth_gbs * 1e9)
    compute_floor = work.flops / (machine.peak(dtype) * 1e9)
    return {"steps": work.steps, "bytes": work.bytes, "weight_bytes": work.weight_bytes,
            "kv_bytes": work.kv_bytes, "flops": work.flops, "seconds": seconds,
            "bandwidth_floor_s": bw_floor, "compute_floor_s": compute_floor,
            "step_floor_ms": 1000 * bw_floor / max(work.steps, 1),
            "step_ms": 1000 * seconds / max(work.steps, 1),
            "achieved_gbs": work.bytes / seconds / 1e9,
            "achieved_gflops": work.flops / seconds / 1e9,
            "pct_bandwidth": 100 * bw_floor / seconds,
            "pct_peak": 100 * compute_floor / seconds, "peak_dtype": dtype,
            # every FLOP against the int8 peak (q4q8's products run int8; its attention and
            # elementwise work do not): a lower bound of how near that peak a run comes
            **({"pct_peak_int8": 100 * work.flops / (machine.peak_gflops["int8"] * 1e9)
                / seconds} if "int8" in machine.peak_gflops else {})}
