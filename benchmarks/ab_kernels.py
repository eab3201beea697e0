"""A/B of the native kernels of two commits, in one process, for changes smaller than this
machine's noise.

Engine B runs on the working tree's kernels (`lmnb/runtime/csrc`), engine A on the same files
at commit `--base` (taken with `git show`, built into `LMNB_CACHE` like any build); both run
the tree's Python. They alternate (A B, B A, A B, ...) `--pairs` times on the same inputs, so
the drifting load of a shared machine falls on both alike, and each keeps its fastest and its
median run; B/A of each and whether their outputs were equal (a change that keeps the bits
keeps the outputs) are printed and written to `benchmarks/results/<name>.json`.

    python benchmarks/ab_kernels.py --base REV [--workload prefill|decode|chats] [--pairs N]
        [--prompts N] [--tokens N] [--name NAME] [--results-dir DIR]

prefill: `--prompts` (4) prompts of `--tokens` (512) seeded random tokens, one new token each;
decode: 8 prompts of `--tokens` tokens, 64 new tokens each (the prefill included); chats: the
programs benchmark's long multi-turn chats (`workloads.py`, multi_turn_long). Greedy, the
radix cache off for prefill and decode (flushed before each chats run).

A base older than an entry point the tree's Python binds gets it as a shim with the same
meaning (SHIMS), so that the older kernels load at all; what the base's forward calls is its
own code.
"""

from __future__ import annotations

import argparse
import random
import statistics
import subprocess
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import common as cm

from lmnb.runtime import Engine, cpu_kernels

REPO = Path(__file__).resolve().parents[1]
CSRC = "lmnb/runtime/csrc"

# entry points added to the kernels since earlier commits: name -> C with the same meaning
SHIMS = {
    "lmnb_linear_w_round": """
int lmnb_linear_w_round(const LmnbWeight *w, const float *x, int64_t m, float *y,
                        int num_threads, int round) {
    const int failed = lmnb_linear_w(w, x, m, y, num_threads);
    for (int64_t i = 0; round && !failed && i < m * w->n; i++) {
        uint32_t bits;
        memcpy(&bits, &y[i], sizeof bits);
        bits += 0x7FFF + ((bits >> 16) & 1);
        bits &= 0xFFFF0000u;
        memcpy(&y[i], &bits, sizeof bits);
    }
    return failed;
}
""",
}


def base_sources(rev: str, into: Path) -> list[str]:
    """Writes the kernel sources of commit `rev` into `into`; returns the shims it needed."""
    names = subprocess.run(["git", "ls-tree", "--name-only", f"{rev}:{CSRC}"], cwd=REPO,
                           capture_output=True, text=True, check=True).stdout.split()
    for name in names:
        if name.endswith((".c", ".h")):
            (into / name).write_bytes(subprocess.run(
                ["git", "show", f"{rev}:{CSRC}/{name}"], cwd=REPO, capture_output=True,
                check=True).stdout)
    text = "".join(p.read_text() for p in into.glob("*.[ch]"))
    shims = [name for name in SHIMS if name not in text]
    with open(into / "linear.c", "a") as out:
        for name in shims:
            out.write(SHIMS[name])
    return shims


def generate_fn(engine: Engine, prompts: list[list[int]], new: int) -> Callable[[], Any]:
    def run() -> list[list[int]]:
        handles = [engine.generate(p, max_new_tokens=new, min_new_tokens=new, ignore_eos=True)
                   for p in prompts]
        return [h.result().output_ids for h in handles]
    return run


def chats_fn(engine: Engine) -> Callable[[], Any]:
    import workloads as wl

    import lmnb as lm

    runtime = lm.Runtime(engine=engine)
    work = wl.build(["multi_turn_long"], wl.FULL)[0]

    def run() -> list[str]:
        runtime.flush_cache()
        states = work.program.run_batch(work.items, backend=runtime, num_threads="auto",
                                        temperature=0, max_tokens=work.max_tokens)
        return [s.text() for s in states]
    return run


def make_fn(args: argparse.Namespace, engine: Engine) -> Callable[[], Any]:
    rng = random.Random(0)
    if args.workload == "chats":
        return chats_fn(engine)
    count, new = (args.prompts, 1) if args.workload == "prefill" else (8, 64)
    prompts = [[rng.randrange(100, 40000) for _ in range(args.tokens)] for _ in range(count)]
    return generate_fn(engine, prompts, new)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--base", required=True, help="the commit whose kernels are A")
    p.add_argument("--workload", choices=("prefill", "decode", "chats"), default="prefill")
    p.add_argument("--pairs", type=int, default=6, help="timed runs of each, alternated")
    p.add_argument("--prompts", type=int, default=4, help="prefill: prompts")
    p.add_argument("--tokens", type=int, default=512, help="prefill/decode: tokens a prompt")
    p.add_argument("--name", default="ab_kernels", help="results/<name>.json")
    p.add_argument("--results-dir", type=Path, help="where the JSON goes (benchmarks/results)")
    args = p.parse_args(argv)
    rev = subprocess.run(["git", "rev-parse", "--short", args.base], cwd=REPO,
                         capture_output=True, text=True, check=True).stdout.strip()
    cache = args.workload != "chats"
    with tempfile.TemporaryDirectory() as tmp:
        shims = base_sources(rev, Path(tmp))
        engines = {"B": Engine(disable_radix_cache=cache)}
        with cpu_kernels.sources(Path(tmp)):
            engines["A"] = Engine(disable_radix_cache=cache)
    try:
        fns = {name: make_fn(args, e) for name, e in sorted(engines.items())}
        outs = {name: fn() for name, fn in fns.items()}  # warm-up, and the outputs compared
        same = outs["A"] == outs["B"]
        times: dict[str, list[float]] = {"A": [], "B": []}
        for i in range(args.pairs):
            for name in ("A", "B") if i % 2 == 0 else ("B", "A"):
                seconds, out = cm.time_once(fns[name], f"{args.workload} {name}")
                times[name].append(seconds)
                same = same and out == outs[name]
    finally:
        for e in engines.values():
            e.shutdown()
    best = {n: min(t) for n, t in times.items()}
    median = {n: statistics.median(t) for n, t in times.items()}
    result = {"benchmark": "ab_kernels", "workload": args.workload, "base": rev,
              "tree": "working tree", "shims": shims, "pairs": args.pairs,
              "seconds": times, "best_s": best, "median_s": median,
              "b_over_a_best": best["B"] / best["A"], "b_over_a_median": median["B"] / median["A"],
              "same_outputs": same, "machine": cm.machine_info()}
    cm.log(f"{args.workload}: A ({rev}) best {best['A']:.3f} s, median {median['A']:.3f} s | "
           f"B (tree) best {best['B']:.3f} s, median {median['B']:.3f} s | B/A "
           f"{result['b_over_a_best']:.3f} best, {result['b_over_a_median']:.3f} median | "
           f"same outputs: {same}")
    cm.write_json(args.name, result, directory=args.results_dir)
    return result


if __name__ == "__main__":
    main()
