"""Native CPU kernels: C sources in `csrc/`, compiled on first use and loaded with ctypes.

Owns building a kernel (the system's C compiler, `-O3 -march=native -fopenmp`, into
`$LMNB_CACHE/kernels/`, keyed by the source and the CPU; a build takes about a second),
loading it, checking it against the torch path on a probe, and the torch-facing call. Where
there is no compiler, a build or the probe fails, or `LMNB_NO_KERNELS=1`, the kernel is None
and the caller keeps its torch path; `status()` says which and why. Knows nothing of the
model, the scheduler or the radix tree.

Kernels:
- `decode_attention`: one query per request over its slots in the pool, read in place (the
  torch path first gathers them into a buffer, which at long contexts costs as much as the
  attention itself: the step is bound by reading the KV cache).
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
FLAGS = ("-O3", "-march=native", "-fopenmp", "-shared", "-fPIC")
_lock = threading.Lock()
_kernel: DecodeAttention | None = None
_status: str | None = None  # None until the first try


class DecodeAttention:
    """out [batch, heads, dim] for q [batch, heads, dim] over the slots of `table[rows]`."""

    def __init__(self, lib: ctypes.CDLL) -> None:
        fn = lib.lmnb_decode_attention
        i64, ptr = ctypes.c_int64, ctypes.c_void_p
        fn.argtypes = [ptr, ptr, ptr, ptr, i64, ptr, ptr, i64, i64, i64, i64, ctypes.c_float,
                       ptr, ctypes.c_int]
        fn.restype = ctypes.c_int
        self._fn = fn

    def __call__(self, q: torch.Tensor, k_pool: torch.Tensor, v_pool: torch.Tensor,
                 table: torch.Tensor, rows: torch.Tensor, lens: torch.Tensor,
                 scale: float) -> torch.Tensor:
        batch, heads, dim = q.shape
        q = q.contiguous()  # a view into the joint qkv projection: a small copy
        for t in (k_pool, v_pool, table, rows, lens):
            if not t.is_contiguous():
                raise ValueError("decode_attention needs contiguous tensors")
        out = torch.empty_like(q)
        failed = self._fn(q.data_ptr(), k_pool.data_ptr(), v_pool.data_ptr(), table.data_ptr(),
                          table.stride(0), rows.data_ptr(), lens.data_ptr(), batch, heads,
                          k_pool.shape[1], dim, scale, out.data_ptr(), torch.get_num_threads())
        if failed:
            raise MemoryError("decode_attention: out of memory for its score buffer")
        return out


def decode_attention(q: torch.Tensor, k_pool: torch.Tensor) -> DecodeAttention | None:
    """The kernel where it applies to these tensors (fp32 on the CPU), else None."""
    if q.device.type != "cpu" or q.dtype != torch.float32 or k_pool.dtype != torch.float32:
        return None
    _ensure_loaded()
    return _kernel


@contextlib.contextmanager
def disabled() -> Iterator[None]:
    """The torch path inside the block, in every engine of the process (for side-by-side
    measurements and tests); the kernel is back afterwards."""
    global _kernel
    _ensure_loaded()  # so that it stays off
    saved, _kernel = _kernel, None
    try:
        yield
    finally:
        _kernel = saved


def prepare(device: torch.device, dtype: torch.dtype) -> str:
    """Build and load the kernels an engine on `device` in `dtype` will use (so its first
    decode step does not wait for the compiler); returns the decode attention path in words."""
    if device.type != "cpu" or dtype != torch.float32:
        return "torch (the native kernel is for fp32 on the CPU)"
    _ensure_loaded()
    return _status or ""


def _ensure_loaded() -> None:
    if _status is None:
        with _lock:
            if _status is None:
                _load()


def _load() -> None:
    global _kernel, _status
    if os.environ.get("LMNB_NO_KERNELS") == "1":
        _kernel, _status = None, "torch (LMNB_NO_KERNELS=1)"
        return
    try:
        kernel = DecodeAttention(ctypes.CDLL(str(_build("decode_attention"))))
        _probe(kernel)
    except (OSError, RuntimeError, subprocess.SubprocessError) as err:
        _kernel, _status = None, f"torch (native kernel unavailable: {err})"
        return
    _kernel, _status = kernel, "native decode attention"


def _build(name: str) -> Path:
    source = (CSRC / f"{name}.c").read_bytes()
    compiler = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        raise RuntimeError("no C compiler (cc or gcc) on PATH")
    key = hashlib.sha256(source + " ".join(FLAGS).encode() + _cpu_id()).hexdigest()[:16]
    target = cache_root() / "kernels" / f"{name}-{key}.so"
    if target.exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        built = Path(tmp) / target.name
        proc = subprocess.run([compiler, *FLAGS, "-o", str(built), str(CSRC / f"{name}.c"),
                               "-lm"], capture_output=True, text=True, timeout=120)
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


def _probe(kernel: DecodeAttention) -> None:
    """Compare with a plain softmax on a small random case (GQA, uneven lengths)."""
    gen = torch.Generator().manual_seed(0)
    heads, kv_heads, dim, slots = 6, 2, 16, 40
    q = torch.randn(3, heads, dim, generator=gen)
    k, v = (torch.randn(slots, kv_heads, dim, generator=gen) for _ in range(2))
    table = torch.randperm(slots, generator=gen).view(4, 10)
    rows, lens = torch.tensor([2, 0, 3]), torch.tensor([10, 1, 7])
    got = kernel(q, k, v, table, rows, lens, 0.25)
    for b in range(3):
        s = table[rows[b], : lens[b]]
        kk = k[s].repeat_interleave(heads // kv_heads, 1)  # [len, heads, dim]
        vv = v[s].repeat_interleave(heads // kv_heads, 1)
        w = torch.softmax(torch.einsum("hd,lhd->hl", q[b], kk) * 0.25, -1)
        want = torch.einsum("hl,lhd->hd", w, vv)
        if not torch.allclose(got[b], want, atol=1e-5, rtol=1e-4):
            raise RuntimeError("the compiled kernel disagrees with torch on a probe")
