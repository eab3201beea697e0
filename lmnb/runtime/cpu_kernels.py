"""Native CPU kernels: C sources in `csrc/`, compiled on first use and loaded with ctypes.

Owns building the kernels (the system's C compiler, `-O3 -march=native -fopenmp
-ffp-contract=off`, into `$LMNB_CACHE/kernels/`, keyed by the source and the CPU; a build
takes a few seconds), loading them and checking them on probes; the torch-facing calls are
`native_ops.NativeKernels` (products, attention) and `native_forward.ForwardModel` (a step).
Where there is no compiler, a build or a probe fails, or `LMNB_NO_KERNELS=1`, `load()` is
None and callers keep their torch path; `status()` says which and why; `disabled()` and
`sources(folder)` (another commit's csrc, for the kernels A/B) change what `load()` gives
inside a block. Knows nothing of the model, the scheduler or the radix tree.

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
  over a `native_forward.ForwardModel`: C structs pointing into the packed weights.
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
from lmnb.runtime.native_ops import GGUF_BLOCKS, GROUP, NativeKernels, PackedWeight

CSRC = Path(__file__).parent / "csrc"
# -ffp-contract=off: the compiler may not fuse a*b+c on its own, so each element's arithmetic
# is exactly what the source says, in every inlined copy of it (see csrc/linear.c).
FLAGS = ("-O3", "-march=native", "-fopenmp", "-ffp-contract=off", "-shared", "-fPIC")
# library -> its sources, compiled together (forward.c calls into linear.c and attention.c)
LIBS = {"linear": ("linear",), "attention": ("attention",),
        "forward": ("forward", "linear", "attention")}
_lock = threading.Lock()
_kernels: NativeKernels | None = None
_status: str | None = None  # None until the first try
_disabled = False


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


@contextlib.contextmanager
def sources(folder: Path) -> Iterator[None]:
    """`load()` builds from `folder`'s csrc files inside the block (another commit's kernels,
    for `benchmarks/ab_kernels.py`), and returns the package's kernels again after it."""
    global CSRC, _kernels, _status
    with _lock:
        saved = CSRC, _kernels, _status
        CSRC, _kernels, _status = folder, None, None
    try:
        yield
    finally:
        with _lock:
            CSRC, _kernels, _status = saved


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
