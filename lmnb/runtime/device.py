"""Device, dtype and kernel choice, and the CPU facts behind them.

Owns which device, dtype and kernels an engine runs and why, in words (`Engine.describe()`
shows it). The kernels: the exact (batch-invariant) native ones wherever they build and pass
their probes, unless `deterministic=False`. The dtype: an explicit `dtype=` wins, then the
`LMNB_DTYPE` environment variable, then the default: bf16 on a GPU, and on a CPU bf16 only
where the CPU has native bf16 (avx512_bf16/AMX) *and* the exact kernels are in use (their
probes run bf16 too); fp32 otherwise. bf16 without those kernels changes greedy answers with
cache hits, so the default never picks it from the CPU's flags alone. The weight format
(`pick_weights`): `weights=`, then `LMNB_WEIGHTS`, then the default where the model file ships
Q4_1 blocks and the exact kernels run: `q4q8` (those blocks times activations quantized to
int8 per 32, llama.cpp's arithmetic for them, measured fastest) where the kernels have vector
integer dot products (every CPU with AVX2), `q4` (the file's values times the activations as
they are) elsewhere; else the engine's dtype (a model's weights are never quantized unasked). Knows
nothing of models or requests beyond which block types a file holds.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from lmnb.runtime import cpu_kernels

DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16,
          "bf16": torch.bfloat16, "float16": torch.float16, "fp16": torch.float16}
DTYPE_ENV = "LMNB_DTYPE"
WEIGHTS_ENV = "LMNB_WEIGHTS"
WEIGHT_FORMATS = ("q4", "q4q8", "int8", "bf16", "fp32")  # Engine(weights=...), linear.Linears
Q4_FORMATS = ("q4", "q4q8")  # the formats that read a GGUF's Q4_1 blocks as they ship


def pick_device(device: str | torch.device | None) -> torch.device:
    """The engine's device: `device=`, else a CUDA GPU where torch sees one, else the CPU. A
    GPU asked for where there is none raises here, naming why, not at the first tensor."""
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    chosen = torch.device(device)
    if chosen.type == "cuda" and not torch.cuda.is_available():
        why = ("this torch is built without CUDA" if torch.version.cuda is None else
               "torch sees no CUDA GPU")
        raise ValueError(f"device={str(device)!r}: {why} (torch {torch.__version__}); "
                         "use device='cpu'")
    if chosen.type not in ("cpu", "cuda"):
        raise ValueError(f"device={str(device)!r}: the engine runs on 'cpu' or 'cuda'")
    return chosen


ATTENTION_ENV = "LMNB_ATTENTION"


def pick_attention(attention: str | None, device: torch.device, exact_kernels: bool,
                   ) -> tuple[str, str]:
    """(the torch runner's attention, why): "native" wherever the exact kernels run, else
    `attention=`, `LMNB_ATTENTION`, "triton" on a GPU where triton imports, "torch" otherwise
    (the reference: also the CPU's path without the kernels, as before)."""
    if exact_kernels:
        return "native", "the exact kernels: one query at a time"
    source = ("asked for (attention=)" if attention is not None else
              f"{ATTENTION_ENV} is set" if os.environ.get(ATTENTION_ENV) else None)
    asked = attention or os.environ.get(ATTENTION_ENV)
    if asked is not None and asked not in ("torch", "triton"):
        raise ValueError(f"attention must be 'torch' or 'triton', not {asked!r}")
    if asked == "torch":
        return "torch", f"{source}: SDPA for extend, gather + cascade for decode"
    triton_ok = triton_available()
    if asked == "triton":
        if not triton_ok:
            raise ValueError("attention='triton' needs the triton package")
        if device.type != "cuda" and not os.environ.get("TRITON_INTERPRET"):
            raise ValueError("attention='triton' runs on a GPU (or on the CPU under "
                             "TRITON_INTERPRET=1, for tests)")
        return "triton", f"{source}: Triton extend and split-KV decode kernels"
    if device.type == "cuda" and triton_ok:
        return "triton", "default on a GPU: Triton extend and split-KV decode kernels"
    why = "triton is not installed" if device.type == "cuda" else "on the CPU without them"
    return "torch", f"default ({why}): SDPA for extend, gather + cascade for decode"


def triton_available() -> bool:
    import importlib.util

    return importlib.util.find_spec("triton") is not None


def _cpuinfo() -> str:
    try:
        return Path("/proc/cpuinfo").read_text()
    except OSError:
        return ""


def cpu_name() -> str:
    for line in _cpuinfo().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    import platform

    return platform.processor() or platform.machine()


def cpu_has_native_bf16() -> bool:
    """avx512_bf16 or AMX: the CPU has bf16 arithmetic of its own."""
    flags = _cpuinfo()
    return "avx512_bf16" in flags or "amx_bf16" in flags


def parse_dtype(dtype: str | torch.dtype, source: str = "dtype") -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    if not isinstance(dtype, str) or dtype.lower() not in DTYPES:
        raise ValueError(f"unknown {source} {dtype!r}; choose one of {sorted(DTYPES)}")
    return DTYPES[dtype.lower()]


def pick_dtype(dtype: str | torch.dtype | None, device: torch.device,
               exact_kernels: bool) -> tuple[torch.dtype, str]:
    """(dtype, why). exact_kernels: the batch-invariant kernels are available for `device`."""
    if dtype is not None:
        return _offered(parse_dtype(dtype), device, "dtype"), "asked for (dtype=)"
    if os.environ.get(DTYPE_ENV):
        chosen = parse_dtype(os.environ[DTYPE_ENV], DTYPE_ENV)
        return _offered(chosen, device, DTYPE_ENV), f"{DTYPE_ENV} is set"
    if device.type == "cuda":
        return torch.bfloat16, "default on a GPU"
    if not cpu_has_native_bf16():
        return torch.float32, "default: this CPU has no native bf16 (avx512_bf16/AMX)"
    if not exact_kernels:
        return torch.float32, ("default: the CPU has native bf16, but the batch-invariant "
                               "kernels are unavailable, and bf16 without them changes "
                               "answers with cache hits")
    return torch.bfloat16, "default: the CPU has native bf16 and the exact kernels passed"


def _offered(dtype: torch.dtype, device: torch.device, source: str) -> torch.dtype:
    """The CPU offers fp32 and bf16, the dtypes its exact kernels compute in."""
    if device.type == "cpu" and dtype not in (torch.float32, torch.bfloat16):
        raise ValueError(f"{source}: {str(dtype).removeprefix('torch.')} is not offered on the "
                         "CPU (its kernels compute in float32 or bfloat16); choose one of those")
    return dtype


def pick_kernels(device: torch.device, deterministic: bool | None,
                 ) -> tuple[cpu_kernels.NativeKernels | None, str]:
    """(the exact kernels or None for the torch paths, why). deterministic: None where
    available, True required (raises where not), False never."""
    if deterministic is False:
        return None, "torch paths (deterministic=False)"
    if device.type != "cpu":
        reason = f"the batch-invariant kernels run on the CPU, not on {device.type}"
    else:
        native = cpu_kernels.load()
        if native is not None:
            return native, cpu_kernels.status()
        reason = f"native kernels {cpu_kernels.status()}"
    if deterministic:
        raise ValueError(f"deterministic=True needs the batch-invariant kernels: {reason}")
    return None, f"torch paths: {reason}"


def parse_weights(weights: str, source: str = "weights") -> str:
    if not isinstance(weights, str) or weights.lower() not in WEIGHT_FORMATS:
        raise ValueError(f"unknown {source} {weights!r}; choose one of {list(WEIGHT_FORMATS)} "
                         "(q4: the GGUF's Q4_1 blocks as they ship; q4q8: those blocks times "
                         "activations quantized to int8 per 32; int8: quantized on load; "
                         "bf16, fp32: de-quantized)")
    return weights.lower()


def pick_weights(weights: str | None, block_types: set[str], exact_kernels: bool,
                 dtype: torch.dtype, model: str, int8_dot: bool = False) -> tuple[str, str]:
    """(weight format, why). block_types: the quantized block types the model's file holds
    for its matrices (empty for a Hugging Face folder). exact_kernels: the native kernels run
    (else q4 and int8 are de-quantized into `dtype` for torch's products). int8_dot: those
    kernels multiply q4q8 with vector integer dot products (else scalar code runs it)."""
    if weights is not None:
        fmt, why = parse_weights(weights), "asked for (weights=)"
    elif os.environ.get(WEIGHTS_ENV):
        fmt, why = parse_weights(os.environ[WEIGHTS_ENV], WEIGHTS_ENV), f"{WEIGHTS_ENV} is set"
    elif "Q4_1" in block_types and exact_kernels and int8_dot:
        return "q4q8", ("default: the model ships Q4_1 blocks, read as they are, times "
                        "activations quantized to int8 per 32 on the kernels' integer dot "
                        "products (the fastest exact format; weights='q4' multiplies the "
                        "activations as they are)")
    elif "Q4_1" in block_types and exact_kernels:
        return "q4", ("default: the model ships Q4_1 blocks, read as they are (5 bits a "
                      "weight, the file's exact values; the kernels here have no vector "
                      "integer dot product for q4q8)")
    else:
        fmt = "bf16" if dtype == torch.bfloat16 else "fp32"
        why = ("default: the engine's dtype (no Q4_1 blocks in the model's file)"
               if "Q4_1" not in block_types else
               "default: the engine's dtype (q4 needs the native kernels: the torch paths "
               "would de-quantize it anyway)")
    if fmt in Q4_FORMATS and "Q4_1" not in block_types:
        found = ", ".join(sorted(block_types)) or "none"
        raise ValueError(f"weights={fmt!r} needs a model file that ships Q4_1 blocks (a GGUF, "
                         f"read as it is); {model} has none (quantized blocks found: {found}); "
                         "choose int8 to quantize on load, or bf16/fp32")
    if fmt == "q4q8" and not exact_kernels:
        raise ValueError("weights='q4q8' quantizes the activations inside the native CPU "
                         "kernels, which do not run here; choose q4 (the same weights with the "
                         "activations as they are)")
    if fmt in ("q4", "int8") and not exact_kernels:
        why += (f"; without the native kernels its values are de-quantized into "
                f"{str(dtype).removeprefix('torch.')} for torch's products (no memory saved)")
    return fmt, why


def host_to_device(values: list[int] | torch.Tensor, device: torch.device,
                   dtype: torch.dtype = torch.int64) -> torch.Tensor:
    """Host integers (a list, made `dtype`) or a host tensor, on `device`. On a GPU they are
    staged in pinned memory and copied without blocking (torch's caching host allocator keeps
    the staging buffer alive until the copy has run); elsewhere as they are, made in place."""
    if isinstance(values, torch.Tensor):
        if device.type != "cuda":
            return values.to(device)
        return values.pin_memory().to(device, non_blocking=True)
    if device.type != "cuda":
        return torch.tensor(values, dtype=dtype, device=device)
    return torch.tensor(values, dtype=dtype).pin_memory().to(device, non_blocking=True)
