"""The GPU checks in one run, for a machine with a CUDA GPU (a few minutes on a recent one).

1. tests: the `gpu`-marked tests (among them CUDA graph replay vs eager on a tiny model), and
   the Triton kernels' (attention, `triton_ops`) and device-clean tests, which run compiled on
   the GPU there (`TRITON_INTERPRET` is set only where there is no GPU);
2. greedy parity on the default model: the GPU engine (fp32, and bf16) against the CPU
   engine (fp32, the exact kernels): equal tokens, and where they first part; a
   regex-constrained answer (the bitmask kernel) against the CPU's; CUDA graphs on vs off;
3. benchmark, lmnb on the GPU vs transformers on the same GPU: prefill (4 x 512 tokens),
   decode at batch 1, 8 and 64 (128 new tokens each), a decode step at batch 64 against the
   bandwidth roofline (the bytes it must read: weights once, every request's K/V, over the
   GPU's measured copy bandwidth), and the programs benchmark (`bench_programs.py --quick`
   with transformers on the GPU too: `LMNB_HF_DEVICE=cuda`).

    python benchmarks/gpu_check.py [--skip-tests] [--skip-programs]

Writes benchmarks/results/gpu.json (the GPU named; targets: programs >= 10x transformers,
decode at batch 64 >= 50% of the roofline) and prints a summary.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
import traceback
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))
sys.path.insert(0, str(ROOT))

PROMPTS = ["The capital of France is", "def fibonacci(n):",
           "Write a haiku about the sea.", "List three prime numbers:"]


def run_tests() -> dict[str, Any]:
    # the files that hold GPU paths: their `gpu`-marked tests, then all of their tests
    # (compiled on the GPU there); a whole-suite collection would need the notebook extras
    files = ["tests/runtime/test_triton_attention.py", "tests/runtime/test_triton_ops.py",
             "tests/runtime/test_device_clean.py", "tests/runtime/test_device.py"]
    suites = {"gpu-marked": ["-m", "gpu", *files], "triton + device": files}
    out = {}
    for name, args in suites.items():
        started = time.perf_counter()
        proc = subprocess.run([sys.executable, "-m", "pytest", "-q", *args], cwd=ROOT,
                              capture_output=True, text=True)
        tail = (proc.stdout + proc.stderr).strip().splitlines()[-15:]
        out[name] = {"exit": proc.returncode, "seconds": round(time.perf_counter() - started),
                     "tail": tail}
        print(f"[tests] {name}: exit {proc.returncode}; {tail[-1] if tail else ''}")
    return out


def greedy(engine: Any, n: int = 48) -> list[list[int]]:
    handles = [engine.generate(p, max_new_tokens=n, ignore_eos=True) for p in PROMPTS]
    return [h.result(timeout=600).output_ids for h in handles]


CONSTRAINED = {"regex": r"[0-9]{1,3}(, [0-9]{1,3}){2}", "max_new_tokens": 24}


def constrained(engine: Any) -> tuple[list[int], str]:
    """A regex-constrained greedy answer: on a GPU its masks cross packed and apply in the
    Triton bitmask kernel."""
    result = engine.generate(PROMPTS[3], **CONSTRAINED).result(timeout=600)
    return result.output_ids, result.text


def compare(got: list[list[int]], ref: list[list[int]]) -> dict[str, Any]:
    first = [next((i for i, (a, b) in enumerate(zip(x, y)) if a != b), None)
             for x, y in zip(got, ref)]
    return {"equal": sum(x == y for x, y in zip(got, ref)), "of": len(ref),
            "first_difference": first}


def parity() -> dict[str, Any]:
    """GPU vs CPU (greedy, and one constrained answer), and on the GPU CUDA graphs on vs off
    (the same kernels: replayed decode steps, padding and split buckets, should agree)."""
    import re

    from lmnb.runtime import Engine

    with Engine(device="cpu", dtype="float32") as cpu:
        ref, ref_constrained = greedy(cpu), constrained(cpu)
    out = {}
    for dtype in ("float32", "bfloat16"):
        with Engine(device="cuda", dtype=dtype) as gpu:
            got, (ids, text) = greedy(gpu), constrained(gpu)
            info = gpu.describe()
        with Engine(device="cuda", dtype=dtype, cuda_graphs=False) as eager:
            eager_got = greedy(eager)
        out[dtype] = {**compare(got, ref), "attention": info["attention"],
                      "cuda_graphs": info["cuda_graphs"],
                      "graphs_vs_eager": compare(got, eager_got),
                      "constrained_text": text,
                      "constrained_matches": re.fullmatch(CONSTRAINED["regex"], text) is not None,
                      "constrained_equals_cpu": ids == ref_constrained[0]}
        print(f"[parity] GPU {dtype} vs CPU fp32: {out[dtype]['equal']}/{len(ref)} equal, "
              f"first differences at {out[dtype]['first_difference']}; CUDA graphs vs eager: "
              f"{out[dtype]['graphs_vs_eager']['equal']}/{len(ref)} equal; constrained "
              f"{text!r} (matches: {out[dtype]['constrained_matches']}, equals the CPU's: "
              f"{out[dtype]['constrained_equals_cpu']})")
    return out


def copy_bandwidth() -> float:
    """GB/s of a 1 GiB device-to-device copy (read + write), best of 5."""
    src = torch.empty(2**30, dtype=torch.uint8, device="cuda")
    dst = torch.empty_like(src)
    best = float("inf")
    for _ in range(5):
        torch.cuda.synchronize()
        t = time.perf_counter()
        dst.copy_(src)
        torch.cuda.synchronize()
        best = min(best, time.perf_counter() - t)
    return 2 * src.numel() / best / 1e9


def timed(fn: Any) -> float:
    torch.cuda.synchronize()
    started = time.perf_counter()
    fn()
    torch.cuda.synchronize()
    return time.perf_counter() - started


def bench_lmnb(engine: Any, prompts: list[list[int]], new: int) -> float:
    engine.flush_cache()
    handles = [engine.generate(p, max_new_tokens=new, ignore_eos=True) for p in prompts]
    return timed(lambda: [h.result(timeout=600) for h in handles])


def bench_hf(model: Any, prompts: list[list[int]], new: int) -> float:
    width = max(map(len, prompts))
    ids = torch.tensor([[0] * (width - len(p)) + p for p in prompts], device="cuda")
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts],
                        device="cuda")
    with torch.inference_mode():
        return timed(lambda: model.generate(input_ids=ids, attention_mask=mask,
                                            max_new_tokens=new, min_new_tokens=new,
                                            do_sample=False, pad_token_id=0))


def benchmark() -> dict[str, Any]:
    from transformers import AutoModelForCausalLM

    from lmnb.runtime import Engine

    engine = Engine(device="cuda")
    gen = torch.Generator().manual_seed(0)
    vocab = engine.config.vocab_size

    def prompts(n: int, length: int) -> list[list[int]]:
        return torch.randint(100, vocab, (n, length), generator=gen).tolist()

    hf = AutoModelForCausalLM.from_pretrained(engine.model_path, dtype=engine.dtype).cuda()
    hf = hf.eval()
    out: dict[str, Any] = {"engine": engine.describe()}
    bench_lmnb(engine, prompts(2, 32), 8)  # warm up: kernels compiled, graphs captured
    bench_hf(hf, prompts(2, 32), 8)
    p = prompts(4, 512)
    lm_s, hf_s = bench_lmnb(engine, p, 1), bench_hf(hf, p, 1)
    out["prefill_4x512"] = {"lmnb_tok_s": 2048 / lm_s, "transformers_tok_s": 2048 / hf_s}
    for batch in (1, 8, 64):
        p, new = prompts(batch, 32), 128
        bench_lmnb(engine, p, 4)  # this bucket's graph captured before timing
        lm_s, hf_s = bench_lmnb(engine, p, new), bench_hf(hf, p, new)
        out[f"decode_b{batch}"] = {"lmnb_tok_s": batch * new / lm_s,
                                   "transformers_tok_s": batch * new / hf_s,
                                   "lmnb_step_ms": 1e3 * lm_s / new}
    cfg = engine.config
    kv_bytes = (64 * (32 + 64) * cfg.num_layers * 2 * cfg.num_kv_heads * cfg.head_dim
                * engine.pool.k.element_size())  # the mean context: prompt + half the output
    step_bytes = engine.describe()["weight_mb_per_token"] * 1e6 + kv_bytes
    bandwidth = copy_bandwidth()
    step_s = out["decode_b64"]["lmnb_step_ms"] / 1e3
    out["roofline_b64"] = {"bytes_per_step": step_bytes, "copy_gb_s": bandwidth,
                           "achieved_gb_s": step_bytes / step_s / 1e9,
                           "percent": 100 * step_bytes / step_s / 1e9 / bandwidth}
    engine.shutdown()
    for key, value in out.items():
        if key != "engine":
            print(f"[bench] {key}: {json.dumps(value, default=round)}")
    return out


def programs() -> dict[str, Any]:
    env = {**os.environ, "LMNB_HF_DEVICE": "cuda"}
    proc = subprocess.run([sys.executable, "benchmarks/bench_programs.py", "--quick",
                           "--no-llama", "--no-plot", "--name", "programs_gpu"], cwd=ROOT,
                          env=env, capture_output=True, text=True)
    tail = (proc.stdout + proc.stderr).strip().splitlines()[-25:]
    print("[programs]\n" + "\n".join(tail))
    return {"exit": proc.returncode, "results": "benchmarks/results/programs_gpu.json",
            "tail": tail}


STAGES = {"tests": run_tests, "parity": parity, "benchmark": benchmark, "programs": programs}


def run_stage(name: str, out: Path) -> None:
    """One stage in this process, its result (or its traceback) written to `out`."""
    try:
        result = STAGES[name]()
    except Exception:  # noqa: BLE001 - the traceback is the result
        result = {"error": traceback.format_exc()}
        print(f"[{name}] failed:\n{result['error']}")
    out.write_text(json.dumps(result, default=str))


def main() -> None:
    args = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    args.add_argument("--skip-tests", action="store_true")
    args.add_argument("--skip-programs", action="store_true")
    args.add_argument("--stage", choices=STAGES, help=argparse.SUPPRESS)  # a child's one stage
    args.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    opts = args.parse_args()
    if not torch.cuda.is_available():
        sys.exit("gpu_check: no CUDA GPU here (torch.cuda.is_available() is False)")
    if opts.stage:
        return run_stage(opts.stage, opts.out)
    results: dict[str, Any] = {"gpu": torch.cuda.get_device_name(),
                               "torch": torch.__version__, "date": time.strftime("%Y-%m-%d")}
    skip = {"tests": opts.skip_tests, "programs": opts.skip_programs}
    path = ROOT / "benchmarks" / "results" / "gpu.json"
    out = path.with_suffix(".stage.json")
    for name in STAGES:
        if skip.get(name):
            continue
        # each stage in its own process: a device-side assert poisons a CUDA context for
        # good, and the next stage should still run and report
        out.unlink(missing_ok=True)
        proc = subprocess.run([sys.executable, __file__, "--stage", name, "--out", str(out)],
                              cwd=ROOT)
        results[name] = (json.loads(out.read_text()) if out.exists() else
                         {"error": f"the stage's process ended with {proc.returncode}"})
        path.write_text(json.dumps(results, indent=1, default=str) + "\n")  # after each stage
    out.unlink(missing_ok=True)
    print(f"written {path.relative_to(ROOT)} ({results['gpu']})")


if __name__ == "__main__":
    main()
