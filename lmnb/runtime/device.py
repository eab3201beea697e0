"""Device, dtype and kernel choice, and the CPU facts behind them.

Owns which device, dtype and kernels an engine runs and why, in words (`Engine.describe()`
shows it). The kernels: the exact (batch-invariant) native ones wherever they build and pass
their probes, unless `deterministic=False`. The dtype: an explicit `dtype=` wins, then the
`LMNB_DTYPE` environment variable, then the default: bf16 on a GPU, and on a CPU bf16 only
where the CPU has native bf16 (avx512_bf16/AMX) *and* the exact kernels are in use (their
probes run bf16 too); fp32 otherwise. bf16 without those kernels changes greedy answers with
cache hits, so the default never picks it from the CPU's flags alone. Knows nothing of models
or requests.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from lmnb.runtime import cpu_kernels

DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16,
          "bf16": torch.bfloat16, "float16": torch.float16, "fp16": torch.float16}
DTYPE_ENV = "LMNB_DTYPE"


def pick_device(device: str | torch.device | None) -> torch.device:
    if device is not None:
        return torch.device(device)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


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
